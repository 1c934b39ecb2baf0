"""Spine blocks: each against an independent NumPy computation of its formula.

Every weight (biases, norm scales and moving statistics included) is set to random values
before a numeric check, and outputs are compared in order, never only as sorted values.
Table layouts (row offsets of each table in FeatureEmbedding's fused variable) are written
out by hand here from the feature lists, not taken from the layer.
"""

import keras
import numpy as np
import pytest

from kzoo.blocks.core import MLP, Add, Concat, DenseFeatures, FeatureEmbedding, Linear
from kzoo.blocks.interaction import FM, CrossNetV2, DotInteraction
from layer_test import run_layer_test  # tests/ is on sys.path (rootdir conftest, no __init__.py)

RNG = np.random.default_rng(7)

# Schema order interleaves the kinds; "b" and "c" share table "shared" (the larger vocab second).
FEATS = [
    {"name": "a", "kind": "categorical", "vocab_size": 6},
    {"name": "n", "kind": "numeric"},
    {"name": "b", "kind": "categorical", "vocab_size": 4, "table": "shared"},
    {"name": "m", "kind": "numeric"},
    {"name": "c", "kind": "categorical", "vocab_size": 5, "table": "shared"},
    {"name": "d", "kind": "categorical", "vocab_size": 3},
]
# Fused layout in first-use order: a -> rows 0..5, shared (max(4, 5) = 5 rows) -> 6..10, d -> 11..13.
FEATS_OFFSETS = {"a": 0, "b": 6, "c": 6, "d": 11}
FEATS_ROWS = 14
INPUTS = {
    "a": np.array([[0], [3], [5], [1]], "int32"),
    "n": np.array([[0.5], [-1.0], [2.0], [1.5]], "float32"),
    "b": np.array([[1], [2], [3], [0]], "int32"),
    "m": np.array([[-0.3], [0.8], [1.1], [-2.0]], "float32"),
    "c": np.array([[4], [0], [2], [0]], "int32"),  # row 3: b and c read the same shared row
    "d": np.array([[2], [0], [1], [2]], "int32"),
}

# Other layouts: numeric first and last around one table; numeric only; categorical only with
# ids given as (batch,) vectors.
LAYOUTS = {
    "interleaved": (FEATS, INPUTS, FEATS_OFFSETS, FEATS_ROWS),
    "numeric_around": (
        [{"name": "x", "kind": "numeric"}, {"name": "e", "kind": "categorical", "vocab_size": 3},
         {"name": "y", "kind": "numeric"}],
        {"x": np.array([[1.0], [-2.0]], "float32"), "e": np.array([[2], [1]], "int32"),
         "y": np.array([[0.5], [3.0]], "float32")},
        {"e": 0}, 3),
    "numeric_only": (
        [{"name": "x", "kind": "numeric"}, {"name": "y", "kind": "numeric"}],
        {"x": np.array([[1.0], [-2.0]], "float32"), "y": np.array([[0.5], [3.0]], "float32")},
        {}, 0),
    "categorical_only": (
        [{"name": "u", "kind": "categorical", "vocab_size": 2, "table": "t"},
         {"name": "v", "kind": "categorical", "vocab_size": 4},
         {"name": "w", "kind": "categorical", "vocab_size": 3, "table": "t"}],
        {"u": np.array([1, 0, 1], "int32"), "v": np.array([3, 0, 2], "int32"), "w": np.array([2, 1, 0], "int32")},
        {"u": 0, "w": 0, "v": 3}, 7),
}


def _randomize(layer, seed=0):
    """Distinct random values in every weight; variances kept positive."""
    rng = np.random.default_rng(seed)
    values = []
    for w in layer.weights:
        v = rng.normal(size=tuple(w.shape)).astype("float32")
        values.append(np.abs(v) + 0.5 if "variance" in w.path else v)
    layer.set_weights(values)


def _np(x):
    return keras.ops.convert_to_numpy(x).astype("float64")


def _close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(keras.ops.convert_to_numpy(actual), "float64"), expected, rtol=tol, atol=tol)


