"""Core blocks: feature embeddings, dense features, MLP, Concat, Add, Linear (LR)."""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.activations import Dice
from kzoo.blocks.backend import fill_normal, gather_rows
from kzoo.blocks.base import Block, as_list, check_fraction, check_positive_int, flat_width, flatten_2d, shape_list
from kzoo.blocks.registry import register_block


def _column(x, dtype):
    """(batch,) or (batch, 1) -> (batch, 1) of `dtype`, adding no op when it already is one."""
    if len(x.shape) != 2 or x.shape[1] != 1:
        x = ops.reshape(x, (-1, 1))
    if keras.backend.standardize_dtype(x.dtype) != dtype:
        x = ops.cast(x, dtype)
    return x


def _tables(features: list[dict]) -> dict[str, int]:
    """Embedding table name -> rows, for the categorical features (shared names share rows)."""
    tables: dict[str, int] = {}
    for f in features:
        if f["kind"] != "numeric":
            name = f.get("table") or f["name"]
            tables[name] = max(tables.get(name, 0), int(f["vocab_size"]))
    return tables


LIST_KINDS = ("sequence", "tags")  # (batch, max_len) ids, -1 at padded positions
LARGE_TABLE = 1 << 25  # floats (128 MB): from here FeatureEmbedding fills its table block by block


def _check_features(features) -> None:
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError(f"`features` must be a non-empty list of feature descriptions, received {features!r}")
    for f in features:
        if f.get("kind") not in ("numeric", "categorical", *LIST_KINDS):
            raise ValueError(f"feature {f.get('name')!r}: kind must be 'numeric', 'categorical', 'sequence' or 'tags', "
                             f"received {f.get('kind')!r}")
        if f["kind"] != "numeric" and int(f.get("vocab_size", 0)) < 1:
            raise ValueError(f"feature {f['name']!r}: vocab_size must be >= 1, received {f.get('vocab_size')!r}")
        if f["kind"] in LIST_KINDS and int(f.get("max_len", 0)) < 1:
            raise ValueError(f"feature {f['name']!r}: max_len must be >= 1, received {f.get('max_len')!r}")


def field_runs(features: list[dict]) -> list[list]:
    """The features' order as runs of one kind, [kind, start, stop) into that kind's block
    (categorical ids, numeric values, pooled lists)."""
    runs, seen = [], {"categorical": 0, "numeric": 0, "lists": 0}
    for f in features:
        kind = "lists" if f["kind"] in LIST_KINDS else f["kind"]
        if runs and runs[-1][0] == kind:
            runs[-1][2] += 1
        else:
            runs.append([kind, seen[kind], seen[kind] + 1])
        seen[kind] += 1
    return runs


def masked_pool(values, mask, mode: str = "mean"):
    """(B, L, D) values and a (B, L) 0/1 mask -> (B, D): the sum or mean of the valid positions
    (0 for a row with none)."""
    mask = ops.cast(mask, values.dtype)
    total = ops.sum(values * ops.expand_dims(mask, -1), axis=1)
    if mode == "sum":
        return total
    count = ops.sum(mask, axis=1, keepdims=True)
    return total / ops.maximum(count, ops.ones_like(count))


