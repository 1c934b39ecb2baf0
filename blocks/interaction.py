"""Feature-interaction blocks: FM, CrossNetV2 (DCNv2), DotInteraction (DLRM)."""

from __future__ import annotations

import keras_rs
from keras import ops

from kzoo.blocks.base import Block, as_list, check_positive_int, flat_width, flatten_2d, shape_list
from kzoo.blocks.registry import register_block


@register_block()
class FM(Block):
    """Factorization Machine second-order term (Rendle, ICDM 2010).

    For field embeddings v_1..v_F (batch, F, d), through the O(F·d) identity
        sum_{i<j} <v_i, v_j> = 1/2 * sum_k [ (sum_i v_ik)^2 - sum_i v_ik^2 ].

    Args:
        reduce_sum: bool. Sum over k to (batch, 1); if False return the (batch, d)
            vector of per-dimension terms (as NFM's bi-interaction). Defaults to `True`.
    """

    def __init__(self, reduce_sum: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.reduce_sum = bool(reduce_sum)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"FM needs field embeddings (batch, fields, dim), received shape {input_shape}")

    def call(self, inputs):
        square_of_sum = ops.square(ops.sum(inputs, axis=1))
        sum_of_square = ops.sum(ops.square(inputs), axis=1)
        terms = 0.5 * (square_of_sum - sum_of_square)
        return ops.sum(terms, axis=1, keepdims=True) if self.reduce_sum else terms

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 if self.reduce_sum else input_shape[2])

    def get_config(self):
        return {**super().get_config(), "reduce_sum": self.reduce_sum}


@register_block()
class CrossNetV2(Block):
    """DCN-V2 cross network (Wang et al., WWW 2021), on `keras_rs.layers.FeatureCross`.

        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,   W_l full (d×d) or low rank U_l V_lᵀ.

    Inputs of rank > 2 are flattened to (batch, d).

    Args:
        layers: int. Number of cross layers. Defaults to `3`.
        low_rank: int or None. Rank r of W = U Vᵀ; None for a full matrix. Defaults to None.
        use_bias: bool. Defaults to `True`.
        diag_scale: float. Adds diag_scale·I to W (paper's stability trick). Defaults to `0.0`.
    """

    def __init__(self, layers: int = 3, low_rank: int | None = None, use_bias: bool = True,
                 diag_scale: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("layers", layers)
        check_positive_int("low_rank", low_rank, allow_none=True)
        self.layers_count = layers
        self.low_rank = low_rank
        self.use_bias = bool(use_bias)
        self.diag_scale = float(diag_scale)
        self.crosses = [
            keras_rs.layers.FeatureCross(projection_dim=low_rank, diag_scale=diag_scale, use_bias=use_bias,
                                         name=f"cross_{i}")
            for i in range(layers)
        ]

    def build(self, input_shape):
        width = flat_width(input_shape)
        for cross in self.crosses:
            cross.build((input_shape[0], width))
            # keras-rs 0.4's FeatureCross.build creates its Dense sublayers without building
            # them; a reloaded model never traces `call`, so build them here.
            if self.low_rank is not None:
                cross.down_proj_dense.build((None, width))
                cross.dense.build((None, self.low_rank))
            else:
                cross.dense.build((None, width))

    def call(self, inputs):
        x0 = flatten_2d(inputs)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], flat_width(input_shape))

    def get_config(self):
        return {**super().get_config(), "layers": self.layers_count, "low_rank": self.low_rank,
                "use_bias": self.use_bias, "diag_scale": self.diag_scale}


@register_block()
class DotInteraction(Block):
    """DLRM pairwise dot interaction (Naumov et al. 2019), on `keras_rs.layers.DotInteraction`.

    Each input is one (batch, d) vector or a (batch, F, d) stack of them; all vectors share d.
    Output: the strictly-lower-triangular <v_i, v_j>, i > j, as (batch, n(n-1)/2)
    (n(n+1)/2 with `self_interaction`).

    Args:
        self_interaction: bool. Include <v_i, v_i>. Defaults to `False`.
    """

    arity = (1, None)

    def __init__(self, self_interaction: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.self_interaction = bool(self_interaction)
        self.interaction = keras_rs.layers.DotInteraction(self_interaction=self.self_interaction)

    def _vectors(self, inputs):
        vectors = []
        for x in as_list(inputs):
            if len(x.shape) == 3:
                vectors.extend(x[:, i, :] for i in range(x.shape[1]))
            else:
                vectors.append(x)
        return vectors

    def build(self, input_shape):
        shapes = shape_list(input_shape)
        dims = {s[-1] for s in shapes}
        if len(dims) != 1:
            raise ValueError(f"DotInteraction needs vectors of one size, received last dims {sorted(dims)}; "
                             "make the bottom MLP's last width equal the embedding dim")

    def call(self, inputs):
        return self.interaction(self._vectors(inputs))

    def compute_output_shape(self, input_shape):
        shapes = shape_list(input_shape)
        n = sum(s[1] if len(s) == 3 else 1 for s in shapes)
        pairs = n * (n + 1) // 2 if self.self_interaction else n * (n - 1) // 2
        return (None, pairs)

    def get_config(self):
        return {**super().get_config(), "self_interaction": self.self_interaction}
