"""Tasks: one class per task type, owning its head, loss, metrics, report and served output.

The graph of blocks produces representations (the backbone); a task turns one into

    head(x)              -> the logit (or raw value): Dense(1), or the block itself when it is 1 wide
    train_output(..)     -> what the training model outputs for the task (the logit; a conditional
                            task's log P(a, b))
    loss(), metrics()    -> a Keras loss on that output (kzoo.losses.LOSSES) and the metrics logged
    serve(logit, served) -> {output name: tensor} the export and `kzoo predict` return
    labels(frame), sample_weights(frame)  -> the task's label column and per-row weights (sample
                            weight column x label mask x negative downsampling), for tf.data
    report(frame, served) -> metrics.json's entries (kzoo.metrics, NumPy)

Task types: `binary`, `regression`, and a `binary` task with `"given": "<task>"` (a conditional
task, ESMM's chain: it learns P(b | a) and serves P(a)·P(b | a)). A new type (in-batch softmax
retrieval, KL to a teacher) is one more subclass registered with `@register_task`; the graph
builder and the trainer only talk to this interface.
"""

from __future__ import annotations

import keras

import math

import numpy as np

from kzoo import metrics as kmetrics
from kzoo.errors import DataError
from kzoo.losses import LOSSES, LogProbBCE, LogProbKL, loss_config, make_loss

_TASKS: dict[str, type] = {}
RETRIEVAL_KEYS = ("query", "item", "item_id", "temperature", "normalize", "logq", "remove_accidental_hits",
                  "hard_negatives", "uniform_negatives", "k")


def register_task(cls):
    """Class decorator: make a Task subclass available to specs as `"type": cls.kind`."""
    _TASKS[cls.kind] = cls
    return cls


def task_types() -> dict[str, type]:
    return dict(_TASKS)


