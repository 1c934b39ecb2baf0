"""Training parts against independent formulas: losses, the schedule, the split optimizer, curves."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import kzoo
from kzoo.losses import make_loss
from kzoo.optim import SplitOptimizer, WarmupExponentialDecay, embedding_variable_paths

REPO = Path(__file__).resolve().parents[1]
Y = np.array([1, 0, 1, 0, 0], "float32")
P = np.array([0.9, 0.2, 0.4, 0.6, 0.05], "float32")


Z = np.log(P / (1 - P))  # the logits the task heads give; losses take logits


def loss_value(cfg):
    return float(keras.ops.convert_to_numpy(make_loss(cfg)(Y.reshape(-1, 1), Z.reshape(-1, 1))))


def test_bce_family_matches_numpy():
    bce = -(Y * np.log(P) + (1 - Y) * np.log(1 - P))
    assert loss_value("bce") == pytest.approx(bce.mean(), rel=1e-4)
    w = -(3.0 * Y * np.log(P) + (1 - Y) * np.log(1 - P))
    assert loss_value({"type": "weighted_bce", "pos_weight": 3.0}) == pytest.approx(w.mean(), rel=1e-5)
    cal = bce.mean() + 2.0 * (P.mean() - Y.mean()) ** 2
    assert loss_value({"type": "calibrated_bce", "lambda": 2.0}) == pytest.approx(cal, rel=1e-5)


def test_focal_matches_lin_et_al():
    alpha, gamma = 0.25, 2.0
    pt = np.where(Y == 1, P, 1 - P)
    at = np.where(Y == 1, alpha, 1 - alpha)
    focal = -(at * (1 - pt) ** gamma * np.log(pt)).mean()
    assert loss_value({"type": "focal", "alpha": alpha, "gamma": gamma}) == pytest.approx(focal, rel=1e-4)


def test_warmup_exponential_decay_formula():
    sched = WarmupExponentialDecay(0.1, warmup_steps=10, decay_steps=100, decay_rate=0.5)
    for step, want in [(0, 0.1 * 1 / 10), (4, 0.1 * 5 / 10), (10, 0.1), (110, 0.05), (210, 0.025)]:
        assert float(keras.ops.convert_to_numpy(sched(step))) == pytest.approx(want, rel=1e-5)


def _fm_model():
    keras.utils.set_random_seed(3)
    model = kzoo.build(REPO / "zoo_configs" / "fm.json")
    rng = np.random.default_rng(0)
    x = {inp.name: (rng.integers(0, 2, (64, 1)).astype("int32") if inp.dtype == "int32"
                    else rng.normal(size=(64, 1)).astype("float32")) for inp in model.inputs}
    y = {"ctr": rng.integers(0, 2, (64, 1)).astype("float32")}
    return model, x, y


def _one_step(optimizer, init=None):
    model, x, y = _fm_model()
    if init is not None:
        model.set_weights(init)
    opt = optimizer(model) if callable(optimizer) else optimizer
    model.compile(optimizer=opt, loss={"ctr": "binary_crossentropy"})
    before = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    after = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    return model, before, after


def test_split_optimizer_routes_embeddings_and_dense_weights():
    init = [w for w in _fm_model()[0].get_weights()]
    _, _, plain = _one_step(keras.optimizers.SGD(0.1), init)
    model, before, split = _one_step(lambda m: SplitOptimizer(keras.optimizers.SGD(0.1), keras.optimizers.SGD(0.0),
                                                              embedding_variable_paths(m)), init)
    tables = set(embedding_variable_paths(model))
    assert tables and tables < set(split)
    for path in split:
        if path in tables:  # the embedding optimizer applied plain SGD to the tables
            np.testing.assert_allclose(split[path], plain[path], rtol=1e-5, atol=1e-7)
            assert not np.allclose(split[path], before[path])
        else:  # the dense optimizer had learning rate 0
            np.testing.assert_allclose(split[path], before[path])


def test_spec_with_embedding_optimizer_trains_and_reloads(tmp_path):
    spec = json.loads((REPO / "zoo_configs" / "deepfm.json").read_text())
    spec["features"] = {"$ref": "datasets/criteo.json"}
    spec["train"] = {"optimizer": {"type": "adam", "learning_rate": 0.003},
                     "embedding_optimizer": {"type": "adagrad", "learning_rate": 0.05}, "batch_size": 128}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    metrics = kzoo.train(path, "synthetic:1600", tmp_path / "run", epochs=2, verbose=0)
    assert metrics["ctr"]["auc"] > 0.5
    reloaded = keras.models.load_model(tmp_path / "run" / "model.keras")
    assert isinstance(reloaded.optimizer, SplitOptimizer)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000


def test_train_embedding_l2_is_every_tables_default_and_matches_numpy():
    raw = json.loads((REPO / "zoo_configs" / "deepfm.json").read_text())
    raw["train"]["embedding_l2"] = 0.01
    for b in raw["blocks"]:
        if b["type"] == "Linear":
            b.setdefault("args", {})["l2"] = 0.5  # a block's own l2 wins over the default
    model = kzoo.build(raw)
    emb, linear = model.get_layer("emb"), model.get_layer("linear")
    assert emb.l2 == 0.01 and linear.l2 == 0.5
    # The penalty is l2 * sum of the looked-up rows' squares / batch size (NumPy from the weights).
    ids = {f["name"]: np.array([[1], [0], [1]]) for f in emb.categorical}  # placeholder vocab sizes: ids 0, 1
    emb({**ids, **{f["name"]: np.ones((3, 1), "float32") for f in emb.numeric}})  # eager call records the loss
    table = keras.ops.convert_to_numpy(emb.embeddings)
    rows = np.concatenate([table[np.array([1, 0, 1]) + off] for off in emb.id_offsets])
    assert float(keras.ops.convert_to_numpy(emb.losses[-1])) == pytest.approx(0.01 * np.sum(rows ** 2) / 3, rel=1e-5)


def test_early_stopping_on_validation_auc_keeps_the_best_epoch(data_dir, tmp_path):
    """On the real Criteo slice: training stops after the first epoch that does not raise validation
    AUC (patience 0), and the saved model is the best epoch's (its validation AUC recomputed from its
    own predictions). Whichever epoch that is on this backend, nothing about it is pinned."""
    import pandas as pd

    from kzoo.metrics import auc
    from kzoo.pipeline import load_for, split_frames
    from kzoo.predict import predict_frame

    path = data_dir / "criteo" / "criteo_train_head10k.txt"
    if not path.is_file():
        pytest.skip(f"real Criteo slice not present at {path}")
    raw = json.loads((REPO / "zoo_configs" / "dcn.json").read_text())
    raw["train"].update(epochs=3, early_stopping={"monitor": "val_auc", "mode": "max", "patience": 0})
    kzoo.train(raw, f"criteo:{path}", tmp_path / "run", verbose=0)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    val_auc = history.val_auc.to_numpy()
    worse = [i for i in range(1, len(val_auc)) if val_auc[i] <= val_auc[:i].max()]
    # Stops right after the first epoch without improvement, else runs all 3.
    assert len(val_auc) == (worse[0] + 1 if worse else 3), history
    run = kzoo.RunDir(tmp_path / "run")
    spec, frame = load_for(run.spec(), f"criteo:{path}")
    val = split_frames(spec, frame)[1]
    pred = predict_frame(run.model(), spec, run.preprocessor(), val)["ctr"]
    restored = auc(val["label"].to_numpy(), pred)
    # Keras' AUC uses 1,000 thresholds; the exact AUC of the saved model matches the best epoch's.
    best = int(np.argmax(val_auc))
    assert abs(restored - val_auc[best]) < 0.003, (restored, history)
    if worse:
        assert abs(restored - val_auc[-1]) > abs(restored - val_auc[best]), (restored, history)
