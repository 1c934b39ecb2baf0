"""Training: data -> split -> statistics -> tf.data -> model.fit -> test metrics -> run dir.

A run dir holds everything needed to evaluate, export and serve:
    spec.json            the spec with its dataset schema resolved inline
    preprocessing.json   vocabularies and normalisation statistics (training split only)
    run.json             data argument, backend, seeds, epochs
    model.keras          the trained model (backend-agnostic)
    metrics.json         {"<task>": {...}, "examples": N, "seconds": T}
    history.csv          per-epoch training and validation metrics
    steps.jsonl          running training metrics every few steps, validation at epoch ends
    curves.png           the training curves (from steps.jsonl)
    backup/              BackupAndRestore state while training; removed once it ends
Running the same command again after a crash resumes from the last finished epoch.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import keras
import numpy as np

from kzoo import data as kdata
from kzoo import metrics as kmetrics
from kzoo.features import Preprocessor, fit_stats, raw_arrays
from kzoo.graph import build
from kzoo.losses import make_loss
from kzoo.optim import make_model_optimizer
from kzoo.spec import Spec, load_spec, task_metrics

DEFAULTS = {"batch_size": 512, "epochs": 1, "seed": 0}


def prepare_data(spec: Spec, data) -> tuple[Spec, object]:
    """Load `data`; when it names a bundled dataset (criteo, avazu, synthetic), train the spec's graph on
    that dataset's schema. Returns (spec, conformed DataFrame)."""
    frame, dataset_name = kdata.load(data)
    if dataset_name and spec.dataset.get("name") != dataset_name:
        print(f"kzoo: data is {dataset_name}; using its bundled feature schema", file=sys.stderr)
        spec = spec.with_dataset(kdata.bundled_dataset(dataset_name))
    return spec, kdata.conform(frame, spec.dataset)


def split_frames(spec: Spec, frame):
    split = spec.train.get("split", {})
    return kdata.split(frame, seed=split.get("seed", 0), validation=split.get("validation", 0.1),
                       test=split.get("test", 0.1))


