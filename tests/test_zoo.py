"""Every zoo config: validates, builds, learns, exports on every backend and serves the same numbers."""

import json
import tempfile
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import kzoo
from kzoo import data as kdata
from kzoo import zoo_configs
from kzoo.metrics import binary_kl
from kzoo.graph import export_tasks, serving_model
from kzoo.pipeline import split_frames
from kzoo.tasks import tasks_of
from tests.real_data import movielens_slice
from tests.tf_only import serve_fresh_many

REPO = Path(__file__).resolve().parents[1]
ZOO = zoo_configs.names()
RANKING = ["lr", "fm", "wide_deep", "deepfm", "multi_tower", "dcn", "dcn_v2", "dlrm", "xdeepfm", "masknet",
           "wukong", "rocket_launching"]


def test_every_ranking_model_has_a_config_and_every_config_is_trained():
    # Both ways: the ranking models each have a config, and the parametrised test below trains
    # every config in the zoo folder (ZOO), so a new config cannot be left out.
    assert set(RANKING) <= set(ZOO), sorted(set(RANKING) - set(ZOO))
    assert ZOO == sorted(p.stem for p in (REPO / "zoo_configs").glob("*.json"))
    assert len(ZOO) >= len(RANKING)


def chance_band(y) -> float:
    """Three standard deviations of the AUC of a random scorer on labels `y` (Hanley & McNeil under H0)."""
    pos, neg = int(np.sum(y)), int(len(y) - np.sum(y))
    return 3 * np.sqrt((pos + neg + 1) / (12 * pos * neg))


