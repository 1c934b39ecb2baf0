"""Sequence blocks (SequencePooling, DIN, DIEN + AUGRUCell, BST) and Dice against NumPy versions of
the papers' formulas.

Every weight (biases, Dice's alpha and moving statistics, positional embeddings included) gets a
random value before a numeric check; NumPy reads each weight by its path below the block, recomputes
the block in float64 with explicit loops where the paper has them, and checks every weight took part.
Then: padded positions are inert (their values, and extra padded positions, change no output), an
empty history gives finite outputs, DIN ranks the item equal to the target first, and DIEN's
auxiliary loss learns a planted next-item chain.
"""

import keras
import numpy as np
import pytest

from kzoo.blocks import block_types
from kzoo.blocks.activations import Dice
from kzoo.blocks.dien import DIEN, AUGRUCell
from kzoo.blocks.sequence import BST, DIN, SequencePooling, masked_softmax
from layer_test import Weights as _Weights, close as _close, run_layer_test, to_numpy as _np  # tests/ is on sys.path

B, L, D = 4, 5, 4
_rng = np.random.default_rng(0)
TARGET = _rng.normal(size=(B, D)).astype("float32")
HISTORY = _rng.normal(size=(B, L, D)).astype("float32")
CONTEXT = _rng.normal(size=(B, L, 3)).astype("float32")
LENGTHS = [5, 3, 1, 0]  # the last row is an empty history
MASK = (np.arange(L)[None, :] < np.array(LENGTHS)[:, None]).astype("float32")


def _randomize(layer, seed=1):
    """Every weight to N(0, 0.6²); moving variances to positive values."""
    rng = np.random.default_rng(seed)
    values = []
    for w in layer.weights:
        v = rng.normal(scale=0.6, size=tuple(w.shape))
        values.append((np.abs(v) + 0.5 if w.path.endswith("moving_variance") else v).astype("float32"))
    layer.set_weights(values)



def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_masked_softmax(scores, mask):
    out = np.zeros_like(scores)
    for b in range(len(scores)):
        valid = mask[b] > 0
        if valid.any():
            e = np.exp(scores[b, valid] - scores[b, valid].max())
            out[b, valid] = e / e.sum()
    return out


def _k(prefix, name):
    """A weight's path below the layer: "dense_0/kernel", or "kernel" for the layer's own."""
    return f"{prefix}/{name}" if prefix else name


def _np_dense(x, w, prefix):
    return x @ w[_k(prefix, "kernel")] + w[_k(prefix, "bias")]


def _np_dice(s, w, prefix, mask=None, training=False, eps=1e-9):
    if training:  # batch statistics over the valid positions
        rows = s[mask > 0]
        mean, var = rows.mean(axis=0), rows.var(axis=0)
    else:
        mean, var = w[_k(prefix, "norm/moving_mean")], w[_k(prefix, "norm/moving_variance")]
    p = _sigmoid((s - mean) / np.sqrt(var + eps))
    return p * s + (1 - p) * w[_k(prefix, "alpha")] * s


ACTIVATIONS = {"sigmoid": _sigmoid, "relu": lambda x: np.maximum(x, 0.0), "linear": lambda x: x}


def _np_din(t, h, m, w, layers, activation, softmax):
    """(weights (batch, L), output (batch, d)): score_i = MLP([h_i, t, h_i - t, h_i t]) at each i by a loop."""
    batch, length, _ = h.shape
    scores = np.zeros((batch, length))
    for b in range(batch):
        for i in range(length):
            x = np.concatenate([h[b, i], t[b], h[b, i] - t[b], h[b, i] * t[b]])
            for j in range(layers):
                x = _np_dense(x, w, f"dense_{j}")
                x = _np_dice(x, w, f"dice_{j}") if activation == "dice" else ACTIVATIONS[activation](x)
            scores[b, i] = _np_dense(x, w, "score")[0]
    weights = _np_masked_softmax(scores, m) if softmax else scores * m
    return weights, np.einsum("bl,bld->bd", weights, h)


