"""IntTower's blocks against NumPy with every weight random (biases and batch-norm statistics
included), their shared layer contract, and CIR (the contrastive task) against its formula."""

import json

import keras
import numpy as np
import pytest

import kzoo
from kzoo.blocks.inttower import FEScore, FETower, LightSE
from kzoo.errors import SpecError
from kzoo.inttower import ContrastiveTask
from kzoo.retrieval import InBatchSoftmax
from layer_test import Weights, close, run_layer_test  # tests/ is on sys.path

RNG = np.random.default_rng(11)
B, F, D = 5, 4, 3
FIELDS = RNG.normal(size=(B, F, D)).astype("float32")


def _randomize(layer, seed=1):
    rng = np.random.default_rng(seed)
    layer.set_weights([(np.abs(v) + 0.5 if w.path.endswith("moving_variance") else v).astype("float32")
                       for w in layer.weights for v in [rng.normal(scale=0.6, size=tuple(w.shape))]])


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_light_se_against_numpy():
    se = LightSE()
    se(FIELDS)
    _randomize(se)
    w = Weights(se)
    e = FIELDS.astype("float64")
    a = _softmax(e.mean(-1) @ w["excitation/kernel"] + w["excitation/bias"])
    w.all_read()
    close(se(FIELDS), e + e * a[:, :, None])
    # field order matters: swapping two fields' values is not the same as swapping the output's
    swapped = FIELDS[:, [1, 0, 2, 3]]
    assert not np.allclose(keras.ops.convert_to_numpy(se(swapped))[:, [1, 0, 2, 3]],
                           keras.ops.convert_to_numpy(se(FIELDS)), atol=1e-4)


def _np_fe_tower(x, w, units, project, norm):
    h = x.reshape(len(x), -1)
    reps = []
    for i in range(len(units)):
        if project == "layers":
            reps.append(h @ w[f"fe_{i}/kernel"] + w[f"fe_{i}/bias"])
        h = h @ w[f"dense_{i}/kernel"] + w[f"dense_{i}/bias"]
        if norm:
            p = f"bn_{i}/"
            h = (h - w[p + "moving_mean"]) / np.sqrt(w[p + "moving_variance"] + 1e-3) * w[p + "gamma"] + w[p + "beta"]
        h = np.maximum(h, 0)
    if project == "output":
        reps.append(h @ w["fe_0/kernel"] + w["fe_0/bias"])
    return np.stack(reps, 1)


@pytest.mark.parametrize("project,norm", [("layers", "batch"), ("output", None), ("layers", None)])
def test_fe_tower_against_numpy(project, norm):
    tower = FETower(units=[6, 5], heads=2, field_dim=3, project=project, norm=norm)
    tower(FIELDS)
    _randomize(tower, seed=2)
    w = Weights(tower)
    want = _np_fe_tower(FIELDS.astype("float64"), w, [6, 5], project, norm)
    w.all_read()
    assert want.shape == (B, 2 if project == "layers" else 1, 6)
    close(tower(FIELDS, training=False), want)


def test_fe_score_against_the_paper_formula():
    q = RNG.normal(size=(B, 3, 2 * 4)).astype("float32")   # 3 layers x 2 heads of 4
    v = RNG.normal(size=(B, 1, 3 * 4)).astype("float32")   # 3 item heads of 4
    want = np.zeros((B, 1))
    for b in range(B):
        for layer in range(3):
            for h in range(2):
                uq = q[b, layer, h * 4:(h + 1) * 4].astype("float64")
                want[b, 0] += max(uq @ v[b, 0, k * 4:(k + 1) * 4] for k in range(3))
    close(FEScore(query_heads=2, item_heads=3)([q, v]), want)
    with pytest.raises(ValueError, match="one field_dim"):
        FEScore(query_heads=3, item_heads=3)([q, v])


@pytest.mark.parametrize("cls,kwargs,data,shape", [
    (LightSE, {}, FIELDS, (B, F, D)),
    (FETower, {"units": [6, 5], "heads": 2, "field_dim": 3, "norm": "batch"}, FIELDS, (B, 2, 6)),
    (FEScore, {"query_heads": 2, "item_heads": 1}, [RNG.normal(size=(B, 2, 6)).astype("float32"),
                                                    RNG.normal(size=(B, 1, 3)).astype("float32")], (B, 1)),
])
def test_inttower_blocks_keep_the_layer_contract(cls, kwargs, data, shape):
    run_layer_test(cls, kwargs, data, shape, train=cls is not FEScore)


