"""Data-adaptive activations: Dice (DIN)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kzoo")
class Dice(keras.layers.Layer):
    """Dice, the data-adaptive activation of DIN: a PReLU whose rectifying point follows the data.

        p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + epsilon))
        f(s) = p(s) · s + (1 - p(s)) · alpha · s

    per unit (last axis), alpha a learned vector (initialised to 0, so Dice starts as a smooth
    ReLU-like gate). E[s] and Var[s] are the statistics of the batch over every axis but the
    last in training, and their moving averages at inference (a BatchNormalization without
    offset or scale). Inputs may be (batch, units) or (batch, length, units); `mask`, one axis
    short of the input, keeps padded positions out of the batch statistics.

    Args:
        epsilon: float. Added to the variance. Defaults to `1e-9` (the paper's 1e-8 order).
        momentum: float. Momentum of the moving statistics (Keras' convention: the weight of the old
            value). Defaults to `0.9`, torch's BatchNorm default (FuxiCTR's and the DIN authors'
            Dice): Keras' usual 0.99 forgets its initial statistics only after ~460 steps, so a
            model evaluated after one short epoch served Dice with wrong statistics.

    Example:
    ```python
    dice = Dice()
    dice(np.ones((2, 3, 8)), training=True).shape  # (2, 3, 8)
    ```

    Reference: G. Zhou et al. "Deep Interest Network for Click-Through Rate Prediction."
    KDD 2018. https://doi.org/10.1145/3219819.3219823
    """

    def __init__(self, epsilon: float = 1e-9, momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or epsilon <= 0:
            raise ValueError(f"`epsilon` must be a positive number, received {epsilon!r}")
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be a number in [0, 1), received {momentum!r}")
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)
        self.norm = keras.layers.BatchNormalization(center=False, scale=False, epsilon=self.epsilon,
                                                    momentum=self.momentum, name="norm", dtype=self.dtype_policy)
        self.supports_masking = True

    def build(self, input_shape):
        # The statistics see (positions, units) rows, so one Dice serves inputs of any rank.
        self.norm.build((None, input_shape[-1]))
        self.alpha = self.add_weight(name="alpha", shape=(input_shape[-1],), initializer="zeros")

    def call(self, inputs, training=None, mask=None):
        rows = ops.reshape(inputs, (-1, inputs.shape[-1]))
        if mask is not None:
            mask = ops.reshape(mask, (-1,))
        p = ops.reshape(ops.sigmoid(self.norm(rows, training=training, mask=mask)), ops.shape(inputs))
        return p * inputs + (1.0 - p) * ops.cast(self.alpha, inputs.dtype) * inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}