def _np_feature_embedding(features, inputs, offsets, table, numeric_kernel):
    """(batch, fields, dim) in schema order: table[offset + id] or x * v_f (v_f: the f-th numeric row)."""
    fields, k = [], 0
    for f in features:
        value = inputs[f["name"]].reshape(-1)
        if f["kind"] == "categorical":
            fields.append(table[offsets[f["name"]] + value.astype(int)])
        else:
            fields.append(value[:, None].astype("float64") * numeric_kernel[k][None, :])
            k += 1
    return np.stack(fields, axis=1)


# ------------------------------------------------------------------ FeatureEmbedding
@pytest.mark.parametrize("l2,num_losses", [(0.0, 0), (0.01, 1)])
def test_feature_embedding_contract(l2, num_losses):
    run_layer_test(FeatureEmbedding, {"dim": 3, "features": FEATS, "l2": l2, "initializer_scale": 0.1}, INPUTS,
                   (4, 6, 3), expected_num_losses=num_losses)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_feature_embedding_reads_its_rows_in_schema_order(layout):
    features, inputs, offsets, rows = LAYOUTS[layout]
    layer = FeatureEmbedding(dim=3, features=features)
    layer(inputs)
    _randomize(layer)
    n_numeric = sum(f["kind"] == "numeric" for f in features)
    table = _np(layer.embeddings) if rows else np.zeros((0, 3))
    assert table.shape == (rows, 3)
    kernel = _np(layer.numeric_kernel) if n_numeric else np.zeros((0, 3))
    assert kernel.shape == (n_numeric, 3)
    expected = _np_feature_embedding(features, inputs, offsets, table, kernel)
    _close(layer(inputs), expected, tol=1e-6)


def test_feature_embedding_shared_table_rows_and_l2_loss():
    layer = FeatureEmbedding(dim=3, features=FEATS, l2=0.02)
    layer(INPUTS)
    _randomize(layer, seed=3)
    table = _np(layer.embeddings)
    _close(layer.table_rows("a"), table[0:6])
    _close(layer.table_rows("shared"), table[6:11])  # max of the two vocabularies
    _close(layer.table_rows("d"), table[11:14])
    out = _np(layer(INPUTS))
    np.testing.assert_array_equal(out[3, 2], out[3, 4])  # b and c, both id 0, read one row
    # l2 * (sum of squared looked-up rows over the categorical fields) / batch; numeric rows excluded.
    looked_up = [table[FEATS_OFFSETS[name] + INPUTS[name][:, 0]] for name in ("a", "b", "c", "d")]
    expected = 0.02 * sum(np.sum(r ** 2) for r in looked_up) / 4
    assert len(layer.losses) == 1
    np.testing.assert_allclose(_np(layer.losses[0]), expected, rtol=1e-5)


# ------------------------------------------------------------------ Linear
@pytest.mark.parametrize("l2,num_losses", [(0.0, 0), (0.05, 1)])
def test_linear_contract(l2, num_losses):
    run_layer_test(Linear, {"features": FEATS, "l2": l2}, INPUTS, (4, 1), expected_num_losses=num_losses)


def test_linear_is_logistic_regression():
    layer = Linear(features=FEATS, l2=0.05)
    layer(INPUTS)
    _randomize(layer, seed=5)
    w = _np(layer.weights_1d.embeddings)[:, 0]
    wn = _np(layer.weights_1d.numeric_kernel)[:, 0]
    bias = _np(layer.bias)[0]
    assert w.shape == (FEATS_ROWS,) and wn.shape == (2,) and bias != 0.0
    o = FEATS_OFFSETS
    looked_up = {name: w[o[name] + INPUTS[name][:, 0]] for name in ("a", "b", "c", "d")}
    expected = (looked_up["a"] + wn[0] * INPUTS["n"][:, 0] + looked_up["b"] + wn[1] * INPUTS["m"][:, 0]
                + looked_up["c"] + looked_up["d"] + bias)
    _close(layer(INPUTS)[:, 0], expected)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(_np(layer.losses[0]), 0.05 * sum(np.sum(v ** 2) for v in looked_up.values()) / 4,
                               rtol=1e-5)


