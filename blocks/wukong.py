"""Wukong: stacked factorization-machine and linear-compress blocks over embeddings."""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import Block, check_fraction, check_positive_int
from kzoo.blocks.registry import register_block

# PyTorch's LayerNorm default, as in the reference implementation.
LN_EPSILON = 1e-5


def _check_wukong_args(num_fmb, num_lcb, fmb_rank, fmb_units, dropout) -> None:
    check_positive_int("num_fmb", num_fmb)
    check_positive_int("num_lcb", num_lcb)
    check_positive_int("fmb_rank", fmb_rank)
    if not isinstance(fmb_units, (list, tuple)):
        raise ValueError(f"`fmb_units` must be a list of positive ints (may be empty), received {fmb_units!r}")
    for u in fmb_units:
        check_positive_int("fmb_units[i]", u)
    check_fraction("dropout", dropout)


def _embedding_shape(block: str, input_shape) -> tuple[int, int]:
    if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
        raise ValueError(f"{block} needs embeddings (batch, n, d) with static n and d, "
                         f"received shape {tuple(input_shape)}")
    return input_shape[1], input_shape[2]


@register_block()
class WuKongLayer(Block):
    """One Wukong layer: a Factorization Machine Block and a Linear Compress Block side by side.

    For n embeddings X (n × d) in, with learned matrices Y (n × k), W_lcb (n × num_lcb):

        FMB(X) = reshape(MLP(LN(flatten(X (Xᵀ Y)))))      -> num_fmb embeddings of size d
        LCB(X) = W_lcbᵀ X                                   -> num_lcb embeddings of size d
        out    = LN(concat(FMB(X), LCB(X)) + W_resᵀ X)      -> (num_fmb + num_lcb) × d

    X (Xᵀ Y) is the "optimized FM": the n × n dot-product matrix X Xᵀ projected to rank k
    in O(n·d·k). The MLP has ReLU hidden layers `fmb_units` and a linear output of
    num_fmb · d units. W_res is the identity when n = num_fmb + num_lcb, else a learned
    n × (num_fmb + num_lcb) linear compress. The last LN normalises each embedding.

    Args:
        num_fmb: int. Embeddings produced by the FMB.
        num_lcb: int. Embeddings produced by the LCB.
        fmb_rank: int. k, the rank of the optimized FM's projection.
        fmb_units: list of int. Hidden widths of the FMB's MLP (may be empty).
        dropout: float. Dropout after each hidden layer of the MLP. Defaults to `0.0`.

    Example:
    ```python
    WuKongLayer(num_fmb=3, num_lcb=2, fmb_rank=2, fmb_units=[16])(np.ones((2, 4, 8))).shape  # (2, 5, 8)
    ```

    Reference: B. Zhang, L. Luo, Y. Chen, et al. "Wukong: Towards a Scaling Law for
    Large-Scale Recommendation." ICML 2024. https://arxiv.org/abs/2403.02545
    """

    def __init__(self, num_fmb: int, num_lcb: int, fmb_rank: int, fmb_units: list, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        _check_wukong_args(num_fmb, num_lcb, fmb_rank, fmb_units, dropout)
        self.num_fmb = num_fmb
        self.num_lcb = num_lcb
        self.fmb_rank = fmb_rank
        self.fmb_units = list(fmb_units)
        self.dropout = float(dropout)
        self.fmb_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="fmb_norm")
        self.fmb_hidden = [keras.layers.Dense(u, activation="relu", name=f"fmb_dense_{i}")
                           for i, u in enumerate(self.fmb_units)]
        self.fmb_dropout = [keras.layers.Dropout(self.dropout, name=f"fmb_dropout_{i}")
                            for i in range(len(self.fmb_units))] if self.dropout else []
        self.output_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="output_norm")

    def build(self, input_shape):
        n, d = _embedding_shape("WuKongLayer", input_shape)
        n_out = self.num_fmb + self.num_lcb
        self.fmb_projection = self.add_weight(name="fmb_projection", shape=(n, self.fmb_rank),
                                              initializer="glorot_uniform")
        self.lcb_kernel = self.add_weight(name="lcb_kernel", shape=(n, self.num_lcb), initializer="glorot_uniform")
        self.residual_kernel = (
            self.add_weight(name="residual_kernel", shape=(n, n_out), initializer="glorot_uniform")
            if n != n_out else None
        )
        self.fmb_norm.build((None, n * self.fmb_rank))
        width = n * self.fmb_rank
        for dense in self.fmb_hidden:
            dense.build((None, width))
            width = dense.units
        self.fmb_output = keras.layers.Dense(self.num_fmb * d, name="fmb_output")
        self.fmb_output.build((None, width))
        self.output_norm.build((None, n_out, d))

    def _fmb(self, x, training):
        n, d = x.shape[1], x.shape[2]
        # X (Xᵀ Y): (batch, d, k) first, so the n × n matrix X Xᵀ is never formed.
        interactions = ops.matmul(x, ops.einsum("bnd,nk->bdk", x, self.fmb_projection))
        h = self.fmb_norm(ops.reshape(interactions, (-1, n * self.fmb_rank)))
        for i, dense in enumerate(self.fmb_hidden):
            h = dense(h)
            if self.fmb_dropout:
                h = self.fmb_dropout[i](h, training=training)
        return ops.reshape(self.fmb_output(h), (-1, self.num_fmb, d))

    def call(self, inputs, training=None):
        x = inputs
        lcb = ops.einsum("bnd,nl->bld", x, self.lcb_kernel)
        residual = x if self.residual_kernel is None else ops.einsum("bnd,no->bod", x, self.residual_kernel)
        return self.output_norm(ops.concatenate([self._fmb(x, training), lcb], axis=1) + residual)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_fmb + self.num_lcb, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "num_fmb": self.num_fmb, "num_lcb": self.num_lcb,
                "fmb_rank": self.fmb_rank, "fmb_units": self.fmb_units, "dropout": self.dropout}


