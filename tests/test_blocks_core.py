"""Spine blocks: each against an independent NumPy computation of its formula."""

import numpy as np
import pytest

from kzoo.blocks.core import MLP, Add, Concat, DenseFeatures, FeatureEmbedding, Linear
from kzoo.blocks.interaction import FM, CrossNetV2, DotInteraction
from tests.layer_test import run_layer_test

RNG = np.random.default_rng(7)
FEATS = [
    {"name": "a", "kind": "categorical", "vocab_size": 6},
    {"name": "n", "kind": "numeric"},
    {"name": "b", "kind": "categorical", "vocab_size": 4, "table": "shared"},
    {"name": "c", "kind": "categorical", "vocab_size": 5, "table": "shared"},
]
INPUTS = {
    "a": np.array([[0], [3], [5]], "int32"),
    "n": np.array([[0.5], [-1.0], [2.0]], "float32"),
    "b": np.array([[1], [2], [3]], "int32"),
    "c": np.array([[4], [0], [2]], "int32"),
}


def test_feature_embedding_numbers():
    out = run_layer_test(FeatureEmbedding, {"dim": 3, "features": FEATS}, INPUTS, (3, 4, 3))
    layer = FeatureEmbedding(dim=3, features=FEATS)
    got = np.asarray(layer(INPUTS))
    tables = {name: np.asarray(layer.table_rows(name)) for name in ("a", "shared")}
    assert tables["a"].shape == (6, 3) and tables["shared"].shape == (5, 3)  # shared: max of 4 and 5 rows
    v = np.asarray(layer.numeric_kernel)[0]
    expected = np.stack([tables["a"][INPUTS["a"][:, 0]], INPUTS["n"] * v,
                         tables["shared"][INPUTS["b"][:, 0]], tables["shared"][INPUTS["c"][:, 0]]], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert out.shape == (3, 4, 3)


def test_linear_is_logistic_regression():
    layer = Linear(features=FEATS)
    layer(INPUTS)
    w = {"a": RNG.normal(size=(6, 1)).astype("float32"), "shared": RNG.normal(size=(5, 1)).astype("float32")}
    wn = RNG.normal(size=(1, 1)).astype("float32")
    layer.weights_1d.embeddings.assign(np.concatenate([w["a"], w["shared"]]))  # tables in first-use order
    layer.weights_1d.numeric_kernel.assign(wn)
    layer.bias.assign(np.array([0.25], "float32"))
    expected = (w["a"][INPUTS["a"][:, 0], 0] + wn[0, 0] * INPUTS["n"][:, 0] + w["shared"][INPUTS["b"][:, 0], 0]
                + w["shared"][INPUTS["c"][:, 0], 0] + 0.25)
    np.testing.assert_allclose(np.asarray(layer(INPUTS))[:, 0], expected, rtol=1e-6)
    run_layer_test(Linear, {"features": FEATS}, INPUTS, (3, 1))


def test_dense_features():
    feats = [{"name": "n", "kind": "numeric"}, {"name": "m", "kind": "numeric"}]
    x = {"n": INPUTS["n"], "m": 2 * INPUTS["n"]}
    out = run_layer_test(DenseFeatures, {"features": feats}, x, (3, 2), train=False)
    np.testing.assert_allclose(out, np.concatenate([x["n"], x["m"]], axis=1))
    with pytest.raises(ValueError, match="numeric features only"):
        DenseFeatures(features=FEATS)


def test_mlp_numbers():
    x = RNG.normal(size=(4, 2, 3)).astype("float32")
    run_layer_test(MLP, {"units": [5, 2], "dropout": 0.1, "norm": "layer"}, x, (4, 2))
    layer = MLP(units=[5, 2], activation="relu", output_activation=None)
    layer(x)
    (k1, b1, k2, b2) = [np.asarray(w) for w in layer.weights]
    h = np.maximum(x.reshape(4, 6) @ k1 + b1, 0)
    np.testing.assert_allclose(np.asarray(layer(x)), h @ k2 + b2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [{"units": []}, {"units": [4, 0]}, {"units": [4], "dropout": 1.5},
                                 {"units": [4], "norm": "group"}])
def test_mlp_rejects_bad_args(bad):
    with pytest.raises(ValueError):
        MLP(**bad)


def test_concat_and_add():
    a = RNG.normal(size=(3, 2, 2)).astype("float32")
    b = RNG.normal(size=(3, 3)).astype("float32")
    out = run_layer_test(Concat, {}, [a, b], (3, 7), train=False)
    np.testing.assert_allclose(out, np.concatenate([a.reshape(3, 4), b], axis=1))
    out = run_layer_test(Add, {}, [b, 2 * b], (3, 3), train=False)
    np.testing.assert_allclose(out, 3 * b, rtol=1e-6)


def test_fm_pairwise_sum():
    v = RNG.normal(size=(4, 5, 3)).astype("float32")
    brute = np.zeros(4)
    for i in range(5):
        for j in range(i + 1, 5):
            brute += np.sum(v[:, i] * v[:, j], axis=1)
    out = run_layer_test(FM, {}, v, (4, 1), train=False)
    np.testing.assert_allclose(out[:, 0], brute, rtol=1e-5, atol=1e-5)
    per_dim = np.asarray(FM(reduce_sum=False)(v))
    np.testing.assert_allclose(per_dim.sum(axis=1), brute, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("low_rank", [None, 2])
def test_cross_net_v2_formula(low_rank):
    x0 = RNG.normal(size=(3, 2, 3)).astype("float32")
    run_layer_test(CrossNetV2, {"layers": 2, "low_rank": low_rank}, x0, (3, 6))
    layer = CrossNetV2(layers=2, low_rank=low_rank)
    got = np.asarray(layer(x0))
    x0f = x0.reshape(3, 6)
    x = x0f
    for cross in layer.crosses:
        ws = [np.asarray(w) for w in cross.weights]
        if low_rank is None:
            kernel, bias = ws
            proj = x @ kernel + bias
        else:
            u, v, bias = ws  # W = U V: project down to the rank, then back up
            proj = (x @ u) @ v + bias
        x = x0f * proj + x
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-5)


def test_dot_interaction_pairs():
    bottom = RNG.normal(size=(2, 3)).astype("float32")
    emb = RNG.normal(size=(2, 3, 3)).astype("float32")
    vecs = [bottom] + [emb[:, i] for i in range(3)]
    expected = np.stack([np.sum(vecs[i] * vecs[j], axis=1) for i in range(4) for j in range(i)], axis=1)
    out = run_layer_test(DotInteraction, {}, [bottom, emb], (2, 6), train=False)
    np.testing.assert_allclose(np.sort(out, axis=1), np.sort(expected, axis=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one size"):
        DotInteraction()([bottom, RNG.normal(size=(2, 3, 4)).astype("float32")])
    # One (batch, F, d) input alone (DLRM without a dense tower): builds again from its saved
    # config on reload, where the single shape arrives as a JSON list.
    single = [emb[:, i] for i in range(3)]
    expected = np.stack([np.sum(single[i] * single[j], axis=1) for i in range(3) for j in range(i)], axis=1)
    out = run_layer_test(DotInteraction, {}, emb, (2, 3), train=False)
    np.testing.assert_allclose(np.sort(out, axis=1), np.sort(expected, axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_optimizer_steps_on_repeated_rows_match_numpy(optimizer):
    """A row looked up several times in a batch gets the optimizer step of its *summed* gradient
    (as dense-gradient JAX does); per-occurrence slices would give Adam sum(g^2) for v."""
    import keras

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
