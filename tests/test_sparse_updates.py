"""Row-sparse embedding updates (kzoo.sparse): each rule against NumPy, on the backend in use.

The model: one FeatureEmbedding with two tables (`t` shared by two categorical features, `u` shared by a
categorical and a padded sequence feature), L2 on the looked-up rows, and a linear head, every weight and
every optimizer slot randomised. Three steps of `train_on_batch` (through `kzoo.sparse.row_sparse`, as
kzoo.train does) are checked against a NumPy computation of the same maths: the gradient of each looked-up
row derived by hand, summed per distinct row, each rule applied to the touched rows only (a padded
sequence position reads its table's row 0 with weight 0, so that row counts as touched).
"""

import json

import keras
import numpy as np
import pytest

import kzoo
from kzoo.blocks.core import FeatureEmbedding
from kzoo.errors import SpecError
from kzoo.optim import SplitOptimizer, embedding_variable_paths
from kzoo.sparse import OPTIMIZERS, row_sparse

from conftest import REPO

# More rows (70) than a batch looks up (48), so that only the table and its slots are (70, DIM)-shaped.
FEATURES = [{"name": "a", "kind": "categorical", "vocab_size": 40, "table": "t"},
            {"name": "b", "kind": "categorical", "vocab_size": 8, "table": "t"},
            {"name": "c", "kind": "categorical", "vocab_size": 30, "table": "u"},
            {"name": "s", "kind": "sequence", "vocab_size": 30, "max_len": 3, "table": "u"}]
OFFSET = {"a": 0, "b": 0, "c": 40, "s": 40}
ROWS, DIM, BATCH, L2, DENSE_LR = 70, 3, 8, 0.01, 0.1
HPARAMS = {"sgd": {"learning_rate": 0.3},
           "adagrad": {"learning_rate": 0.2, "initial_accumulator_value": 0.1, "epsilon": 1e-7},
           "lazy_adam": {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-7},
           "ftrl": {"learning_rate": 0.2, "learning_rate_power": -0.5, "l1_regularization_strength": 0.01,
                    "l2_regularization_strength": 0.02}}


