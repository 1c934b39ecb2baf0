"""Task losses: one table, `LOSSES`, from a spec's `loss` entry to a Keras loss on logits.

Task heads produce logits (kzoo.tasks) and every loss here takes them (`from_logits`): the
sigmoid lives inside the loss, where log-sigmoid is computed stably, instead of a clipped
log of a probability. Keras' own losses are used where they exist (BCE, focal, MSE, MAE,
Huber); the two kzoo adds are registered for Keras serialization, so a `.keras` file with its
compile config reloads anywhere.
"""

from __future__ import annotations

import keras
from keras import ops


class LogitLoss(keras.losses.Loss):
    """Base: flattens labels and logits to float32 vectors; subclasses implement `per_example(y, z)`."""

    def call(self, y_true, y_pred):
        y = ops.cast(ops.reshape(y_true, (-1,)), "float32")
        z = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
        return self.per_example(y, z)

    def per_example(self, y, z):
        raise NotImplementedError


def _bce_terms(z):
    """(-log sigmoid(z), -log(1 - sigmoid(z))) = (softplus(-z), softplus(z)), stable for any z."""
    return ops.softplus(-z), ops.softplus(z)


@keras.saving.register_keras_serializable(package="kzoo")
class WeightedBCE(LogitLoss):
    """-(w·y·log p + (1-y)·log(1-p)), p = sigmoid(z): positives weighted by `pos_weight`."""

    def __init__(self, pos_weight: float = 1.0, name="weighted_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if pos_weight <= 0:
            raise ValueError(f"`pos_weight` must be > 0, received {pos_weight!r}")
        self.pos_weight = float(pos_weight)

    def per_example(self, y, z):
        neg_log_p, neg_log_not_p = _bce_terms(z)
        return self.pos_weight * y * neg_log_p + (1 - y) * neg_log_not_p

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable(package="kzoo")
class CalibratedBCE(LogitLoss):
    """BCE + λ·(mean p − mean y)² over the batch, p = sigmoid(z): keeps the average prediction calibrated."""

    def __init__(self, lam: float = 1.0, name="calibrated_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        if lam < 0:
            raise ValueError(f"`lambda` must be >= 0, received {lam!r}")
        self.lam = float(lam)

    def per_example(self, y, z):
        neg_log_p, neg_log_not_p = _bce_terms(z)
        bce = y * neg_log_p + (1 - y) * neg_log_not_p
        return bce + self.lam * ops.square(ops.mean(ops.sigmoid(z)) - ops.mean(y))

    def get_config(self):
        return {**super().get_config(), "lam": self.lam}


def _focal(cfg):
    alpha = cfg.get("alpha")
    return keras.losses.BinaryFocalCrossentropy(
        gamma=cfg.get("gamma", 2.0), alpha=alpha if alpha is not None else 0.25,
        apply_class_balancing=alpha is not None, from_logits=True, name="focal")


def _entropy(t):
    """Binary entropy of soft labels t (0·log 0 = 0)."""
    t = ops.clip(t, 0.0, 1.0)
    safe = lambda v: ops.where(v > 0, v * ops.log(ops.maximum(v, 1e-30)), 0.0)  # noqa: E731
    return -(safe(t) + safe(1.0 - t))


@keras.saving.register_keras_serializable(package="kzoo")
class BinaryKL(LogitLoss):
    """KL(t || p) = t·log(t/p) + (1-t)·log((1-t)/(1-p)), p = sigmoid(z): distillation to a teacher's
    probabilities t (soft labels). Equal to BCE with soft labels minus the teacher's entropy, so it
    has BCE's gradient and is 0 when the student matches the teacher."""

    def __init__(self, name="kl", **kwargs):
        super().__init__(name=name, **kwargs)

    def per_example(self, y, z):
        pos, neg = _bce_terms(z)
        return y * pos + (1 - y) * neg - _entropy(y)


# name -> (factory(cfg) -> keras loss on logits, the spec keys it reads besides "type")
LOSSES = {
    "bce": (lambda cfg: keras.losses.BinaryCrossentropy(from_logits=True, name="bce"), ()),
    "weighted_bce": (lambda cfg: WeightedBCE(pos_weight=cfg.get("pos_weight", 1.0)), ("pos_weight",)),
    "focal": (_focal, ("alpha", "gamma")),
    "calibrated_bce": (lambda cfg: CalibratedBCE(lam=cfg.get("lambda", 1.0)), ("lambda",)),
    "kl": (lambda cfg: BinaryKL(), ()),
    "mse": (lambda cfg: keras.losses.MeanSquaredError(name="mse"), ()),
    "mae": (lambda cfg: keras.losses.MeanAbsoluteError(name="mae"), ()),
    "huber": (lambda cfg: keras.losses.Huber(delta=cfg.get("delta", 1.0), name="huber"), ("delta",)),
}


def loss_config(spec_loss, default: str) -> dict:
    """A task's `loss` entry (a name, {"type": ..., params} or absent) as a dict with a "type"."""
    spec_loss = spec_loss or default
    return {"type": spec_loss} if isinstance(spec_loss, str) else dict(spec_loss)


def make_loss(spec_loss, default: str = "bce") -> keras.losses.Loss:
    """The Keras loss (on logits) for a task's `loss` entry."""
    cfg = loss_config(spec_loss, default)
    if cfg["type"] not in LOSSES:
        raise ValueError(f"unknown loss {cfg['type']!r}; known: {sorted(LOSSES)}")
    return LOSSES[cfg["type"]][0](cfg)


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    x = ops.minimum(x, -1e-7)
    return ops.where(x > -0.6931472, ops.log(-ops.expm1(x)), ops.log1p(-ops.exp(x)))


@keras.saving.register_keras_serializable(package="kzoo")
class LogProbBCE(LogitLoss):
    """BCE on a log-probability: -(y·lp + (1-y)·log(1 - e^lp)). The loss of a conditional task
    (kzoo.tasks, `given`), whose output is log P(a) + log P(b | a) = log P(a, b): the joint label is
    learned over every impression without forming the product of probabilities."""

    def __init__(self, name="bce_joint", **kwargs):
        super().__init__(name=name, **kwargs)

    def per_example(self, y, z):
        return -(y * ops.minimum(z, 0.0) + (1 - y) * log1mexp(z))


@keras.saving.register_keras_serializable(package="kzoo")
class LogProbKL(LogitLoss):
    """KL(t || p) on a log-probability lp = log p: a conditional task's joint distilled to a
    teacher's joint probability t (MTMD's constrained GCTR = P(GCTR | CTR)·P(CTR))."""

    def __init__(self, name="kl_joint", **kwargs):
        super().__init__(name=name, **kwargs)

    def per_example(self, y, z):
        return -(y * ops.minimum(z, 0.0) + (1 - y) * log1mexp(z)) - _entropy(y)