@register_block()
class FeatureEmbedding(Block):
    """Embeds every feature of a group into a `dim`-vector: output (batch, fields, dim).

    A categorical feature with id i gives row i of its table E_f; features declaring the
    same `embedding` name share one table. A numeric feature with value x gives x * v_f
    (one learned vector per numeric feature), as in DeepFM / AutoInt / FuxiCTR. A sequence or
    tags feature (a list of ids, -1 at padded positions) gives the mean (or sum, by its `pool`)
    of its items' rows, padding left out: one field per feature (EasyRec's TagFeature,
    DeepCTR's VarLenSparseFeat; a history pooled this way is the sequence-less baseline).
    Fields come out in the group's (schema) order.

    All tables live in one variable with a row offset per table, so a batch is one gather
    (as TorchRec's fused tables): far fewer ops for XLA to compile and run than one
    lookup per feature.

    Args:
        dim: int. Embedding size.
        features: list of dict. Filled in by the graph builder from the feature group:
            `{"name", "kind": "numeric"|"categorical", "vocab_size", "table"}`.
        l2: float. L2 penalty on the rows looked up in each batch (mean over the batch).
            Defaults to `0.0`.
        initializer_scale: float. Std of the normal initialiser. Defaults to `0.05`.

    Example:
    ```python
    emb = FeatureEmbedding(dim=4, features=[{"name": "c", "kind": "categorical", "vocab_size": 10}])
    emb({"c": np.array([[1], [2]])}).shape  # (2, 1, 4)
    ```
    """

    feature_block = True
    holds_tables = True

    def __init__(self, dim: int, features: list | None = None, l2: float = 0.0,
                 initializer_scale: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("dim", dim)
        if not isinstance(l2, (int, float)) or l2 < 0:
            raise ValueError(f"`l2` must be a non-negative number, received {l2!r}")
        self.dim = dim
        self.features = [dict(f) for f in (features or [])]
        self.l2 = float(l2)
        self.initializer_scale = float(initializer_scale)
        if features is not None:
            _check_features(self.features)
        # Row offset of each table in the fused variable, in first-use order.
        self.offsets: dict[str, int] = {}
        rows = 0
        for name, size in _tables(self.features).items():
            self.offsets[name] = rows
            rows += size
        self.total_rows = rows
        self.categorical = [f for f in self.features if f["kind"] == "categorical"]
        self.numeric = [f for f in self.features if f["kind"] == "numeric"]
        self.lists = [f for f in self.features if f["kind"] in LIST_KINDS]
        self.id_offsets = [self.offsets[f.get("table") or f["name"]] for f in self.categorical]
        # Schema order as runs of one kind, [kind, start, stop) into that kind's block: the
        # output is reassembled with static slices and one concatenate. (A gather over the
        # field axis did the same, but cost a scatter-add in every backward pass:
        # docs/benchmarks.md measured it at 7-12 % of a DCN-V2 step.)
        self.runs = field_runs(self.features)

    def build(self, input_shape=None):
        init = keras.initializers.RandomNormal(stddev=self.initializer_scale)
        if self.total_rows and self.quantization_mode == "int8":
            self._int8_build()  # a reloaded int8 model: its stored int8 rows and scales load into these
        else:
            # A large table is filled in place a block of rows at a time (kzoo.blocks.backend.fill_normal):
            # Keras' RandomNormal would hold 3-4 table-sized temporaries.
            large = self.total_rows * self.dim >= LARGE_TABLE
            self.embeddings = (self.add_weight(name="embeddings", shape=(self.total_rows, self.dim),
                                               initializer="zeros" if large else init) if self.total_rows else None)
            if large:
                fill_normal(self.embeddings, self.initializer_scale, int(keras.random.randint((), 0, 2 ** 30)))
        self.numeric_kernel = (self.add_weight(name="numeric_kernel", shape=(len(self.numeric), self.dim),
                                               initializer=init) if self.numeric else None)
        self.built = True

    def table_variables(self) -> list:
        return [self.embeddings] if self.embeddings is not None and self.quantization_mode is None else []

    def table_rows(self, name: str):
        """Rows of table `name` (a feature name, or a shared `embedding` name) as a tensor."""
        start = self.offsets[name]
        return self._rows(ops.arange(start, start + _tables(self.features)[name], dtype="int32"))

    # kzoo.sparse's JAX train step sets this to a function of `ids` for one step: the batch's rows are
    # then read from the touched rows it gathered (and differentiates) instead of the whole table.
    _row_source = None

    def _rows(self, ids):
        """Table rows `ids` (any shape) -> (..., dim) floats; an int8 table is dequantized per row."""
        if self._row_source is not None:
            return self._row_source(ids)
        if self.quantization_mode != "int8":
            return gather_rows(self.embeddings, ids)
        rows = ops.cast(ops.take(self.embeddings, ids, axis=0), self.compute_dtype)
        return rows / ops.expand_dims(ops.take(self.embeddings_scale, ids, axis=0), -1)

    # int8, as keras.layers.Embedding does it: per-row absmax scale s_i = 127 / max_j |E_ij|,
    # stored q_ij = round(E_ij * s_i) as int8, looked up as q_ij / s_i. One scale per row (not
    # per column) because the tables have far more rows than columns, and each row is used alone.
    def quantize(self, mode=None, type_check=True, config=None):
        if mode != "int8":
            raise NotImplementedError(f"{type(self).__name__} quantizes to 'int8' only, received mode={mode!r}")
        if self.embeddings is not None:
            values, scale = keras.quantizers.abs_max_quantize(self.embeddings, axis=-1, to_numpy=True)
            del self.embeddings
            self._int8_build()
            self.embeddings.assign(values)
            self.embeddings_scale.assign(ops.squeeze(scale, axis=-1))
        self._is_quantized = True
        self.dtype_policy = keras.dtype_policies.get(f"int8_from_{self.dtype_policy.name}")

    def _int8_build(self):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.total_rows, self.dim), initializer="zeros",
                                          dtype="int8", trainable=False)
        self.embeddings_scale = self.add_weight(name="embeddings_scale", shape=(self.total_rows,),
                                                initializer="ones", trainable=False)
        self._is_quantized = True

    def _int8_call(self, inputs, *args, **kwargs):
        return self.call(inputs, *args, **kwargs)  # call reads the table through _rows

    def call(self, inputs):
        return self._fields(inputs)

    def _fields(self, inputs):
        parts = {}
        if self.categorical:
            ids = ops.concatenate([_column(inputs[f["name"]], "int32") for f in self.categorical], axis=1)
            if any(self.id_offsets):
                ids = ops.add(ids, ops.convert_to_tensor(self.id_offsets, dtype="int32"))
            looked_up = self._rows(ids)
            self._penalise(looked_up)
            parts["categorical"] = looked_up
        if self.numeric:
            x = ops.concatenate([_column(inputs[f["name"]], self.compute_dtype) for f in self.numeric], axis=1)
            parts["numeric"] = ops.expand_dims(x, -1) * self.numeric_kernel
        if self.lists:
            pooled = []
            for f in self.lists:
                items, mask = self.items(inputs, f)
                pooled.append(masked_pool(items, mask, f.get("pool", "mean")))
            parts["lists"] = ops.stack(pooled, axis=1)
        pieces = [parts[k] if (a == 0 and b == parts[k].shape[1]) else parts[k][:, a:b] for k, a, b in self.runs]
        return pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=1)

    def items(self, inputs, feature: dict):
        """A sequence/tags feature's (B, L, dim) item rows and its (B, L) 0/1 mask; padded positions
        (id -1) read row 0 of the table and are zeroed, so they carry no value and no gradient."""
        ids = ops.cast(inputs[feature["name"]], "int32")
        valid = ops.greater_equal(ids, 0)
        rows = ops.where(valid, ids, ops.zeros_like(ids)) + self.offsets[feature.get("table") or feature["name"]]
        mask = ops.cast(valid, self.compute_dtype)
        looked_up = self._rows(rows) * ops.expand_dims(mask, -1)
        self._penalise(looked_up)
        return looked_up, mask

    def _penalise(self, looked_up):
        if self.l2:
            self.add_loss(self.l2 * ops.sum(ops.square(looked_up)) / ops.cast(ops.shape(looked_up)[0], looked_up.dtype))

    def compute_output_shape(self, input_shape):
        return (None, len(self.features), self.dim)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "features": self.features, "l2": self.l2,
                "initializer_scale": self.initializer_scale}


