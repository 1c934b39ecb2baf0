"""Sequence and tags features: reading list columns, the preprocessing (most recent max_len, padding,
OOV), the spec checks, and the embedding blocks that read them, against NumPy."""

import json

import keras
import numpy as np
import pandas as pd
import pytest

import kzoo
from kzoo import data as kdata
from kzoo.blocks.core import FeatureEmbedding
from kzoo.blocks.sequence_input import SequenceEmbedding
from kzoo.errors import DataError, SpecError
from kzoo.features import PAD, Preprocessor, fit_stats, raw_arrays, sequence_report

FEATURES = [
    {"name": "user", "type": "categorical"},
    {"name": "item", "type": "categorical", "embedding": "item"},
    {"name": "cat", "type": "categorical", "embedding": "cat"},
    {"name": "genres", "type": "tags", "max_len": 3, "pool": "sum"},
    {"name": "hist_item", "type": "sequence", "max_len": 4, "embedding": "item"},
    {"name": "hist_cat", "type": "sequence", "max_len": 4, "embedding": "cat"},
    {"name": "hist_gap", "type": "sequence", "max_len": 4, "max_id": 5},
]
DATASET = {"name": "toy", "label": "label", "features": FEATURES}
TRAIN = pd.DataFrame({
    "label": [1.0, 0.0, 1.0],
    "user": ["u1", "u2", "u1"],
    "item": ["a", "b", "c"],
    "cat": ["x", "y", "x"],
    "genres": [["g1", "g2"], [], ["g1"]],
    "hist_item": [["a", "b"], [], ["a", "b", "c", "a", "d"]],
    "hist_cat": [["x", "y"], [], ["x", "y", "x", "x", "y"]],
    "hist_gap": [[1, 0], [], [9, 4, 3, 2, 1]],
})


def _ids(frame):
    frame = kdata.conform(frame, DATASET)
    stats = fit_stats(FEATURES, kdata.conform(TRAIN, DATASET))
    pre = Preprocessor(FEATURES, stats, [f["name"] for f in FEATURES])
    return {k: np.asarray(v) for k, v in pre(raw_arrays(frame, pre.raw)).items()}, stats


def test_history_keeps_the_most_recent_max_len_items_and_pads_after_them():
    ids, stats = _ids(TRAIN)
    # One vocabulary per shared table, counted over the target and every history item.
    item_vocab = stats["item"]["vocab"]
    assert stats["hist_item"]["vocab"] == item_vocab and set(item_vocab) == {"a", "b", "c", "d"}
    assert item_vocab[0] == "a"  # the most frequent (4 times) first
    lookup = {v: i + 1 for i, v in enumerate(item_vocab)}  # id 0 is the out-of-vocabulary id
    expected = [[lookup["a"], lookup["b"], PAD, PAD], [PAD] * 4,
                [lookup["b"], lookup["c"], lookup["a"], lookup["d"]]]  # the last 4 of a,b,c,a,d, oldest first
    assert ids["hist_item"].tolist() == expected
    assert ids["hist_item"].dtype == np.int32 and ids["hist_item"].shape == (3, 4)
    # The target and the history item share ids: row 0's target "a" is its history's first item.
    assert ids["item"][0, 0] == ids["hist_item"][0, 0] == lookup["a"]
    # Bounded ids: kept as they are, out of range -> max_id + 1; aligned with the items.
    assert ids["hist_gap"].tolist() == [[1, 0, PAD, PAD], [PAD] * 4, [4, 3, 2, 1]]
    assert ids["genres"][1].tolist() == [PAD] * 3


def test_unseen_history_items_map_to_the_oov_id_and_are_counted():
    rows = TRAIN.copy()
    rows["hist_item"] = [["a", "zz"], ["yy", "zz", "zz"], []]
    rows["hist_cat"] = [["x", "x"], ["x", "x", "x"], []]
    rows["hist_gap"] = [[1, 1], [1, 1, 1], []]
    ids, stats = _ids(rows)
    assert ids["hist_item"][1].tolist() == [0, 0, 0, PAD]
    report = sequence_report(FEATURES, stats, kdata.conform(rows, DATASET))
    assert report["hist_item"] == {"rows": 3, "mean_items": round(5 / 3, 3), "max_items": 3,
                                   "rows_cut_to_max_len": 0, "empty_rows": 1, "items": 5, "oov_items": 4}
    assert report["hist_gap"]["rows_cut_to_max_len"] == 0 and "oov_items" not in report["hist_gap"]


