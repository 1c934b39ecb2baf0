"""MaskNet: instance-guided masks that multiply feature embeddings or hidden layers."""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import Block, as_list, check_fraction, check_positive_int, flat_width, flatten_2d, shape_list
from kzoo.blocks.registry import register_block

# PyTorch's LayerNorm default, as in the reference implementations.
LN_EPSILON = 1e-5


def _check_mask_args(hidden_units, reduction_ratio, aggregation_dim, dropout) -> None:
    check_positive_int("hidden_units", hidden_units)
    if not isinstance(reduction_ratio, (int, float)) or isinstance(reduction_ratio, bool) or reduction_ratio <= 0:
        raise ValueError(f"`reduction_ratio` must be a positive number, received {reduction_ratio!r}")
    check_positive_int("aggregation_dim", aggregation_dim, allow_none=True)
    check_fraction("dropout", dropout)


@register_block()
class MaskBlock(Block):
    """MaskNet's MaskBlock: an instance-guided mask times a layer, then a normalised layer.

    The mask comes from the flattened feature embedding V_emb through a two-layer MLP
    (aggregation then projection back to the width of what it masks):

        V_mask = W_2 · ReLU(W_1 · V_emb + b_1) + b_2

    With one input, the embedding (batch, fields, k) or (batch, d), the mask multiplies
    the layer-normalised embedding, each field normalised on its own (paper eq. 7):

        V_out = ReLU(LN(W_h (V_mask ⊙ LN_emb(V_emb)))),  LN_emb = concat(LN(e_1), ..., LN(e_f))

    With two inputs [embedding, hidden], the mask (from the embedding) multiplies the
    hidden layer, e.g. the previous MaskBlock's output in a serial MaskNet:

        V_out = ReLU(LN(W_h (V_mask ⊙ V_hidden)))

    W_h has no bias (the LayerNorm that follows would cancel it). Output (batch, hidden_units).

    Args:
        hidden_units: int. Width of W_h, the block's output size.
        reduction_ratio: float. Aggregation width of the mask MLP as a multiple of the
            flattened embedding width: int(reduction_ratio * d). Defaults to `1.0`.
        aggregation_dim: int or None. The aggregation width itself; overrides
            `reduction_ratio`. Defaults to None.
        dropout: float. Dropout rate on the output. Defaults to `0.0`.

    Example:
    ```python
    MaskBlock(hidden_units=16)(np.ones((2, 4, 8))).shape  # (2, 16)
    MaskBlock(hidden_units=16)([np.ones((2, 4, 8)), np.ones((2, 32))]).shape  # (2, 16)
    ```

    Reference: Z. Wang, Q. She, J. Zhang. "MaskNet: Introducing Feature-Wise
    Multiplication to CTR Ranking Models by Instance-Guided Mask." DLP-KDD 2021.
    https://arxiv.org/abs/2102.07619
    """

    arity = (1, 2)

    def __init__(self, hidden_units: int, reduction_ratio: float = 1.0, aggregation_dim: int | None = None,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        _check_mask_args(hidden_units, reduction_ratio, aggregation_dim, dropout)
        self.hidden_units = hidden_units
        self.reduction_ratio = float(reduction_ratio)
        self.aggregation_dim = aggregation_dim
        self.dropout = float(dropout)
        self.hidden = keras.layers.Dense(hidden_units, use_bias=False, name="hidden")
        self.hidden_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="hidden_norm")
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout") if self.dropout else None

    def build(self, input_shape):
        shapes = shape_list(input_shape)
        if len(shapes) not in (1, 2):
            raise ValueError(f"MaskBlock takes [embedding] or [embedding, hidden], received {len(shapes)} inputs")
        emb_shape = shapes[0]
        if len(emb_shape) < 2 or any(d is None for d in emb_shape[1:]):
            raise ValueError(f"MaskBlock needs an embedding of static shape (batch, ...), received {emb_shape}")
        emb_width = flat_width(emb_shape)
        self.embedding_form = len(shapes) == 1
        masked_width = emb_width if self.embedding_form else flat_width(shapes[1])
        aggregation = self.aggregation_dim or int(self.reduction_ratio * emb_width)
        if aggregation < 1:
            raise ValueError(f"MaskBlock: reduction_ratio={self.reduction_ratio} on an embedding of width "
                             f"{emb_width} gives an aggregation width of {aggregation}; raise it or set aggregation_dim")
        self.mask_aggregate = keras.layers.Dense(aggregation, activation="relu", name="mask_aggregate")
        self.mask_project = keras.layers.Dense(masked_width, name="mask_project")
        self.mask_aggregate.build((None, emb_width))
        self.mask_project.build((None, aggregation))
        if self.embedding_form:
            # One LayerNorm per field (own scale and shift), as concat(LN(e_1), ..., LN(e_f)).
            fields_shape = (flat_width(emb_shape[:-1]), emb_shape[-1])
            self.emb_gamma = self.add_weight(name="emb_gamma", shape=fields_shape, initializer="ones")
            self.emb_beta = self.add_weight(name="emb_beta", shape=fields_shape, initializer="zeros")
        self.hidden.build((None, masked_width))
        self.hidden_norm.build((None, self.hidden_units))

    def _field_norm(self, emb):
        fields, k = self.emb_gamma.shape
        x = ops.reshape(emb, (-1, fields, k))
        mean = ops.mean(x, axis=-1, keepdims=True)
        var = ops.var(x, axis=-1, keepdims=True)
        x = (x - mean) * ops.rsqrt(var + LN_EPSILON) * self.emb_gamma + self.emb_beta
        return ops.reshape(x, (-1, fields * k))

    def call(self, inputs, training=None):
        xs = as_list(inputs)
        v_emb = flatten_2d(xs[0])
        target = self._field_norm(xs[0]) if self.embedding_form else flatten_2d(xs[1])
        v_mask = self.mask_project(self.mask_aggregate(v_emb))
        out = ops.relu(self.hidden_norm(self.hidden(v_mask * target)))
        if self.dropout_layer is not None:
            out = self.dropout_layer(out, training=training)
        return out

    def compute_output_shape(self, input_shape):
        return (shape_list(input_shape)[0][0], self.hidden_units)

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units, "reduction_ratio": self.reduction_ratio,
                "aggregation_dim": self.aggregation_dim, "dropout": self.dropout}


