"""Multi-task plumbing: conditional chains (ESMM), label masks, sample weights, negative downsampling."""

import copy

import keras
import numpy as np
import pytest

import kzoo
from kzoo import data as kdata
from kzoo.errors import DataError, SpecError


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def funnel_frame(rows=3000, seed=0):
    """Synthetic impressions with a click label and, for clicked rows only, purchase and review:
    review implies purchase implies click (a three-step funnel)."""
    rng = np.random.default_rng(seed)
    frame = kdata.synthetic(rows, seed=seed).rename(columns={"label": "click"})
    x = np.log1p(np.nan_to_num(frame["I1"].to_numpy(dtype="float64"), nan=0.0))
    purchase = frame["click"].to_numpy() * (rng.random(rows) < sigmoid(0.8 * (x - x.mean()) - 0.5))
    review = purchase * (rng.random(rows) < 0.4)
    frame["purchase"] = purchase.astype("float32")
    frame["review"] = review.astype("float32")
    frame["weight"] = rng.uniform(0.5, 2.0, rows).astype("float32")
    return frame


def funnel_spec(**task_overrides):
    dataset = kdata.bundled_dataset("criteo")
    dataset["label"] = ["click", "purchase", "review"]
    spec = {
        "name": "funnel",
        "features": dataset,
        "groups": {"all": ["I1", "I2", "C1", "C2", "C3"]},
        "blocks": [
            {"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
            {"name": "shared", "type": "MLP", "inputs": ["emb"], "args": {"units": [16]}},
            {"name": "t_click", "type": "MLP", "inputs": ["shared"], "args": {"units": [8]}},
            {"name": "t_purchase", "type": "MLP", "inputs": ["shared"], "args": {"units": [8]}},
            {"name": "t_review", "type": "MLP", "inputs": ["shared"], "args": {"units": [8]}},
        ],
        "tasks": [
            {"name": "ctr", "input": "t_click", "label": "click"},
            {"name": "ctcvr", "input": "t_purchase", "label": "purchase", "given": "ctr", "conditional_name": "cvr"},
            {"name": "review", "input": "t_review", "label": "review", "given": "ctcvr"},
        ],
        "train": {"optimizer": {"type": "adam", "learning_rate": 0.01}, "batch_size": 300, "epochs": 2},
    }
    for i, override in task_overrides.items():
        spec["tasks"][int(i[1:])].update(override)
    return spec


def random_inputs(used, n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (rng.normal(size=(n, 1)).astype("float32") if k.startswith("I") else
                rng.integers(0, 2, size=(n, 1)).astype("int32")) for k in used}


def test_conditional_outputs_are_the_product_of_their_parts_down_a_three_step_chain():
    spec = kzoo.load_spec(funnel_spec())
    model = kzoo.build(spec)
    rng = np.random.default_rng(1)
    for w in model.trainable_weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    serving, used = kzoo.serving_model(spec, model)
    x = random_inputs(used)
    served = {k: keras.ops.convert_to_numpy(v).reshape(-1) for k, v in serving(x).items()}
    assert set(served) == {"ctr", "ctcvr", "cvr", "review", "review_given_ctcvr"}
    np.testing.assert_allclose(served["ctcvr"], served["ctr"] * served["cvr"], rtol=1e-5)
    np.testing.assert_allclose(served["review"], served["ctcvr"] * served["review_given_ctcvr"], rtol=1e-5)
    # The training outputs: the root's logit; each conditional task's log joint probability.
    trained = {k: keras.ops.convert_to_numpy(v).reshape(-1) for k, v in model(x).items()}
    np.testing.assert_allclose(sigmoid(trained["ctr"]), served["ctr"], rtol=1e-5)
    np.testing.assert_allclose(np.exp(trained["ctcvr"]), served["ctcvr"], rtol=1e-4)
    np.testing.assert_allclose(np.exp(trained["review"]), served["review"], rtol=1e-4)
    # Exporting only the deepest task still walks its parents for their logits.
    only, _ = kzoo.serving_model(spec, model, ["review"])
    out = {k: keras.ops.convert_to_numpy(v).reshape(-1) for k, v in only(x).items()}
    assert set(out) == {"review", "review_given_ctcvr"}
    np.testing.assert_allclose(out["review"], served["review"], rtol=1e-6)


def test_joint_loss_matches_bce_of_the_product():
    from kzoo.losses import LogProbBCE

    rng = np.random.default_rng(2)
    za, zb = rng.normal(0, 2, 64), rng.normal(0, 2, 64)
    y = (rng.random(64) < 0.3).astype("float32")
    p = sigmoid(za) * sigmoid(zb)
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    log_joint = -np.logaddexp(0, -za) - np.logaddexp(0, -zb)
    got = float(keras.ops.convert_to_numpy(LogProbBCE()(y.reshape(-1, 1), log_joint.reshape(-1, 1).astype("float32"))))
    assert got == pytest.approx(expected, rel=1e-5)


def test_esmm_chain_trains_and_exports_joint_and_conditional(tmp_path):
    frame = funnel_frame()
    metrics = kzoo.train(funnel_spec(), frame, tmp_path / "run", verbose=0)
    assert {"ctr", "ctcvr", "cvr", "review"} <= set(metrics)
    # The conditional is reported on the parent's positives: CVR on clicks.
    test = kdata.split(kdata.conform(frame, funnel_spec()["features"]), seed=0)[2]
    assert metrics["cvr"]["examples"] == int(test["click"].sum())
    assert metrics["ctcvr"]["examples"] == len(test)
    version = kzoo.export(tmp_path / "run", tmp_path / "exports")
    served = kzoo.predict(version, frame.drop(columns=["click", "purchase", "review"]).iloc[:100])
    assert {"ctr", "ctcvr", "cvr", "review", "review_given_ctcvr"} <= set(served.columns)
    np.testing.assert_allclose(served["ctcvr"], served["ctr"] * served["cvr"], rtol=1e-5)


def test_a_masked_row_leaves_the_task_gradient_unchanged():
    """Rows with click == 0 are masked for the purchase task: flipping their purchase labels changes
    nothing in one training step; flipping an unmasked row's label does."""
    spec = funnel_spec(t1={"given": None, "conditional_name": None, "mask_by": "click"}, t2={"given": None})
    for t in spec["tasks"]:
        for k in [k for k, v in t.items() if v is None]:
            del t[k]
    spec["tasks"] = spec["tasks"][:2]
    spec["blocks"] = spec["blocks"][:4]
    spec["train"]["optimizer"] = {"type": "sgd", "learning_rate": 0.5}
    frame = funnel_frame(400, seed=3)
    flipped = frame.copy()
    masked = np.flatnonzero(frame["click"].to_numpy() == 0)
    flipped.loc[masked, "purchase"] = 1 - flipped.loc[masked, "purchase"]
    unmasked = frame.copy()
    row = np.flatnonzero(frame["click"].to_numpy() == 1)[0]
    unmasked.loc[row, "purchase"] = 1 - unmasked.loc[row, "purchase"]

    def one_step(f):
        data = kzoo.prepare(spec, f)
        keras.utils.set_random_seed(0)
        model = kzoo.compile(kzoo.build(data.spec, data.stats), data.spec)
        model.fit(data.dataset("train", batch_size=len(data.frames["train"])), epochs=1, verbose=0)
        return [np.array(w) for w in model.get_layer("t_purchase").weights]

    base = one_step(frame)
    for a, b in zip(base, one_step(flipped)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(base, one_step(unmasked)))


def test_a_batch_with_every_row_masked_gives_a_finite_loss(tmp_path):
    spec = funnel_spec(t1={"mask_by": "click"})
    frame = funnel_frame(600, seed=4)
    frame["click"] = 0.0  # nothing clicked: every row masked for ctcvr...
    frame["purchase"] = 0.0
    frame["review"] = 0.0
    spec["tasks"] = [spec["tasks"][0], {**spec["tasks"][1], "given": None}]
    del spec["tasks"][1]["given"], spec["tasks"][1]["conditional_name"]
    spec["blocks"] = spec["blocks"][:4]
    spec["train"]["epochs"] = 1
    with pytest.raises(ValueError):  # ...and a single-class test split has no AUC: said plainly
        kzoo.train(spec, frame, tmp_path / "run", verbose=0)
    import pandas as pd

    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert np.isfinite(history["loss"]).all() and history["ctcvr_loss"].iloc[0] == 0.0


def test_sample_weights_scale_the_loss_and_negative_weights_are_refused(tmp_path):
    spec = funnel_spec()
    spec["tasks"] = [{**spec["tasks"][0], "sample_weight": "weight"}]
    spec["blocks"] = spec["blocks"][:3]
    frame = funnel_frame(600, seed=5)
    data = kzoo.prepare(spec, frame)
    _, y, w = next(iter(data.dataset("train", batch_size=50)))
    np.testing.assert_allclose(w["ctr"].numpy(), data.frames["train"]["weight"].to_numpy()[:50], rtol=1e-6)
    bad = frame.copy()
    bad.loc[17, "weight"] = -1.0
    with pytest.raises(DataError, match=r"column 'weight', row 18: sample weight -1.0 is negative"):
        kzoo.prepare(spec, bad)
    gone = frame.drop(columns=["weight"])
    with pytest.raises(DataError, match="expects column 'weight'"):
        kzoo.prepare(spec, gone)


def test_negative_downsampling_correction_matches_the_formula_and_calibrates(tmp_path):
    rate = 0.2
    spec = funnel_spec()
    spec["tasks"] = [{**spec["tasks"][0], "negative_sampling": rate}]
    spec["blocks"] = spec["blocks"][:3]
    spec["train"]["epochs"] = 3
    frame = funnel_frame(4000, seed=6)
    kzoo.train(spec, frame, tmp_path / "run", verbose=0)
    model = kzoo.load_model(tmp_path / "run")
    loaded = kzoo.load_spec(tmp_path / "run" / "spec.json")
    serving, used = kzoo.serving_model(loaded, model)
    x = random_inputs(used, 64, seed=7)
    p = sigmoid(keras.ops.convert_to_numpy(model(x)["ctr"]).reshape(-1))  # the downsampled model's score
    q = keras.ops.convert_to_numpy(serving(x)["ctr"]).reshape(-1)
    np.testing.assert_allclose(q, p / (p + (1 - p) / rate), rtol=1e-5)
    # On data: the corrected scores average to the click rate; the raw ones are far above it.
    test = kdata.split(kdata.conform(frame, spec["features"]), seed=0)[2]
    served = kzoo.predict(tmp_path / "run", test)["ctr"].to_numpy()
    rate_true = test["click"].mean()
    assert abs(served.mean() - rate_true) < 0.06, (served.mean(), rate_true)
    raw = served / (served + (1 - served) * rate)  # inverse of the correction: the uncorrected score
    assert raw.mean() > rate_true + 0.15, (raw.mean(), rate_true)


@pytest.mark.parametrize("change, path, message", [
    ({"t1": {"given": "ctrr"}}, "tasks[1].given", "'ctrr' is not a task (did you mean 'ctr'?)"),
    ({"t0": {"given": "review"}}, "tasks[", "the `given` chain is a cycle"),
    ({"t1": {"given": "ctcvr"}}, "tasks[1].given", "cannot be given itself"),
    ({"t1": {"negative_sampling": 0.5}}, "tasks[1].negative_sampling", "downsample its parent instead"),
    ({"t1": {"loss": "focal"}}, "tasks[1].loss", "takes loss bce"),
])
def test_bad_chains_are_spec_errors_with_their_path(change, path, message):
    spec = funnel_spec(**copy.deepcopy(change))
    with pytest.raises(SpecError) as e:
        kzoo.load_spec(spec)
    assert any(p.startswith(path) and message in m for p, m in e.value.problems), e.value.problems


def test_a_task_label_missing_from_the_data_names_the_column(tmp_path):
    frame = funnel_frame(300).drop(columns=["purchase"])
    with pytest.raises(DataError, match="expects column 'purchase'"):
        kzoo.prepare(funnel_spec(), frame)