def _f64(*xs):
    return [np.asarray(x, dtype="float64") for x in xs]


# ------------------------------------------------------------------ registry
def test_blocks_are_registered_with_their_arity():
    types = block_types()
    for cls, arity in ((SequencePooling, (2, 2)), (DIN, (3, 3)), (DIEN, (3, 3)), (BST, (3, 4))):
        assert types[cls.__name__] is cls and cls.__doc__ and "Args:" in cls.__doc__
        assert cls.arity == arity
    for cls in (Dice, AUGRUCell):
        assert keras.saving.get_registered_object(f"kzoo>{cls.__name__}") is cls


def test_masked_softmax_gives_zero_weights_to_padding_and_empty_rows():
    scores = np.array([[1.0, 3.0, 50.0], [0.5, -2.0, 1.0], [7.0, 8.0, 9.0]], dtype="float32")
    mask = np.array([[1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype="float32")
    got = _np(masked_softmax(scores, mask))
    np.testing.assert_allclose(got, _np_masked_softmax(scores.astype("float64"), mask), rtol=1e-6, atol=1e-7)
    assert got[2].tolist() == [0.0, 0.0, 0.0] and got[0, 2] == 0.0


# ------------------------------------------------------------------ Dice
def test_dice_inference_uses_moving_statistics():
    dice = Dice()
    x = HISTORY[:, :, :3]
    dice(x)
    _randomize(dice, seed=2)
    w = _Weights(dice)
    want = _np_dice(x.astype("float64"), w, "")
    w.all_read()
    _close(dice(x), want)
    _close(dice(x[:, 0]), want[:, 0])  # rank 2 as well


def test_dice_training_uses_batch_statistics_of_the_valid_positions():
    dice = Dice(momentum=0.5)
    x = HISTORY[:, :, :3]
    dice(x)
    _randomize(dice, seed=3)
    w = _Weights(dice)
    want = _np_dice(x.astype("float64"), w, "", mask=MASK, training=True)
    before = w["norm/moving_mean"].copy()
    _close(dice(x, training=True, mask=MASK), want)
    rows = x[MASK > 0].astype("float64")
    _close(dice.norm.moving_mean, 0.5 * before + 0.5 * rows.mean(axis=0))
    # without a mask, every position counts
    _close(Dice.from_config(dice.get_config())(x, training=True), _np_dice(x.astype("float64"), {"alpha": 0.0},
                                                                           "", np.ones((B, L)), training=True))


# ------------------------------------------------------------------ SequencePooling
@pytest.mark.parametrize("mode", ["mean", "sum", "max"])
def test_sequence_pooling_over_valid_positions(mode):
    got = _np(SequencePooling(mode)([HISTORY, MASK]))
    for b, n in enumerate(LENGTHS):
        rows = HISTORY[b, :n].astype("float64")
        want = (np.zeros(D) if n == 0 else {"mean": rows.mean(0), "sum": rows.sum(0), "max": rows.max(0)}[mode])
        np.testing.assert_allclose(got[b], want, rtol=1e-6, atol=1e-6, err_msg=f"row {b}")


# ------------------------------------------------------------------ DIN
@pytest.mark.parametrize("activation,softmax", [("sigmoid", False), ("dice", False), ("sigmoid", True),
                                                ("dice", True)])
def test_din_against_numpy(activation, softmax):
    din = DIN(units=[5, 3], activation=activation, softmax=softmax)
    din([TARGET, HISTORY, MASK])
    _randomize(din, seed=4)
    w = _Weights(din)
    weights, out = _np_din(*_f64(TARGET, HISTORY, MASK), w, 2, activation, softmax)
    w.all_read()
    _close(din.attention(TARGET, HISTORY, MASK), weights)
    _close(din([TARGET, HISTORY, MASK]), out)
    assert np.all(weights[MASK == 0] == 0)
    if softmax:
        np.testing.assert_allclose(weights.sum(1), [1, 1, 1, 0])


@pytest.mark.parametrize("softmax", [False, True])
def test_din_ranks_the_item_equal_to_the_target_first(softmax):
    """score = 10 - ||h - t||_1, built from the h - t part of the input by 2d ReLU units: the
    weights must follow the similarity order, the copy of the target first; a padded copy gets 0."""
    d, length = 3, 6
    din = DIN(units=[2 * d], activation="relu", softmax=softmax)
    rng = np.random.default_rng(5)
    history = rng.normal(size=(2, length, d)).astype("float32")
    mask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], dtype="float32")
    chosen = [3, 1]
    target = np.stack([history[0, 3], history[1, 1]])
    history[1, 4] = target[1]  # a padded copy of the target must not count
    din([target, history, mask])
    kernel = np.zeros((4 * d, 2 * d), dtype="float32")
    for k in range(d):
        kernel[2 * d + k, k], kernel[2 * d + k, d + k] = 1.0, -1.0  # relu(h - t), relu(t - h)
    din.set_weights([kernel, np.zeros(2 * d, "float32"), -np.ones((2 * d, 1), "float32"),
                     np.array([10.0], "float32")])
    weights = _np(din.attention(target, history, mask))
    for b in range(2):
        n = int(mask[b].sum())
        distance = np.abs(history[b, :n] - target[b]).sum(-1)
        assert np.argmax(weights[b]) == chosen[b]
        assert np.argsort(-weights[b, :n]).tolist() == np.argsort(distance).tolist()
    assert weights[1, 4] == 0.0