@register_block()
class MaskNet(Block):
    """MaskNet: MaskBlocks in series or in parallel over the feature embedding.

    - `"serial"`: block 1 masks the layer-normalised embedding; block t > 1 masks block
      t-1's output, each with its own mask from the embedding. Output (batch, hidden_units).
    - `"parallel"`: `blocks` MaskBlocks each mask the embedding; their outputs are
      concatenated. Output (batch, blocks · hidden_units).

    See `MaskBlock` for the block's formula. A spec adds the MLP and the head on top.

    Args:
        mode: str. `"serial"` or `"parallel"`. Defaults to `"serial"`.
        blocks: int. Number of MaskBlocks. Defaults to `3`.
        hidden_units: int. Output width of every MaskBlock. Defaults to `64`.
        reduction_ratio: float. As in `MaskBlock`. Defaults to `1.0`.
        aggregation_dim: int or None. As in `MaskBlock`. Defaults to None.
        dropout: float. As in `MaskBlock`. Defaults to `0.0`.

    Example:
    ```python
    MaskNet(mode="parallel", blocks=2, hidden_units=8)(np.ones((2, 4, 8))).shape  # (2, 16)
    ```

    Reference: Z. Wang, Q. She, J. Zhang. "MaskNet: Introducing Feature-Wise
    Multiplication to CTR Ranking Models by Instance-Guided Mask." DLP-KDD 2021.
    https://arxiv.org/abs/2102.07619
    """

    def __init__(self, mode: str = "serial", blocks: int = 3, hidden_units: int = 64, reduction_ratio: float = 1.0,
                 aggregation_dim: int | None = None, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("serial", "parallel"):
            raise ValueError(f"`mode` must be 'serial' or 'parallel', received {mode!r}")
        check_positive_int("blocks", blocks)
        _check_mask_args(hidden_units, reduction_ratio, aggregation_dim, dropout)
        self.mode = mode
        self.num_blocks = blocks
        self.hidden_units = hidden_units
        self.reduction_ratio = float(reduction_ratio)
        self.aggregation_dim = aggregation_dim
        self.dropout = float(dropout)
        self.mask_blocks = [
            MaskBlock(hidden_units, reduction_ratio=reduction_ratio, aggregation_dim=aggregation_dim,
                      dropout=dropout, name=f"mask_block_{i}")
            for i in range(blocks)
        ]

    def build(self, input_shape):
        emb_shape = tuple(input_shape)
        for i, block in enumerate(self.mask_blocks):
            serial_hidden = self.mode == "serial" and i > 0
            block.build([emb_shape, (emb_shape[0], self.hidden_units)] if serial_hidden else emb_shape)

    def call(self, inputs, training=None):
        if self.mode == "parallel":
            return ops.concatenate([block(inputs, training=training) for block in self.mask_blocks], axis=-1)
        out = self.mask_blocks[0](inputs, training=training)
        for block in self.mask_blocks[1:]:
            out = block([inputs, out], training=training)
        return out

    def compute_output_shape(self, input_shape):
        width = self.hidden_units * (self.num_blocks if self.mode == "parallel" else 1)
        return (input_shape[0], width)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "blocks": self.num_blocks,
                "hidden_units": self.hidden_units, "reduction_ratio": self.reduction_ratio,
                "aggregation_dim": self.aggregation_dim, "dropout": self.dropout}
