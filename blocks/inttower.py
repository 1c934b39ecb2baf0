"""IntTower (Li et al., CIKM 2022): a two-tower pre-ranker with Light-SE feature refinement and
FE-Block fine-grained early interaction. Its third part, CIR (contrastive interaction
regularisation), is a training task: `"type": "contrastive"` in kzoo.retrieval.

    LightSE   (batch, fields, d) -> the same: each field re-weighted by a softmax over fields
    FETower   a tower MLP whose layers also project to `heads` x `field_dim`
              (query side: a projection of every layer's input; item side: one of its output)
    FEScore   the FE-Block score of a query and an item tower: per query layer and query head,
              the best-matching item head's dot product, summed

Reference: X. Li, B. Chen, H. Guo, J. Li, C. Zhu, X. Long, S. Li, Y. Wang, W. Guo, L. Mao, J. Liu,
Z. Dong, R. Tang. "IntTower: the Next Generation of Two-Tower Model for Pre-Ranking System."
CIKM 2022. https://arxiv.org/abs/2210.09890
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import Block, check_fraction, check_positive_int, flat_width, flatten_2d
from kzoo.blocks.registry import register_block


@register_block()
class LightSE(Block):
    """Light-SE: field importance from one linear map over the fields' mean values.

        z = mean_d(E)            (batch, fields)
        a = softmax(W z + b)     (batch, fields), W ∈ R^{fields×fields}
        out = E + E ⊙ a          (a broadcast over d; the residual keeps every field)

    Input and output (batch, fields, d), e.g. a FeatureEmbedding's output.

    Example:
    ```python
    LightSE()(np.ones((4, 6, 8))).shape  # (4, 6, 8)
    ```
    """

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"LightSE takes (batch, fields, d) field embeddings, received shape {tuple(input_shape)}")
        self.excitation = keras.layers.Dense(int(input_shape[1]), name="excitation")
        self.excitation.build((input_shape[0], input_shape[1]))

    def call(self, inputs):
        weights = ops.softmax(self.excitation(ops.mean(inputs, axis=-1)), axis=-1)
        return inputs + inputs * ops.expand_dims(weights, -1)

    def compute_output_shape(self, input_shape):
        return input_shape


@register_block()
class FETower(Block):
    """A tower MLP that also gives IntTower's FE representations.

    The tower is Dense → (BatchNorm) → activation → (dropout) per entry of `units`, over the
    flattened input. With `project="layers"` (IntTower's user tower) the input of every layer
    (the flattened input, then each hidden output but the last) is projected by its own Dense to
    `heads * field_dim`; with `project="output"` (the item tower) the last layer's output is.
    Output (batch, L, heads * field_dim) with L = len(units) or 1.

    Args:
        units: list of int. Widths of the tower's layers.
        heads: int. Heads per representation. Defaults to `1`.
        field_dim: int. Size of each head. Defaults to `32`.
        project: str. `"layers"` or `"output"`. Defaults to `"layers"`.
        activation: str. Defaults to `"relu"`.
        norm: str or None. `"batch"` or None. Defaults to None.
        dropout: float. Defaults to `0.0`.

    Example:
    ```python
    FETower(units=[64, 32], heads=2, field_dim=8)(np.ones((4, 10))).shape  # (4, 2, 16)
    ```
    """

    def __init__(self, units: list, heads: int = 1, field_dim: int = 32, project: str = "layers",
                 activation: str = "relu", norm: str | None = None, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (list, tuple)) or not units:
            raise ValueError(f"`units` must be a non-empty list of positive ints, received {units!r}")
        for u in units:
            check_positive_int("units[i]", u)
        check_positive_int("heads", heads)
        check_positive_int("field_dim", field_dim)
        check_fraction("dropout", dropout)
        if project not in ("layers", "output"):
            raise ValueError(f"`project` must be 'layers' or 'output', received {project!r}")
        if norm not in (None, "batch"):
            raise ValueError(f"`norm` must be 'batch' or null, received {norm!r}")
        keras.activations.get(activation)
        self.units, self.heads, self.field_dim = list(units), heads, field_dim
        self.project, self.activation, self.norm, self.dropout = project, activation, norm, float(dropout)
        self.dense = [keras.layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(self.units)]
        self.bn = [keras.layers.BatchNormalization(name=f"bn_{i}") for i in range(len(self.units))] if norm else []
        self.act = keras.layers.Activation(activation)
        self.drop = keras.layers.Dropout(dropout) if dropout else None
        n = len(self.units) if project == "layers" else 1
        # The reference implementation's projections keep PyTorch's default init, U(±1/sqrt(fan_in)):
        # with Keras' glorot the summed FE score starts ~5x wider and the sigmoid saturates.
        init = keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
        self.fe = [keras.layers.Dense(heads * field_dim, kernel_initializer=init, name=f"fe_{i}") for i in range(n)]

    def build(self, input_shape):
        width = flat_width(input_shape)
        widths = [width] + self.units
        for i, layer in enumerate(self.dense):
            layer.build((None, widths[i]))
            if self.bn:
                self.bn[i].build((None, widths[i + 1]))
        for i, layer in enumerate(self.fe):
            layer.build((None, widths[i] if self.project == "layers" else widths[-1]))

    def call(self, inputs, training=None):
        x = flatten_2d(inputs)
        reps = []
        for i, layer in enumerate(self.dense):
            if self.project == "layers":
                reps.append(self.fe[i](x))
            x = layer(x)
            if self.bn:
                x = self.bn[i](x, training=training)
            x = self.act(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
        if self.project == "output":
            reps.append(self.fe[0](x))
        return ops.stack(reps, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.fe), self.heads * self.field_dim)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads, "field_dim": self.field_dim,
                "project": self.project, "activation": self.activation, "norm": self.norm, "dropout": self.dropout}


@register_block()
class FEScore(Block):
    """IntTower's FE-Block score of a query tower and an item tower (FETower outputs).

    With query representations q_{l,h} (L layers × `query_heads` heads) and item representations
    v_{h'} (`item_heads` heads), all of size field_dim:

        score = Σ_l Σ_h max_{h'} <q_{l,h}, v_{h'}>          (batch, 1)

    Inputs: [query (batch, L, query_heads * f), item (batch, 1, item_heads * f)].

    Args:
        query_heads: int. Defaults to `1`.
        item_heads: int. Defaults to `1`.
    """

    arity = (2, 2)

    def __init__(self, query_heads: int = 1, item_heads: int = 1, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("query_heads", query_heads)
        check_positive_int("item_heads", item_heads)
        self.query_heads, self.item_heads = query_heads, item_heads

    def build(self, input_shape):
        q, v = input_shape
        if len(q) != 3 or len(v) != 3:
            raise ValueError(f"FEScore takes FETower outputs (batch, L, heads * field_dim), received {q} and {v}")
        if q[-1] % self.query_heads or v[-1] % self.item_heads or \
                q[-1] // self.query_heads != v[-1] // self.item_heads:
            raise ValueError(f"query width {q[-1]} over {self.query_heads} heads and item width {v[-1]} over "
                             f"{self.item_heads} heads must give one field_dim")

    def call(self, inputs):
        q, v = inputs
        f = q.shape[-1] // self.query_heads
        q = ops.reshape(q, (-1, q.shape[1], self.query_heads, f))
        v = ops.reshape(v, (-1, v.shape[1] * self.item_heads, f))
        sim = ops.einsum("blhf,bkf->blhk", q, v)
        return ops.sum(ops.max(sim, axis=-1), axis=(1, 2))[:, None]

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)

    def get_config(self):
        return {**super().get_config(), "query_heads": self.query_heads, "item_heads": self.item_heads}