def test_cir_is_the_in_batch_softmax_of_the_positive_rows():
    """CIR = mean over positive rows of -log softmax_j(<u_r, v_j> / τ)[r] over the batch's items, with
    rows of another row's item left out of the negatives; negative rows add no loss."""
    import pandas as pd

    task = ContrastiveTask({"name": "cir", "type": "contrastive", "query": "q", "item": "i", "temperature": 0.1},
                           "label")
    frame = pd.DataFrame({"item_id": ["7", "9", "7", "3", "5"], "label": [1.0, 0.0, 1.0, 1.0, 0.0]})
    y = task.labels(frame)
    u = RNG.normal(size=(5, 4))
    v = RNG.normal(size=(5, 4))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = u @ v.T / 0.1
    want = []
    for r in [0, 2, 3]:
        keep = [j for j in range(5) if j == r or frame["item_id"][j] != frame["item_id"][r]]
        want.append(-(s[r, r] - np.log(np.exp(s[r, keep]).sum())))
    got = keras.ops.convert_to_numpy(InBatchSoftmax(logq=False)(y, s.astype("float32")))
    assert float(got) == pytest.approx(np.mean(want), rel=1e-5)


def test_int_tower_spec_serves_only_the_ctr_score_and_checks_its_contrastive_task():
    spec = kzoo.load_spec("int_tower")
    from kzoo.graph import export_tasks

    assert export_tasks(spec) == ["ctr"]
    raw = json.loads(spec.to_json())
    raw["tasks"][1]["gauc_by"] = "user_id"
    with pytest.raises(SpecError, match=r"tasks\[1\].gauc_by: 'gauc_by' does not apply to a contrastive task"):
        kzoo.load_spec(raw)


def test_scored_rank_report_ranks_the_corpus_by_the_fe_score(tmp_path):
    """Every (query, item) pair scored by the trained FEScore layer, against NumPy: the FE formula
    over the towers' representations, a full argsort of the corpus, kzoo.metrics' Recall/NDCG."""
    from kzoo import metrics as kmetrics
    from kzoo.inttower import scored_rank_report
    from kzoo.retrieval import Catalogue, block_model, embed
    from tests.real_data import movielens_slice

    data = kzoo.prepare("int_tower", f"movielens:{movielens_slice(tmp_path / 'ml', users=15)}", 64)
    model = kzoo.build(data.spec, data.stats)
    for w in model.weights:  # random weights everywhere (the tiny embedding init would tie many scores)
        w.assign(RNG.normal(scale=0.3, size=tuple(w.shape)).astype("float32") if "variance" not in w.path
                 else np.full(tuple(w.shape), 1.0, "float32"))
    frames = data.frames
    cat = Catalogue.from_frames(list(frames.values()), frames["train"], "item_id",
                                ["item_id", "item_cat", "item_genres", "year"])
    test = frames["test"]
    got = scored_rank_report(data.spec, model, data.stats, test, cat, "query_tower", "item_tower", "score",
                             ks=(10, 50))
    rows = test[test["label"] == 1]
    q = embed(block_model(data.spec, model, "query_tower"), data.spec, data.stats, rows).astype("float64")
    v = embed(block_model(data.spec, model, "item_tower"), data.spec, data.stats, cat.frame).astype("float64")
    qh = q.reshape(len(q), q.shape[1], 2, -1)             # (Q, L, heads, f)
    vh = v.reshape(len(v), 2, -1)                          # (N, heads, f)
    scores = np.einsum("qlhf,nkf->qnlhk", qh, vh).max(-1).sum((2, 3))
    ranked = np.argsort(-scores, axis=1, kind="stable")
    relevant = [[t] for t in cat.codes(rows["item_id"])]
    assert got["queries"] == len(rows) and got["corpus"] == len(cat)
    for k in (10, 50):
        assert got[f"recall@{k}"] == pytest.approx(kmetrics.recall_at_k(relevant, ranked, k), abs=1e-4)
        assert got[f"ndcg@{k}"] == pytest.approx(kmetrics.ndcg_at_k(relevant, ranked, k), abs=1e-4)
