"""kzoo compress: int8 quantization (per-row tables), magnitude pruning, distillation; each checked
against an independent NumPy computation, and the int8 run exported and served through gRPC."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

import kzoo
from kzoo import data as kdata
from kzoo.blocks.core import FeatureEmbedding
from kzoo.cli import main
from kzoo.compress import compress, magnitude_mask, make_distiller, quantize_int8
from kzoo.rundir import RunDir
from tests.tf_only import serve_fresh

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("compression")

REPO = Path(__file__).resolve().parents[1]
ROWS = "synthetic:400"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "dcn_v2"
    kzoo.train(REPO / "zoo_configs" / "dcn_v2.json", ROWS, out, epochs=1, batch_size=64, verbose=0)
    return out


@pytest.fixture(scope="module")
def int8_run(run):
    out = run.parent / "dcn_v2_int8"
    compress(run, out, "int8")
    return out


@pytest.fixture(scope="module")
def rows():
    frame = kdata.synthetic(40, seed=11).drop(columns=["label"])
    frame.loc[0, "I1"] = np.nan
    frame.loc[1, "C1"] = "never-seen"
    return frame


def numpy_int8_rows(table: np.ndarray) -> np.ndarray:
    """Per-row absmax int8: s = 127 / (max|row| + eps), q = clip(round(row·s), ±127), row ≈ q / s."""
    scale = 127.0 / (np.abs(table).max(axis=1, keepdims=True) + keras.backend.epsilon())
    return np.clip(np.round(table * scale), -127, 127) / scale


def test_int8_feature_embedding_is_per_row_quantization(tmp_path):
    features = [{"name": "a", "kind": "categorical", "vocab_size": 7},
                {"name": "b", "kind": "categorical", "vocab_size": 5},
                {"name": "x", "kind": "numeric"}]
    inputs = {"a": keras.Input((1,), dtype="int32", name="a"), "b": keras.Input((1,), dtype="int32", name="b"),
              "x": keras.Input((1,), name="x")}
    layer = FeatureEmbedding(dim=6, features=features, initializer_scale=1.0, name="emb")
    model = keras.Model(inputs, layer(inputs))
    rng = np.random.default_rng(0)
    table = rng.normal(size=(12, 6)).astype("float32") * rng.uniform(0.01, 3, size=(12, 1)).astype("float32")
    layer.embeddings.assign(table)
    kernel = keras.ops.convert_to_numpy(layer.numeric_kernel)
    x = {"a": np.arange(7).reshape(-1, 1) % 7, "b": np.arange(7).reshape(-1, 1) % 5,
         "x": rng.normal(size=(7, 1)).astype("float32")}
    assert quantize_int8(model) == ["emb"]  # model.quantize("int8"), Keras' own walk over the layers
    assert keras.backend.standardize_dtype(layer.embeddings.dtype) == "int8"
    assert tuple(layer.embeddings_scale.shape) == (12,)  # one scale per row
    want = numpy_int8_rows(table)
    got = keras.ops.convert_to_numpy(model(x))
    np.testing.assert_allclose(got[:, 0], want[x["a"][:, 0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[:, 1], want[7 + x["b"][:, 0]], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got[:, 2], x["x"] * kernel[0], rtol=1e-6)  # the numeric kernel stays float
    assert np.abs(want - table).max() > 1e-4  # the check would notice an unquantized table
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(x)), got)


def test_int8_run_close_to_fp32_and_exports_int8(run, int8_run, rows):
    fp32 = kzoo.predict(run, rows)["ctr"].to_numpy()
    int8 = kzoo.predict(int8_run, rows)["ctr"].to_numpy()
    # Quantization error only: tables and kernels to ~0.4 % of each row's / column's max.
    assert np.abs(int8 - fp32).max() < 0.01
    assert np.abs(int8 - fp32).max() > 0  # it did change the model
    model = RunDir(int8_run).model()
    quantized = {layer.name for layer in model._flatten_layers() if layer.quantization_mode == "int8"}
    assert "emb" in quantized and "ctr_logit" in quantized and len(quantized) >= 9  # cross + MLP denses
    metrics = json.loads((int8_run / "metrics.json").read_text())
    source = json.loads((run / "metrics.json").read_text())
    assert metrics["param_bytes"] < source["params"] * 4 / 3  # int8 plus float scales, < 1/3 of fp32
    assert json.loads((int8_run / "run.json").read_text())["compressed"]["method"] == "int8"


def test_int8_export_serves_the_run_through_tf_and_grpc(int8_run, rows, tmp_path):
    from kzoo.serving.client import GrpcClient
    from kzoo.serving.testing_server import serve

    version = kzoo.export(int8_run, tmp_path / "exports")
    want = kzoo.predict(int8_run, rows)["ctr"].to_numpy()
    served = np.asarray(serve_fresh(version, rows, tmp_path)["outputs"]["ctr"])
    np.testing.assert_allclose(served, want, rtol=0, atol=1e-5)
    with serve(tmp_path / "exports", "kzoo") as server:
        with GrpcClient(server.grpc_target, "kzoo", version) as client:
            got = client.predict(rows.to_dict("records"))
    np.testing.assert_allclose(got["ctr"], served, rtol=0, atol=1e-6)


def test_magnitude_mask_zeroes_exactly_the_smallest():
    w = np.random.default_rng(1).normal(size=(37, 11)).astype("float32")
    for sparsity in (0.0, 0.3, 0.5, 0.9):
        mask = magnitude_mask(w, sparsity)
        k = int(round(sparsity * w.size))
        assert int((mask == 0).sum()) == k
        if 0 < k < w.size:
            assert np.abs(w[mask == 0]).max() <= np.abs(w[mask == 1]).min()


def test_prune_reaches_the_sparsity_and_fine_tuning_keeps_zeros(run):
    out = run.parent / "dcn_v2_pruned"
    # In _flatten_layers order: the Dense layers inside keras-rs' FeatureCross are named by a global
    # counter, so their names differ from one load to the next.
    kernels = lambda model: [keras.ops.convert_to_numpy(layer.kernel) for layer in model._flatten_layers()  # noqa
                             if isinstance(layer, keras.layers.Dense)]
    before = kernels(RunDir(run).model())
    metrics = compress(run, out, "prune", sparsity=0.5, epochs=1, batch_size=64, verbose=0)
    after = kernels(RunDir(out).model())
    assert len(after) == len(before) >= 9
    for i, (w, pruned) in enumerate(zip(before, after)):
        mask = magnitude_mask(w, 0.5)  # NumPy: where the zeros must be, from the source weights
        assert int((pruned == 0).sum()) == int(round(0.5 * w.size)), i
        np.testing.assert_array_equal(pruned[mask == 0], 0, err_msg=str(i))
        assert not np.allclose(pruned[mask == 1], w[mask == 1]), i  # fine-tuning changed the rest
    assert metrics["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["fine_tune"]["loss"]


@pytest.mark.parametrize("alpha,temperature,t_squared", [(0.3, 2.0, False), (0.7, 4.0, True), (1.0, 1.0, False)])
def test_distillation_loss_equals_the_formula(alpha, temperature, t_squared):
    rng = np.random.default_rng(2)
    n = 32
    zs, zt = rng.normal(0, 3, size=(n, 1)).astype("float32"), rng.normal(0, 3, size=(n, 1)).astype("float32")
    y = (rng.random((n, 1)) < 0.3).astype("float32")
    logit_in = keras.Input((1,), name="zs")
    student = keras.Model({"zs": logit_in}, {"ctr": keras.layers.Identity()(logit_in)})
    distiller, hard = make_distiller(student, ["ctr"], alpha, temperature, t_squared)
    distiller.compile(optimizer="sgd", loss=hard)
    got = float(keras.ops.convert_to_numpy(distiller.compute_loss({"zs": zs, "__teacher_logit_ctr": zt}, y)))

    sig = lambda z: 1 / (1 + np.exp(-z.astype("float64")))  # noqa: E731
    q = sig(zs)
    bce = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    p_t, p_s = sig(zt / temperature), sig(zs / temperature)
    kl = np.mean(p_t * np.log(p_t / p_s) + (1 - p_t) * np.log((1 - p_t) / (1 - p_s)))
    want = alpha * bce + (1 - alpha) * kl * (temperature ** 2 if t_squared else 1)
    assert got == pytest.approx(want, rel=1e-5)


def test_distill_end_to_end_trains_the_student(run, tmp_path):
    out = tmp_path / "student"
    metrics = compress(run, out, "distill", student="lr", alpha=0.5, temperature=2.0, epochs=1, batch_size=64,
                       verbose=0)
    student = RunDir(out)
    assert student.spec().name == "lr"
    assert metrics["params"] == student.model().count_params() < metrics["teacher"]["params"] / 10
    assert {"student_loss", "distillation_loss"} <= set(metrics["fine_tune"])
    assert 0 < metrics["ctr"]["auc"] <= 1
    assert json.loads((out / "run.json").read_text())["compressed"]["method"] == "distill"
    preds = kzoo.predict(out, kdata.synthetic(10, seed=3).drop(columns=["label"]))["ctr"].to_numpy()
    assert preds.shape == (10,) and np.all((preds > 0) & (preds < 1))


def test_bad_arguments_are_clear_errors(run, tmp_path, capsys):
    def fails(*argv):
        assert main(["compress", str(run), *argv]) == 2
        return capsys.readouterr().err

    assert "sparsity: must be a number in [0, 1), received 1.0" in fails("--out", str(tmp_path / "a"), "--method",
                                                                        "prune", "--sparsity", "1.0")
    assert "--student" in fails("--out", str(tmp_path / "b"), "--method", "distill")
    assert "alpha: must be a number in [0, 1]" in fails("--out", str(tmp_path / "c"), "--method", "distill",
                                                        "--student", "lr", "--alpha", "1.5")
    assert "is the source run" in fails("--out", str(run), "--method", "int8")
    other = json.loads((REPO / "zoo_configs" / "lr.json").read_text())
    other.update(features={"$ref": "datasets/avazu.json"}, groups={"all": ["site_id", "app_id"]})
    (tmp_path / "avazu_lr.json").write_text(json.dumps(other))
    err = fails("--out", str(tmp_path / "d"), "--method", "distill", "--student", str(tmp_path / "avazu_lr.json"))
    assert "avazu" in err and "criteo" in err
    half = tmp_path / "half"
    shutil.copytree(run, half)
    (half / "metrics.json").unlink()
    assert "not a finished run" in fails_for(half, tmp_path, capsys)


def fails_for(run, tmp_path, capsys):
    assert main(["compress", str(run), "--out", str(tmp_path / "e"), "--method", "int8"]) == 2
    return capsys.readouterr().err