# ------------------------------------------------------------------ AUGRU and DIEN
def _np_augru_step(x, a, h, w, prefix):
    u = h.shape[-1]
    xw = x @ w[_k(prefix, "kernel")] + w[_k(prefix, "bias")]
    hu = h @ w[_k(prefix, "recurrent_kernel")]
    r = _sigmoid(xw[:, :u] + hu[:, :u])
    update = a * _sigmoid(xw[:, u:2 * u] + hu[:, u:2 * u])
    candidate = np.tanh(xw[:, 2 * u:] + r * hu[:, 2 * u:])
    return (1 - update) * h + update * candidate


def test_augru_step_against_numpy():
    cell = AUGRUCell(3)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 5)).astype("float32")  # 4 inputs and the attention score
    x[:, -1] = [0.0, 0.3, 0.9, 1.0]
    h = rng.normal(size=(4, 3)).astype("float32")
    cell.build(x.shape)
    _randomize(cell, seed=7)
    w = _Weights(cell)
    out, state = cell(x, [h])
    want = _np_augru_step(*_f64(x[:, :-1], x[:, -1:], h), w, "")
    w.all_read()
    _close(out, want)
    _close(state[0], want)
    _close(out[0], h[0])  # a zero attention score keeps the state
    cell2 = AUGRUCell.from_config(cell.get_config())
    assert cell2.units == 3


def _np_gru(x, m, w, prefix):
    """Keras' GRU (reset_after): z, r, h~ blocks; the state holds through padded steps. (batch, L, H)."""
    kernel, recurrent, bias = w[f"{prefix}/kernel"], w[f"{prefix}/recurrent_kernel"], w[f"{prefix}/bias"]
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    out = np.zeros((*x.shape[:2], units))
    for t in range(x.shape[1]):
        xk, hr = x[:, t] @ kernel + bias[0], h @ recurrent + bias[1]
        z = _sigmoid(xk[:, :units] + hr[:, :units])
        r = _sigmoid(xk[:, units:2 * units] + hr[:, units:2 * units])
        candidate = np.tanh(xk[:, 2 * units:] + r * hr[:, 2 * units:])
        new = z * h + (1 - z) * candidate
        h = np.where(m[:, t:t + 1] > 0, new, h)
        out[:, t] = h
    return out


