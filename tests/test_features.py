"""Preprocessing against NumPy/pandas: statistics from the training split, lookups, crosses."""

import numpy as np
import pandas as pd
import pytest

from kzoo.features import Preprocessor, fit_stats, input_size, raw_arrays, raw_inputs

FEATURES = [
    {"name": "n", "type": "numeric", "fill": 1.0, "norm": "log_standard"},
    {"name": "s", "type": "numeric", "norm": "standard"},
    {"name": "c", "type": "categorical", "vocab": {"min_count": 2}},
    {"name": "h", "type": "categorical", "hash_buckets": 7},
    {"name": "i", "type": "categorical", "max_id": 3},
    {"name": "a", "type": "categorical", "embedding": "shared"},
    {"name": "b", "type": "categorical", "embedding": "shared"},
    {"name": "x", "type": "cross", "columns": ["c", "h"], "hash_buckets": 11},
]
TRAIN = pd.DataFrame({
    "n": [0.0, 9.0, np.nan, -3.0, 99.0], "s": [1.0, 2.0, 3.0, 4.0, 5.0],
    "c": ["u", "v", "u", "w", "v"], "h": ["p", "q", "r", "p", "q"], "i": ["0", "3", "9", "", "1"],
    "a": ["k", "k", "m", "z", "z"], "b": ["m", "m", "k", "k", "y"],
})
NAMES = [f["name"] for f in FEATURES]


def run(frame):
    stats = fit_stats(FEATURES, TRAIN)
    pre = Preprocessor(FEATURES, stats, NAMES)
    out = pre(raw_arrays(frame, raw_inputs(FEATURES, NAMES)))
    return stats, {k: np.asarray(v)[:, 0] for k, v in out.items()}


def test_numeric_fill_log_standardise_like_numpy():
    stats, out = run(TRAIN)
    x = TRAIN["n"].fillna(1.0).to_numpy()
    logged = np.sign(x) * np.log1p(np.abs(x))
    np.testing.assert_allclose(out["n"], (logged - logged.mean()) / logged.std(), rtol=1e-5)
    s = TRAIN["s"].to_numpy()
    np.testing.assert_allclose(out["s"], (s - s.mean()) / s.std(), rtol=1e-5)
    assert stats["n"]["mean"] == pytest.approx(logged.mean())


def test_vocabulary_min_count_and_oov():
    stats, _ = run(TRAIN)
    assert stats["c"]["vocab"] == ["u", "v"]  # 'w' seen once: below min_count, shares the OOV id
    test = TRAIN.assign(c=["u", "v", "w", "never", ""])
    _, out = run(test)
    assert list(out["c"]) == [1, 2, 0, 0, 0]
    assert input_size(FEATURES[2], stats) == 3


def test_shared_embedding_features_share_one_vocabulary():
    stats, out = run(TRAIN)
    assert stats["a"]["vocab"] == stats["b"]["vocab"]
    counts = pd.concat([TRAIN["a"], TRAIN["b"]]).value_counts()
    assert stats["a"]["vocab"][0] == counts.index[0]  # most frequent first over both columns
    assert out["a"][2] == out["b"][0]  # 'm' gets one id in both columns


def test_hashing_bounded_ids_and_crosses():
    _, out = run(TRAIN)
    assert ((0 <= out["h"]) & (out["h"] < 7)).all()
    assert out["h"][0] == out["h"][3]  # same value, same bucket
    assert list(out["i"]) == [0, 3, 4, 4, 1]  # 9 is out of range and "" missing: both -> max_id + 1
    assert ((0 <= out["x"]) & (out["x"] < 11)).all()
    assert out["x"][1] == out["x"][4]  # (v, q) twice


CROSS3 = [
    {"name": "u", "type": "categorical"},
    {"name": "v", "type": "categorical", "hash_buckets": 50},
    {"name": "w", "type": "categorical", "max_id": 1000},
    {"name": "uvw", "type": "cross", "columns": ["u", "v", "w"], "hash_buckets": 100_003},
]


def test_hashed_cross_uses_every_column():
    import keras

    rng = np.random.default_rng(0)
    base = pd.DataFrame({"u": [f"u{i}" for i in rng.integers(0, 10**6, 200)],
                         "v": [f"v{i}" for i in rng.integers(0, 10**6, 200)],
                         "w": rng.integers(0, 1000, 200)})
    pre = Preprocessor(CROSS3, fit_stats(CROSS3, base), ["uvw"])
    assert [f["name"] for f in pre.raw] == ["u", "v", "w"]
    hashing = keras.layers.Hashing(num_bins=100_003)

    def expected(frame):
        # The documented cross: Hashing of the values as strings (ints in decimal) joined with
        # "\x1f" in `columns` order. Trained models depend on these ids, so the join is spelled out.
        joined = ["\x1f".join(str(value) for value in row) for row in frame[["u", "v", "w"]].itertuples(index=False)]
        return np.asarray(hashing(np.array(joined, dtype=object))).reshape(-1)

    def cross(frame):
        return np.asarray(pre(raw_arrays(frame, pre.raw))["uvw"])[:, 0]

    ids = cross(base)
    np.testing.assert_array_equal(ids, expected(base))
    for column, values in {"u": base["u"] + "'", "v": base["v"] + "'", "w": (base["w"] + 1) % 1001}.items():
        frame = base.assign(**{column: values})  # only this column changes
        changed = cross(frame)
        np.testing.assert_array_equal(changed, expected(frame))
        assert np.mean(changed != ids) > 0.9, f"the cross id ignores column {column}"
