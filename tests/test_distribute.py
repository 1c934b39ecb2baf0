"""Training on several devices (kzoo.distribute): 8 virtual CPU devices against one device.

The device count is fixed before a backend starts, so the training runs in a child process (this
file run as a script) that reports in JSON; the pytest process checks the report. The refusals
run here, without a child.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("distribute")

DEVICES, STEPS, BATCH = 8, 5, 64

# Two tables: emb's 64 + 40 = 104 rows divide by 8 (sharded by rows), extra's 13 do not (by columns).
SPEC = {"name": "tiny_distributed",
        "features": {"name": "toy", "label": "label", "features": [
            {"name": "u", "type": "categorical", "hash_buckets": 64},
            {"name": "i", "type": "categorical", "hash_buckets": 40},
            {"name": "c", "type": "categorical", "hash_buckets": 13},
            {"name": "x", "type": "numeric"}]},
        "groups": {"main": ["u", "i", "x"], "side": ["c"]},
        "blocks": [{"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:main"], "args": {"dim": 8}},
                   {"name": "extra", "type": "FeatureEmbedding", "inputs": ["group:side"], "args": {"dim": 8}},
                   {"name": "top", "type": "Concat", "inputs": ["emb", "extra"]},
                   {"name": "deep", "type": "MLP", "inputs": ["top"], "args": {"units": [16]}}],
        "tasks": [{"name": "ctr", "type": "binary", "input": "deep"}],
        "train": {"optimizer": {"type": "adam", "learning_rate": 0.02}, "batch_size": BATCH}}
TABLES = {"emb/embeddings": (104, 8), "extra/embeddings": (13, 8)}


def frame(rows: int = 700, seed: int = 0) -> pd.DataFrame:
    """Rows with a learnable label: ids hashed into the tables, one numeric column."""
    rng = np.random.default_rng(seed)
    u, i, c, x = rng.integers(0, 200, rows), rng.integers(0, 90, rows), rng.integers(0, 30, rows), rng.normal(size=rows)
    logit = np.sin(u) + np.cos(i) + 0.5 * x
    return pd.DataFrame({"u": u.astype(str), "i": i.astype(str), "c": c.astype(str), "x": x,
                         "label": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)})


# ------------------------------------------------------------------------------------ the child

def child(out: Path) -> None:
    """Writes a JSON report: two whole `kzoo.train` runs of the same spec and data, on one device and
    distributed over 8 (JAX: tables sharded on a 2x4 mesh; TensorFlow: mirrored), then on JAX the
    in-process plans (data parallel; tables over all 8) against one device from the same initial
    weights for STEPS batches, with where each table's pieces live."""
    import keras

    import kzoo
    from kzoo import distribute

    backend = keras.backend.backend()
    dist = {"distribute": "model", "mesh": "2x4"} if backend == "jax" else {"distribute": "data"}
    report = {"backend": backend, "t": {}}
    for name, flags in (("one", {"virtual_devices": DEVICES}), ("distributed", dist)):  # the first fixes 8 devices
        run = out.parent / name
        metrics = kzoo.train(SPEC, frame(), run, epochs=1, verbose=0, **flags)
        model = kzoo.load_model(run)
        report[name] = {"metrics": metrics, "run": json.loads((run / "run.json").read_text()),
                        "history": pd.read_csv(run / "history.csv").to_dict("records"),
                        "weights": {v.path: np.asarray(v).tolist() for v in model.weights}}
        report["t"][name] = time.time() - T0

    spec = kzoo.load_spec(SPEC)
    plans = {"one": distribute.setup(None), "data": distribute.setup("data", spec, batch_size=BATCH)}
    if backend == "tensorflow":  # mirrored: a whole, equal copy of every variable on each device
        model = plans["data"].build(lambda: kzoo.build(spec))
        parts = model.get_layer("emb").embeddings.value.values
        report["replicas"] = {"devices": sorted({p.device for p in parts}),
                              "equal": all(np.array_equal(np.asarray(p), np.asarray(parts[0])) for p in parts)}
        out.write_text(json.dumps(report))
        return
    plans["model"] = distribute.setup("model", spec, batch_size=BATCH)  # mesh 1x8: every table over 8 devices
    prepared = kzoo.prepare(spec, frame(), BATCH)
    batches = prepared.train.take(STEPS)

    class Losses(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = []

        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(float(logs["loss"]))

    report["runs"], reference, init = {}, None, None
    for name, plan in plans.items():
        keras.utils.set_random_seed(1)
        model = plan.build(lambda: kzoo.compile(kzoo.build(prepared.spec, prepared.stats), prepared.spec))
        if init is None:
            init = model.get_weights()
        else:
            model.set_weights(init)
        losses = Losses()
        with plan.scope():
            model.fit(plan.batches(batches), epochs=1, verbose=0, shuffle=False, callbacks=[losses])
        weights = {v.path: np.asarray(v) for v in model.weights}
        reference = reference or weights
        run = {"losses": losses.seen, "tables": dict(plan.tables),
               "weight_diff": max(float(np.max(np.abs(weights[k] - reference[k]))) for k in reference),
               "shards": {path: _shards(next(v for v in model.weights if v.path == path).value)
                          for path in [*TABLES, "deep/dense_0/kernel"]}}
        report["runs"][name] = run
        report["t"][f"steps_{name}"] = time.time() - T0
    out.write_text(json.dumps(report))


def _shards(array) -> list[dict]:
    """Where each piece of a JAX array lives, its shape, and whether it is that slice of the whole."""
    whole = np.asarray(array)
    return [{"device": str(s.device), "shape": list(s.data.shape), "index": [[i.start, i.stop] for i in s.index],
             "is_slice": bool(np.array_equal(np.asarray(s.data), whole[s.index]))} for s in array.addressable_shards]


# ------------------------------------------------------------------------------------ the tests

@pytest.fixture(scope="module")
def report(tmp_path_factory, backend):
    out = tmp_path_factory.mktemp("distribute") / "report.json"
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    result["stderr"] = done.stderr
    return result


def test_kzoo_train_distributed_matches_one_device(report):
    one, dist = report["one"], report["distributed"]
    assert one["run"]["distribute"] is None
    mesh = {"data": 2, "model": 4} if report["backend"] == "jax" else {"data": DEVICES, "model": 1}
    assert dist["run"]["distribute"]["mesh"] == mesh and dist["run"]["distribute"]["devices"] == DEVICES
    assert f"kzoo: --distribute {dist['run']['distribute']['mode']}:" in report["stderr"]
    # The same seed, data and global batches: the same epoch loss, weights and test metrics.
    assert dist["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=1e-5)
    assert dist["history"][0]["loss"] < 0.69  # it learned something
    assert set(dist["weights"]) == set(one["weights"])
    for path, value in one["weights"].items():  # model.keras holds whole tables (gathered), trained alike
        np.testing.assert_allclose(dist["weights"][path], value, atol=2e-5, err_msg=path)
    assert dist["metrics"]["ctr"]["auc"] == pytest.approx(one["metrics"]["ctr"]["auc"], abs=1e-4)
    assert dist["metrics"]["examples"] == one["metrics"]["examples"] == 70


def test_tensorflow_mirrors_every_variable(report):
    if report["backend"] != "tensorflow":
        pytest.skip("JAX data parallelism is checked with its shards in test_jax_steps_match_one_device_...")
    # One whole, equal copy of the table on each of the 8 devices.
    assert len(report["replicas"]["devices"]) == DEVICES and report["replicas"]["equal"]


def test_jax_steps_match_one_device_and_tables_are_sharded(report):
    if report["backend"] != "jax":
        pytest.skip("tables are sharded on JAX only; TensorFlow refuses --distribute model "
                    "(test_cli_refuses_without_a_traceback)")
    runs = report["runs"]
    one = runs["one"]["losses"]
    assert len(one) == STEPS and one[-1] < one[0]
    for name in ("data", "model"):  # same initial weights, same global batches: each step agrees
        np.testing.assert_allclose(runs[name]["losses"], one, rtol=1e-5, atol=1e-6, err_msg=name)
        assert runs[name]["weight_diff"] < 2e-5, (name, runs[name]["weight_diff"])
    model = runs["model"]
    assert model["tables"] == {"emb/embeddings": f"rows/{DEVICES}", "extra/embeddings": f"columns/{DEVICES}"}
    for path, (rows, dim) in TABLES.items():
        shards = model["shards"][path]
        assert len({s["device"] for s in shards}) == DEVICES and all(s["is_slice"] for s in shards)
        by_rows = model["tables"][path].startswith("rows")
        want = [rows // DEVICES, dim] if by_rows else [rows, dim // DEVICES]
        assert all(s["shape"] == want for s in shards), (path, shards)
        axis = 0 if by_rows else 1  # the pieces tile the sharded axis without overlap
        assert sorted(tuple(s["index"][axis]) for s in shards) == [
            (k * want[axis], (k + 1) * want[axis]) for k in range(DEVICES)]
    dense = model["shards"]["deep/dense_0/kernel"]  # dense weights: a whole copy on each device
    assert len(dense) == DEVICES and all(s["shape"] == [32, 16] and s["is_slice"] for s in dense)
    data = runs["data"]["shards"]["emb/embeddings"]
    assert all(s["shape"] == [104, 8] for s in data) and len({s["device"] for s in data}) == DEVICES
    # The 2x4 run of kzoo.train: rows of emb over 4 devices, extra's 13 rows by columns.
    assert "emb/embeddings by rows/4, extra/embeddings by columns/4" in report["stderr"]


def test_last_partial_batch_is_topped_up_on_jax():
    import tensorflow as tf

    from kzoo.distribute import Plan

    rows = np.arange(13)
    ds = tf.data.Dataset.from_tensor_slices(({"a": rows}, rows * 10)).batch(5)
    got = [(x["a"].numpy().tolist(), y.numpy().tolist()) for x, y in Plan("data", "jax", 4, (4, 1)).batches(ds)]
    # 5 -> 8 rows (its first rows again), 3 -> 4; the batch count stays known.
    assert got == [([0, 1, 2, 3, 4, 0, 1, 2], [0, 10, 20, 30, 40, 0, 10, 20]),
                   ([5, 6, 7, 8, 9, 5, 6, 7], [50, 60, 70, 80, 90, 50, 60, 70]),
                   ([10, 11, 12, 10], [100, 110, 120, 100])]
    assert Plan("data", "jax", 4, (4, 1)).batches(ds).cardinality().numpy() == 3
    assert Plan("data", "tensorflow", 4, (4, 1)).batches(ds) is ds  # tf.distribute splits uneven batches


# ------------------------------------------------------------------------------------ refusals

def test_refusals_name_the_option_and_the_fix(backend):
    import kzoo
    from kzoo import distribute
    from kzoo.errors import SpecError

    spec = kzoo.load_spec(SPEC)
    with pytest.raises(SpecError, match=r"--mesh: expected DATAxMODEL .* received '2x'"):
        distribute.parse_mesh("2x")
    assert distribute.parse_mesh("2x4") == (2, 4)
    with pytest.raises(SpecError, match="--mesh: .*goes with --distribute model"):
        distribute.setup("data", spec, mesh="2x4")
    with pytest.raises(SpecError, match=r"--distribute: expected one of data, model, received 'pipeline'"):
        distribute.setup("pipeline", spec)
    with pytest.raises(SpecError, match=r"batch size .*: 100 is the global batch, .* 8 .*; use 96 or 104"):
        distribute.check_batch(100, 8)
    distribute.check_batch(96, 8)
    sparse = kzoo.load_spec({**SPEC, "train": {**SPEC["train"], "embedding_optimizer": {"type": "adagrad"}}})
    with pytest.raises(SpecError, match="train.embedding_optimizer: the row-sparse optimizer 'adagrad'"):
        distribute.setup("data", sparse)


def test_virtual_devices_after_start_is_a_clear_error(backend, monkeypatch):
    import keras

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # restored after: the call may add a flag

    from kzoo import distribute
    from kzoo.errors import SpecError

    keras.ops.convert_to_numpy(keras.ops.ones(1))  # this process's backend has started
    have = _device_count(backend)
    distribute.set_virtual_devices(have)  # the count it has: accepted
    with pytest.raises(SpecError, match=r"--virtual-devices: the \w+ backend has already started"):
        distribute.set_virtual_devices(have + 2)


def _device_count(backend) -> int:
    if backend == "jax":
        import jax

        return len(jax.devices())
    import tensorflow as tf

    return len(tf.config.list_logical_devices("CPU"))


def test_cli_refuses_without_a_traceback(backend, tmp_path, capsys):
    from kzoo.cli import main

    args = ["train", "--data", "synthetic:300", "--out", str(tmp_path / "run")]
    if backend == "tensorflow":  # Keras 3 has no sharded-variable engine on TensorFlow
        code = main([*args[:1], "dcn_v2", *args[1:], "--distribute", "model"])
        want = "--distribute: 'model' (sharded embedding tables) needs the jax backend"
    else:  # this process has one device
        code = main([*args[:1], "dcn_v2", *args[1:], "--distribute", "model", "--mesh", "3x3"])
        want = "--mesh: 3x3 is 9 devices, but there are 1"
    err = capsys.readouterr().err
    assert code == 2 and want in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before a run dir is made


if __name__ == "__main__":
    T0 = time.time()
    child(Path(sys.argv[1]))