def make_dataset(frame, spec: Spec, pre: Preprocessor, batch_size: int, with_labels: bool = True):
    """Batches of (model inputs, {task: label}); preprocessing runs in tf.data, then is cached."""
    import tensorflow as tf

    x = raw_arrays(frame, pre.raw)
    if with_labels:
        y = {t["name"]: frame[spec.task_label(t)].to_numpy(dtype="float32").reshape(-1, 1) for t in spec.tasks}
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.batch(batch_size).map(lambda a, b: (pre(a), b), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensor_slices(x).batch(batch_size).map(pre, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.cache().prefetch(tf.data.AUTOTUNE)


def compile_model(model: keras.Model, spec: Spec, steps_per_epoch: int | None = None) -> None:
    cfg = spec.train
    losses, weights, metrics = {}, {}, {}
    for t in spec.tasks:
        losses[t["name"]] = make_loss(t.get("loss"))
        weights[t["name"]] = t.get("loss_weight", 1.0)
        ms = []
        for m in task_metrics(t):
            ms.append({"auc": lambda: keras.metrics.AUC(name="auc", num_thresholds=1000),
                       "logloss": lambda: keras.metrics.BinaryCrossentropy(name="logloss"),
                       "mae": lambda: keras.metrics.MeanAbsoluteError(name="mae"),
                       "mse": lambda: keras.metrics.MeanSquaredError(name="mse")}[m]())
        metrics[t["name"]] = ms
    model.compile(optimizer=make_model_optimizer(model, cfg),
                  loss=losses, loss_weights=weights, metrics=metrics)


class StepLogger(keras.callbacks.Callback):
    """Running training metrics every `every` batches (and validation at epoch ends) into a JSON-lines
    file, for curves within an epoch."""

    def __init__(self, path: Path, every: int = 10, append: bool = False):
        super().__init__()
        self.path, self.every = Path(path), every
        self.step = 0
        if append and self.path.is_file():
            import pandas as pd

            self.step = int(pd.read_json(self.path, lines=True)["step"].max())
        elif self.path.exists():
            self.path.unlink()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0 and logs:
            self._write({"step": self.step, **{k: float(v) for k, v in logs.items()}})

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            self._write({"step": self.step, **{k: float(v) for k, v in logs.items()}})

    def _write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class _FailAfterEpoch(keras.callbacks.Callback):
    """Test hook: raise after epoch N (1-based), as a crash would, to exercise resumption."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise RuntimeError(f"simulated crash after epoch {self.epoch}")


def train(spec, data="synthetic", out=None, *, epochs=None, batch_size=None, seed=None,
          verbose="auto", fail_after_epoch: int | None = None) -> dict:
    """Train `spec` on `data` into run dir `out`; returns metrics.json's content."""
    spec = load_spec(spec)
    cfg = {**DEFAULTS, **spec.train}
    epochs = int(epochs or cfg["epochs"])
    batch_size = int(batch_size or cfg["batch_size"])
    seed = int(cfg["seed"] if seed is None else seed)
    out = Path(out or Path("runs") / spec.name)
    backup = out / "backup"
    resuming = backup.exists()
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        for name in ("history.csv", "metrics.json", "model.keras", "curves.png"):
            (out / name).unlink(missing_ok=True)

    start = time.time()
    keras.utils.set_random_seed(seed)
    spec, frame = prepare_data(spec, data)
    train_df, val_df, test_df = split_frames(spec, frame)
    stats = fit_stats(spec.features, train_df)
    used = spec.used_features()
    (out / "spec.json").write_text(spec.to_json())
    (out / "preprocessing.json").write_text(json.dumps({"used": used, "stats": stats}))
    (out / "run.json").write_text(json.dumps({
        "data": data if isinstance(data, str) else "<DataFrame>", "backend": keras.backend.backend(),
        "seed": seed, "epochs": epochs, "batch_size": batch_size, "rows": {"train": len(train_df),
        "validation": len(val_df), "test": len(test_df)}}, indent=2))
    print(f"kzoo: {spec.name} on {len(train_df)} train / {len(val_df)} validation / {len(test_df)} test rows "
          f"[{keras.backend.backend()}] -> {out}" + (" (resuming from backup)" if resuming else ""), file=sys.stderr)

    pre = Preprocessor(spec.features, stats, used)
    train_ds = make_dataset(train_df, spec, pre, batch_size)
    val_ds = make_dataset(val_df, spec, pre, batch_size) if len(val_df) else None
    model = build(spec, stats)
    compile_model(model, spec)

    callbacks = [keras.callbacks.BackupAndRestore(str(backup)),
                 keras.callbacks.CSVLogger(str(out / "history.csv"), append=resuming),
                 StepLogger(out / "steps.jsonl", every=max(1, len(train_df) // batch_size // 20), append=resuming)]
    stop = spec.train.get("early_stopping")
    if stop is not None and val_ds is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=stop.get("monitor", "val_loss"), patience=stop.get("patience", 1),
            mode=stop.get("mode", "auto"), restore_best_weights=True))
    if fail_after_epoch:
        callbacks.append(_FailAfterEpoch(fail_after_epoch))
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    fit_start = time.time()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=verbose,
                        shuffle=False)
    fit_seconds = time.time() - fit_start
    epochs_run = len(history.epoch)

    model.save(out / "model.keras")
    result = evaluate_frame(model, spec, pre, test_df, batch_size)
    result["seconds"] = round(time.time() - start, 2)
    result["params"] = int(model.count_params())
    # Wall time of this process's fit() (first-step compilation included; validation included).
    result["fit_seconds"] = round(fit_seconds, 2)
    result["train_examples_per_s"] = round(len(train_df) * epochs_run / fit_seconds, 1) if epochs_run else None
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    plot_curves(out / "steps.jsonl", out / "curves.png", spec)
    shutil.rmtree(backup, ignore_errors=True)
    return result


def predict_frame(model, spec: Spec, pre: Preprocessor, frame, batch_size: int = 4096) -> dict[str, np.ndarray]:
    ds = make_dataset(frame, spec, pre, batch_size, with_labels=False)
    out = model.predict(ds, verbose=0)
    return {k: np.asarray(v).reshape(-1) for k, v in out.items()}


def evaluate_frame(model, spec: Spec, pre: Preprocessor, frame, batch_size: int = 4096) -> dict:
    preds = predict_frame(model, spec, pre, frame, batch_size)
    result: dict = {}
    for t in spec.tasks:
        y = frame[spec.task_label(t)].to_numpy(dtype="float64")
        if t.get("type", "binary") == "binary":
            result[t["name"]] = kmetrics.binary_report(y, preds[t["name"]])
        else:
            result[t["name"]] = kmetrics.regression_report(y, preds[t["name"]])
    result["examples"] = int(len(frame))
    return result


def load_run(run) -> tuple[Spec, dict, keras.Model]:
    run = Path(run)
    for name in ("spec.json", "preprocessing.json", "model.keras"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run} is not a finished kzoo run: {name} is missing "
                                    "(train it with `kzoo train SPEC --out RUN`)")
    spec = load_spec(run / "spec.json")
    prep = json.loads((run / "preprocessing.json").read_text())
    model = keras.models.load_model(run / "model.keras", compile=False)
    return spec, prep, model


def evaluate(run, data=None) -> dict:
    """Metrics of a run: on its own test split, or on every row of `data`."""
    spec, prep, model = load_run(run)
    pre = Preprocessor(spec.features, prep["stats"], prep["used"])
    if data is None:
        data = json.loads((Path(run) / "run.json").read_text())["data"]
        spec, frame = prepare_data(spec, data)
        frame = split_frames(spec, frame)[2]
    else:
        spec, frame = prepare_data(spec, data)
    return evaluate_frame(model, spec, pre, frame)


def plot_curves(steps_jsonl: Path, png: Path, spec: Spec) -> None:
    """Loss and metrics against training steps: running training values, validation at epoch ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if not steps_jsonl.is_file():
        return
    steps = pd.read_json(steps_jsonl, lines=True)
    panels = [c for c in steps.columns if c != "step" and not c.startswith("val_") and c != "learning_rate"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    train = steps.dropna(subset=panels, how="all")
    val = steps[[c for c in steps.columns if c.startswith("val_")] + ["step"]].dropna()
    for ax, col in zip(axes[0], panels):
        ax.plot(train["step"], train[col], "-", label="train (running mean in epoch)")
        if f"val_{col}" in val:
            ax.plot(val["step"], val[f"val_{col}"], "s", markersize=7, label="validation (epoch end)")
        ax.set_title(col)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{spec.name}: training curves")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
