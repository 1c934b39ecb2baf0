"""The spine end to end: CLI train -> export -> a fresh TensorFlow-only process serves raw features."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kzoo
from kzoo import data as kdata
from tests.tf_only import serve_fresh

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("end_to_end")

REPO = Path(__file__).resolve().parents[1]


def kzoo_cli(*args, backend=None):
    env = {**os.environ}
    if backend:
        env["KERAS_BACKEND"] = backend
    done = subprocess.run([sys.executable, "-m", "kzoo.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    run, base = tmp / "run", tmp / "exports"
    done = kzoo_cli("train", REPO / "zoo_configs" / "dcn_v2.json", "--data", "synthetic:3000", "--epochs", "1",
                    "--batch-size", "240", "--out", run, "--export", base)
    return run, base, done.stdout, done.stderr


def test_run_dir_has_every_artifact(trained):
    run, _, stdout, _ = trained
    for name in ("spec.json", "preprocessing.json", "run.json", "model.keras", "metrics.json", "history.csv",
                 "curves.png"):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"ctr", "examples", "seconds"}
    assert 0.5 < metrics["ctr"]["auc"] <= 1.0 and metrics["examples"] == 300
    assert "ctr: auc=" in stdout and "export:" in stdout


def test_export_serves_raw_features_like_the_model(trained, tmp_path):
    run, base, _, _ = trained
    version = base / "1"
    assert (version / "saved_model.pb").is_file()
    assert (version / "assets.extra" / "tf_serving_warmup_requests").is_file()
    assert not list(base.glob(".tmp-*"))

    frame = kdata.conform(kdata.synthetic(rows=200, seed=5), kdata.bundled_dataset("criteo"))
    raw = tmp_path / "raw.parquet"
    frame.to_parquet(raw)
    expected = kzoo_cli("predict", run, "--data", raw, "--output", tmp_path / "keras.csv")
    keras_pred = pd.read_csv(tmp_path / "keras.csv")["ctr"].to_numpy()
    served = serve_fresh(version, frame, tmp_path)
    assert served["dtypes"]["I1"] == "float32" and served["dtypes"]["C1"] == "string"
    assert set(served["outputs"]) == {"ctr"}
    np.testing.assert_allclose(np.array(served["outputs"]["ctr"]), keras_pred, atol=1e-5)
    assert expected.returncode == 0


def test_export_versions_are_immutable(trained):
    run, base, _, _ = trained
    with pytest.raises(FileExistsError, match="immutable"):
        kzoo.export(run, base, version=1)


def test_criteo_slice_trains_and_reports_auc(data_dir, tmp_path):
    path = data_dir / "criteo" / "criteo_train_head10k.txt"
    if not path.is_file():
        pytest.skip(f"real Criteo slice not present at {path}")
    metrics = kzoo.train(REPO / "zoo_configs" / "dcn_v2.json", f"criteo:{path}", tmp_path / "run", epochs=1,
                         verbose=0)
    assert metrics["examples"] == 1000
    # 10k rows of real Criteo: a model that learned anything is well above chance.
    assert metrics["ctr"]["auc"] > 0.65, metrics


def _weights(run):
    import keras

    return keras.models.load_model(run / "model.keras").get_weights()


def test_a_run_killed_at_random_steps_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL (kzoo.checkpoint's testing hook kills the process itself after global step N) at two
    random mid-epoch steps, re-running the same command each time: the weights, the test metrics and
    the per-step log equal an uninterrupted run's exactly. DeepFM with dropout, so the dropout seed
    state must be restored too; a checkpoint every 3 batches."""
    raw = json.loads((REPO / "zoo_configs" / "deepfm.json").read_text())
    for block in raw["blocks"]:
        if block["type"] == "MLP":
            block.setdefault("args", {})["dropout"] = 0.3
    raw["features"] = kdata.bundled_dataset("criteo")
    raw["train"]["checkpoint_every"] = 3
    spec = tmp_path / "deepfm_dropout.json"
    spec.write_text(json.dumps(raw))
    command = ["train", spec, "--data", "synthetic:3000", "--epochs", "2", "--batch-size", "240"]
    whole = kzoo.train(spec, "synthetic:3000", tmp_path / "whole", epochs=2, batch_size=240, verbose=0)

    rng = np.random.default_rng(int.from_bytes(os.environ.get("KERAS_BACKEND", "").encode(), "little") % 1000)
    first = int(rng.integers(1, 10))   # inside epoch 1 (10 batches an epoch, 20 steps in all)
    second = int(rng.integers(11, 20))  # inside epoch 2, counted from the start as the resumed run counts
    run = tmp_path / "killed"
    for kill_at in (first, second):
        env = {**os.environ, "KZOO_FAULT_KILL_AT_STEP": str(kill_at)}
        done = subprocess.run([sys.executable, "-m", "kzoo.cli", *map(str, command), "--out", str(run)],
                              capture_output=True, text=True, env=env, cwd=REPO)
        assert done.returncode == -9, (kill_at, done.stderr[-2000:])  # killed, not finished
        assert not (run / "metrics.json").exists() and (run / "backup" / "latest").is_file()
    resumed = kzoo.train(spec, "synthetic:3000", run, epochs=2, batch_size=240, verbose=0)
    for a, b in zip(_weights(tmp_path / "whole"), _weights(run), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["ctr"]["auc"] == whole["ctr"]["auc"] and resumed["ctr"]["logloss"] == whole["ctr"]["logloss"]
    steps = [pd.read_json(r / "steps.jsonl", lines=True)["step"].tolist() for r in (tmp_path / "whole", run)]
    assert steps[0] == steps[1]
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1]
    assert not (run / "backup").exists()