def test_list_columns_read_the_same_from_pandas_parquet_and_csv(tmp_path):
    want = kdata.conform(TRAIN, DATASET)
    assert want["hist_item"].tolist() == ["a|b", "", "a|b|c|a|d"]
    TRAIN.to_parquet(tmp_path / "t.parquet")  # list<string> and list<int64> columns
    got = kdata.conform(kdata.read_table(tmp_path / "t.parquet"), DATASET)
    pd.testing.assert_frame_equal(got, want)
    # CSV: lists as pandas writes them ("['a', 'b']"), and items joined by the separator.
    TRAIN.to_csv(tmp_path / "lists.csv", index=False)
    pd.testing.assert_frame_equal(kdata.conform(kdata.read_table(tmp_path / "lists.csv"), DATASET), want)
    joined = want.copy()
    joined.to_csv(tmp_path / "joined.csv", index=False)
    pd.testing.assert_frame_equal(kdata.conform(kdata.read_table(tmp_path / "joined.csv"), DATASET), want)
    # Another separator, declared on the feature.
    custom = {**DATASET, "features": [{**f, "sep": ";"} if f["type"] in ("sequence", "tags") else f for f in FEATURES]}
    semi = want.copy()
    for c in ("genres", "hist_item", "hist_cat", "hist_gap"):
        semi[c] = semi[c].str.replace("|", ";")
    ids_semi = kdata.conform(semi, custom)
    assert ids_semi["hist_item"].tolist() == ["a;b", "", "a;b;c;a;d"]


def test_malformed_list_and_misaligned_side_sequence_name_the_column_and_row():
    bad = TRAIN.copy()
    bad["hist_item"] = ["a|b", "", "[1, 2"]
    bad["hist_cat"] = ["x|y", "", "x|y"]
    bad["hist_gap"] = ["1|0", "", "1|1"]
    with pytest.raises(DataError, match=r"column 'hist_item', row 3: '\[1, 2' opens a list but is not one"):
        kdata.conform(bad, DATASET)
    bad["hist_item"] = ["a|b", "", "a|b|c"]
    with pytest.raises(DataError, match=r"column 'hist_item', row 3: 3 items, but 'hist_item'|column 'hist_cat', row 3: "
                                        r"2 items, but 'hist_item' has 3"):
        kdata.conform(bad, DATASET)


def _spec(features, blocks=None):
    return {"name": "s", "features": {"name": "toy", "label": "label", "features": features},
            "groups": {"all": ["*"]},
            "blocks": blocks or [{"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
                                 {"name": "out", "type": "MLP", "inputs": ["emb"], "args": {"units": [1]}}],
            "tasks": [{"name": "ctr", "type": "binary", "input": "out"}]}


@pytest.mark.parametrize("features, path, words", [
    ([{"name": "h", "type": "sequence"}], "features.features[0]", "needs 'max_len'"),
    ([{"name": "c", "type": "categorical", "max_len": 3}], "features.features[0].max_len",
     "applies to sequence and tags features"),
    ([{"name": "h", "type": "sequence", "max_len": 0}], "features.features[0].max_len", "less than the minimum"),
    ([{"name": "i", "type": "categorical", "embedding": "item"},
      {"name": "h", "type": "sequence", "max_len": 3, "embedding": "item", "hash_buckets": 100}],
     "features.features[1].embedding", "maps values to ids differently"),
    ([{"name": "h", "type": "sequence", "max_len": 3, "vocab": {}, "max_id": 9}], "features.features[0]",
     "choose one of vocab, hash_buckets, max_id"),
    ([{"name": "h", "type": "sequence", "max_len": 3, "pool": "max"}], "features.features[0].pool", "is not one of"),
])
def test_sequence_spec_mistakes_name_their_json_path(features, path, words):
    with pytest.raises(SpecError) as err:
        kzoo.load_spec(_spec(features))
    assert any(p == path and words in m for p, m in err.value.problems), err.value.problems


def test_sequence_embedding_without_a_paired_history_is_a_spec_error():
    features = [{"name": "i", "type": "categorical"}, {"name": "h", "type": "sequence", "max_len": 3}]
    blocks = [{"name": "emb", "type": "SequenceEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
              {"name": "out", "type": "MLP", "inputs": ["emb.fields"], "args": {"units": [1]}}]
    spec = kzoo.load_spec(_spec(features, blocks))
    with pytest.raises(SpecError) as err:
        kzoo.build(spec)
    (path, message), = err.value.problems
    assert path == "blocks[0]" and "sharing its `embedding` table with a categorical" in message


def _desc(f, size):
    d = {"name": f["name"], "kind": f["type"], "vocab_size": size}
    if f.get("embedding"):
        d["table"] = f["embedding"]
    if f["type"] in ("sequence", "tags"):
        d.update(max_len=f["max_len"], pool=f.get("pool", "mean"))
    return d


def _randomized(layer, seed):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=tuple(w.shape)).astype("float32") for w in layer.weights])
    return {w.path.split("/")[-1]: keras.ops.convert_to_numpy(w).astype("float64") for w in layer.weights}