def zoo_data(spec, data_dir):
    """About 4,000 rows for a zoo config's dataset: synthetic Criteo-shaped rows, users 1..40 of MovieLens-100K
    (sequence models), or the first rows of the
    real Census-Income slice for the multi-task configs (skipped only where that file is absent)."""
    name = spec.dataset.get("name")
    if name == "criteo":
        return kdata.conform(kdata.synthetic(4000), spec.dataset)
    if name == "census":
        path = data_dir / "census_income_kdd" / "census-income.part1.gz"
        if not path.is_file():
            pytest.skip(f"real Census-Income slice not present at {path}")
        return kdata.load(f"census:{path}")[0].iloc[:4000].reset_index(drop=True)
    if name == "aliccp":
        # The real Ali-CCP sample is 200 rows (INDEX.md: schema and loader tests only, too small to
        # learn): tiled to 4,000 rows it checks that the chain trains and serves; that the ESMM chain
        # *learns* is tested on a synthetic funnel in tests/test_multitask.py.
        folder = data_dir / "multitask_ctr_samples"
        parts = [folder / f"ali_ccp_{p}_sample.csv" for p in ("train", "val", "test")]
        if not all(p.is_file() for p in parts):
            pytest.skip(f"Ali-CCP samples not present in {folder}")
        frame = pd.concat([kdata.load(f"aliccp:{p}")[0] for p in parts], ignore_index=True)
        return pd.concat([frame] * (4000 // len(frame) + 1), ignore_index=True).iloc[:4000]
    if name == "movielens":
        # Users 1..40 of the real MovieLens-100K (about 4,300 ratings), split by the loader: each
        # user's last 5 ratings are the test rows, the 5 before them validation.
        # The two-tower configs get users 1..150 (about 14,900 ratings, a corpus of ~1,300 items):
        # towers that meet only in a dot product need more than 40 users' ratings to learn.
        towers = any(t.get("type") in ("retrieval", "contrastive") for t in spec.tasks)
        folder = movielens_slice(Path(tempfile.mkdtemp(prefix="kzoo-ml-")), users=150 if towers else 40)
        return kdata.load(f"movielens:{folder}")[0]
    if name == "mtmd_synthetic":
        # 200 users and 150 ads, so the teacher's latent structure behind the ids is learnable from
        # 3,200 rows (the bundled generator's 3,000 users need the benchmark's 20,000+ rows).
        from kzoo.loaders_mtmd import mtmd_synthetic

        return mtmd_synthetic(4000, users=200, items=150)
    raise AssertionError(f"zoo config {spec.name} trains on {name!r}: add its test data here")


# Configs trained here at test sizes: the same graph, narrower layers and a learning rate for 20 steps
# (the paper-sized MTMD takes three minutes of a 2-core JAX test run; bench/mtmd.py --sizes paper
# trains it at its own sizes).
TEST_ARGS = {"MTMDTower": {"deep_units": [16, 8], "shallow_units": [4], "routing_units": [4],
                           "tasks": {"ctr": 8, "gctr": 4}}}
TEST_LEARNING_RATE = {"mtmd": 0.01}


def at_test_size(spec):
    raw = json.loads(spec.to_json())
    for block in raw["blocks"]:
        block.get("args", {}).update(TEST_ARGS.get(block["type"], {}))
    if spec.name in TEST_LEARNING_RATE:
        raw["train"]["optimizer"]["learning_rate"] = TEST_LEARNING_RATE[spec.name]
    return kzoo.load_spec(raw)


LEARNS = {"criteo", "census", "movielens", "mtmd_synthetic"}  # datasets the zoo test has enough real signal in to demand learning


@pytest.mark.parametrize("name", ZOO)
def test_zoo_config_learns_exports_and_serves_the_same_numbers(name, tmp_path, backend, data_dir):
    spec = at_test_size(kzoo.load_spec(name))
    frame = zoo_data(spec, data_dir)
    run = tmp_path / "run"
    # 4,000 rows: a 3,200-row training split of exactly 10 batches of 320, so one train-step compile.
    metrics = kzoo.train(spec, frame, run, epochs=2, batch_size=320, verbose=0)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2
    assert history["loss"].iloc[1] < history["loss"].iloc[0], history
    # Learning, not luck: each task's test AUC (400 rows) above 0.5 by more than three null
    # standard deviations.
    test = split_frames(spec, kdata.conform(frame, spec.dataset))[2]
    # (A retrieval task is not trained to separate liked from disliked rows: its learning check is
    # Recall@100 against the corpus, in check_retrieval. A contrastive task is a training-only
    # regulariser with no output of its own.)
    scored = [t for t in spec.tasks if t.get("type") not in ("retrieval", "contrastive")]
    for task in scored if spec.dataset.get("name") in LEARNS else []:
        y = test[spec.task_label(task)].to_numpy()
        assert metrics[task["name"]]["examples"] == len(y)
        if task.get("loss") == "kl":  # distilled to a teacher: closer to it than the base rate is
            if task.get("given"):
                # The conditional GCTR ends only 3-12 % below the base rate's KL after these 20 steps
                # (too thin to demand here); tests/test_mtmd.py checks it learns, with more steps.
                continue
            constant = np.full(len(y), frame[spec.task_label(task)].mean())
            assert metrics[task["name"]]["kl"] < binary_kl(y, constant), (task["name"], metrics[task["name"]])
            continue
        assert metrics[task["name"]]["auc"] > 0.5 + chance_band(y), (task["name"], metrics[task["name"]])

    version = kzoo.export(run, tmp_path / "exports")
    rows = kdata.conform(frame.iloc[-64:].reset_index(drop=True), spec.dataset)
    if any(t.kind == "retrieval" for t in tasks_of(spec)):
        check_retrieval(spec, metrics, version, rows, run, tmp_path)
        return
    # Export on every backend (a JAX run is exported by a TensorFlow-backend subprocess); a fresh
    # TensorFlow-only process serves raw columns with the numbers of the run, one output per task.
    expected = kzoo.predict(run, rows)
    towers = spec.raw.get("export", {}).get("towers", {})
    # One fresh process serves the joint export and, where the config exports its towers, each tower.
    served, *apart = serve_fresh_many([version, *(tower_version(version, side) for side in towers)], rows, tmp_path)
    served = served["outputs"]
    outputs = {o for t in tasks_of(spec) if t.name in export_tasks(spec) for o in t.output_names()}
    assert set(served) == outputs and outputs <= set(expected.columns)
    for output in served:
        np.testing.assert_allclose(np.array(served[output]), expected[output].to_numpy(), atol=1e-5)
    if towers:
        check_towers(spec, run, dict(zip(towers, apart)), expected)


def tower_version(version, side):
    return version.parent.parent / f"{version.parent.name}_{side}" / version.name


def check_towers(spec, run, apart, expected):
    """`export.towers`: each tower served apart in a fresh TensorFlow process (`apart`: side -> served);
    the trained score block applied to the two served outputs gives the joint model's first task (a
    sigmoid of its logit)."""
    task = tasks_of(spec)[0]
    score = kzoo.load_model(run).get_layer(task.input)
    sides = []
    for ref in next(b for b in spec.blocks if b["name"] == task.input)["inputs"]:
        side = next(s for s, r in spec.raw["export"]["towers"].items() if r == ref.split(".")[0])
        key = f"{side}_{ref.split('.', 1)[1]}" if "." in ref else f"{side}_embedding"
        sides.append(np.array(apart[side]["outputs"][key], dtype="float32"))
    logit = keras.ops.convert_to_numpy(score(sides)).reshape(-1)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), expected[task.name].to_numpy(), atol=1e-5)


def check_retrieval(spec, metrics, version, rows, run, tmp_path):
    """A retrieval config learned (Recall@100 against the corpus above a random ranking's by three
    standard deviations), and its exports agree: the query tower served apart times the item
    embeddings file is the run's pointwise score, and the retrieval SavedModel's top K are NumPy's."""
    task = tasks_of(spec)[0]
    report = metrics[task.name]
    chance = 100 / report["corpus"]
    assert report["recall@100"] > chance + 3 * np.sqrt(chance * (1 - chance) / report["queries"]), report
    items = np.load(version / "assets.extra" / "items.npz")
    query, served = serve_fresh_many([tower_version(version, "query"), version], rows, tmp_path)
    q = np.array(query["outputs"]["query_embedding"], dtype="float32")
    expected = kzoo.predict(run, rows)[task.name].to_numpy()
    codes = pd.Index(items["ids"]).get_indexer(rows[task.item_id].astype(str))
    pair = np.sum(q * items["embeddings"][codes], axis=1) / task.options["temperature"]
    np.testing.assert_allclose(pair, expected, rtol=1e-4, atol=1e-4)
    served = served["outputs"]
    k = task.options["k"]
    scores = q @ items["embeddings"].T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_allclose(np.array(served["scores"]), np.take_along_axis(scores, top, 1), atol=1e-5)
    got = np.array(served["item_ids"]).astype(str)
    # Ids must match where scores are not tied (a tie may come back in either order).
    sorted_scores = np.take_along_axis(scores, top, 1)
    untied = np.diff(sorted_scores, axis=1, prepend=np.inf) < -1e-6
    untied[:, :-1] &= np.diff(sorted_scores, axis=1) < -1e-6
    assert (got[untied] == items["ids"][top][untied]).all()


