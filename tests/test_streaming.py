"""Streamed data (kzoo.streaming): statistics equal fit_stats', every row once per epoch, the same batches
when read again, the hash split, errors that name the file, column and row, and a run end to end."""

import json

import numpy as np
import pandas as pd
import pytest

import kzoo
from kzoo import stream_stats
from kzoo.data import conform
from kzoo.errors import DataError, SpecError
from kzoo.features import fit_stats
from kzoo.pipeline import prepare
from kzoo.spec import load_spec
from kzoo.stream_read import fnv1a
from kzoo.synthetic import synthetic

FEATURES = [
    {"name": "I1", "type": "numeric", "fill": 0, "norm": "log_standard"},
    {"name": "I2", "type": "numeric", "norm": "standard"},
    {"name": "I5", "type": "numeric", "fill": 3, "norm": "log"},
    {"name": "C1", "type": "categorical", "vocab": {"min_count": 2}},
    {"name": "C3", "type": "categorical", "vocab": {"max_size": 40}},
    {"name": "C4", "type": "categorical", "embedding": "shared", "vocab": {"min_count": 2}},
    {"name": "C7", "type": "categorical", "embedding": "shared"},
    {"name": "C9", "type": "categorical", "hash_buckets": 50},
    {"name": "hist", "type": "tags", "max_len": 4, "vocab": {"min_count": 2}},
    {"name": "rid", "type": "numeric"},
]


def spec_of(split=None, streaming=None, rid=True):
    features = FEATURES if rid else [f for f in FEATURES if f["name"] in ("I1", "I2", "C1", "C9")]
    train = {"batch_size": 64, "optimizer": {"type": "adam", "learning_rate": 0.01},
             "streaming": {"shuffle_buffer": 150, "chunk_rows": 70, **(streaming or {})}}
    if split:
        train["split"] = split
    return load_spec({"name": "s", "features": {"name": "mini", "label": "label", "features": features},
                      "groups": {"all": [f["name"] for f in features]},
                      "blocks": [{"name": "linear", "type": "Linear", "inputs": ["group:all"]}],
                      "tasks": [{"name": "ctr", "type": "binary", "input": "linear"}], "train": train})


def rows(n=900, seed=3) -> pd.DataFrame:
    frame = synthetic(n, seed=seed)[["label", "I1", "I2", "I5", "C1", "C3", "C4", "C7", "C9"]].copy()
    rng = np.random.default_rng(seed)
    frame["hist"] = ["|".join(rng.choice(list("abcdefghij"), size=rng.integers(0, 4))) for _ in range(n)]
    frame["rid"] = np.arange(n, dtype=np.float32)
    frame["user"] = rng.integers(0, 60, n).astype(str)
    return frame


def write(folder, frame, parts=3, csv_first=False):
    """`frame` as `parts` shards; with `csv_first` the first is a CSV, the others Parquet."""
    folder.mkdir(exist_ok=True)
    cut = np.array_split(np.arange(len(frame)), parts)
    for k, index in enumerate(cut):
        piece = frame.iloc[index]
        if csv_first and k == 0:
            piece.to_csv(folder / f"shard-{k:03d}.csv", index=False)
        else:
            piece.to_parquet(folder / f"shard-{k:03d}.parquet", index=False)
    return folder


def epoch_rows(streamed, epoch):
    """rid of each row of each batch of an epoch, in order, and the batch sizes."""
    ids, sizes = [], []
    for x, _ in streamed.raw_epoch(epoch):
        ids.extend(x["rid"].numpy().astype(int).tolist())
        sizes.append(len(x["rid"]))
    return ids, sizes


def test_fnv1a_published_vectors():
    # Test vectors of the FNV reference (isthe.com/chongo/tech/comp/fnv): FNV-1a 64 of "", "a", "foobar".
    assert [int(h) for h in fnv1a(["", "a", "foobar"])] == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C,
                                                             0x85944171F73967E8]


