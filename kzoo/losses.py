"""Task losses. One base class holds the clipping and reduction; each loss is one hook.

All take probabilities (the task heads end in a sigmoid) and are registered for Keras
serialization, so a `.keras` file with its compile config reloads anywhere.
"""

from __future__ import annotations

import keras
from keras import ops

EPS = 1e-7


class ProbabilityLoss(keras.losses.Loss):
    """Base: clips p to [eps, 1-eps]; subclasses implement `per_example(y, p)` (or `call`)."""

    def call(self, y_true, y_pred):
        y = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        p = ops.clip(ops.cast(ops.reshape(y_pred, (-1,)), "float32"), EPS, 1 - EPS)
        return self.per_example(y, p)

    def per_example(self, y, p):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package="kzoo")
class WeightedBCE(ProbabilityLoss):
    """-(w·y·log p + (1-y)·log(1-p)): positives weighted by `pos_weight` (class imbalance)."""

    def __init__(self, pos_weight: float = 1.0, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if pos_weight <= 0:
            raise ValueError(f"`pos_weight` must be > 0, received {pos_weight!r}")
        self.pos_weight = float(pos_weight)

    def per_example(self, y, p):
        return -(self.pos_weight * y * ops.log(p) + (1 - y) * ops.log(1 - p))

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable(package="kzoo")
class CalibratedBCE(ProbabilityLoss):
    """BCE + λ·(mean ŷ − mean y)² over the batch: keeps the average prediction calibrated."""

    def __init__(self, lam: float = 1.0, name="calibrated_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if lam < 0:
            raise ValueError(f"`lambda` must be >= 0, received {lam!r}")
        self.lam = float(lam)

    def per_example(self, y, p):
        bce = -(y * ops.log(p) + (1 - y) * ops.log(1 - p))
        return bce + self.lam * ops.square(ops.mean(p) - ops.mean(y))

    def get_config(self):
        return {**super().get_config(), "lam": self.lam}


def make_loss(spec_loss):
    """A Keras loss for a task's `loss` entry (a name or {"type": ..., params})."""
    spec_loss = spec_loss or "bce"
    cfg = {"type": spec_loss} if isinstance(spec_loss, str) else dict(spec_loss)
    kind = cfg["type"]
    if kind == "bce":
        return keras.losses.BinaryCrossentropy(name="bce")
    if kind == "weighted_bce":
        return WeightedBCE(pos_weight=cfg.get("pos_weight", 1.0))
    if kind == "focal":
        alpha = cfg.get("alpha")
        return keras.losses.BinaryFocalCrossentropy(
            gamma=cfg.get("gamma", 2.0), alpha=alpha if alpha is not None else 0.25,
            apply_class_balancing=alpha is not None, name="focal")
    if kind == "calibrated_bce":
        return CalibratedBCE(lam=cfg.get("lambda", 1.0))
    if kind == "mse":
        return keras.losses.MeanSquaredError(name="mse")
    raise ValueError(f"unknown loss {kind!r}")