def _np_dien(t, x, m, w, attention_layers, aux_layers):
    """(final AUGRU state, auxiliary loss) by loops over the batch and the steps."""
    batch, length, _ = x.shape
    states = _np_gru(x, m, w, "gru/gru_cell")
    if attention_layers is None:
        scores = np.einsum("blh,hd,bd->bl", states, w["attention_kernel"], t)
    else:
        q = _np_dense(t, w, "attention_query")
        scores = np.zeros((batch, length))
        for b in range(batch):
            for i in range(length):
                z = np.concatenate([states[b, i], q[b], states[b, i] - q[b], states[b, i] * q[b]])
                for j in range(attention_layers):
                    z = _sigmoid(_np_dense(z, w, f"attention_dense_{j}"))
                scores[b, i] = _np_dense(z, w, "attention_score")[0]
    a = _np_masked_softmax(scores, m)
    h = np.zeros((batch, states.shape[-1]))
    for i in range(length):
        new = _np_augru_step(states[:, i], a[:, i:i + 1], h, w, "augru/augru_cell")
        h = np.where(m[:, i:i + 1] > 0, new, h)

    def logit(state, item):
        z = np.concatenate([state, item])
        for j in range(aux_layers):
            z = _sigmoid(_np_dense(z, w, f"aux_dense_{j}"))
        return _np_dense(z, w, "aux_logit")[0]

    terms = []
    for b in range(batch):
        for i in range(length - 1):
            neg_row = (b - 1) % batch  # the batch rolled by one row
            if m[b, i] and m[b, i + 1] and m[neg_row, i + 1]:
                terms.append(-np.log(_sigmoid(logit(states[b, i], x[b, i + 1])))
                             - np.log(1 - _sigmoid(logit(states[b, i], x[neg_row, i + 1]))))
    return h, np.mean(terms)


@pytest.mark.parametrize("attention_units", [None, [3]])
def test_dien_against_numpy(attention_units):
    dien = DIEN(gru_units=3, attention_units=attention_units, aux_weight=0.5, aux_units=[4, 2])
    inputs = [TARGET, HISTORY, MASK]
    dien(inputs)
    _randomize(dien, seed=8)
    w = _Weights(dien)
    state, aux = _np_dien(*_f64(*inputs), w, None if attention_units is None else 1, 2)
    w.all_read()
    out = dien(inputs)
    _close(out, state)
    assert np.all(_np(out)[3] == 0)  # empty history: the initial state
    (loss,) = dien.losses
    np.testing.assert_allclose(_np(loss), 0.5 * aux, rtol=1e-5)


def test_dien_without_aux_weight_adds_no_loss():
    dien = DIEN(gru_units=3, aux_weight=0.0, aux_units=[4])
    assert tuple(dien([TARGET, HISTORY, MASK]).shape) == (B, 3) and dien.losses == []


