"""Deployment tools: `kzoo serving-config` (TF Serving's model config, parsed back with its own
protobuf classes), warmup requests made of real validation rows, and `kzoo serve-check`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kzoo  # before TensorFlow: with KERAS_BACKEND=torch, torch 2.14 imported after TF 2.21 segfaults (triton)
import tensorflow as tf  # noqa: E402,I001
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from kzoo import data as kdata
from kzoo.cli import main
from kzoo.serve_check import serve_check

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("serving_tools")

REPO = Path(__file__).resolve().parents[1]


def kzoo_cli(*args, cwd=None):
    """`kzoo ARGS` in a new process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "kzoo.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


# ----------------------------------------------------------------------------- serving-config
def fake_base(root: Path, name: str, versions) -> Path:
    """An export base with empty version folders: serving-config reads only the layout."""
    for v in versions:
        (root / name / str(v)).mkdir(parents=True)
        (root / name / str(v) / "saved_model.pb").write_bytes(b"")
    (root / name / ".tmp-9-123").mkdir()  # an interrupted export: not a version
    return root / name


def parsed(path: Path):
    return text_format.Parse(path.read_text(), model_server_config_pb2.ModelServerConfig())


def test_serving_config_several_models_policies_and_labels_parse_back(tmp_path, capsys):
    a, b = fake_base(tmp_path, "ctr", [1, 2, 3]), fake_base(tmp_path, "cvr", [4])
    out = tmp_path / "models.config"

    assert main(["serving-config", str(a), str(b), "--out", str(out)]) == 0
    models = parsed(out).model_config_list.config
    assert [(m.name, m.base_path, m.model_platform) for m in models] == [
        ("ctr", str(a.resolve()), "tensorflow"), ("cvr", str(b.resolve()), "tensorflow")]
    assert all(m.model_version_policy.latest.num_versions == 1 and not m.version_labels for m in models)

    # Canary rollout: both labelled versions loaded (specific), the other model pinned by --versions.
    assert main(["serving-config", str(a), str(b), "--out", str(out), "--labels", "ctr:stable=2,canary=3",
                 "--policy", "specific", "--versions", "cvr:4"]) == 0
    ctr, cvr = parsed(out).model_config_list.config
    assert list(ctr.model_version_policy.specific.versions) == [2, 3]
    assert dict(ctr.version_labels) == {"stable": 2, "canary": 3}
    assert list(cvr.model_version_policy.specific.versions) == [4] and not cvr.version_labels

    # Labels alone default to loading exactly the labelled versions.
    assert main(["serving-config", str(a), "--out", str(out), "--labels", "stable=1,canary=3"]) == 0
    (ctr,) = parsed(out).model_config_list.config
    assert ctr.model_version_policy.WhichOneof("policy_choice") == "specific"
    assert list(ctr.model_version_policy.specific.versions) == [1, 3]

    assert main(["serving-config", str(a), str(b), "--out", str(out), "--policy", "all",
                 "--name", f"ranker={a}", "--root", "/models"]) == 0
    ranker, cvr = parsed(out).model_config_list.config
    assert (ranker.name, ranker.base_path, cvr.base_path) == ("ranker", "/models/ctr", "/models/cvr")
    assert ranker.model_version_policy.HasField("all") and cvr.model_version_policy.HasField("all")

    assert main(["serving-config", str(a), "--out", str(out), "--policy", "latest:2", "--labels", "stable=2",
                 "--labels", "stable=2,canary=3"]) == 0
    (ctr,) = parsed(out).model_config_list.config
    assert ctr.model_version_policy.latest.num_versions == 2 and dict(ctr.version_labels) == {"stable": 2, "canary": 3}
    assert "ctr" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "not a directory"),
    (["{empty}"], "no numeric version folder"),
    (["{nopb}"], "hold no saved_model.pb"),
    (["{a}", "--labels", "stable=7"], "has version(s) 1, 2, 3"),
    (["{a}", "{b}", "--labels", "stable=1"], "say which one: --labels MODEL:stable=1"),
    (["{a}", "--labels", "other:stable=1"], "no model named 'other'"),
    (["{a}", "--labels", "stable"], "is not LABEL=VERSION"),
    (["{a}", "--labels", "stable=1", "--policy", "latest"], "does not load"),
    (["{a}", "--policy", "newest"], "expected one of latest, latest:N, all, specific"),
    (["{a}", "--policy", "latest:0"], "positive integer"),
    (["{a}", "--policy", "specific"], "say which versions of ctr to load"),
    (["{a}", "--policy", "specific", "--versions", "5"], "version(s) 5 not in"),
    (["{a}", "--versions", "1"], "only the 'specific' policy takes versions"),
    (["{a}", "{a2}"], "used by several bases"),
    (["{a}", "--name", "bad name={a}"], "may hold only letters"),
    (["{a}", "--name", "x={b}"], "is not one of the bases given"),
])
def test_serving_config_refuses_what_tf_serving_would_refuse(tmp_path, capsys, args, message):
    paths = {"a": fake_base(tmp_path, "ctr", [1, 2, 3]), "b": fake_base(tmp_path, "cvr", [1]),
             "a2": fake_base(tmp_path / "other", "ctr", [1]), "missing": tmp_path / "missing",
             "empty": tmp_path / "empty", "nopb": tmp_path / "nopb"}
    (tmp_path / "empty").mkdir()
    (tmp_path / "nopb" / "1").mkdir(parents=True)
    out = tmp_path / "models.config"
    assert main(["serving-config", *[a.format(**paths) for a in args], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kzoo: error: ") and message in err and "Traceback" not in err
    assert not out.exists()


# ----------------------------------------------------------------------------- exports under test
@pytest.fixture(scope="module")
def ranking(tmp_path_factory):
    """An lr run on 400 synthetic Criteo rows (40 validation rows) and its export."""
    tmp = tmp_path_factory.mktemp("ranking")
    kzoo.train(REPO / "zoo_configs" / "lr.json", "synthetic:400", tmp / "run", epochs=1, batch_size=64, verbose=0)
    return tmp / "run", Path(kzoo.export(tmp / "run", tmp / "exports"))


def multitask_spec():
    dataset = kdata.bundled_dataset("criteo")
    dataset["label"] = ["click", "purchase"]
    return {
        "name": "mmoe_small", "features": dataset, "groups": {"all": ["I1", "I2", "I3", "C1", "C2", "C3"]},
        "blocks": [
            {"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
            {"name": "mmoe", "type": "MMoE", "inputs": ["emb"],
             "args": {"tasks": ["ctr", "purchase"], "experts": 2, "expert_units": [8]}},
            {"name": "ctr_tower", "type": "MLP", "inputs": ["mmoe.ctr"], "args": {"units": [4]}},
            {"name": "purchase_tower", "type": "MLP", "inputs": ["mmoe.purchase"], "args": {"units": [4]}}],
        "tasks": [{"name": "ctr", "input": "ctr_tower", "label": "click"},
                  {"name": "purchase", "input": "purchase_tower", "label": "purchase"}],
        "train": {"optimizer": {"type": "adam", "learning_rate": 0.01}, "batch_size": 64, "epochs": 1}}


@pytest.fixture(scope="module")
def multitask(tmp_path_factory):
    """A two-task MMoE run on a Parquet file of 300 synthetic rows (re-readable at export) and its export."""
    tmp = tmp_path_factory.mktemp("multitask")
    frame = kdata.synthetic(300, seed=3).rename(columns={"label": "click"})
    frame["purchase"] = (frame["click"] * (np.random.default_rng(0).random(300) < 0.5)).astype("float32")
    frame.to_parquet(tmp / "rows.parquet")
    (tmp / "spec.json").write_text(json.dumps(multitask_spec()))
    kzoo.train(tmp / "spec.json", tmp / "rows.parquet", tmp / "run", verbose=0)
    return tmp / "run", Path(kzoo.export(tmp / "run", tmp / "exports"))


def warmup_requests(version: Path) -> list:
    records = tf.data.TFRecordDataset(str(version / "assets.extra" / "tf_serving_warmup_requests"))
    return [prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request for r in records]


# ----------------------------------------------------------------------------- warmup
def test_warmup_holds_real_validation_rows_at_several_batch_sizes(ranking):
    run, version = ranking
    meta = json.loads((version / "assets.extra" / "kzoo.json").read_text())["warmup"]
    assert meta == {"source": "validation split of synthetic:400", "file": "kzoo_warmup.json", "expected": True,
                    "batch_sizes": [1, 8, 40]}
    requests = warmup_requests(version)
    assert [len(tf.make_ndarray(r.inputs["C1"])) for r in requests] == [1, 8, 40]

    # The rows are the first rows of the validation split training used (kzoo.prepare), not placeholders.
    validation = kzoo.prepare(kzoo.load_spec(run / "spec.json"), "synthetic:400").frames["validation"]
    sent = tf.make_ndarray(requests[-1].inputs["I2"])
    np.testing.assert_array_equal(np.nan_to_num(sent, nan=-99), np.nan_to_num(
        validation["I2"].to_numpy("float32")[:40], nan=-99))
    assert [s.decode() for s in tf.make_ndarray(requests[-1].inputs["C3"])] == validation["C3"].astype(str).tolist()[:40]
    assert len({s for s in tf.make_ndarray(requests[-1].inputs["C1"])}) > 3  # real categories, not ""


def test_warmup_replayed_on_the_saved_model_gives_the_runs_predictions(ranking, multitask):
    for run, version in (ranking, multitask):
        fn = tf.saved_model.load(str(version)).signatures["serving_default"]
        recorded = json.loads((version / "assets.extra" / "kzoo_warmup.json").read_text())
        rows = pd.DataFrame(recorded["inputs"])  # the served features; the schema's others are unused: missing
        rows = rows.assign(**{f["name"]: None for f in json.loads((run / "spec.json").read_text())["features"]
                              ["features"] if f["name"] not in rows})
        reference = kzoo.predict(run, rows)  # the run's Keras model, computed here, not at export
        tasks = [t["name"] for t in json.loads((run / "spec.json").read_text())["tasks"]]
        assert sorted(recorded["expected"]) == sorted(reference.columns) == sorted(tasks)
        for request in warmup_requests(version):
            out = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            n = len(next(iter(out.values())))
            for task in tasks:
                np.testing.assert_allclose(out[task].numpy(), reference[task].to_numpy()[:n], atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(recorded["expected"][task][:n], reference[task].to_numpy()[:n],
                                           atol=1e-6)


def test_warmup_falls_back_to_neutral_rows_and_says_why(tmp_path, capsys):
    frame = kdata.synthetic(200, seed=1)
    kzoo.train(REPO / "zoo_configs" / "lr.json", frame, tmp_path / "run", epochs=1, batch_size=64, verbose=0)
    version = Path(kzoo.export(tmp_path / "run", tmp_path / "exports"))
    meta = json.loads((version / "assets.extra" / "kzoo.json").read_text())["warmup"]
    assert meta["source"].startswith("neutral rows: ") and "DataFrame" in meta["source"]
    assert meta["batch_sizes"] == [4] and not (version / "assets.extra" / "kzoo_warmup.json").exists()
    (request,) = warmup_requests(version)
    assert set(tf.make_ndarray(request.inputs["C1"]).tolist()) == {b""}
    assert main(["serve-check", str(version)]) == 2
    assert "recorded no real rows" in capsys.readouterr().err


# ----------------------------------------------------------------------------- serve-check
def test_serve_check_passes_on_a_ranking_export(ranking):
    # The export named relative to the working dir, as a user types it (the checks run in a child
    # process with its own working dir).
    base = ranking[1].parent
    result = kzoo_cli("serve-check", base.name, cwd=base.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for check in ("load SavedModel (TF only)", "warmup replay", "REST predict (columnar)", "REST predict (rows)",
                  "gRPC Predict"):
        (line,) = [x for x in lines if x.strip().startswith(check)]
        assert " PASS " in line, line
    assert "no kzoo model code imported" in result.stdout and "3 record(s)" in result.stdout
    assert lines[-1] == "serve-check: PASS (5/5 checks passed)"


def test_serve_check_passes_on_a_multitask_export_and_on_other_rows_with_the_run(multitask, tmp_path):
    run, version = multitask
    report = serve_check(version)
    assert all(c["ok"] for c in report["checks"]), report
    assert len(report["checks"]) == 5
    other = kdata.synthetic(50, seed=11).rename(columns={"label": "click"}).assign(purchase=0.0)
    other.to_csv(tmp_path / "other.csv", index=False)
    report = serve_check(version, run=run, data=tmp_path / "other.csv", rows=20)
    assert all(c["ok"] for c in report["checks"]), report
    assert report["source"].startswith("first 20 rows of") and "kzoo.predict" in report["reference"]
    assert "20 rows" in report["checks"][-1]["detail"]


def test_serve_check_fails_when_predictions_differ_from_the_run(ranking, tmp_path, capsys):
    version = tmp_path / "exports" / "1"
    shutil.copytree(ranking[1], version)
    recorded_path = version / "assets.extra" / "kzoo_warmup.json"
    recorded = json.loads(recorded_path.read_text())
    recorded["expected"]["ctr"][5] += 1e-3  # one value off by more than the tolerance
    recorded_path.write_text(json.dumps(recorded))
    assert main(["serve-check", str(version)]) == 1
    out = capsys.readouterr().out
    assert "serve-check: FAIL" in out
    (line,) = [x for x in out.splitlines() if x.strip().startswith("gRPC Predict")]
    assert " FAIL " in line and "1 of 40 values off, e.g. row 5" in line
    # Batch 1 holds row 0 only, so its replay still matches; batches 8 and 40 hold row 5.
    assert "batch 1: max |diff|" in out and "batch 8: ctr: 1 of 8 values off" in out


def altered_weights(version: Path, delta: float) -> None:
    """Add `delta` to every float variable of the export, through TensorFlow's checkpoint ops."""
    prefix = str(version / "variables" / "variables")
    reader = tf.train.load_checkpoint(prefix)
    names = sorted(reader.get_variable_to_dtype_map())
    tensors = [reader.get_tensor(n) for n in names]  # the object graph stays raw bytes
    tensors = [t + np.float32(delta) if isinstance(t, np.ndarray) and t.dtype.kind == "f" else t for t in tensors]
    fresh = version.parent / "fresh_variables"
    tf.raw_ops.SaveV2(prefix=str(fresh / "variables"), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    shutil.rmtree(version / "variables")
    fresh.rename(version / "variables")


def test_serve_check_fails_on_altered_weights_and_on_a_corrupt_variables_file(ranking, tmp_path, capsys):
    version = tmp_path / "exports" / "1"
    shutil.copytree(ranking[1], version)
    altered_weights(version, 0.0)  # rewritten unchanged: the check still passes, so the rewrite is sound
    assert all(c["ok"] for c in serve_check(version)["checks"])
    altered_weights(version, 0.05)
    report = serve_check(version)
    assert [c["name"] for c in report["checks"] if not c["ok"]] == [
        "warmup replay", "REST predict (columnar)", "REST predict (rows)", "gRPC Predict"], report
    assert "40 of 40 values off" in report["checks"][-1]["detail"]

    data = version / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    assert main(["serve-check", str(version)]) == 1
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.strip().startswith("load SavedModel")]
    assert " FAIL " in line and "Traceback" not in out, out


def test_serve_check_user_errors_exit_2_with_a_message(ranking, tmp_path, capsys):
    for args, message in ((["serve-check", tmp_path / "nothing"], "no such export"),
                          (["serve-check", tmp_path], "no numeric version folder"),
                          (["serve-check", ranking[1], "--data", "synthetic:10"], "--data needs --run")):
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kzoo: error: ") and message in err, err