# ------------------------------------------------------------------ DenseFeatures
def test_dense_features_in_schema_order():
    feats = [{"name": "z", "kind": "numeric"}, {"name": "a", "kind": "numeric"}, {"name": "m", "kind": "numeric"}]
    x = {"a": RNG.normal(size=(3, 1)).astype("float32"), "m": RNG.normal(size=(3,)).astype("float32"),
         "z": RNG.normal(size=(3, 1)).astype("float32")}
    out = run_layer_test(DenseFeatures, {"features": feats}, x, (3, 3), train=False, expected_num_losses=0)
    np.testing.assert_allclose(out, np.stack([x["z"][:, 0], x["a"][:, 0], x["m"]], axis=1))
    with pytest.raises(ValueError, match="numeric features only"):
        DenseFeatures(features=FEATS)


# ------------------------------------------------------------------ MLP
def test_mlp_contract():
    x = RNG.normal(size=(4, 2, 3)).astype("float32")
    run_layer_test(MLP, {"units": [5, 2], "dropout": 0.1, "norm": "layer", "l2": 0.01}, x, (4, 2),
                   expected_num_losses=2)  # one L2 regulariser per Dense kernel


def _np_norm(h, layer, kind):
    if kind == "layer":  # Keras' LayerNormalization: epsilon 1e-3, over the last axis
        mean, var = h.mean(axis=-1, keepdims=True), h.var(axis=-1, keepdims=True)
        return (h - mean) / np.sqrt(var + 1e-3) * _np(layer.gamma) + _np(layer.beta)
    # BatchNormalization at inference: the moving statistics, epsilon 1e-3
    return (h - _np(layer.moving_mean)) / np.sqrt(_np(layer.moving_variance) + 1e-3) * _np(layer.gamma) + _np(layer.beta)


_ACTIVATIONS = {"relu": lambda h: np.maximum(h, 0.0), "tanh": np.tanh, "sigmoid": lambda h: 1 / (1 + np.exp(-h)),
                None: lambda h: h}


@pytest.mark.parametrize("norm,activation,output_activation", [(None, "relu", "same"), (None, "relu", None),
                                                                ("layer", "tanh", "sigmoid"), ("batch", "relu", None)])
def test_mlp_matches_numpy_forward_pass(norm, activation, output_activation):
    x = RNG.normal(size=(4, 2, 3)).astype("float32")
    layer = MLP(units=[5, 4, 2], activation=activation, norm=norm, output_activation=output_activation,
                dropout=0.3, l2=0.01)
    layer(x)
    _randomize(layer, seed=11)
    dense = [s for s in layer.stack if isinstance(s, keras.layers.Dense)]
    norms = [s for s in layer.stack if isinstance(s, (keras.layers.LayerNormalization,
                                                       keras.layers.BatchNormalization))]
    assert len(dense) == 3 and len(norms) == (0 if norm is None else 3)
    h = x.reshape(4, 6).astype("float64")
    for i in range(3):
        h = h @ _np(dense[i].kernel) + _np(dense[i].bias)
        if norm is not None:
            h = _np_norm(h, norms[i], norm)
        h = _ACTIVATIONS[activation if i < 2 or output_activation == "same" else output_activation](h)
    _close(layer(x, training=False), h)  # dropout is off at inference
    expected_l2 = sum(0.01 * np.sum(_np(d.kernel) ** 2) for d in dense)
    np.testing.assert_allclose(sum(_np(v) for v in layer.losses), expected_l2, rtol=1e-5)


def test_mlp_dropout_only_in_training():
    x = np.ones((64, 8), "float32")
    layer = MLP(units=[32, 32], dropout=0.5, activation="linear")
    layer(x)
    _randomize(layer)
    inference = _np(layer(x, training=False))
    trained = _np(layer(x, training=True))
    assert not np.allclose(inference, trained)


@pytest.mark.parametrize("bad", [{"units": []}, {"units": [4, 0]}, {"units": [4], "dropout": 1.5},
                                 {"units": [4], "norm": "group"}])
def test_mlp_rejects_bad_args(bad):
    with pytest.raises(ValueError):
        MLP(**bad)