def test_rocket_launching_serves_only_the_light_net():
    spec = kzoo.load_spec(REPO / "zoo_configs" / "rocket_launching.json")
    model = kzoo.build(spec)
    light, used = serving_model(spec, model, ["ctr"])
    names = {layer.name for layer in light.layers}
    assert "booster_hidden" not in names and "hint" not in names and "light_hidden" in names
    assert light.count_params() < model.count_params() / 3, (light.count_params(), model.count_params())
    x = {n: np.zeros((2, 1), "float32" if n.startswith("I") else "int32") for n in used}
    logit = keras.ops.convert_to_numpy(model(x)["ctr"])  # the training model gives the task's logit
    np.testing.assert_allclose(keras.ops.convert_to_numpy(light(x)["ctr"]), 1 / (1 + np.exp(-logit)), atol=1e-6)


def test_bundled_dataset_swaps_in_for_named_loaders(data_dir, tmp_path):
    path = data_dir / "avazu" / "avazu_train_head10k.csv"
    if not path.is_file():
        pytest.skip(f"real Avazu slice not present at {path}")
    metrics = kzoo.train(REPO / "zoo_configs" / "deepfm.json", f"avazu:{path}", tmp_path / "run", epochs=1,
                         verbose=0)
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["features"]["name"] == "avazu"
    assert metrics["ctr"]["auc"] > 0.6, metrics


def test_tuning_settings_give_valid_specs_with_the_knobs_applied():
    """bench/tune.py's knobs applied to every config, on both datasets, build valid specs; and
    the settings it chose (bench/tuned.json) are valid for the models they name."""
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from common import KNOBS, TUNED_JSON, apply_setting, spec_for, takes_argument

    every = {knob: values[-1] for knob, values in KNOBS}
    for dataset in ("criteo", "avazu"):
        for model in RANKING:
            raw = spec_for(model, dataset)
            tuned = apply_setting(raw, every)
            kzoo.build(tuned)  # builds: e.g. DLRM's dense tower follows the halved embedding size
            assert tuned["train"]["optimizer"]["learning_rate"] == every["learning_rate"]
            assert tuned["train"]["embedding_l2"] == every["embedding_l2"]
            assert tuned["train"]["early_stopping"]["monitor"] == ("val_ctr_auc" if model == "rocket_launching" else "val_auc")
            dims = [(a["args"]["dim"], b["args"]["dim"]) for a, b in zip(raw["blocks"], tuned["blocks"])
                    if a["type"] == "FeatureEmbedding"]
            assert (model == "lr" or dims) and all(new == max(2, round(old * every["dim_scale"])) for old, new in dims)
            assert all(b["args"].get("dropout") == every["dropout"] for b in tuned["blocks"]
                       if takes_argument(b, "dropout"))
    chosen = json.loads(TUNED_JSON.read_text())
    assert set(chosen) == {"criteo", "avazu"} and all(set(chosen[d]) == set(RANKING) for d in chosen)
    for dataset, models in chosen.items():
        for model, result in models.items():
            kzoo.load_spec(apply_setting(spec_for(model, dataset), result["setting"]))


def test_tuning_search_keeps_only_validation_improvements():
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from common import DEFAULT, MAX_EPOCHS
    from tune import search

    raw = kzoo.load_spec(REPO / "zoo_configs" / "lr.json").raw
    raw["train"]["batch_size"] = 200  # 800 training rows: 4 full batches
    result = search(raw, "synthetic:1000", "lr")
    trace = result["trace"]
    # LR has no embedding dim to halve and no MLP for dropout: default, one learning rate, two L2s.
    settings = [t["setting"] for t in trace]
    assert len(trace) == 4 and settings[0] == DEFAULT and settings[1]["learning_rate"] == 0.001, settings
    assert [s["embedding_l2"] for s in settings[2:]] == [0.01, 0.1], settings
    assert all(s["dim_scale"] == 1.0 and s["dropout"] == 0.0 for s in settings), settings
    for t in trace:
        assert 1 <= t["epochs"] <= MAX_EPOCHS and t["val_auc"] == max(t["val_auc_per_epoch"])
    # A change is kept only when it beats everything before it, so the choice is the best tried.
    assert result["val_auc"] == max(t["val_auc"] for t in trace)
    assert result["default_val_auc"] == trace[0]["val_auc"]