@register_block()
class Linear(Block):
    """First-order (logistic-regression) term: sum_f w_f(x_f) + b, output (batch, 1).

    A categorical feature contributes the weight of its id; a numeric one w_f * x.

    Args:
        features: list of dict. Filled in by the graph builder (see FeatureEmbedding).
        l2: float. L2 penalty on looked-up weights. Defaults to `0.0`.
    """

    feature_block = True
    holds_tables = True  # its weights are a dim-1 FeatureEmbedding, which lists the table

    def __init__(self, features: list | None = None, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.features = [dict(f) for f in (features or [])]
        self.l2 = float(l2)
        self.weights_1d = FeatureEmbedding(dim=1, features=self.features, l2=l2, initializer_scale=0.0,
                                           name="weights") if features is not None else None

    def build(self, input_shape=None):
        self.weights_1d.build(input_shape)
        self.bias = self.add_weight(name="bias", shape=(1,), initializer="zeros")

    def call(self, inputs):
        return ops.sum(self.weights_1d(inputs), axis=(1,)) + self.bias

    def compute_output_shape(self, input_shape):
        return (None, 1)

    def get_config(self):
        return {**super().get_config(), "features": self.features, "l2": self.l2}


@register_block()
class DenseFeatures(Block):
    """The group's numeric features side by side: output (batch, n_numeric).

    For models with a dense tower (DLRM's bottom MLP). Categorical features are rejected.

    Args:
        features: list of dict. Filled in by the graph builder; all must be numeric.
    """

    feature_block = True

    def __init__(self, features: list | None = None, **kwargs):
        super().__init__(**kwargs)
        self.features = [dict(f) for f in (features or [])]
        bad = [f["name"] for f in self.features if f["kind"] != "numeric"]
        if bad:
            raise ValueError(f"DenseFeatures takes numeric features only, received categorical {bad}; "
                             "use a group like 'type:numeric'")

    def call(self, inputs):
        return ops.concatenate(
            [ops.cast(ops.reshape(inputs[f["name"]], (-1, 1)), self.compute_dtype) for f in self.features], axis=1)

    def compute_output_shape(self, input_shape):
        return (None, len(self.features))

    def get_config(self):
        return {**super().get_config(), "features": self.features}


_TRAINING_AWARE = (keras.layers.Dropout, keras.layers.BatchNormalization, Dice)


@register_block()
class MLP(Block):
    """A stack of Dense layers: x -> [Dense -> norm -> activation -> dropout] * len(units).

    Inputs of rank > 2 are flattened first, so an embedding block (batch, fields, dim)
    feeds it directly.

    Args:
        units: list of int. Width of each layer.
        activation: str. Keras activation name, or `"dice"` (DIN's data-adaptive activation,
            kzoo.blocks.activations.Dice). Defaults to `"relu"`.
        dropout: float. Dropout rate after each layer. Defaults to `0.0`.
        norm: str or None. `"batch"`, `"layer"` or None. Defaults to None.
        output_activation: str or None. Activation of the last layer instead of
            `activation` (e.g. `None` for a linear projection). Defaults to `"same"`.
        l2: float. L2 penalty on the kernels. Defaults to `0.0`.

    Example:
    ```python
    MLP(units=[64, 32], dropout=0.1)(np.ones((2, 8))).shape  # (2, 32)
    ```
    """

    def __init__(self, units: list, activation: str = "relu", dropout: float = 0.0, norm: str | None = None,
                 output_activation: str | None = "same", l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(units, (list, tuple)) or not units:
            raise ValueError(f"`units` must be a non-empty list of positive ints, received {units!r}")
        for u in units:
            check_positive_int("units[i]", u)
        check_fraction("dropout", dropout)
        if norm not in (None, "batch", "layer"):
            raise ValueError(f"`norm` must be 'batch', 'layer' or null, received {norm!r}")
        for act in (activation, output_activation):
            if act not in (None, "same", "dice"):
                keras.activations.get(act)
        self.units = list(units)
        self.activation = activation
        self.dropout = float(dropout)
        self.norm = norm
        self.output_activation = output_activation
        self.l2 = float(l2)
        reg = keras.regularizers.L2(l2) if l2 else None
        self.stack = []
        for i, u in enumerate(self.units):
            last = i == len(self.units) - 1
            act = activation if not last or output_activation == "same" else output_activation
            self.stack.append(keras.layers.Dense(u, kernel_regularizer=reg, name=f"dense_{i}"))
            if norm == "batch":
                self.stack.append(keras.layers.BatchNormalization(name=f"bn_{i}"))
            elif norm == "layer":
                self.stack.append(keras.layers.LayerNormalization(name=f"ln_{i}"))
            if act == "dice":
                self.stack.append(Dice(name=f"dice_{i}"))
            elif act:
                self.stack.append(keras.layers.Activation(act, name=f"act_{i}"))
            if dropout and not last:
                self.stack.append(keras.layers.Dropout(dropout, name=f"dropout_{i}"))

    def build(self, input_shape):
        shape = (input_shape[0], flat_width(input_shape))
        for layer in self.stack:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs, training=None):
        x = flatten_2d(inputs)
        for layer in self.stack:
            x = layer(x, training=training) if isinstance(layer, _TRAINING_AWARE) else layer(x)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units[-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation, "dropout": self.dropout,
                "norm": self.norm, "output_activation": self.output_activation, "l2": self.l2}


@register_block()
class Concat(Block):
    """Flattens each input to (batch, n_i) and concatenates them: (batch, sum n_i)."""

    arity = (1, None)

    def call(self, inputs):
        xs = [flatten_2d(x) for x in as_list(inputs)]
        return xs[0] if len(xs) == 1 else ops.concatenate(xs, axis=-1)

    def compute_output_shape(self, input_shape):
        shapes = shape_list(input_shape)
        return (None, sum(flat_width(s) for s in shapes))


@register_block()
class Add(Block):
    """Element-wise sum of inputs of one shape (e.g. the logits of wide and deep parts)."""

    arity = (2, None)

    def build(self, input_shape):
        shapes = [tuple(s[1:]) for s in input_shape]
        if len(set(shapes)) > 1:
            raise ValueError(f"Add needs inputs of one shape, received {shapes}; project them first (e.g. MLP units=[1])")

    def call(self, inputs):
        xs = as_list(inputs)
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def compute_output_shape(self, input_shape):
        return input_shape[0]