def test_feature_embedding_pools_tags_and_histories_without_their_padding():
    sizes = {"item": 6, "cat": 3, "genres": 5}
    feats = [f for f in FEATURES if f["name"] in ("item", "cat", "genres", "hist_item")]
    descs = [_desc(f, sizes.get(f.get("embedding") or f["name"], 6)) for f in feats]
    layer = FeatureEmbedding(dim=3, features=descs)
    x = {"item": np.array([[1], [4]]), "cat": np.array([[2], [0]]),
         "genres": np.array([[3, 0, PAD], [PAD, PAD, PAD]]), "hist_item": np.array([[5, 2, 2, PAD], [1, PAD, PAD, PAD]])}
    out = keras.ops.convert_to_numpy(layer(x)).astype("float64")
    table = _randomized(layer, 0)["embeddings"]
    out = keras.ops.convert_to_numpy(layer(x)).astype("float64")
    off = {"item": 0, "cat": 6, "genres": 9}  # rows of each table in the fused variable, first-use order
    want = np.stack([
        np.stack([table[1], table[off["cat"] + 2], table[9 + 3] + table[9 + 0], (table[5] + 2 * table[2]) / 3]),
        np.stack([table[4], table[off["cat"] + 0], np.zeros(3), table[1]]),
    ])  # genres pool by sum, hist_item by mean (its default); an empty list pools to zeros
    np.testing.assert_allclose(out, want, atol=1e-6)
    # Padding is inert: the same items with more padding positions give the same fields.
    longer = FeatureEmbedding(dim=3, features=[{**d, "max_len": d["max_len"] + 3} if "max_len" in d else d for d in descs])
    longer.build()
    longer.set_weights(layer.get_weights())
    x_long = {**x, "genres": np.pad(x["genres"], ((0, 0), (0, 3)), constant_values=PAD),
              "hist_item": np.pad(x["hist_item"], ((0, 0), (0, 3)), constant_values=PAD)}
    np.testing.assert_allclose(keras.ops.convert_to_numpy(longer(x_long)), out, atol=1e-6)


def test_sequence_embedding_shares_the_target_table_with_the_history():
    sizes = {"user": 3, "item": 6, "cat": 3, "genres": 4, "hist_gap": 7}
    descs = [_desc(f, sizes[f.get("embedding") or f["name"]] if (f.get("embedding") or f["name"]) in sizes else 6)
             for f in FEATURES]
    layer = SequenceEmbedding(dim=2, features=descs)
    x = {"user": np.array([[1], [2]]), "item": np.array([[3], [5]]), "cat": np.array([[1], [2]]),
         "genres": np.array([[1, 2, PAD], [PAD, PAD, PAD]]),
         "hist_item": np.array([[3, 4, PAD, PAD], [PAD] * 4]), "hist_cat": np.array([[1, 0, PAD, PAD], [PAD] * 4]),
         "hist_gap": np.array([[6, 2, PAD, PAD], [PAD] * 4])}
    layer(x)
    table = _randomized(layer, 1)["embeddings"]
    out = {k: keras.ops.convert_to_numpy(v).astype("float64") for k, v in layer(x).items()}
    off = {"user": 0, "item": 3, "cat": 9, "genres": 12, "hist_gap": 16}
    row = lambda t, i: table[off[t] + i]  # noqa: E731
    np.testing.assert_allclose(out["target"], [np.r_[row("item", 3), row("cat", 1)],
                                               np.r_[row("item", 5), row("cat", 2)]], atol=1e-6)
    hist0 = [np.r_[row("item", 3), row("cat", 1)], np.r_[row("item", 4), row("cat", 0)], np.zeros(4), np.zeros(4)]
    np.testing.assert_allclose(out["history"], [hist0, np.zeros((4, 4))], atol=1e-6)
    np.testing.assert_allclose(out["mask"], [[1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_allclose(out["context"][0, :2], [row("hist_gap", 6), row("hist_gap", 2)], atol=1e-6)
    # The fields are FeatureEmbedding's: user, item, cat, genres (pooled by sum), in schema order; no sequences.
    np.testing.assert_allclose(out["fields"][0], [row("user", 1), row("item", 3), row("cat", 1),
                                                  row("genres", 1) + row("genres", 2)], atol=1e-6)
    assert out["fields"].shape == (2, 4, 2)


def test_gauc_against_a_numpy_reference():
    from kzoo.metrics import gauc

    rng = np.random.default_rng(3)
    groups = rng.integers(0, 6, 300)
    y = (rng.random(300) < 0.4).astype(float)
    y[groups == 5] = 1.0  # one class only: left out
    s = rng.random(300) + 0.3 * y

    def auc(yy, ss):  # the Mann-Whitney pair count, ties half
        pos, neg = ss[yy == 1], ss[yy == 0]
        return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))

    num = den = 0.0
    for g in np.unique(groups):
        m = groups == g
        if 0 < y[m].sum() < m.sum():
            num += m.sum() * auc(y[m], s[m])
            den += m.sum()
    assert gauc(y, s, groups) == pytest.approx(num / den, abs=1e-12)


def test_schema_lists_the_new_feature_keys():
    from kzoo.spec_schema import schema

    props = schema()["$defs"]["feature"]["properties"]
    assert {"sequence", "tags"} <= set(props["type"]["enum"]) and {"max_len", "sep", "pool"} <= set(props)
    json.dumps(schema())