def batches(seed=0, steps=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        seq = rng.integers(0, 6, size=(BATCH, 3))  # rows 6+ of `u` only ever come from `c`
        seq[rng.random((BATCH, 3)) < 0.4] = -1  # padding
        seq[0] = -1  # a row with an empty history
        x = {"a": rng.choice([1, 2, 2, 5, 7, 33], size=(BATCH, 1)),  # duplicates; most rows untouched
             "b": rng.choice([2, 5, 6], size=(BATCH, 1)),  # shares rows 2 and 5 with `a`
             "c": rng.choice([1, 3, 3, 7], size=(BATCH, 1)),  # shares rows of `u` with `s`
             "s": seq}
        out.append(({k: v.astype("int32") for k, v in x.items()}, rng.normal(size=(BATCH, 1)).astype("float32")))
    return out


def make_model(rule, seed=0):
    """(model to fit, the compiled inner model, FeatureEmbedding), weights and slots randomised."""
    rng = np.random.default_rng(seed + 1)
    inputs = {f["name"]: keras.Input((f.get("max_len", 1),), dtype="int32", name=f["name"]) for f in FEATURES}
    emb = FeatureEmbedding(dim=DIM, features=FEATURES, l2=L2, name="emb")
    head = keras.layers.Dense(1, name="head")
    model = keras.Model(inputs, head(keras.layers.Flatten()(emb(inputs))))
    emb.embeddings.assign(rng.uniform(-0.5, 0.5, (ROWS, DIM)).astype("float32"))
    head.kernel.assign(rng.normal(size=(4 * DIM, 1)).astype("float32"))
    head.bias.assign(rng.normal(size=(1,)).astype("float32"))
    tables = OPTIMIZERS[rule](**HPARAMS[rule])
    model.compile(optimizer=SplitOptimizer(tables, keras.optimizers.SGD(DENSE_LR), embedding_variable_paths(model)),
                  loss="mse")
    model.optimizer.build(model.trainable_variables)
    for name, slot in tables.slots_of(emb.embeddings).items():
        low = 0.0 if name == "momentum" or name == "linear" else 0.05
        slot.assign(rng.uniform(low - (0.3 if low == 0 else 0), 0.6, (ROWS, DIM)).astype("float32"))
    return row_sparse(model), model, emb


def looked_up(x):
    """The rows each lookup reads (padding reads row 0 of its table) and its weight in the output."""
    ids = {k: x[k][:, 0] + OFFSET[k] for k in "abc"}
    seq = x["s"]
    valid = seq >= 0
    return ids, np.where(valid, seq, 0) + OFFSET["s"], valid


def numpy_gradients(table, kernel, bias, x, y):
    """d loss / d table (dense, rows summed), d kernel, d bias for loss = MSE + L2 · Σ looked-up rows² / B."""
    ids, seq_rows, valid = looked_up(x)
    fields = [table[ids[k]] for k in "abc"]
    count = valid.sum(1, keepdims=True)
    items = table[seq_rows] * valid[..., None]
    fields.append(items.sum(1) / np.maximum(count, 1))
    flat = np.concatenate(fields, axis=1)
    d_pred = 2 * (flat @ kernel + bias - y) / BATCH
    d_fields = (d_pred @ kernel.T).reshape(BATCH, 4, DIM)
    grad = np.zeros_like(table)
    for f, k in enumerate("abc"):
        np.add.at(grad, ids[k], d_fields[:, f] + 2 * L2 * table[ids[k]] / BATCH)
    per_item = valid[..., None] * (d_fields[:, 3][:, None, :] / np.maximum(count, 1)[..., None]
                                   + 2 * L2 * table[seq_rows] / BATCH)
    np.add.at(grad, seq_rows.reshape(-1), per_item.reshape(-1, DIM))
    touched = np.unique(np.concatenate([*ids.values(), seq_rows.reshape(-1)]))
    return grad, flat.T @ d_pred, d_pred.sum(0), touched


def numpy_rule(rule, w, g, slots, t):
    """One step of `rule` on the touched rows `w` (float64), Keras' formulas."""
    h = HPARAMS[rule]
    lr = h["learning_rate"]
    if rule == "sgd":
        return w - lr * g, []
    if rule == "adagrad":
        acc = slots[0] + g * g
        return w - lr * g / np.sqrt(acc + h["epsilon"]), [acc]
    if rule == "lazy_adam":
        m = slots[0] + (g - slots[0]) * (1 - h["beta_1"])
        v = slots[1] + (g * g - slots[1]) * (1 - h["beta_2"])
        alpha = lr * np.sqrt(1 - h["beta_2"] ** t) / (1 - h["beta_1"] ** t)
        return w - alpha * m / (np.sqrt(v) + h["epsilon"]), [m, v]
    n, z = slots
    n_new = n + g * g
    z = z + g - (np.sqrt(n_new) - np.sqrt(n)) / lr * w
    l1, l2 = h["l1_regularization_strength"], h["l2_regularization_strength"]
    return (np.clip(z, -l1, l1) - z) / (np.sqrt(n_new) / lr + 2 * l2), [n_new, z]


def state(emb, opt):
    tables = opt.embedding_optimizer
    slots = tables.slots_of(emb.embeddings)
    return [keras.ops.convert_to_numpy(v).astype("float64") for v in [emb.embeddings, *slots.values()]]


@pytest.mark.parametrize("rule", list(OPTIMIZERS))
def test_each_rule_matches_numpy_and_leaves_untouched_rows_bit_unchanged(rule):
    fit, model, emb = make_model(rule)
    head = model.get_layer("head")
    table, *slots = state(emb, model.optimizer)
    start = [table.copy(), *[s.copy() for s in slots]]
    kernel, bias = (keras.ops.convert_to_numpy(v).astype("float64") for v in (head.kernel, head.bias))
    ever = set()
    for t, (x, y) in enumerate(batches(), start=1):
        grad, d_kernel, d_bias, touched = numpy_gradients(table, kernel, bias, x, y)
        ever.update(touched.tolist())
        new, new_slots = numpy_rule(rule, table[touched], grad[touched], [s[touched] for s in slots], t)
        table[touched] = new
        for s, value in zip(slots, new_slots):
            s[touched] = value
        kernel, bias = kernel - DENSE_LR * d_kernel, bias - DENSE_LR * d_bias
        fit.train_on_batch(x, y)
    got_table, *got_slots = state(emb, model.optimizer)
    np.testing.assert_allclose(got_table, table, rtol=2e-5, atol=2e-6)
    for got, want in zip(got_slots, slots):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head.kernel), kernel, rtol=2e-5, atol=2e-6)
    untouched = sorted(set(range(ROWS)) - ever)
    assert len(untouched) >= 5 and not np.allclose(got_table[sorted(ever)], start[0][sorted(ever)])
    for got, before in zip([got_table, *got_slots], start):
        np.testing.assert_array_equal(got[untouched], before[untouched])  # bit-unchanged, slots included


