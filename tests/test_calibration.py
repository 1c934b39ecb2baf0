"""Calibration (kzoo/calibration.py): the fits against scikit-learn and a NumPy Newton solve, the in-graph
layers against sklearn's `predict`, equal-mass ECE against a NumPy computation, and a calibrated run
end to end: train (spec `calibration` block) -> calibrate -> export -> served == `kzoo predict` ==
sklearn's calibrator on the raw scores, also over gRPC."""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import kzoo
from kzoo import calibration as C
from kzoo import metrics as M
from kzoo.cli import main as cli
from kzoo.errors import DataError, SpecError

from tf_only import serve_fresh_many

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("calibration")

REPO = Path(__file__).resolve().parents[1]


def logit(p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def newton_logistic(x, y, steps=50):
    """Unpenalised logistic regression of y on [1, x] by Newton's method (IRLS), in NumPy."""
    X = np.column_stack([np.ones_like(x), x])
    w = np.zeros(2)
    for _ in range(steps):
        mu = 1 / (1 + np.exp(-X @ w))
        w = w + np.linalg.solve(X.T @ (X * (mu * (1 - mu))[:, None]), X.T @ (y - mu))
    return w[1], w[0]  # slope, intercept


@pytest.fixture(scope="module")
def miscalibrated():
    """Over-confident scores: the truth is sigmoid(0.5·z - 0.4) while the scores are sigmoid(z)."""
    rng = np.random.default_rng(3)
    z = rng.normal(-1.0, 1.5, 3000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.5 * z - 0.4)))).astype(float)
    return y, (1 / (1 + np.exp(-z))).astype("float32").astype("float64")


def test_calibration_slope_and_platt_match_a_newton_solve(miscalibrated):
    y, p = miscalibrated
    slope, intercept = newton_logistic(logit(p), y)
    assert M.calibration_slope_intercept(y, p) == pytest.approx((slope, intercept), abs=1e-5)
    assert slope == pytest.approx(0.5, abs=0.08)  # the planted over-confidence is what it measures
    params = C.fit("platt", y, p)
    assert (params["slope"], params["intercept"]) == pytest.approx((slope, intercept), abs=1e-5)
    assert M.binary_report(y, p)["calibration_slope"] == pytest.approx(slope, abs=1e-5)


def test_platt_layer_equals_sklearn_predict_proba(miscalibrated):
    y, p = miscalibrated
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit(p).reshape(-1, 1), y)
    params = C.fit("platt", y, p)
    points = np.concatenate([np.random.default_rng(1).random(500), [0.0, 1.0, 1e-9]]).astype("float32")
    got = keras.ops.convert_to_numpy(C.layer("platt", params)(points.reshape(-1, 1))).reshape(-1)
    want = lr.predict_proba(logit(points.astype("float64")).reshape(-1, 1))[:, 1]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(C.transform("platt", params, points), want, rtol=0, atol=1e-9)


def test_isotonic_params_and_layer_match_sklearn(miscalibrated):
    y, p = miscalibrated
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    params = C.fit("isotonic", y, p)
    np.testing.assert_array_equal(params["x_thresholds"], iso.X_thresholds_)
    np.testing.assert_array_equal(params["y_thresholds"], iso.y_thresholds_)
    rng = np.random.default_rng(2)
    # Scores inside the fitted range, beyond both ends, at the knots themselves and at 0 and 1.
    points = np.concatenate([rng.uniform(p.min(), p.max(), 2000), rng.uniform(0, p.min(), 20),
                             rng.uniform(p.max(), 1, 20), iso.X_thresholds_[::7], [0.0, 1.0]]).astype("float32")
    for shape in [(-1,), (-1, 1)]:
        got = keras.ops.convert_to_numpy(C.layer("isotonic", params)(points.reshape(shape))).reshape(-1)
        np.testing.assert_allclose(got, iso.predict(points.astype("float64")), rtol=0, atol=2e-6)
    np.testing.assert_allclose(C.transform("isotonic", params, points), iso.predict(points), rtol=0, atol=1e-12)
    one = C.IsotonicCalibration([0.3], [0.2])  # a constant fit (one knot)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(one(np.array([0.1, 0.9], "float32"))), [0.2, 0.2])


def test_layers_survive_a_keras_file(tmp_path, miscalibrated):
    y, p = miscalibrated
    x = keras.Input((1,), name="p")
    model = keras.Model(x, {"platt": C.layer("platt", C.fit("platt", y, p), name="platt")(x),
                            "iso": C.layer("isotonic", C.fit("isotonic", y, p), name="iso")(x)})
    model.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    points = np.random.default_rng(4).random((64, 1)).astype("float32")
    for name in ("platt", "iso"):
        np.testing.assert_allclose(back.predict(points, verbose=0)[name], model.predict(points, verbose=0)[name])


