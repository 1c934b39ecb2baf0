"""xDeepFM's Compressed Interaction Network: vector-wise explicit crosses of field embeddings."""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import Block, check_positive_int
from kzoo.blocks.registry import register_block


@register_block()
class CIN(Block):
    """Compressed Interaction Network of xDeepFM: vector-wise crosses of field embeddings.

    From the field embeddings X^0 (batch, m, D), layer k crosses each of the H_{k-1}
    rows of X^{k-1} with each of the m rows of X^0 (Hadamard product along D) and
    compresses the H_{k-1}·m products to H_k rows with a learned weight per pair:

        Z^k_{h,i,:}  = X^{k-1}_{h,:} ∘ X^0_{i,:}
        X^k_{h',:}   = act( sum_{h,i} W^{k,h'}_{h,i} Z^k_{h,i,:} + b^k_{h'} )

    Each X^k is sum-pooled over D and the pooled vectors of all layers are concatenated.
    With `split_half`, as in the reference implementation, every layer but the last
    sends its first H_k/2 rows to the next layer and its other H_k/2 rows to the output,
    so the output has sum_{k<L} H_k/2 + H_L columns (sum_k H_k without it).

    Args:
        layer_sizes: list of int. H_k, the number of feature maps of each layer.
            Defaults to `[128, 128]`.
        split_half: bool. Halve every layer but the last between the next layer and the
            output; those sizes must then be even. Defaults to `True`.
        activation: str. Keras activation applied to each X^k. Defaults to `"relu"`.

    Example:
    ```python
    CIN(layer_sizes=[8, 6])(np.ones((2, 5, 4))).shape  # (2, 10) = 8/2 + 6
    ```

    Reference: J. Lian, X. Zhou, F. Zhang, Z. Chen, X. Xie, G. Sun. "xDeepFM: Combining
    Explicit and Implicit Feature Interactions for Recommender Systems." KDD 2018.
    https://arxiv.org/abs/1803.05170
    """

    def __init__(self, layer_sizes: list | None = None, split_half: bool = True, activation: str = "relu",
                 **kwargs):
        super().__init__(**kwargs)
        layer_sizes = [128, 128] if layer_sizes is None else layer_sizes
        if not isinstance(layer_sizes, (list, tuple)) or not layer_sizes:
            raise ValueError(f"`layer_sizes` must be a non-empty list of positive ints, received {layer_sizes!r}")
        for size in layer_sizes:
            check_positive_int("layer_sizes[i]", size)
        if not isinstance(split_half, bool):
            raise ValueError(f"`split_half` must be true or false, received {split_half!r}")
        odd = [s for s in layer_sizes[:-1] if s % 2]
        if split_half and odd:
            raise ValueError(f"with `split_half`, every layer size but the last must be even, received "
                             f"layer_sizes={list(layer_sizes)} (odd: {odd}); make them even or set split_half=false")
        try:
            keras.activations.get(activation)
        except (ValueError, TypeError):
            raise ValueError(f"`activation` must be a Keras activation name, received {activation!r}") from None
        self.layer_sizes = list(layer_sizes)
        self.split_half = split_half
        self.activation = activation
        self.activation_fn = keras.activations.get(activation)

    def _is_split(self, k: int) -> bool:
        return self.split_half and k < len(self.layer_sizes) - 1

    def _halves(self, k: int) -> tuple[int, int]:
        """(rows fed to layer k+1, rows sent to the output) of layer k."""
        size = self.layer_sizes[k]
        return (size // 2, size // 2) if self._is_split(k) else (size, size)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f"CIN needs field embeddings (batch, fields, dim) with static fields and dim, "
                             f"received shape {tuple(input_shape)}")
        fields = input_shape[1]
        self.kernels, self.biases = [], []
        rows = fields
        for k, size in enumerate(self.layer_sizes):
            # Row h·m + i of kernel k is W^{k,:}_{h,i}, matching the (h, i) reshape in `call`.
            self.kernels.append(self.add_weight(name=f"kernel_{k}", shape=(rows * fields, size),
                                                initializer="glorot_uniform"))
            self.biases.append(self.add_weight(name=f"bias_{k}", shape=(size,), initializer="zeros"))
            rows = self._halves(k)[0]

    def call(self, inputs):
        x0 = inputs
        fields, dim = x0.shape[1], x0.shape[2]
        x, pooled = x0, []
        for k, (w, b) in enumerate(zip(self.kernels, self.biases)):
            # (batch, H_{k-1}, m, D) -> (batch, H_{k-1}·m, D): every row pair, then compress.
            z = ops.reshape(x[:, :, None, :] * x0[:, None, :, :], (-1, x.shape[1] * fields, dim))
            out = self.activation_fn(ops.einsum("bzd,zo->bod", z, w) + b[:, None])
            if self._is_split(k):
                half = self.layer_sizes[k] // 2
                x, direct = out[:, :half, :], out[:, half:, :]
            else:
                x, direct = out, out
            pooled.append(ops.sum(direct, axis=-1))
        return ops.concatenate(pooled, axis=-1) if len(pooled) > 1 else pooled[0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], sum(self._halves(k)[1] for k in range(len(self.layer_sizes))))

    def get_config(self):
        return {**super().get_config(), "layer_sizes": self.layer_sizes, "split_half": self.split_half,
                "activation": self.activation}