def test_no_table_sized_gradient_or_update(backend):
    """The step never builds a table-sized dense tensor: on JAX no equation of the step's jaxpr outputs a
    (rows, dim) array except the scatters that write touched rows back; on TensorFlow the table and its
    slots are only gathered from and scattered into (no dense read or assign), and the IndexedSlices'
    dense shape feeds no op (no conversion to a dense gradient)."""
    fit, model, emb = make_model("lazy_adam")
    x, y = batches()[0]
    fit.train_on_batch(x, y)
    tables = [emb.embeddings, *model.optimizer.embedding_optimizer.slots_of(emb.embeddings).values()]
    if backend == "jax":
        import jax

        values = [[v.value for v in vs] for vs in (fit.trainable_variables, fit.non_trainable_variables,
                                                    fit.optimizer.variables, fit.metrics_variables)]
        jaxpr = jax.make_jaxpr(fit.train_step)(values, (x, y))
        sized = []

        def walk(jx):
            for eqn in jx.eqns:
                if any(getattr(o.aval, "shape", None) == (ROWS, DIM) for o in eqn.outvars):
                    sized.append(eqn.primitive.name)
                for param in eqn.params.values():
                    inner = getattr(param, "jaxpr", param)
                    if hasattr(inner, "eqns"):
                        walk(inner)

        walk(jaxpr.jaxpr)
        assert set(sized) <= {"scatter", "pjit", "jit"}, sized
        assert sized.count("scatter") == len(tables), sized  # the table and each slot, written once
    else:
        import tensorflow as tf

        graph = tf.function(model.train_step).get_concrete_function((x, y)).graph
        handles = {id(v.value.handle) for v in tables}
        inside = [internal for external, internal in graph.captures if id(external) in handles]
        assert len(inside) == len(tables)
        uses = [(consumer.type, consumer) for h in inside for consumer in h.consumers()]
        assert {kind for kind, _ in uses} <= {"ResourceGather", "ResourceScatterUpdate", "VariableShape"}, uses
        assert sum(kind == "ResourceScatterUpdate" for kind, _ in uses) == len(tables)
        for kind, op in uses:
            if kind == "VariableShape":
                assert not op.outputs[0].consumers(), [c.type for c in op.outputs[0].consumers()]


def test_slots_survive_save_and_reload(tmp_path):
    """model.keras carries the table slots: a reloaded model predicts the same and its next step equals
    the original's."""
    fit, model, emb = make_model("lazy_adam")
    data = batches(seed=5)
    for x, y in data[:2]:
        fit.train_on_batch(x, y)
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(data[2][0], verbose=0), model.predict(data[2][0], verbose=0),
                               rtol=1e-6)
    tables = reloaded.optimizer.embedding_optimizer
    assert type(tables).__name__ == "LazyAdam" and int(tables.iterations) == 2
    before = model.optimizer.embedding_optimizer.slots_of(emb.embeddings)
    after = tables.slots_of(reloaded.get_layer("emb").embeddings)
    for name in ("momentum", "velocity"):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after[name]), keras.ops.convert_to_numpy(before[name]))
    fit.train_on_batch(*data[2])
    row_sparse(reloaded).train_on_batch(*data[2])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded.get_layer("emb").embeddings),
                               keras.ops.convert_to_numpy(emb.embeddings), rtol=1e-6, atol=1e-7)


def test_huge_pages_hint_only_for_large_tables_on_opt_in_huge_pages(tmp_path, monkeypatch):
    import kzoo.sparse as ks

    fit, model, _ = make_model("adagrad")
    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert ks.huge_pages_hint(fit, thp) is None  # ROWS x DIM floats: far below the threshold
    monkeypatch.setattr(ks, "HUGE_PAGES_HINT_BYTES", ROWS * DIM * 4)
    hint = ks.huge_pages_hint(fit, thp)
    assert hint and "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in hint
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    assert ks.huge_pages_hint(fit, thp) is None  # already asked for
    monkeypatch.delenv("GLIBC_TUNABLES")
    thp.write_text("[always] madvise never\n")
    assert ks.huge_pages_hint(fit, thp) is None  # huge pages without asking
    monkeypatch.setattr(model.optimizer, "embedding_optimizer", keras.optimizers.Adagrad())
    thp.write_text("always [madvise] never\n")
    assert ks.huge_pages_hint(model, thp) is None  # dense updates: the hint is about row reads


def _spec(train: dict) -> dict:
    spec = json.loads((REPO / "zoo_configs" / "deepfm.json").read_text())
    spec["features"] = {"$ref": "datasets/criteo.json"}
    spec["train"] = {"optimizer": {"type": "adam"}, **train}
    return spec


@pytest.mark.parametrize("train, path, words", [
    ({"optimizer": {"type": "lazy_adam"}}, "train.optimizer.type", "lazy_adam"),
    ({"embedding_optimizer": {"type": "sgd", "momentum": 0.9}}, "train.embedding_optimizer.momentum", "lazy_adam"),
    ({"embedding_optimizer": {"type": "lazy_adam", "weight_decay": 0.1}}, "train.embedding_optimizer.weight_decay",
     "embedding_l2"),
    ({"embedding_optimizer": {"type": "adagrad", "beta_1": 0.9}}, "train.embedding_optimizer.beta_1", "lazy_adam"),
    ({"embedding_optimizer": {"type": "ftrl"}, "balancing": {"type": "pcgrad"}}, "train.balancing.type", "adagrad"),
], ids=["lazy-adam-dense", "sgd-momentum", "weight-decay", "wrong-key", "ftrl-balancing"])
def test_bad_embedding_optimizer_settings_are_named_at_their_path(train, path, words):
    spec = _spec(train)
    if "balancing" in train:
        spec["tasks"].append({**spec["tasks"][0], "name": "ctr2"})
    with pytest.raises(SpecError) as err:
        kzoo.load_spec(spec, base_dir=REPO / "zoo_configs")
    assert path in str(err.value) and words in str(err.value), str(err.value)