# ------------------------------------------------------------------ Concat, Add, FM
def test_concat_and_add():
    a = RNG.normal(size=(3, 2, 2)).astype("float32")
    b = RNG.normal(size=(3, 3)).astype("float32")
    out = run_layer_test(Concat, {}, [a, b], (3, 7), train=False, expected_num_losses=0)
    np.testing.assert_allclose(out, np.concatenate([a[:, 0], a[:, 1], b], axis=1))
    out = run_layer_test(Add, {}, [b, 2 * b], (3, 3), train=False, expected_num_losses=0)
    np.testing.assert_allclose(out, 3 * b, rtol=1e-6)


def test_fm_pairwise_sum():
    v = RNG.normal(size=(4, 5, 3)).astype("float32")
    brute = np.zeros(4)
    per_dim = np.zeros((4, 3))
    for i in range(5):
        for j in range(i + 1, 5):
            brute += np.sum(v[:, i] * v[:, j], axis=1)
            per_dim += v[:, i] * v[:, j]
    out = run_layer_test(FM, {}, v, (4, 1), train=False, expected_num_losses=0)
    np.testing.assert_allclose(out[:, 0], brute, rtol=1e-5, atol=1e-5)
    _close(FM(reduce_sum=False)(v), per_dim)


# ------------------------------------------------------------------ CrossNetV2
@pytest.mark.parametrize("low_rank", [None, 2])
def test_cross_net_v2_contract(low_rank):
    run_layer_test(CrossNetV2, {"layers": 2, "low_rank": low_rank, "diag_scale": 0.5}, RNG.normal(size=(3, 2, 3)).astype(
        "float32"), (3, 6))


@pytest.mark.parametrize("low_rank,use_bias,diag_scale", [(None, True, 0.0), (2, True, 0.0), (None, False, 0.5),
                                                          (3, True, 0.25)])
def test_cross_net_v2_formula(low_rank, use_bias, diag_scale):
    """x_{l+1} = x_0 ⊙ (W_l x_l + b_l + diag_scale x_l) + x_l with W = U V at low rank."""
    x0 = RNG.normal(size=(3, 2, 3)).astype("float32")
    layer = CrossNetV2(layers=2, low_rank=low_rank, use_bias=use_bias, diag_scale=diag_scale)
    layer(x0)
    _randomize(layer, seed=13)
    x0f = x0.reshape(3, 6).astype("float64")
    x = x0f
    for cross in layer.crosses:
        if low_rank is None:
            proj = x @ _np(cross.dense.kernel)
        else:
            assert tuple(cross.down_proj_dense.kernel.shape) == (6, low_rank)
            proj = (x @ _np(cross.down_proj_dense.kernel)) @ _np(cross.dense.kernel)
        if use_bias:
            proj = proj + _np(cross.dense.bias)
        x = x0f * (proj + diag_scale * x) + x
    _close(layer(x0), x)


# ------------------------------------------------------------------ DotInteraction
def _np_dot_pairs(vectors, self_interaction=False):
    """<v_i, v_j> for i > j (i >= j with self-interaction), i major: (1,0), (2,0), (2,1), (3,0), ..."""
    n = len(vectors)
    return np.stack([np.sum(vectors[i].astype("float64") * vectors[j], axis=1)
                     for i in range(n) for j in range(i + 1 if self_interaction else i)], axis=1)


