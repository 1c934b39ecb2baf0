"""DCN (v1) cross network: explicit feature crosses through one weight vector per layer."""

from __future__ import annotations

from keras import ops

from kzoo.blocks.base import Block, check_positive_int, flat_width, flatten_2d
from kzoo.blocks.registry import register_block


@register_block()
class CrossNet(Block):
    """DCN (v1) cross network: bounded-degree crosses with O(d) parameters per layer.

    Each layer crosses the input x_0 with the current x_l through one weight vector:

        x_{l+1} = x_0 · (w_lᵀ x_l) + b_l + x_l,   w_l, b_l ∈ R^d

    so layer l adds crosses of degree l + 2. Inputs of rank > 2 are flattened to
    (batch, d); the output is (batch, d). The matrix form (DCN-V2) is `CrossNetV2`.

    Args:
        layers: int. Number of cross layers. Defaults to `3`.

    Example:
    ```python
    CrossNet(layers=2)(np.ones((4, 3, 8))).shape  # (4, 24)
    ```

    Reference: R. Wang, B. Fu, G. Fu, M. Wang. "Deep & Cross Network for Ad Click
    Predictions." ADKDD 2017. https://arxiv.org/abs/1708.05123
    """

    def __init__(self, layers: int = 3, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("layers", layers)
        self.num_layers = layers

    def build(self, input_shape):
        width = flat_width(input_shape)
        self.kernels = [self.add_weight(name=f"kernel_{i}", shape=(width,), initializer="glorot_uniform")
                        for i in range(self.num_layers)]
        self.biases = [self.add_weight(name=f"bias_{i}", shape=(width,), initializer="zeros")
                       for i in range(self.num_layers)]

    def call(self, inputs):
        x0 = flatten_2d(inputs)
        x = x0
        for w, b in zip(self.kernels, self.biases):
            # (batch, 1): the scalar w_lᵀ x_l of each example, broadcast over x_0.
            x = x0 * ops.sum(x * w, axis=-1, keepdims=True) + b + x
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], flat_width(input_shape))

    def get_config(self):
        return {**super().get_config(), "layers": self.num_layers}