# The output, and so the attention and the AUGRU, takes no part in this loss.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_dien_aux_loss_learns_a_next_item_chain():
    """Item k is always followed by item (k + 1) % N; a model trained on the auxiliary loss alone
    must tell the next item from another row's."""
    n_items, length, batch = 8, 6, 8
    rng = np.random.default_rng(9)
    starts = rng.permutation(n_items)  # distinct: a rolled row's next item is never the true one
    lengths = np.array([6, 6, 5, 4, 6, 3, 6, 5])
    ids = (starts[:, None] + np.arange(length)[None, :]) % n_items
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype("float32")
    ids = np.where(mask > 0, ids, 0).astype("int32")
    target = ((starts + lengths) % n_items).astype("int32")[:, None]

    keras.utils.set_random_seed(0)
    id_in, target_in, mask_in = (keras.Input((length,), dtype="int32"), keras.Input((1,), dtype="int32"),
                                 keras.Input((length,)))
    table = keras.layers.Embedding(n_items, 8, embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))
    dien = DIEN(gru_units=8, aux_units=[16])
    out = dien([keras.ops.squeeze(table(target_in), 1), table(id_in), mask_in])
    model = keras.Model([id_in, target_in, mask_in], out)
    model.compile(optimizer=keras.optimizers.Adam(0.05), steps_per_execution=10)  # no loss: the aux loss alone
    steps = 50
    x = [np.tile(v, (steps, 1)) for v in (ids, target, mask)]  # one epoch of `steps` identical batches

    def aux_loss():
        dien([keras.ops.squeeze(table(target), 1), table(ids), mask])
        return float(_np(dien.losses[0]))

    start = aux_loss()
    model.fit(x, epochs=1, batch_size=batch, shuffle=False, verbose=0)
    end = aux_loss()
    assert 1.0 < start < 2.0, start  # about 2 ln 2 untrained
    assert end < 0.5 * start, (start, end)


# ------------------------------------------------------------------ BST
def _np_layer_norm(x, w, prefix, eps=1e-3):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w[f"{prefix}/gamma"] + w[f"{prefix}/beta"]