def test_dot_interaction_pair_order():
    bottom = RNG.normal(size=(2, 3)).astype("float32")
    emb = RNG.normal(size=(2, 3, 3)).astype("float32")
    vecs = [bottom] + [emb[:, i] for i in range(3)]  # the dense vector first, then the fields in order
    out = run_layer_test(DotInteraction, {}, [bottom, emb], (2, 6), train=False, expected_num_losses=0)
    np.testing.assert_allclose(out, _np_dot_pairs(vecs), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one size"):
        DotInteraction()([bottom, RNG.normal(size=(2, 3, 4)).astype("float32")])
    # One (batch, F, d) input alone (DLRM without a dense tower): builds again from its saved
    # config on reload, where the single shape arrives as a JSON list.
    out = run_layer_test(DotInteraction, {}, emb, (2, 3), train=False, expected_num_losses=0)
    np.testing.assert_allclose(out, _np_dot_pairs([emb[:, i] for i in range(3)]), rtol=1e-5, atol=1e-5)


def test_dot_interaction_three_inputs_and_self_interaction():
    a = RNG.normal(size=(2, 4)).astype("float32")
    stack = RNG.normal(size=(2, 2, 4)).astype("float32")
    c = RNG.normal(size=(2, 4)).astype("float32")
    vecs = [a, stack[:, 0], stack[:, 1], c]  # inputs in list order, a stack's fields in place
    _close(DotInteraction()([a, stack, c]), _np_dot_pairs(vecs))
    out = run_layer_test(DotInteraction, {"self_interaction": True}, [a, stack, c], (2, 10), train=False)
    np.testing.assert_allclose(out, _np_dot_pairs(vecs, self_interaction=True), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ optimizer steps on tables
@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_optimizer_steps_on_repeated_rows_match_numpy(optimizer):
    """A row looked up several times in a batch gets the optimizer step of its *summed* gradient
    (as dense-gradient JAX does); per-occurrence slices would give Adam sum(g^2) for v."""
    table0 = RNG.normal(0, 0.1, (5, 3)).astype("float32")
    coef = np.array([1.0, -2.0, 0.5], "float32")
    batches = [np.array([[1], [1], [1], [2]], "int32"), np.array([[3], [1], [0], [0]], "int32")]
    x = keras.Input((1,), dtype="int32", name="c")
    emb = FeatureEmbedding(dim=3, features=[{"name": "c", "kind": "categorical", "vocab_size": 5}])
    out = keras.ops.sum(emb({"c": x}) * coef, axis=(1, 2))
    model = keras.Model(x, out)
    emb.embeddings.assign(table0)
    lr = 0.01
    opt = keras.optimizers.Adam(lr) if optimizer == "adam" else keras.optimizers.Adagrad(lr, initial_accumulator_value=0.1)
    model.compile(optimizer=opt, loss=lambda y_true, y_pred: keras.ops.mean(y_pred))  # d loss / d row = count * coef / B
    w, m, v, acc = table0.astype("float64"), np.zeros((5, 3)), np.zeros((5, 3)), np.full((5, 3), 0.1)
    for t, ids in enumerate(batches, start=1):
        model.train_on_batch(ids, np.zeros(len(ids), "float32"))
        g = np.zeros((5, 3))
        np.add.at(g, ids[:, 0], coef / len(ids))
        if optimizer == "adam":
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            w = w - lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
        else:
            acc = acc + g * g
            w = w - lr * g / np.sqrt(acc + 1e-7)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(emb.embeddings), w, atol=2e-6)


# ------------------------------------------------------------------ the shared helper itself
class _ConfigDrift(keras.layers.Layer):
    """Reports a constructor argument it was not given: the helper must notice."""

    def __init__(self, scale=2.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        return x * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": round(self.scale)}


class _BreaksUnderBfloat16(keras.layers.Layer):
    def call(self, x):
        if self.compute_dtype == "bfloat16":
            raise RuntimeError("no bfloat16 here")
        return x


class _AddsTwoLosses(keras.layers.Layer):
    def call(self, x):
        self.add_loss(keras.ops.sum(x))
        self.add_loss(keras.ops.mean(x))
        return x


def test_helper_compares_config_values():
    x = np.ones((2, 3), "float32")
    with pytest.raises(AssertionError, match="scale"):
        run_layer_test(_ConfigDrift, {"scale": 2.5}, x, (2, 3), train=False)


def test_helper_counts_losses():
    x = np.ones((2, 3), "float32")
    with pytest.raises(AssertionError, match="added 2 losses"):
        run_layer_test(_AddsTwoLosses, {}, x, (2, 3), train=False, expected_num_losses=1)


def test_helper_restores_the_dtype_policy_when_the_mixed_call_fails():
    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError, match="bfloat16"):
        run_layer_test(_BreaksUnderBfloat16, {}, np.ones((2, 3), "float32"), (2, 3), train=False)
    assert keras.config.dtype_policy().name == before == "float32"
