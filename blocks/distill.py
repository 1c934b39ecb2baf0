"""Distillation blocks (Rocket Launching, Zhou et al., AAAI 2018).

Both take [teacher, student] and return the student unchanged while adding a loss; the
teacher side is wrapped in `stop_gradient`, so the booster (teacher) is not pulled towards
the light net (the paper's gradient block). They are `loss_only`: when a model is exported,
the graph is rebuilt without them, so the served light net carries no booster weights.
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import Block, flat_width, flatten_2d
from kzoo.blocks.registry import register_block


class LossOnlyBlock(Block):
    arity = (2, 2)
    loss_only = True

    def __init__(self, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"`weight` must be a number >= 0, received {weight!r}")
        self.weight = float(weight)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


@register_block()
class Hint(LossOnlyBlock):
    """Hint (feature) distillation: weight · d(stop_gradient(h_teacher), P h_student).

    d is the mean squared error (`kind="l2"`) or 1 − cosine similarity (`kind="cosine"`);
    P is a learned linear map when the widths differ (FitNets' regressor), identity otherwise.

    Args:
        kind: str. `"l2"` or `"cosine"`. Defaults to `"l2"`.
        weight: float. Loss weight λ. Defaults to `1.0`.
    """

    def __init__(self, kind: str = "l2", weight: float = 1.0, **kwargs):
        super().__init__(weight=weight, **kwargs)
        if kind not in ("l2", "cosine"):
            raise ValueError(f"`kind` must be 'l2' or 'cosine', received {kind!r}")
        self.kind = kind
        self.projection = None

    def build(self, input_shape):
        teacher, student = input_shape
        t_width, s_width = flat_width(teacher), flat_width(student)
        if t_width != s_width:
            self.projection = keras.layers.Dense(t_width, use_bias=False, name="regressor")
            self.projection.build((None, s_width))

    def call(self, inputs):
        teacher, student = inputs
        t = ops.stop_gradient(flatten_2d(teacher))
        s = flatten_2d(student)
        if self.projection is not None:
            s = self.projection(s)
        if self.kind == "l2":
            loss = ops.mean(ops.square(t - s))
        else:
            # sqrt(|x|² + eps), not norm(x) + eps: the gradient of norm is NaN at a zero vector
            # (an all-dead ReLU layer), which would poison the whole step.
            t_n = t * ops.rsqrt(ops.sum(ops.square(t), axis=-1, keepdims=True) + 1e-12)
            s_n = s * ops.rsqrt(ops.sum(ops.square(s), axis=-1, keepdims=True) + 1e-12)
            loss = ops.mean(1.0 - ops.sum(t_n * s_n, axis=-1))
        self.add_loss(self.weight * loss)
        return student

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


@register_block()
class SoftTarget(LossOnlyBlock):
    """Soft-target loss on logits: weight · mean((stop_gradient(z_teacher) − z_student)²).

    Rocket Launching's logit matching (the high-temperature limit of KD's soft targets).

    Args:
        weight: float. Loss weight λ. Defaults to `1.0`.
    """

    def build(self, input_shape):
        teacher, student = input_shape
        if flat_width(teacher) != flat_width(student):
            raise ValueError(f"SoftTarget needs logits of one width, received {teacher} and {student}")

    def call(self, inputs):
        teacher, student = inputs
        # Flattened as `build` measured them: (batch, 1) minus (batch,) would otherwise broadcast
        # to a (batch, batch) matrix and give a wrong loss without an error.
        t = ops.stop_gradient(flatten_2d(teacher))
        self.add_loss(self.weight * ops.mean(ops.square(t - flatten_2d(student))))
        return student