def test_streamed_stats_equal_fit_stats(tmp_path, monkeypatch):
    monkeypatch.setattr(stream_stats, "_MERGE_AT", 15)  # merge the partial counts many times
    frame = rows()
    write(tmp_path / "d", frame, csv_first=True)
    spec = spec_of({"by": "file", "validation_files": ["shard-002.parquet"]})
    streamed = prepare(spec, str(tmp_path / "d"))  # trains on a CSV file (one chunk) and a Parquet file (5)
    train = frame.iloc[:600]
    expected = fit_stats(spec.features, conform(train.reset_index(drop=True), spec.dataset))
    assert streamed.stats.keys() == expected.keys()
    for name, want in expected.items():
        if "vocab" in want:
            assert streamed.stats[name]["vocab"] == want["vocab"], name
        else:
            np.testing.assert_allclose([streamed.stats[name]["mean"], streamed.stats[name]["std"]],
                                       [want["mean"], want["std"]], rtol=1e-10, err_msg=name)
    assert streamed.rows == {"train": 600, "validation": 300, "test": 0}

    # stats_sample: each training file's first rows, in equal shares
    spec = spec_of({"by": "file", "validation_files": ["shard-002.parquet"]}, {"stats_sample": 250})
    sampled = prepare(spec, str(tmp_path / "d"))
    heads = pd.concat([frame.iloc[:125], frame.iloc[300:425]], ignore_index=True)
    expected = fit_stats(spec.features, conform(heads, spec.dataset))
    assert sampled.stats["C1"]["vocab"] == expected["C1"]["vocab"]
    assert sampled.stats["I1"] == pytest.approx(expected["I1"], rel=1e-10)
    assert sampled.info["streaming"]["statistics_rows"] == 250 and sampled.rows["train"] == 600


def test_every_row_once_per_epoch_reshuffled_and_the_same_when_read_again(tmp_path):
    frame = rows()
    data = str(write(tmp_path / "d", frame))
    spec = spec_of({"by": "hash", "key": "user", "validation": 0.2, "test": 0.2, "seed": 4})
    streamed = prepare(spec, data)
    first, sizes = epoch_rows(streamed, 0)
    second, _ = epoch_rows(streamed, 1)
    held = [streamed.frames[p]["rid"].astype(int).tolist() for p in ("validation", "test")]
    # each row exactly once: in the epoch or in one held-out part
    assert sorted(first + held[0] + held[1]) == list(range(len(frame)))
    assert sorted(second) == sorted(first) and second != first
    assert sizes[:-1] == [64] * (len(sizes) - 1) and 0 < sizes[-1] <= 64
    assert streamed.rows == {"train": len(first), "validation": len(held[0]), "test": len(held[1])}
    # every row of a user in one part, users in every part, raw values those of the file
    part = {rid: p for p, ids in enumerate([first, *held]) for rid in ids}
    by_user = frame.assign(part=frame["rid"].astype(int).map(part)).groupby("user")["part"].nunique()
    assert (by_user == 1).all() and len(set(part.values())) == 3
    x = next(iter(streamed.raw_epoch(0)))[0]
    at = x["rid"].numpy().astype(int)
    np.testing.assert_array_equal(x["I2"].numpy(), frame["I2"].to_numpy()[at])
    assert [v.decode() for v in x["C1"].numpy()] == frame["C1"].to_numpy()[at].tolist()
    # a fresh object, after the global random states moved: the same split and epoch 1's batches
    np.random.seed(99)
    np.random.random(7)
    again = prepare(spec_of(spec.train["split"]), data)
    assert epoch_rows(again, 1)[0] == second
    assert again.frames["test"]["rid"].tolist() == streamed.frames["test"]["rid"].tolist()
    skipped = [int(v) for x, _ in streamed.raw_epoch(1).skip(3) for v in x["rid"].numpy()]
    assert skipped == second[3 * 64:]


def test_the_one_training_dataset_yields_the_epoch_last_asked_for(tmp_path):
    """`train_epoch` hands out one tf.data object for every epoch (built once: no tracing per epoch);
    an iteration started after `train_epoch(e)` yields epoch e's batches, preprocessed, in order."""
    frame = rows()
    streamed = prepare(spec_of({"by": "hash", "key": "user", "validation": 0.2, "test": 0.2, "seed": 4}),
                       str(write(tmp_path / "d", frame)))

    def labels(ds):
        return np.concatenate([y["ctr"].numpy().ravel() for _, y in ds])

    def raw_labels(epoch):
        order = np.array(epoch_rows(streamed, epoch)[0])
        return frame.set_index("rid").loc[order, "label"].to_numpy(np.float32)

    one, zero = raw_labels(1), raw_labels(0)
    assert not np.array_equal(one, zero)
    assert streamed.train_epoch(1) is streamed.train_epoch(0)
    np.testing.assert_array_equal(labels(streamed.train_epoch(1)), one)
    np.testing.assert_array_equal(labels(streamed.train_epoch(0)), zero)
    x = next(iter(streamed.train_epoch(1)))[0]
    raw = next(iter(streamed.raw_epoch(1)))[0]
    np.testing.assert_allclose(x["I2"].numpy(), streamed.preprocessor(raw)["I2"].numpy())