def test_cli_evaluate_reproduces_test_metrics(trained):
    run, _, _, _ = trained
    done = kzoo_cli("evaluate", run)
    auc = json.loads((run / "metrics.json").read_text())["ctr"]["auc"]
    assert f"auc={auc:.4f}" in done.stdout


def test_cli_list_and_schema():
    listed = kzoo_cli("list").stdout
    for path in (REPO / "zoo_configs").glob("*.json"):
        assert f"  {path.stem} " in listed
    for block in ("FeatureEmbedding", "CrossNetV2", "CIN", "MaskNet", "WuKong", "Hint"):
        assert f"  {block} " in listed
    schema = json.loads(kzoo_cli("schema").stdout)
    assert schema["title"] == "kzoo model spec"


def test_bad_data_names_column_and_row(tmp_path):
    frame = kdata.synthetic(rows=20, seed=1).astype({"I3": object})
    frame.loc[6, "I3"] = "abc"
    frame.to_csv(tmp_path / "bad.csv", index=False)
    done = subprocess.run([sys.executable, "-m", "kzoo.cli", "train", str(REPO / "zoo_configs" / "lr.json"),
                           "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert "column 'I3', row 7: 'abc' is not a number" in done.stderr


def test_dcn_v2_beats_lr_on_synthetic_data(tmp_path):
    # The synthetic data plants pairwise interactions that a linear model cannot represent
    # (kzoo/synthetic.py; sklearn one-hot LR reaches 0.754 where the true logit gives 0.88).
    lr = kzoo.train(REPO / "zoo_configs" / "lr.json", "synthetic", tmp_path / "lr", verbose=0)
    dcn = kzoo.train(REPO / "zoo_configs" / "dcn_v2.json", "synthetic", tmp_path / "dcn", verbose=0)
    assert dcn["ctr"]["auc"] > lr["ctr"]["auc"] + 0.03, (dcn["ctr"], lr["ctr"])


NOISE = ("absl::InitializeLog", "oneDNN", "cuda", "cuInit", "cpu_feature_guard", "TensorFlow binary is optimized")


def assert_quiet(stderr: str):
    noisy = [line for line in stderr.splitlines() if any(n in line for n in NOISE)]
    assert noisy == [], noisy


def test_cli_prints_no_tensorflow_start_up_noise(trained):
    _, _, _, stderr = trained
    assert_quiet(stderr)
    assert "kzoo: dcn_v2 on 2400 train" in stderr


def test_predict_without_labels_from_the_export_base_keeps_keys_as_json_lines(trained, tmp_path):
    run, base, _, _ = trained
    frame = kdata.synthetic(rows=50, seed=11).drop(columns=["label"])
    frame.insert(0, "request_id", [f"r{i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "unlabelled.csv", index=False)
    # BASE (not BASE/1): the latest version, as TF Serving would pick it.
    kzoo_cli("predict", base, "--data", tmp_path / "unlabelled.csv", "--keep", "request_id",
             "--output", tmp_path / "served.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "served.jsonl").read_text().splitlines()]
    assert [r["request_id"] for r in rows] == list(frame["request_id"]) and set(rows[0]) == {"request_id", "ctr"}
    from_run = kzoo.predict(run, tmp_path / "unlabelled.csv", keep=["request_id"])
    assert list(from_run.columns) == ["request_id", "ctr"]
    np.testing.assert_allclose([r["ctr"] for r in rows], from_run["ctr"], atol=1e-5)
    done = subprocess.run([sys.executable, "-m", "kzoo.cli", "predict", str(run), "--data",
                           str(tmp_path / "unlabelled.csv"), "--keep", "request"], capture_output=True, text=True)
    assert done.returncode == 2 and "'request' (did you mean 'request_id'?) not in the data" in done.stderr


def test_train_by_zoo_name_refuses_a_finished_run_without_overwrite(tmp_path, backend):
    # `backend` is this pass's (tests/run_all.sh runs the suite once per backend).
    args = ["train", "lr", "--data", "synthetic:1000", "--epochs", "1", "--out", tmp_path / "run"]
    first = kzoo_cli(*args, backend=backend)
    assert_quiet(first.stderr)
    before = (tmp_path / "run" / "metrics.json").read_text()
    env = {**os.environ, "KERAS_BACKEND": backend}
    again = subprocess.run([sys.executable, "-m", "kzoo.cli", *map(str, args)], capture_output=True, text=True,
                           env=env, cwd=tmp_path)
    assert again.returncode == 2, again.stderr
    assert "holds a finished run" in again.stderr and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert (tmp_path / "run" / "metrics.json").read_text() == before
    kzoo_cli(*args, "--overwrite", "--seed", "3", backend=backend)
    assert (tmp_path / "run" / "metrics.json").read_text() != before


def test_cli_list_shows_a_block_with_argument_types_and_defaults():
    shown = kzoo_cli("list", "MaskNet").stdout
    assert "mode: str = 'serial'" in shown and "hidden_units: int = 64" in shown
    assert json.loads(kzoo_cli("list", "dcn_v2").stdout)["name"] == "dcn_v2"