def test_ece_equal_mass_matches_numpy_and_sklearn_bins(miscalibrated):
    y, p = miscalibrated
    y, p = y[:2000], p[:2000]  # distinct scores, 2000 = 10 bins of exactly 200
    order = np.argsort(p)
    chunks = np.array_split(order, 10)
    want = sum(len(c) / y.size * abs(y[c].mean() - p[c].mean()) for c in chunks)
    assert M.ece(y, p, bins=10, strategy="quantile") == pytest.approx(want, abs=1e-12)
    mean_pred, mean_true, counts = M.calibration_curve_points(y, p, bins=10, strategy="quantile")
    np.testing.assert_array_equal(counts, [200] * 10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    np.testing.assert_allclose(mean_pred, prob_pred, rtol=1e-12)
    np.testing.assert_allclose(mean_true, prob_true, rtol=1e-12)
    assert M.ece(y, p, strategy="quantile") != pytest.approx(M.ece(y, p), abs=1e-4)
    with pytest.raises(ValueError, match="strategy must be one of"):
        M.ece(y, p, strategy="mass")


# ---------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """lr trained with a spec `calibration` block (isotonic), exported (v1); then recalibrated with Platt
    through the CLI and exported again (v2). Keeps the raw scores and the model's frames."""
    from kzoo.pipeline import load_for, split_frames
    from kzoo.predict import predict_frame

    tmp = tmp_path_factory.mktemp("calibration")
    spec = json.loads((REPO / "zoo_configs" / "lr.json").read_text())
    spec["train"]["optimizer"]["learning_rate"] = 0.05  # a signal to calibrate in one short epoch
    spec["calibration"] = {"method": "isotonic"}
    (tmp / "lr.json").write_text(json.dumps(spec))
    run = tmp / "run"
    metrics = kzoo.train(tmp / "lr.json", "synthetic:2000", run, epochs=1, batch_size=128, verbose=0)
    rd = kzoo.RunDir(run)
    loaded, frame = load_for(rd.spec(), "synthetic:2000")
    _, validation, test = split_frames(loaded, frame)
    model, pre = rd.model(), rd.preprocessor()

    def raw(f):  # the uncalibrated serving graph, without kzoo.calibration
        return predict_frame(model, loaded, pre, f)["ctr"].astype("float64")

    out = {"run": run, "metrics": metrics, "validation": validation, "test": test, "raw_val": raw(validation),
           "raw_test": raw(test), "isotonic": json.loads((run / "calibration.json").read_text())}
    out["v1"] = kzoo.export(run, tmp / "exports")
    out["pred_iso"] = kzoo.predict(run, test.drop(columns=["label"]))["ctr"].to_numpy()
    assert cli(["calibrate", str(run), "--method", "platt"]) == 0
    out["platt"] = json.loads((run / "calibration.json").read_text())
    out["v2"] = kzoo.export(run, tmp / "exports")
    out["pred_platt"] = kzoo.predict(run, test.drop(columns=["label"]))["ctr"].to_numpy()
    out["served"] = serve_fresh_many([out["v1"], out["v2"]], test.drop(columns=["label"]), tmp)
    return out


def test_served_calibrated_scores_equal_predict_and_sklearn(calibrated_run, backend):
    r = calibrated_run
    y_val = r["validation"]["label"].to_numpy(dtype="float64")
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(r["raw_val"], y_val)
    lr = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit(r["raw_val"]).reshape(-1, 1), y_val)
    want = {"iso": iso.predict(r["raw_test"]), "platt": lr.predict_proba(logit(r["raw_test"]).reshape(-1, 1))[:, 1]}
    served = {"iso": np.array(r["served"][0]["outputs"]["ctr"]), "platt": np.array(r["served"][1]["outputs"]["ctr"])}
    # The export always runs TensorFlow; trained on another backend, the raw float32 scores it computes
    # differ from this process's by rounding (~1e-7), which an isotonic segment multiplies by its slope
    # (dy/dx of a few hundred where two knots are close). So the tolerance is 1e-5 plus slope × 1e-6
    # there; on TensorFlow the same ops run on both sides and it is 1e-5 flat.
    x, y = iso.X_thresholds_, iso.y_thresholds_
    segment = np.clip(np.searchsorted(x, r["raw_test"], side="right") - 1, 0, len(x) - 2)
    inside = (r["raw_test"] >= x[0]) & (r["raw_test"] <= x[-1])
    slope = np.where(inside, (y[segment + 1] - y[segment]) / (x[segment + 1] - x[segment]), 0.0)
    gap = 0.0 if backend == "tensorflow" else 1e-6
    for name, tol in (("iso", 1e-5 + slope * gap), ("platt", 1e-5)):  # Platt is smooth: 1e-5 flat
        for reference in (r[f"pred_{name}"], want[name]):
            assert np.all(np.abs(served[name] - reference) <= tol), (name, np.max(np.abs(served[name] - reference)))
    assert not np.allclose(served["iso"], r["raw_test"], atol=1e-3)  # calibration changed the scores
    meta = json.loads((Path(r["v2"]) / "assets.extra" / "kzoo.json").read_text())
    assert meta["outputs"] == ["ctr"] and meta["calibration"] == {"method": "platt", "tasks": ["ctr"]}


