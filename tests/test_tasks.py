"""Task objects: heads give logits, losses take them, served outputs are probabilities or values."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

import kzoo
from kzoo import data as kdata
from kzoo.errors import SpecError
from kzoo.tasks import BinaryTask, RegressionTask, tasks_of


def regression_frame(rows=2400, seed=0):
    """Synthetic Criteo-shaped rows with a real-valued target around 20 (watch seconds, say):
    a linear function of two numeric features plus a per-category shift, plus noise."""
    rng = np.random.default_rng(seed)
    frame = kdata.synthetic(rows, seed=seed)
    x1 = np.log1p(np.nan_to_num(frame["I1"].to_numpy(dtype="float64"), nan=0.0))
    x2 = np.log1p(np.nan_to_num(frame["I5"].to_numpy(dtype="float64"), nan=0.0).clip(0))
    codes = pd.factorize(frame["C1"])[0] % 5
    shift = np.array([-3.0, -1.0, 0.0, 1.5, 4.0])[codes]
    frame["watch"] = (20 + 2.0 * (x1 - x1.mean()) - 1.5 * (x2 - x2.mean()) + shift
                      + rng.normal(0, 1.0, rows)).astype("float32")
    return frame.drop(columns=["label"])


def regression_spec():
    dataset = kdata.bundled_dataset("criteo")
    dataset["label"] = "watch"
    return {
        "name": "watch_time",
        "features": dataset,
        "groups": {"all": ["I1", "I5", "C1", "C2"]},
        "blocks": [
            {"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 8}},
            {"name": "deep", "type": "MLP", "inputs": ["emb"], "args": {"units": [32, 16]}},
        ],
        "tasks": [{"name": "watch", "type": "regression", "input": "deep"}],
        "train": {"optimizer": {"type": "adam", "learning_rate": 0.01}, "batch_size": 240, "epochs": 6},
    }


def test_regression_task_defaults_to_mse_and_regression_metrics():
    spec = kzoo.load_spec(regression_spec())
    (task,) = tasks_of(spec)
    assert isinstance(task, RegressionTask)
    assert isinstance(task.loss(), keras.losses.MeanSquaredError)
    assert [type(m).__name__ for m in task.metrics()] == ["MeanAbsoluteError", "MeanSquaredError",
                                                           "RootMeanSquaredError"]
    binary = tasks_of(kzoo.load_spec(kzoo.zoo_configs.path("dcn_v2")))[0]
    assert isinstance(binary, BinaryTask) and binary.loss().from_logits
    assert all(m.get_config().get("from_logits") for m in binary.metrics())


def test_regression_trains_with_mse_and_serves_the_value(tmp_path):
    frame = regression_frame()
    metrics = kzoo.train(regression_spec(), frame, tmp_path / "run", verbose=0)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert {"loss", "mae", "mse", "rmse", "val_mae", "val_mse", "val_rmse"} <= set(history.columns)
    # The training loss *is* the MSE (no regulariser in this spec): logged loss == logged mse.
    np.testing.assert_allclose(history["loss"], history["mse"], rtol=1e-4)
    np.testing.assert_allclose(np.sqrt(history["mse"]), history["rmse"], rtol=1e-3)
    assert history["val_mse"].iloc[-1] < history["val_mse"].iloc[0]

    test = kdata.split(frame, seed=0)[2]
    y = test["watch"].to_numpy(dtype="float64")
    report = metrics["watch"]
    assert set(report) >= {"mse", "mae", "log_mae", "examples"} and report["examples"] == len(y)
    # Learned: well under the variance of the target (what predicting the mean would score).
    assert report["mse"] < 0.5 * y.var(), (report, y.var())

    # The served output is the value itself (no sigmoid): around 20, matching the labels' scale.
    pred = kzoo.predict(tmp_path / "run", frame.iloc[:200])["watch"].to_numpy()
    assert 15 < pred.mean() < 25 and pred.max() > 1.0, pred[:5]
    expected_mse = float(np.mean((kzoo.predict(tmp_path / "run", test)["watch"].to_numpy() - y) ** 2))
    assert report["mse"] == pytest.approx(expected_mse, rel=1e-4)


def test_binary_head_outputs_logits_and_the_serving_graph_probabilities():
    spec = kzoo.load_spec(kzoo.zoo_configs.path("dcn_v2"))
    model = kzoo.build(spec)
    served, used = kzoo.serving_model(spec, model)
    rng = np.random.default_rng(0)
    x = {n: (rng.normal(size=(16, 1)).astype("float32") if n.startswith("I") else
             rng.integers(0, 1, size=(16, 1)).astype("int32")) for n in used}
    for w in model.trainable_weights:  # large random weights: logits well outside [0, 1]
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    logit = keras.ops.convert_to_numpy(model(x)["ctr"]).reshape(-1)
    prob = keras.ops.convert_to_numpy(served(x)["ctr"]).reshape(-1)
    assert np.abs(logit).max() > 1.0
    np.testing.assert_allclose(prob, np.exp(-np.logaddexp(0.0, -logit)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task, path, message", [
    ({"type": "regression", "loss": "bce"}, "tasks[0].loss", "a regression task takes loss mse | mae | huber"),
    ({"type": "binary", "loss": {"type": "mse"}}, "tasks[0].loss.type", "a binary task takes loss bce"),
    ({"type": "regression", "metrics": ["auc"]}, "tasks[0].metrics[0]", "a regression task logs mae | mse | rmse"),
])
def test_a_loss_or_metric_the_task_type_cannot_use_is_a_spec_error(task, path, message):
    raw = json.loads(kzoo.zoo_configs.path("lr").read_text())
    raw["tasks"][0].update(task)
    with pytest.raises(SpecError) as e:
        kzoo.load_spec(raw, base_dir=kzoo.zoo_configs.FOLDER)
    assert any(p == path and message in m for p, m in e.value.problems), e.value.problems


def test_gauc_by_a_feature_column_is_reported_and_matches_sklearn_per_group(tmp_path):
    from sklearn.metrics import roc_auc_score

    raw = json.loads(kzoo.zoo_configs.path("lr").read_text())
    raw["tasks"][0]["gauc_by"] = "C9"  # a low-cardinality column: groups with both classes
    metrics = kzoo.train(raw, "synthetic:2000", tmp_path / "run", verbose=0)
    frame = kdata.conform(kdata.synthetic(2000), kdata.bundled_dataset("criteo"))
    test = kdata.split(frame, seed=0)[2].reset_index(drop=True)
    p = kzoo.predict(tmp_path / "run", test)["ctr"].to_numpy()
    total = weight = 0.0
    for _, idx in test.groupby("C9").indices.items():
        y = test["label"].to_numpy()[idx]
        if 0 < y.sum() < len(y):
            total += len(idx) * roc_auc_score(y, p[idx])
            weight += len(idx)
    assert weight > len(test) / 2  # most rows fall in groups with both classes
    assert metrics["ctr"]["gauc"] == pytest.approx(total / weight, abs=1e-6)

    raw["tasks"][0]["gauc_by"] = "C99"
    with pytest.raises(SpecError, match=r"'C99' is not a feature of the dataset \(did you mean 'C9'\?\)"):
        kzoo.load_spec(raw, base_dir=kzoo.zoo_configs.FOLDER)
