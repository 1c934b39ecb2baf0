"""Tasks: one class per task type, owning its head, loss, metrics, report and served output.

The graph of blocks produces representations (the backbone); a task turns one into

    head(x)          -> the logit (or raw value): Dense(1), or the block itself when it is 1 wide
    loss()           -> a Keras loss on that logit (kzoo.losses.LOSSES), default per type
    metrics()        -> Keras metrics logged during fit (`METRICS`), on the logit
    serve(logit, ..) -> what the export and `kzoo predict` return: a probability, a value
    report(y, out, frame) -> the held-out numbers in metrics.json (kzoo.metrics, NumPy)

A new task type (in-batch softmax retrieval, KL to a teacher, a chain P(b|a)) is one more
subclass registered with `@register_task`; the graph builder and the trainer only talk to
this interface.
"""

from __future__ import annotations

import keras

from kzoo import metrics as kmetrics
from kzoo.losses import LOSSES, loss_config, make_loss

_TASKS: dict[str, type] = {}


def register_task(cls):
    """Class decorator: make a Task subclass available to specs as `"type": cls.kind`."""
    _TASKS[cls.kind] = cls
    return cls


def task_types() -> dict[str, type]:
    return dict(_TASKS)


# Metric name -> factory(from_logits) of a Keras metric. One table for every task type; a task
# type lists the names it accepts.
METRICS = {
    "auc": lambda logits: keras.metrics.AUC(name="auc", num_thresholds=1000, from_logits=logits),
    "logloss": lambda logits: keras.metrics.BinaryCrossentropy(name="logloss", from_logits=logits),
    "mae": lambda logits: keras.metrics.MeanAbsoluteError(name="mae"),
    "mse": lambda logits: keras.metrics.MeanSquaredError(name="mse"),
    "rmse": lambda logits: keras.metrics.RootMeanSquaredError(name="rmse"),
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
    default_loss = ""
    losses: tuple[str, ...] = ()
    default_metrics: tuple[str, ...] = ()
    metrics_allowed: tuple[str, ...] = ()
    activation = "linear"
    groups_for_gauc = False

    def __init__(self, config: dict, label: str):
        self.config = config
        self.name: str = config["name"]
        self.input: str = config["input"]
        self.label = label
        self.weight = float(config.get("loss_weight", 1.0))

    # ------------------------------------------------------------------ spec checks
    @classmethod
    def problems(cls, config: dict, where: str) -> list[tuple[str, str]]:
        """(json path, message) for a task entry this type cannot train."""
        out = []
        kind = loss_config(config.get("loss"), cls.default_loss)["type"]
        if kind not in cls.losses:
            path = f"{where}.loss" + (".type" if isinstance(config.get("loss"), dict) else "")
            out.append((path, f"a {cls.kind} task takes loss {' | '.join(cls.losses)}, not '{kind}'"))
        if "gauc_by" in config and not cls.groups_for_gauc:
            out.append((f"{where}.gauc_by", f"GAUC applies to binary tasks, not to a {cls.kind} task"))
        for i, m in enumerate(config.get("metrics", [])):
            if m not in cls.metrics_allowed:
                out.append((f"{where}.metrics[{i}]", f"a {cls.kind} task logs {' | '.join(cls.metrics_allowed)}, "
                                                     f"not '{m}'"))
        return out

    @classmethod
    def metric_names_of(cls, config: dict) -> list[str]:
        return list(config.get("metrics", cls.default_metrics))

    # ------------------------------------------------------------------ graph
    def head(self, x, layer):
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

    def serve(self, logit, served: dict):
        """The served output (export signature, `kzoo predict`) from the logit. `served` holds the
        outputs of the tasks before this one (a conditional task builds on them). Only
        parameter-free layers here: the serving graph is made after training."""
        return keras.layers.Activation(self.activation, dtype="float32", name=self.name)(logit)

    # ------------------------------------------------------------------ training
    def loss(self) -> keras.losses.Loss:
        return make_loss(self.config.get("loss"), self.default_loss)

    def metric_names(self) -> list[str]:
        return self.metric_names_of(self.config)

    def metrics(self) -> list:
        return [METRICS[m](True) for m in self.metric_names()]

    # ------------------------------------------------------------------ evaluation
    def report(self, y, served, frame=None) -> dict:
        """metrics.json's entry for this task: labels `y`, served outputs, the conformed data frame."""
        raise NotImplementedError


@register_task
class BinaryTask(Task):
    """A click / conversion: sigmoid of the logit, BCE by default, AUC and logloss logged."""

    kind = "binary"
    default_loss = "bce"
    losses = ("bce", "weighted_bce", "focal", "calibrated_bce")
    default_metrics = ("auc", "logloss")
    metrics_allowed = ("auc", "logloss")
    activation = "sigmoid"
    groups_for_gauc = True

    def report(self, y, served, frame=None) -> dict:
        """AUC, logloss, ECE, mean prediction and label; GAUC grouped by `gauc_by` when the task names it."""
        column = self.config.get("gauc_by")
        groups = frame[column].to_numpy() if column and frame is not None else None
        return kmetrics.binary_report(y, served, groups=groups)


@register_task
class RegressionTask(Task):
    """A value (watch time, price, rating): the head's output itself, MSE by default."""

    kind = "regression"
    default_loss = "mse"
    losses = ("mse", "mae", "huber")
    default_metrics = ("mae", "mse", "rmse")
    metrics_allowed = ("mae", "mse", "rmse")
    activation = "linear"

    def metrics(self) -> list:
        return [METRICS[m](False) for m in self.metric_names()]

    def report(self, y, served, frame=None) -> dict:
        return kmetrics.regression_report(y, served)


def task_class(kind: str) -> type:
    if kind not in _TASKS:
        raise ValueError(f"unknown task type {kind!r}; known: {sorted(_TASKS)}")
    return _TASKS[kind]


def tasks_of(spec) -> list[Task]:
    """The Task objects of a checked Spec, in spec order."""
    return [task_class(t.get("type", "binary"))(t, spec.task_label(t)) for t in spec.tasks]


assert all(set(cls.losses) <= set(LOSSES) for cls in _TASKS.values())
