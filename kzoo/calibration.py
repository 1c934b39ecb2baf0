"""Post-hoc calibration of binary tasks, fitted on a run's validation split and served in the graph.

    calibrate(run, method, tasks=None)   fit per binary task (Platt or isotonic, scikit-learn) on the
                                         run's validation rows; writes RUN/calibration.json (parameters,
                                         metrics before/after on validation and test), a reliability PNG
                                         per task, and metrics.json's calibrated test metrics
    load(run)                            calibration.json's content, or None for an uncalibrated run
    calibrated(serving, calibration)     the serving model with each calibrated task's layer on its output
                                         (what `kzoo predict`, `kzoo evaluate` and the export serve)
    PlattScaling, IsotonicCalibration    those layers (Keras-serializable, so the TF export tracks them)

A calibrator maps the served probability p to a calibrated one, so it composes with whatever made p
(a sampling correction, a wide & deep sum). Platt scaling is p' = sigmoid(a·logit(p) + b), the
logistic regression of the label on logit(p) (kzoo.metrics.calibration_slope_intercept: the same fit
measures the calibration slope). Isotonic regression is stored as sklearn's thresholds
(X_thresholds_, y_thresholds_) and served as the piecewise-linear interpolation sklearn's `predict`
computes, clipped at both ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from keras import ops

from kzoo import metrics as kmetrics
from kzoo.errors import DataError, SpecError
from kzoo.rundir import RunDir

METHODS = ("platt", "isotonic")
FILE = "calibration.json"
EPS = 1e-7  # p is clipped to [EPS, 1 - EPS] before its logit, as the metrics clip it


# ---------------------------------------------------------------------------------------- layers

@keras.saving.register_keras_serializable(package="kzoo")
class PlattScaling(keras.layers.Layer):
    """Platt scaling of a probability: p' = sigmoid(slope · logit(p) + intercept).

    Args:
        slope: float. The logistic fit's coefficient of logit(p).
        intercept: float. Its intercept.
        eps: float. p is clipped to [eps, 1 - eps] before the logit. Defaults to `1e-7`.

    Reference: Platt, "Probabilistic outputs for support vector machines", 1999.
    """

    def __init__(self, slope: float, intercept: float, eps: float = EPS, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.slope, self.intercept, self.eps = float(slope), float(intercept), float(eps)

    def call(self, p):
        # Clip the logit rather than p: 1 - 1e-7 is not a float32, and rounding it would move the
        # bound of the logit (16.12) to 15.94.
        bound = float(np.log((1.0 - self.eps) / self.eps))
        p = ops.cast(p, "float32")
        z = ops.clip(ops.log(p) - ops.log1p(-p), -bound, bound)
        return ops.sigmoid(self.slope * z + self.intercept)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "slope": self.slope, "intercept": self.intercept, "eps": self.eps}


@keras.saving.register_keras_serializable(package="kzoo")
class IsotonicCalibration(keras.layers.Layer):
    """A fitted isotonic regression as a piecewise-linear map: interpolates linearly between the
    points (x_thresholds[i], y_thresholds[i]) and is constant outside them, as scikit-learn's
    `IsotonicRegression(out_of_bounds="clip").predict` is.

    Args:
        x_thresholds: list of float. Increasing knots (sklearn's `X_thresholds_`).
        y_thresholds: list of float. Non-decreasing values at the knots (`y_thresholds_`).
    """

    def __init__(self, x_thresholds: list, y_thresholds: list, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        x, y = np.asarray(x_thresholds, "float64"), np.asarray(y_thresholds, "float64")
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError(f"x_thresholds and y_thresholds must be equally long, non-empty lists; received "
                             f"{x.shape} and {y.shape}")
        if np.any(np.diff(x) < 0):
            raise ValueError("x_thresholds must be sorted in increasing order")
        self.x_thresholds, self.y_thresholds = x.tolist(), y.tolist()

    def call(self, p):
        p = ops.cast(p, "float32")
        xs = ops.convert_to_tensor(np.asarray(self.x_thresholds, "float32"))
        ys = ops.convert_to_tensor(np.asarray(self.y_thresholds, "float32"))
        n = len(self.x_thresholds)
        if n == 1:
            return ops.zeros_like(p) + ys[0]
        flat = ops.reshape(p, (-1,))
        # Segment i spans knots i and i + 1; scores beyond either end use the end segment, where t is
        # clipped to 0 or 1, so they get the end value (out_of_bounds="clip").
        i = ops.clip(ops.searchsorted(xs, flat, side="right") - 1, 0, n - 2)
        x0, x1, y0, y1 = ops.take(xs, i), ops.take(xs, i + 1), ops.take(ys, i), ops.take(ys, i + 1)
        t = ops.clip((flat - x0) / ops.maximum(x1 - x0, 1e-30), 0.0, 1.0)
        return ops.reshape(y0 + t * (y1 - y0), ops.shape(p))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "x_thresholds": self.x_thresholds, "y_thresholds": self.y_thresholds}


# ---------------------------------------------------------------------------------- fit / apply

def fit(method: str, y, p) -> dict:
    """Fit `method` to labels `y` and probabilities `p` (NumPy); returns its JSON parameters."""
    check_method(method)
    y, p = np.asarray(y, "float64").reshape(-1), np.asarray(p, "float64").reshape(-1)
    if method == "platt":
        slope, intercept = kmetrics.calibration_slope_intercept(y, p, eps=EPS)
        return {"slope": slope, "intercept": intercept}
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(p, y)
    return {"x_thresholds": iso.X_thresholds_.tolist(), "y_thresholds": iso.y_thresholds_.tolist()}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose {' | '.join(METHODS)}")


def layer(method: str, params: dict, name: str | None = None) -> keras.layers.Layer:
    check_method(method)
    cls = PlattScaling if method == "platt" else IsotonicCalibration
    return cls(**params, name=name)


def transform(method: str, params: dict, p) -> np.ndarray:
    """The calibrated probabilities of `p` in NumPy (float64), as the layer computes them in float32."""
    p = np.asarray(p, "float64")
    if method == "platt":
        q = np.clip(p, EPS, 1 - EPS)
        return 1.0 / (1.0 + np.exp(-(params["slope"] * (np.log(q) - np.log1p(-q)) + params["intercept"])))
    return np.interp(p, params["x_thresholds"], params["y_thresholds"])


def load(run) -> dict | None:
    """RUN/calibration.json's content, or None when the run is not calibrated."""
    path = Path(run) / FILE
    return json.loads(path.read_text()) if path.is_file() else None


def calibrated(serving: keras.Model, calibration: dict | None) -> keras.Model:
    """`serving` with each calibrated output passed through its calibration layer (unchanged when
    `calibration` is None or names none of its outputs)."""
    if not calibration:
        return serving
    inputs = serving.input
    outputs = serving(inputs)
    fitted = {k: v for k, v in calibration["tasks"].items() if k in outputs}
    if not fitted:
        return serving
    method = calibration["method"]
    # Each output's last layer carries the output's name, so `output_names` stay the task names.
    outputs = {k: (layer(method, fitted[k]["params"], name=k) if k in fitted else
                   keras.layers.Identity(name=k, dtype="float32"))(v) for k, v in outputs.items()}
    return keras.Model(inputs, outputs, name=f"{serving.name}_calibrated")


def binary_tasks(tasks) -> list:
    """The tasks whose served output is a probability of a 0/1 label (a reliability diagram applies)."""
    from kzoo.tasks import BinaryTask

    return [t for t in tasks if isinstance(t, BinaryTask) and t.served and not t.soft]


def reliability_pngs(tasks, frame, served: dict, folder, title: str, extra: dict | None = None) -> list[Path]:
    """RUN/reliability_<output>.png for each binary task's outputs with labels in `frame`; `extra`
    ({label: {output: scores}}) adds curves (the calibrated scores) beside the served ones."""
    from kzoo.plots import plot_reliability

    written = []
    for task in binary_tasks(tasks):
        rows = task.rows(frame)
        y = frame[task.label].to_numpy(dtype="float64")[rows]
        if len(y) == 0 or y.min() == y.max() or task.name not in served:
            continue
        curves = {"served" if not extra else "raw": (y, served[task.name][rows])}
        for label, scores in (extra or {}).items():
            if task.name in scores:
                curves[label] = (y, scores[task.name][rows])
        png = Path(folder) / f"reliability_{task.name}.png"
        plot_reliability(curves, png, f"{title} / {task.name}")
        written.append(png)
    return written


# ---------------------------------------------------------------------------------- calibrate

def task_names(spec, tasks: list[str] | None = None) -> list[str]:
    """The tasks to calibrate: `tasks`, each checked, else every calibratable task of the spec."""
    from kzoo.spec import calibration_problem, did_you_mean

    by_name = {t["name"]: t for t in spec.tasks}
    if tasks is None:
        names = [n for n, t in by_name.items() if calibration_problem(t) is None]
        if not names:
            raise SpecError([("tasks", "no binary task to calibrate (a plain binary task with 0/1 labels); tasks: "
                                       + ", ".join(f"{n} ({t.get('type', 'binary')})" for n, t in by_name.items()))],
                            spec.source)
        return names
    problems = []
    for i, name in enumerate(tasks):
        if name not in by_name:
            problems.append((f"--tasks[{i}]", f"'{name}' is not a task{did_you_mean(name, by_name)}"))
        elif (problem := calibration_problem(by_name[name])) is not None:
            problems.append((f"--tasks[{i}]", problem))
    if problems:
        raise SpecError(problems, spec.source)
    return list(tasks)


def raw_scores(spec, model, pre, frame, names: list[str], batch_size: int = 4096) -> dict:
    """{task: served probability} of the uncalibrated serving graph (what calibration is fitted to)."""
    from kzoo.graph import serving_model
    from kzoo.pipeline import make_dataset

    serving, used = serving_model(spec, model, names)
    ds = make_dataset(frame, spec, pre, batch_size, with_labels=False).map(lambda x: {n: x[n] for n in used})
    return {k: np.asarray(v).reshape(-1) for k, v in serving.predict(ds, verbose=0).items()}


def calibrate(run, method: str, tasks: list[str] | None = None, *, data=None, frames=None, spec=None,
              model=None, pre=None) -> dict:
    """Fit `method` ("platt" | "isotonic") per binary task on RUN's validation split, write
    RUN/calibration.json and reliability_<task>.png (raw and calibrated test scores), and put the
    calibrated test metrics into metrics.json (the uncalibrated ones under "uncalibrated").
    Returns calibration.json's content. Re-running refits from the raw model and replaces it.

    data: the run's data is re-read and re-split by default (run.json); pass the same data when the
        run was trained on a DataFrame. frames, spec, model, pre: what `kzoo train` already holds
        ((validation, test) frames), so that it does not reload them.
    """
    from kzoo.pipeline import load_for, split_frames
    from kzoo.tasks import tasks_of

    check_method(method)
    run = RunDir(run)
    spec = spec or run.spec()
    names = task_names(spec, tasks)
    if frames is None:
        source = data if data is not None else run.run_info().get("data")
        if source is None or source == "<DataFrame>":
            raise DataError(f"{run.path}: the run was trained on a DataFrame (run.json has no data to re-read); "
                            "pass the same data (calibrate(run, method, data=frame)) to re-split it")
        spec, frame = load_for(spec, source)
        frames = split_frames(spec, frame)[1:]
    validation, test = frames
    if len(validation) == 0:
        raise DataError(f"{run.path}: the run has no validation rows (train.split.validation is "
                        f"{spec.train.get('split', {}).get('validation', 0.1)}); calibration is fitted on the "
                        "validation split: retrain with a validation fraction such as 0.1")
    model = model or run.model()
    pre = pre or run.preprocessor()
    by_name = {t.name: t for t in tasks_of(spec)}
    raw = {"validation": raw_scores(spec, model, pre, validation, names),
           "test": raw_scores(spec, model, pre, test, names) if len(test) else {}}
    out = {"method": method, "fitted_on": "validation",
           "rows": {"validation": int(len(validation)), "test": int(len(test))}, "tasks": {}}
    after = {"validation": {}, "test": {}}
    for name in names:
        task = by_name[name]
        rows = task.rows(validation)
        y = validation[task.label].to_numpy(dtype="float64")[rows]
        if len(y) == 0 or y.min() == y.max():
            raise DataError(f"task '{name}': its validation rows hold {len(y)} labels of a single class; "
                            "calibration needs positives and negatives")
        params = fit(method, y, raw["validation"][name][rows])
        entry = {"params": params, "metrics": {}}
        for part, frame in (("validation", validation), ("test", test)):
            if name not in raw[part]:
                continue
            after[part][name] = transform(method, params, raw[part][name])
            entry["metrics"][part] = {"before": task.report(frame, raw[part])[name],
                                      "after": task.report(frame, after[part])[name]}
        out["tasks"][name] = entry
    (run.path / FILE).write_text(json.dumps(out, indent=2))
    shown = "test" if len(test) else "validation"
    reliability_pngs([by_name[n] for n in names], test if len(test) else validation, raw[shown], run.path,
                     spec.name, extra={method: after[shown]})
    _update_metrics(run, out, shown)
    return out


def _update_metrics(run: RunDir, calibration: dict, part: str) -> None:
    """metrics.json reports what the run serves: each calibrated task's calibrated test metrics, the
    uncalibrated ones kept under "uncalibrated"."""
    if part != "test" or not (run.path / "metrics.json").is_file():
        return
    result = run.metrics()
    for name, entry in calibration["tasks"].items():
        result[name] = {**entry["metrics"]["test"]["after"], "calibration": calibration["method"],
                        "uncalibrated": entry["metrics"]["test"]["before"]}
    run.write_metrics(result)


def summary(calibration: dict) -> str:
    """A table of ECE (equal-width / equal-mass), logloss and AUC before and after, per task and split."""
    lines = [f"{'task':<12} {'split':<10} {'':<7} {'ece':>8} {'ece_mass':>8} {'logloss':>8} {'auc':>8} "
             f"{'slope':>7}"]
    for name, entry in calibration["tasks"].items():
        for part, both in entry["metrics"].items():
            for when in ("before", "after"):
                m = both[when]
                lines.append(f"{name:<12} {part:<10} {when:<7} {m['ece']:>8.4f} {m['ece_quantile']:>8.4f} "
                             f"{m['logloss']:>8.4f} {m['auc']:>8.4f} {m['calibration_slope']:>7.3f}")
    return "\n".join(lines)