@register_block()
class WuKong(Block):
    """Wukong interaction stack: `layers` WuKongLayers, X_{i+1} = WuKongLayer_i(X_i).

    Each layer maps its embeddings to num_fmb + num_lcb embeddings of the same size d
    (see `WuKongLayer` for the formula), so layer i captures interactions of order up
    to 2^i. Input (batch, n, d), output (batch, num_fmb + num_lcb, d); a spec adds the
    MLP and the head on top.

    Args:
        layers: int. Number of Wukong layers.
        num_fmb: int. Embeddings produced by each layer's FMB.
        num_lcb: int. Embeddings produced by each layer's LCB.
        fmb_rank: int. Rank k of the optimized FM projection.
        fmb_units: list of int. Hidden widths of each FMB's MLP (may be empty).
        dropout: float. Dropout inside the FMB MLPs. Defaults to `0.0`.

    Example:
    ```python
    WuKong(layers=2, num_fmb=3, num_lcb=2, fmb_rank=2, fmb_units=[16])(np.ones((2, 4, 8))).shape  # (2, 5, 8)
    ```

    Reference: B. Zhang, L. Luo, Y. Chen, et al. "Wukong: Towards a Scaling Law for
    Large-Scale Recommendation." ICML 2024. https://arxiv.org/abs/2403.02545
    """

    def __init__(self, layers: int, num_fmb: int, num_lcb: int, fmb_rank: int, fmb_units: list,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("layers", layers)
        _check_wukong_args(num_fmb, num_lcb, fmb_rank, fmb_units, dropout)
        self.num_layers = layers
        self.num_fmb = num_fmb
        self.num_lcb = num_lcb
        self.fmb_rank = fmb_rank
        self.fmb_units = list(fmb_units)
        self.dropout = float(dropout)
        self.wukong_layers = [
            WuKongLayer(num_fmb, num_lcb, fmb_rank, self.fmb_units, dropout=self.dropout, name=f"wukong_{i}")
            for i in range(layers)
        ]

    def build(self, input_shape):
        _embedding_shape("WuKong", input_shape)
        shape = tuple(input_shape)
        for layer in self.wukong_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = inputs
        for layer in self.wukong_layers:
            x = layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_fmb + self.num_lcb, input_shape[2])

    def get_config(self):
        return {**super().get_config(), "layers": self.num_layers, "num_fmb": self.num_fmb,
                "num_lcb": self.num_lcb, "fmb_rank": self.fmb_rank, "fmb_units": self.fmb_units,
                "dropout": self.dropout}