@keras.saving.register_keras_serializable(package="kzoo")
class AUCOfLogProb(keras.metrics.AUC):
    """AUC of a model output that is a log-probability (a conditional task's joint)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, keras.ops.exp(y_pred), sample_weight)


@keras.saving.register_keras_serializable(package="kzoo")
class LoglossOfLogProb(keras.metrics.BinaryCrossentropy):
    """Logloss of a model output that is a log-probability (a conditional task's joint)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, keras.ops.exp(y_pred), sample_weight)


# Metric name -> factory(space) of a Keras metric, where `space` says what the model output is:
# "logit", "log_prob" (a conditional task's joint) or "value" (regression). One table for every
# task type; a task type lists the names it accepts.
METRICS = {
    "auc": lambda space: (AUCOfLogProb(name="auc", num_thresholds=1000) if space == "log_prob" else
                          keras.metrics.AUC(name="auc", num_thresholds=1000, from_logits=space == "logit")),
    "logloss": lambda space: (LoglossOfLogProb(name="logloss") if space == "log_prob" else
                              keras.metrics.BinaryCrossentropy(name="logloss", from_logits=space == "logit")),
    "mae": lambda space: keras.metrics.MeanAbsoluteError(name="mae"),
    "mse": lambda space: keras.metrics.MeanSquaredError(name="mse"),
    "rmse": lambda space: keras.metrics.RootMeanSquaredError(name="rmse"),
}


class Task:
    """Base of every task type. `config` is the spec's task entry; `label` its label column.

    Class attributes a subclass sets:
        kind: the spec's `type`.
        default_loss: loss name used when the spec gives none.
        losses: loss names this type accepts.
        default_metrics / metrics_allowed: metric names logged during fit.
        activation: Keras activation from logit to served output.
    """

    kind = ""
    served = True  # False: a training-only task (a regulariser), left out of exports and predictions
    default_loss = ""
    losses: tuple[str, ...] = ()
    default_metrics: tuple[str, ...] = ()
    metrics_allowed: tuple[str, ...] = ()
    activation = "linear"

    def __init__(self, config: dict, label: str):
        self.config = config
        self.name: str = config["name"]
        self.input: str = config.get("input", "")
        self.label = label
        self.weight = float(config.get("loss_weight", 1.0))
        self.parent: Task | None = None  # the task a conditional task is `given`

    @property
    def weighted(self) -> bool:
        """Whether rows carry weights other than 1 (sample weights, a label mask, downsampling)."""
        return any(k in self.config for k in ("sample_weight", "mask_by", "negative_sampling")) or \
            self.config.get("missing_label") == "mask"

    @property
    def inputs(self) -> list[str]:
        """The block outputs the head reads (a retrieval task reads a query and an item tower)."""
        return [self.input]

    def fit(self, spec, frames: dict, batch_size: int) -> None:
        """Learn what the task needs from the split frames before training ({"train", "validation",
        "test"}; a retrieval task collects its item corpus). Nothing for most types."""

    def augment(self, ds, spec, pre):
        """The training batches, after the cache, with what this task adds to each (a retrieval task's
        uniformly sampled negatives). Unchanged for most types."""
        return ds

    def save(self, folder) -> None:
        """Write what `fit` learned into a run dir (a retrieval task's items.parquet)."""

    def load(self, folder) -> None:
        """Read back what `save` wrote."""

    def graph_problems(self, spec, where: str) -> list[tuple[str, str]]:
        """(json path, message) for a checked Spec's graph this task cannot train (which features
        each retrieval tower reads)."""
        return []

    def keep_rows(self, frame):
        """Boolean mask of the rows this task trains on, or None for every row (a retrieval task
        trains on positive interactions only)."""
        return None

    def columns(self) -> list[str]:
        """Data columns besides labels and features this task reads (sample weight, mask)."""
        return [self.config[k] for k in ("sample_weight", "mask_by") if k in self.config]

    # ------------------------------------------------------------------ spec checks
    @classmethod
    def problems(cls, config: dict, where: str) -> list[tuple[str, str]]:
        """(json path, message) for a task entry this type cannot train."""
        out = []
        kind = loss_config(config.get("loss"), cls.default_loss)["type"]
        if kind not in cls.losses:
            path = f"{where}.loss" + (".type" if isinstance(config.get("loss"), dict) else "")
            out.append((path, f"a {cls.kind} task takes loss {' | '.join(cls.losses)}, not '{kind}'"))
        for key in [k for k in RETRIEVAL_KEYS if k in config and cls.kind not in ("retrieval", "contrastive")]:
            out.append((f"{where}.{key}", f"'{key}' applies to retrieval tasks, not to a {cls.kind} task"))
        if "report_by" in config and loss_config(config.get("loss"), cls.default_loss)["type"] != "kl":
            out.append((f"{where}.report_by", "'report_by' breaks down a distilled task's report (loss 'kl')"))
        for key in ("gauc_by", "given", "negative_sampling", "conditional_name"):
            if key in config and cls.kind != "binary":
                out.append((f"{where}.{key}", f"'{key}' applies to binary tasks, not to a {cls.kind} task"))
        if "conditional_name" in config and "given" not in config:
            out.append((f"{where}.conditional_name", "'conditional_name' names the output of a task with `given`"))
        for i, m in enumerate(config.get("metrics", [])):
            if m not in cls.metrics_allowed:
                out.append((f"{where}.metrics[{i}]", f"a {cls.kind} task logs {' | '.join(cls.metrics_allowed)}, "
                                                     f"not '{m}'"))
        return out

    @classmethod
    def metric_names_of(cls, config: dict) -> list[str]:
        return list(config.get("metrics", cls.default_metrics))

    # ------------------------------------------------------------------ graph
    def head(self, x, *, layer):
        """The task's logit from block output `x`. `layer(name, make)` gives the layer called
        `name`: a new one (`make()`) while building, the trained one when re-walking a model."""
        if len(x.shape) > 2:
            x = layer(f"{self.name}_flatten", keras.layers.Flatten)(x)
        if x.shape[-1] != 1:
            # A block of width 1 already is the logit (wide + deep sums, distilled logits).
            x = layer(f"{self.name}_logit", lambda: keras.layers.Dense(1, name=f"{self.name}_logit"))(x)
        # float32 out, whatever the compute dtype (mixed precision): losses and metrics need it.
        return layer(f"{self.name}_head", lambda: keras.layers.Activation(
            "linear", dtype="float32", name=f"{self.name}_head"))(x)

    def train_output(self, logit, logits: dict, outputs: dict):
        """What the training model outputs for this task (its loss and metrics read it). `logits`
        and `outputs` hold those of the tasks before it."""
        return logit

    def serve(self, logit, served: dict) -> dict:
        """{output name: tensor} served (export signature, `kzoo predict`) from the logit. `served`
        holds the outputs of the tasks before this one. Only parameter-free layers here: the
        serving graph is made after training."""
        return {self.name: keras.layers.Activation(self.activation, dtype="float32", name=self.name)(logit)}

    def output_names(self) -> list[str]:
        return [self.name]

    # ------------------------------------------------------------------ training
    def loss(self) -> keras.losses.Loss:
        return make_loss(self.config.get("loss"), self.default_loss)

    def metric_names(self) -> list[str]:
        return self.metric_names_of(self.config)

    output_space = "logit"

    def metrics(self) -> list:
        return [METRICS[m](self.output_space) for m in self.metric_names()]

    # ------------------------------------------------------------------ data
    def labels(self, frame) -> np.ndarray:
        """(n, 1) float32 labels; a masked row's missing label becomes 0 (its weight is 0)."""
        y = frame[self.label].to_numpy(dtype="float32")
        return np.nan_to_num(y, nan=0.0).reshape(-1, 1)

    def sample_weights(self, frame, seed: int = 0) -> np.ndarray:
        """(n,) float32 row weights: the `sample_weight` column, times 0 where `mask_by` is 0 or
        (with `missing_label: "mask"`) the label is missing, times the downsampling keep mask."""
        n = len(frame)
        w = frame[self.config["sample_weight"]].to_numpy(dtype="float32") if "sample_weight" in self.config \
            else np.ones(n, "float32")
        if "mask_by" in self.config:
            w = w * (frame[self.config["mask_by"]].to_numpy(dtype="float32") != 0)
        if self.config.get("missing_label") == "mask":
            w = w * ~np.isnan(frame[self.label].to_numpy(dtype="float32"))
        rate = self.config.get("negative_sampling")
        if rate is not None and rate < 1:
            # Per-task downsampling of negatives as a 0/1 mask: the other tasks keep those rows.
            keep = np.random.default_rng([seed, sum(map(ord, self.name))]).random(n) < rate
            w = w * (keep | (self.labels(frame).reshape(-1) != 0))
        return w.astype("float32")

    def check_labels(self, frame) -> None:
        """Raise DataError naming the column and first row of a label this task cannot learn from."""

    def rows(self, frame) -> np.ndarray:
        """Boolean mask of the rows this task is evaluated on (label present, not masked)."""
        keep = ~np.isnan(frame[self.label].to_numpy(dtype="float64"))
        if "mask_by" in self.config:
            keep &= frame[self.config["mask_by"]].to_numpy(dtype="float64") != 0
        return keep

    # ------------------------------------------------------------------ evaluation
    def report(self, frame, served: dict) -> dict:
        """{output name: metrics} for metrics.json, on the rows this task has labels for."""
        raise NotImplementedError


@register_task
class BinaryTask(Task):
    """A click / conversion: sigmoid of the logit, BCE by default, AUC and logloss logged."""

    kind = "binary"
    default_loss = "bce"
    losses = ("bce", "weighted_bce", "focal", "calibrated_bce", "kl")
    default_metrics = ("auc", "logloss")
    metrics_allowed = ("auc", "logloss")
    activation = "sigmoid"

    def serve(self, logit, served: dict) -> dict:
        """The probability; with `negative_sampling` r the score is corrected to the full population,
        p / (p + (1 - p) / r), which is sigmoid(logit + log r)."""
        rate = self.config.get("negative_sampling")
        if rate is not None and rate < 1:
            logit = keras.layers.Rescaling(1.0, offset=math.log(rate), dtype="float32",
                                           name=f"{self.name}_sampling_correction")(logit)
        return super().serve(logit, served)

    @property
    def soft(self) -> bool:
        """Trained on a teacher's probabilities (loss `kl`) rather than 0/1 labels."""
        return loss_config(self.config.get("loss"), self.default_loss)["type"] == "kl"

    def check_labels(self, frame) -> None:
        """0 or 1 (a probability in [0, 1] for a task distilled with `kl`); missing labels are the
        reader's business (refused unless the task masks them)."""
        if self.label not in frame:
            return
        y = frame[self.label].to_numpy(dtype="float64")
        ok = np.isnan(y) | ((y >= 0) & (y <= 1) if self.soft else (y == 0) | (y == 1))
        bad = np.flatnonzero(~ok)
        if len(bad):
            want = "a probability in [0, 1] (the task's loss is 'kl')" if self.soft else "0 or 1"
            raise DataError(f"column {self.label!r}, row {bad[0] + 1}: label {y[bad[0]]:g} is not {want}, as "
                            f"binary task {self.name!r} needs ({len(bad)} row{'s' if len(bad) > 1 else ''} in all); "
                            "map the labels to 0/1, or make the task `\"type\": \"regression\"`")

    def report(self, frame, served: dict) -> dict:
        """AUC, logloss, ECE, mean prediction and label; GAUC grouped by `gauc_by` when the task names it.
        Distilled to a teacher (loss `kl`): LogMAE, MAE and KL to the teacher's probabilities, also
        per value of the `report_by` columns."""
        if self.soft:
            return {self.name: soft_report(frame[self.label].to_numpy(dtype="float64"), served[self.name],
                                           frame, self.config.get("report_by", []), self.rows(frame))}
        rows = self.rows(frame)
        column = self.config.get("gauc_by")
        groups = frame[column].to_numpy()[rows] if column else None
        y = frame[self.label].to_numpy(dtype="float64")[rows]
        return {self.name: kmetrics.binary_report(y, served[self.name][rows], groups=groups)}


@register_task
class RegressionTask(Task):
    """A value (watch time, price, rating): the head's output itself, MSE by default."""

    kind = "regression"
    default_loss = "mse"
    losses = ("mse", "mae", "huber")
    default_metrics = ("mae", "mse", "rmse")
    metrics_allowed = ("mae", "mse", "rmse")
    activation = "linear"

    output_space = "value"

    def report(self, frame, served: dict) -> dict:
        rows = self.rows(frame)
        return {self.name: kmetrics.regression_report(frame[self.label].to_numpy(dtype="float64")[rows],
                                                      served[self.name][rows])}


class ConditionalTask(BinaryTask):
    """A binary task `given` another (ESMM, Ma et al. SIGIR 2018; Pinterest MTMD's GCTR given CTR).

    Its head learns z_b = logit P(b | a). It is trained on the *joint* label over every impression:
    the training output is log P(a, b) = log σ(z_a) + log σ(z_b) (z_a the parent's logit; for a
    parent that is itself conditional, its own log-joint), with BCE on that log-probability. It
    serves the joint P(a)·P(b | a) under its name and the conditional P(b | a) under
    `conditional_name` (default `<task>_given_<parent>`). Chains of any depth work.
    """

    losses = ("bce", "kl")
    output_space = "log_prob"

    @classmethod
    def problems(cls, config: dict, where: str) -> list[tuple[str, str]]:
        out = super().problems(config, where)
        if "negative_sampling" in config:
            out.append((f"{where}.negative_sampling", "a conditional task (`given`) is trained on the joint "
                                                      "label of every impression; downsample its parent instead"))
        return out

    @property
    def conditional_name(self) -> str:
        return self.config.get("conditional_name") or f"{self.name}_given_{self.config['given']}"

    def output_names(self) -> list[str]:
        return [self.name, self.conditional_name]

    def loss(self):
        return LogProbKL() if self.soft else LogProbBCE()

    def train_output(self, logit, logits: dict, outputs: dict):
        parent = self.parent
        if isinstance(parent, ConditionalTask):
            parent_log = outputs[parent.name]
        else:
            parent_log = keras.layers.Activation("log_sigmoid", dtype="float32",
                                                 name=f"{self.name}_parent_log_prob")(logits[parent.name])
        own = keras.layers.Activation("log_sigmoid", dtype="float32", name=f"{self.name}_log_prob")(logit)
        return keras.layers.Add(dtype="float32", name=f"{self.name}_log_joint")([parent_log, own])

    def serve(self, logit, served: dict) -> dict:
        conditional = keras.layers.Activation("sigmoid", dtype="float32", name=self.conditional_name)(logit)
        joint = keras.layers.Multiply(dtype="float32", name=self.name)([served[self.parent.name], conditional])
        return {self.name: joint, self.conditional_name: conditional}

    def report(self, frame, served: dict) -> dict:
        """The joint on every labelled impression; the conditional on the rows where the parent's
        label is 1 (e.g. CVR on clicks, as ESMM reports it)."""
        out = super().report(frame, served)
        if self.soft:
            return out
        given = self.rows(frame) & (frame[self.parent.label].to_numpy(dtype="float64") == 1)
        y = frame[self.label].to_numpy(dtype="float64")[given]
        if 0 < y.sum() < len(y):
            out[self.conditional_name] = kmetrics.binary_report(y, served[self.conditional_name][given])
        return out


def soft_report(teacher, student, frame, by: list, rows=None) -> dict:
    """LogMAE (kzoo.metrics.prob_log_mae), MAE and mean KL of `student` probabilities to `teacher`'s,
    their means and the row count; with `by` columns, the same per value (several joined by "|")."""
    rows = np.ones(len(teacher), bool) if rows is None else rows

    def one(mask):
        t, p = teacher[mask], np.asarray(student, dtype="float64")[mask]
        return {"logmae": kmetrics.prob_log_mae(t, p), "mae": float(np.mean(np.abs(t - p))),
                "kl": kmetrics.binary_kl(t, p), "mean_pred": float(p.mean()), "mean_teacher": float(t.mean()),
                "examples": int(mask.sum())}

    out = one(rows)
    if by:
        keys = frame[by].astype(str).agg("|".join, axis=1).to_numpy()
        out["by"] = {k: one(rows & (keys == k)) for k in sorted(set(keys[rows]))}
    return out


def task_class(kind: str, config: dict | None = None) -> type:
    if kind not in _TASKS:
        raise ValueError(f"unknown task type {kind!r}; known: {sorted(_TASKS)}")
    if config is not None and config.get("given") and kind == "binary":
        return ConditionalTask
    return _TASKS[kind]


def tasks_of(spec) -> list[Task]:
    """The Task objects of a checked Spec, parents before the tasks `given` them (else spec order)."""
    tasks = [task_class(t.get("type", "binary"), t)(t, spec.task_label(t)) for t in spec.tasks]
    by_name = {t.name: t for t in tasks}
    for t in tasks:
        if t.config.get("given"):
            t.parent = by_name[t.config["given"]]
    ordered: list[Task] = []

    def visit(t):
        if t not in ordered:
            if t.parent is not None:
                visit(t.parent)
            ordered.append(t)

    for t in tasks:
        visit(t)
    return ordered


assert all(set(cls.losses) <= set(LOSSES) for cls in _TASKS.values())