def test_calibration_json_and_metrics_report_before_and_after(calibrated_run):
    r = calibrated_run
    y_test = r["test"]["label"].to_numpy(dtype="float64")
    for method, cal in (("isotonic", r["isotonic"]), ("platt", r["platt"])):
        entry = cal["tasks"]["ctr"]
        assert cal["method"] == method and cal["rows"] == {"validation": 200, "test": 200}
        after = C.transform(method, entry["params"], r["raw_test"])
        test = entry["metrics"]["test"]
        assert test["before"]["auc"] == pytest.approx(roc_auc_score(y_test, r["raw_test"]), abs=1e-9)
        assert test["after"]["auc"] == pytest.approx(roc_auc_score(y_test, after), abs=1e-9)
        assert test["after"]["ece_quantile"] == pytest.approx(M.ece(y_test, after, strategy="quantile"), abs=1e-9)
    # metrics.json reports what the run now serves (Platt), the raw scores' metrics kept beside
    written = json.loads((r["run"] / "metrics.json").read_text())["ctr"]
    assert written["calibration"] == "platt"
    assert written["auc"] == r["platt"]["tasks"]["ctr"]["metrics"]["test"]["after"]["auc"]
    assert written["uncalibrated"]["logloss"] == pytest.approx(M.logloss(y_test, r["raw_test"]), abs=1e-9)
    assert r["metrics"]["ctr"]["calibration"] == "isotonic"  # what train returned with the spec block
    png = r["run"] / "reliability_ctr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert kzoo.evaluate(r["run"])["ctr"]["auc"] == pytest.approx(written["auc"], abs=1e-6)


def test_calibrated_export_answers_grpc(calibrated_run):
    from kzoo.serving.client import GrpcClient
    from kzoo.serving.testing_server import serve

    r = calibrated_run
    rows = r["test"].drop(columns=["label"]).iloc[:5]
    with serve(Path(r["v2"]).parent, "kzoo") as server:  # the latest version: Platt
        with GrpcClient(server.grpc_target, "kzoo", r["v2"]) as client:
            got = client.predict(rows)
    np.testing.assert_allclose(got["ctr"], r["pred_platt"][:5], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------- errors

def test_errors_are_clear(calibrated_run, tmp_path, capsys):
    run = calibrated_run["run"]
    with pytest.raises(ValueError, match="unknown calibration method 'beta'; choose platt | isotonic"):
        C.calibrate(run, "beta")
    with pytest.raises(SpecError, match=r"--tasks\[0\]: 'ctrr' is not a task \(did you mean 'ctr'\?\)"):
        C.calibrate(run, "platt", ["ctrr"])
    assert cli(["calibrate", str(run), "--method", "platt", "--tasks", "nope"]) == 2
    assert "'nope' is not a task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["calibrate", str(run), "--method", "beta"])
    assert "invalid choice: 'beta'" in capsys.readouterr().err

    # The same run with no validation rows (its spec's split gives none).
    novalid = tmp_path / "novalid"
    shutil.copytree(run, novalid)
    spec = json.loads((novalid / "spec.json").read_text())
    spec["train"]["split"] = {"validation": 0.0, "test": 0.1}
    spec.pop("calibration")
    (novalid / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(DataError, match="has no validation rows .*validation is 0.0"):
        C.calibrate(novalid, "isotonic")


def _spec(**extra):
    spec = json.loads((REPO / "zoo_configs" / "lr.json").read_text())
    spec["tasks"].append({"name": "value", "type": "regression", "input": "linear", "label": "label"})
    return {**spec, **extra}


def test_regression_and_conditional_tasks_are_refused():
    spec = kzoo.load_spec(_spec())
    with pytest.raises(SpecError, match=r"--tasks\[0\]: task 'value' is a regression task; calibration applies "
                                        "to binary tasks"):
        C.task_names(spec, ["value"])
    assert C.task_names(spec) == ["ctr"]
    only_regression = _spec()
    only_regression["tasks"] = only_regression["tasks"][1:]
    with pytest.raises(SpecError, match="no binary task to calibrate.*value \\(regression\\)"):
        C.task_names(kzoo.load_spec(only_regression))
    with pytest.raises(SpecError, match=r"calibration.tasks\[0\]: task 'value' is a regression task"):
        kzoo.load_spec(_spec(calibration={"method": "platt", "tasks": ["value"]}))
    with pytest.raises(SpecError, match=r"calibration.method"):
        kzoo.load_spec(_spec(calibration={"method": "beta"}))
    with pytest.raises(SpecError, match=r"calibration: calibration is fitted on the validation split"):
        kzoo.load_spec(_spec(calibration={"method": "platt"},
                             train={"split": {"validation": 0.0, "test": 0.1}}))
    chain = _spec(calibration={"method": "platt", "tasks": ["cvr"]})
    chain["tasks"][1] = {"name": "cvr", "type": "binary", "input": "linear", "label": "label", "given": "ctr"}
    with pytest.raises(SpecError, match=r"calibration.tasks\[0\]: task 'cvr' is conditional"):
        kzoo.load_spec(chain)
