"""Optimizers and learning-rate schedules from a spec's `train` section."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kzoo")
class WarmupExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(t) = base · t/warmup for t < warmup, then base · rate^((t − warmup)/decay_steps)."""

    def __init__(self, base: float, warmup_steps: int = 0, decay_steps: int = 1000, decay_rate: float = 1.0):
        self.base = float(base)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        ramp = self.base * ops.minimum((step + 1.0) / warm, 1.0)
        decay = ops.power(self.decay_rate, ops.maximum(step - self.warmup_steps, 0.0) / self.decay_steps)
        return ramp * decay if self.warmup_steps else self.base * decay

    def get_config(self):
        return {"base": self.base, "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate}


_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adagrad": keras.optimizers.Adagrad,
    "sgd": keras.optimizers.SGD,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
}


def make_optimizer(cfg: dict | None, schedule: dict | None = None) -> keras.optimizers.Optimizer:
    cfg = dict(cfg or {"type": "adam"})
    kind = cfg.pop("type")
    lr = cfg.pop("learning_rate", 0.001)
    if schedule:
        lr = WarmupExponentialDecay(lr, **schedule)
    return _OPTIMIZERS[kind](learning_rate=lr, **cfg)