def test_bad_value_names_the_file_column_and_row(tmp_path):
    frame = rows(600)
    frame["I2"] = [str(v) for v in frame["I2"]]  # numbers as text: parsed by conform
    frame.loc[200 + 17, "I2"] = "lots"  # second shard (rows 200..399), its 18th row
    write(tmp_path / "d", frame, csv_first=True)
    with pytest.raises(DataError, match=r"shard-001\.parquet: column 'I2', row 18 of this file \(row 218 of the "
                                        r"data\): 'lots' is not a number"):
        prepare(spec_of(), str(tmp_path / "d"))
    frame = rows(600)
    frame.loc[450, "user"] = None
    write(tmp_path / "e", frame)
    with pytest.raises(DataError, match=r"shard-002\.parquet: column 'user', row 51 of this file \(row 451 of the "
                                        r"data\): the split key is missing"):
        prepare(spec_of({"by": "hash", "key": "user"}), str(tmp_path / "e"))


def test_stream_choices_refused_clearly(tmp_path):
    frame = rows(300)
    write(tmp_path / "d", frame)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.csv/\.tsv/\.txt/\.parquet files in the folder"):
        prepare(spec_of(), str(tmp_path / "empty"))
    with pytest.raises(SpecError, match=r"train\.split\.validation_files\[0\]: 'part-9\*' names none"):
        prepare(spec_of({"by": "file", "validation_files": ["part-9*"]}), str(tmp_path / "d"))
    with pytest.raises(SpecError, match=r'train\.split: a split by hash needs "key"'):
        spec_of({"by": "hash"})
    in_memory = spec_of({"by": "hash", "key": "user"}).raw
    in_memory["train"].pop("streaming")
    with pytest.raises(SpecError, match=r"train\.split\.by: a split by hash applies to streamed data"):
        prepare(in_memory, frame)
    with pytest.raises(DataError, match=r"train\.streaming reads table files, and the data is 'synthetic:500'"):
        prepare(spec_of(), "synthetic:500")
    with pytest.raises(DataError, match=r"is a folder or glob of shards, which streams"):
        kzoo.data.load(str(tmp_path / "d" / "*.parquet"))
    # one file with train.streaming streams too, the glob gives the same rows as the folder
    one = prepare(spec_of(), str(tmp_path / "d" / "shard-000.parquet"))
    assert sum(one.rows.values()) == 100 and one.info["streaming"]["files"] == 1
    whole = prepare(spec_of(), str(tmp_path / "d"))
    assert prepare(spec_of(), str(tmp_path / "d" / "*.parquet")).rows == whole.rows
    # eval_rows bounds the evaluation samples: a subset of the held-out rows, the counts still whole
    capped = prepare(spec_of(streaming={"eval_rows": 10}), str(tmp_path / "d"))
    assert capped.rows == whole.rows
    for part in ("validation", "test"):
        kept, held = capped.frames[part]["rid"], whole.frames[part]["rid"]
        assert len(kept) == 10 < len(held) and set(kept) <= set(held) and kept.is_monotonic_increasing


def test_train_and_evaluate_on_a_folder_of_shards(tmp_path):
    data = write(tmp_path / "d", rows(1200, seed=5))
    spec = spec_of(rid=False)
    result = kzoo.train(spec, str(data), out=tmp_path / "run", epochs=2, verbose=0)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert sum(info["rows"].values()) == 1200 and result["examples"] == info["rows"]["test"]
    assert info["streaming"]["evaluated"]["test"] == result["examples"] and info["streaming"]["files"] == 3
    assert 0.5 < result["ctr"]["auc"] <= 1 and np.isfinite(result["ctr"]["logloss"])
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 2
    stats = json.loads((tmp_path / "run" / "preprocessing.json").read_text())["stats"]
    assert stats["C1"]["vocab"] and {"mean", "std"} <= set(stats["I1"])
    again = kzoo.evaluate(tmp_path / "run")  # `kzoo evaluate RUN`: a new pass over the shards, the same test rows
    assert again["examples"] == result["examples"] and again["ctr"]["auc"] == pytest.approx(result["ctr"]["auc"])