def _np_attention(s, keys, w, prefix):
    """Multi-head self-attention over the keys where keys > 0, softmax by hand."""
    q = np.einsum("bld,dnk->blnk", s, w[f"{prefix}/query/kernel"]) + w[f"{prefix}/query/bias"]
    k = np.einsum("bld,dnk->blnk", s, w[f"{prefix}/key/kernel"]) + w[f"{prefix}/key/bias"]
    v = np.einsum("bld,dnk->blnk", s, w[f"{prefix}/value/kernel"]) + w[f"{prefix}/value/bias"]
    logits = np.einsum("bqnk,bsnk->bnqs", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(keys[:, None, None, :] > 0, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    context = np.einsum("bnqs,bsnk->bqnk", p, v)
    return np.einsum("bqnk,nkd->bqd", context, w[f"{prefix}/attention_output/kernel"]) + \
        w[f"{prefix}/attention_output/bias"]


def _np_bst(t, h, m, w, context=None, leaky_alpha=0.2):
    """The (batch, L+1, d) outputs of one Transformer layer, and the key mask."""
    if context is not None:
        h = h + _np_dense(context, w, "context")
    s = np.concatenate([h, t[:, None]], axis=1) + w["position_embedding"]
    keys = np.concatenate([m, np.ones((len(m), 1))], axis=1)
    s = _np_layer_norm(s + _np_attention(s, keys, w, "attention_0"), w, "attention_norm_0")
    hidden = _np_dense(s, w, "ffn_hidden_0")
    hidden = np.where(hidden > 0, hidden, leaky_alpha * hidden)
    s = _np_layer_norm(s + _np_dense(hidden, w, "ffn_output_0"), w, "ffn_norm_0")
    return s, keys


@pytest.mark.parametrize("with_context", [False, True])
def test_bst_against_numpy(with_context):
    inputs = [TARGET, HISTORY, MASK] + ([CONTEXT] if with_context else [])
    blocks = {p: BST(num_heads=2, ff_units=6, leaky_alpha=0.3, pooling=p) for p in ("flatten", "target", "mean")}
    for block in blocks.values():
        block(inputs)
    _randomize(blocks["flatten"], seed=10)
    for block in blocks.values():
        block.set_weights(blocks["flatten"].get_weights())
    w = _Weights(blocks["flatten"])
    s, keys = _np_bst(*_f64(TARGET, HISTORY, MASK), w, CONTEXT.astype("float64") if with_context else None, 0.3)
    w.all_read()
    _close(blocks["flatten"](inputs), (s * keys[..., None]).reshape(B, -1), tol=1e-4)
    _close(blocks["target"](inputs), s[:, -1], tol=1e-4)
    _close(blocks["mean"](inputs), (s * keys[..., None]).sum(1) / keys.sum(1, keepdims=True), tol=1e-4)


def test_bst_stacks_layers_with_a_key_size_per_head():
    shapes = [(None, D), (None, L, D), (None, L)]
    bst = BST(num_heads=3, layers=2)
    bst.build(shapes)
    assert {w.path.split("/")[1] for w in bst.weights} >= {"attention_0", "attention_1", "ffn_norm_1"}
    assert bst.transformer[1]["attention"].get_config()["key_dim"] == 1  # D // 3
    wide = BST(num_heads=8)
    wide.build(shapes)
    assert wide.transformer[0]["attention"].get_config()["key_dim"] == D  # D // 8 is 0


@pytest.mark.parametrize("layer,width", [
    (SequencePooling("sum"), D), (DIN(softmax=True), D), (DIEN(), D), (DIEN(gru_units=7), 7),
    (BST(), (L + 1) * D), (BST(pooling="mean"), D), (BST(pooling="target"), D)])
def test_output_shapes(layer, width):
    shapes = [(None, L, D), (None, L)] if isinstance(layer, SequencePooling) else [(None, D), (None, L, D), (None, L)]
    assert tuple(layer.compute_output_shape(shapes)) == (None, width)


# ------------------------------------------------------------------ padding and empty histories
CASES = {
    "pooling_mean": lambda: SequencePooling("mean"),
    "pooling_max": lambda: SequencePooling("max"),
    "din_dice": lambda: DIN(units=[5, 3]),
    "din_softmax": lambda: DIN(units=[4], activation="relu", softmax=True),
    "dien": lambda: DIEN(gru_units=3, aux_units=[4]),
    "bst_flatten": lambda: BST(),
    "bst_target_context": lambda: BST(pooling="target", layers=2),
}


def _inputs(case, history, mask, context=CONTEXT):
    if case.startswith("pooling"):
        return [history, mask]
    return [TARGET, history, mask] + ([context] if case == "bst_target_context" else [])


def _outputs(layer, inputs, training):
    out = _np(layer(inputs, training=training))
    return out, [float(_np(loss)) for loss in layer.losses]


@pytest.mark.parametrize("case", sorted(CASES))
def test_padding_is_inert_and_an_empty_history_is_finite(case):
    make = CASES[case]
    layer = make()
    layer(_inputs(case, HISTORY, MASK))
    _randomize(layer, seed=11)
    weights = layer.get_weights()  # before a training call moves Dice's moving statistics
    rng = np.random.default_rng(12)
    noisy = np.where(MASK[..., None] > 0, HISTORY, rng.normal(scale=3.0, size=HISTORY.shape)).astype("float32")
    noisy_context = np.where(MASK[..., None] > 0, CONTEXT, rng.normal(size=CONTEXT.shape)).astype("float32")
    clean = {}
    for training in (False, True) if case == "din_dice" else (False,):  # Dice's batch statistics skip padding
        out, losses = clean[training] = _outputs(layer, _inputs(case, HISTORY, MASK), training)
        assert np.all(np.isfinite(out)) and np.all(np.isfinite(losses))
        assert np.abs(out[:3]).max() > 0  # a trivial all-zero output would pass the rest
        if not case.startswith("bst"):
            np.testing.assert_array_equal(out[3], 0.0)  # an empty history: nothing to pool or attend to
        noisy_out, noisy_losses = _outputs(layer, _inputs(case, noisy, MASK, noisy_context), training)
        np.testing.assert_allclose(noisy_out, out, rtol=1e-5, atol=1e-6, err_msg=f"training={training}")
        np.testing.assert_allclose(noisy_losses, losses, rtol=1e-5)
    if not case.startswith("bst"):  # BST's positional embedding fixes L
        longer = np.concatenate([noisy, rng.normal(size=(B, 3, D)).astype("float32")], axis=1)
        longer_mask = np.concatenate([MASK, np.zeros((B, 3), "float32")], axis=1)
        fresh = make()
        fresh(_inputs(case, longer, longer_mask))
        fresh.set_weights(weights)
        longer_out, longer_losses = _outputs(fresh, _inputs(case, longer, longer_mask), False)
        np.testing.assert_allclose(longer_out, clean[False][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(longer_losses, clean[False][1], rtol=1e-5)


def test_all_empty_batch_is_finite():
    empty = np.zeros_like(MASK)
    for case, make in CASES.items():
        layer = make()
        for training in (False, True):
            out, losses = _outputs(layer, _inputs(case, HISTORY, empty), training)
            assert np.all(np.isfinite(out)) and np.all(np.isfinite(losses)), case


# ------------------------------------------------------------------ the shared layer test
CONTRACT = {
    "SequencePooling": (SequencePooling, {"mode": "max"}, [HISTORY, MASK], (B, D), 0),
    "DIN": (DIN, {"units": [5, 3], "activation": "dice"}, [TARGET, HISTORY, MASK], (B, D), 0),
    "DIEN": (DIEN, {"gru_units": 3, "attention_units": [3], "aux_weight": 0.5, "aux_units": [4]},
             [TARGET, HISTORY, MASK], (B, 3), 1),
    "BST_context": (BST, {"num_heads": 1, "layers": 1, "ff_units": 8, "dropout": 0.1, "leaky_alpha": 0.1,
                          "pooling": "target"}, [TARGET, HISTORY, MASK, CONTEXT], (B, D), 0),
}


@pytest.mark.parametrize("case", sorted(CONTRACT))
def test_layer_contract(case):
    cls, kwargs, data, shape, losses = CONTRACT[case]
    run_layer_test(cls, kwargs, data, shape, expected_num_losses=losses, train=cls is not SequencePooling)
    shapes = [(None, *x.shape[1:]) for x in data]
    assert tuple(cls(**kwargs).compute_output_shape(shapes)) == (None, *shape[1:])


# ------------------------------------------------------------------ bad arguments and inputs
@pytest.mark.parametrize("cls,bad,name", [
    (SequencePooling, {"mode": "avg"}, "mode"),
    (DIN, {"units": [4, 0]}, "units"),
    (DIN, {"units": 4}, "units"),
    (DIN, {"activation": "dicey"}, "activation"),
    (DIN, {"softmax": "yes"}, "softmax"),
    (DIEN, {"gru_units": 0}, "gru_units"),
    (DIEN, {"attention_units": [2.5]}, "attention_units"),
    (DIEN, {"aux_weight": -1.0}, "aux_weight"),
    (DIEN, {"aux_units": "8"}, "aux_units"),
    (BST, {"num_heads": 0}, "num_heads"),
    (BST, {"layers": 1.5}, "layers"),
    (BST, {"ff_units": -4}, "ff_units"),
    (BST, {"dropout": 1.0}, "dropout"),
    (BST, {"leaky_alpha": -0.2}, "leaky_alpha"),
    (BST, {"pooling": "last"}, "pooling"),
    (Dice, {"epsilon": 0.0}, "epsilon"),
])
def test_bad_arguments_are_rejected(cls, bad, name):
    with pytest.raises(ValueError, match=f"`{name}`") as err:
        cls(**bad)
    assert "received" in str(err.value)


@pytest.mark.parametrize("inputs,words", [
    ([TARGET[:, :3], HISTORY, MASK], "one embedding width"),
    ([TARGET, HISTORY, MASK[:, :4]], "history's length"),
    ([TARGET, HISTORY], "takes the inputs [target, history, mask]"),
    ([TARGET, HISTORY[:, 0], MASK], "`history` must have rank 3"),
])
def test_bad_inputs_are_named(inputs, words):
    with pytest.raises(ValueError) as err:
        DIN(units=[2])(inputs)
    assert words in str(err.value)
