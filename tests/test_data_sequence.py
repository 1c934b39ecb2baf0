"""Sequence loaders: MovieLens (100K and 1M layouts) and Amazon review sequences (line per interaction,
line per user) as (history, target, label) rows, checked against independent parses of the real files:
no future item in a history, leave-last-out splits, aligned side sequences, negatives, errors."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from kzoo.errors import DataError
from kzoo.loaders_sequence import ML_GENRES, read_amazon, read_movielens
from tests.real_data import real

ML = "movielens_100k"
VIDEO = "amazon_video_games_seq/Video.txt"
BEAUTY = "amazon_s3rec_seq/Beauty.txt"
ML_USERS = 60
ML_COLUMNS = ["label", "user_id", "gender", "age", "occupation", "zip", "item_id", "item_cat", "item_genres", "year",
              "hist_item_id", "hist_item_cat", "hist_gap", "timestamp", "split"]
AMAZON_COLUMNS = ["label", "user_id", "item_id", "item_cat", "hist_item_id", "hist_item_cat", "position", "split"]


def tokens(text):
    return text.split("|") if text else []


def age_code(age):
    return next((code for below, code in [(18, "1"), (25, "18"), (35, "25"), (45, "35"), (50, "45"), (56, "50")]
                 if age < below), "56")


# ------------------------------------------------------------------------------------------- MovieLens

@pytest.fixture(scope="module")
def ml_folder(tmp_path_factory):
    """The first 60 users' ratings of u.data, with u.user and u.item unchanged."""
    folder = tmp_path_factory.mktemp("ml100k")
    lines = real(f"{ML}/u.data").read_text().splitlines()
    (folder / "u.data").write_text("\n".join(l for l in lines if int(l.split("\t")[0]) <= ML_USERS) + "\n")
    for name in ("u.user", "u.item"):
        (folder / name).write_bytes(real(f"{ML}/{name}").read_bytes())
    return folder


@pytest.fixture(scope="module")
def ratings(ml_folder):
    """The slice, parsed here with pandas: user, item, rating, timestamp."""
    return pd.read_csv(ml_folder / "u.data", sep="\t", header=None, names=["user", "item", "rating", "time"])


@pytest.fixture(scope="module")
def ml(ml_folder):
    return read_movielens(ml_folder)


@pytest.fixture(scope="module")
def u_item():
    rows = [line.split("|") for line in real(f"{ML}/u.item").read_text(encoding="latin-1").splitlines()]
    return {r[0]: r for r in rows}


def test_movielens_rows_and_columns(ml, ratings, u_item):
    assert list(ml.columns) == ML_COLUMNS and len(ml) == len(ratings)
    assert ml["label"].dtype == np.float32 and ml["timestamp"].dtype == np.int64
    for name in set(ML_COLUMNS) - {"label", "timestamp"}:
        assert ml[name].dtype == object and ml[name].map(type).eq(str).all(), name
    # one row per rating, rows by user then time
    got = sorted(zip(ml["user_id"].astype(int), ml["item_id"].astype(int), ml["timestamp"], ml["label"]))
    want = sorted(zip(ratings["user"], ratings["item"], ratings["time"], (ratings["rating"] >= 4).astype(float)))
    assert got == want
    keys = list(zip(ml["user_id"].astype(int), ml["timestamp"], ml["item_id"].astype(int)))
    assert keys == sorted(keys)
    # side columns against u.user / u.item read here
    users = {l.split("|")[0]: l.split("|") for l in real(f"{ML}/u.user").read_text().splitlines()}
    for row in ml.drop_duplicates("user_id").itertuples():
        _, age, gender, occupation, zipcode = users[row.user_id]
        assert (row.age, row.gender, row.occupation, row.zip) == (age_code(int(age)), gender, occupation, zipcode[0])
    for row in ml.drop_duplicates("item_id").itertuples():
        fields = u_item[row.item_id]
        genres = [g for g, flag in zip(ML_GENRES, fields[5:]) if flag == "1"]
        assert row.item_genres == "|".join(genres) and row.item_cat == (genres or ["unknown"])[0]
        assert row.year == (re.findall(r"\((\d{4})\)", fields[1]) or [""])[-1]
    assert set(ml["age"]) <= {"1", "18", "25", "35", "45", "50", "56"}


def test_movielens_history_is_the_strictly_earlier_likes(ml, ratings):
    """Every history recomputed from u.data: the user's likes strictly before the row, last 50, with gaps."""
    when = {(u, i): t for u, i, t in zip(ratings["user"], ratings["item"], ratings["time"])}
    likes = ratings[ratings["rating"] >= 4].sort_values(["user", "time", "item"], kind="stable")
    by_user = {u: list(zip(g["item"], g["time"])) for u, g in likes.groupby("user")}
    ties = 0
    for row in ml.itertuples():
        user, t = int(row.user_id), row.timestamp
        before = [(i, s) for i, s in by_user.get(user, []) if s < t][-50:]
        assert row.hist_item_id == "|".join(str(i) for i, _ in before)
        gaps = [min(math.floor(math.log2(1 + (t - s) / 3600)), 20) for _, s in before]
        assert row.hist_gap == "|".join(map(str, gaps))
        assert all(when[(user, int(i))] < t for i in tokens(row.hist_item_id))
        ties += any(s == t and i != int(row.item_id) for i, s in by_user.get(user, []))
    assert ties > 0  # the slice has likes at the same second as other rows: none of them got in


def test_movielens_side_sequences_align(ml):
    cat = dict(zip(ml["item_id"], ml["item_cat"]))
    for row in ml.itertuples():
        ids, cats, gaps = tokens(row.hist_item_id), tokens(row.hist_item_cat), tokens(row.hist_gap)
        assert len(ids) == len(cats) == len(gaps) <= 50
        assert cats == [cat[i] for i in ids]
    assert ml["hist_item_id"].str.count(r"\|").equals(ml["hist_gap"].str.count(r"\|"))
    assert (ml["hist_item_id"] == "").any() and (ml["hist_item_id"].map(lambda h: len(tokens(h))) == 50).any()


@pytest.mark.parametrize("holdout", [5, 40])
def test_movielens_split_is_leave_last_out_in_time(ml_folder, holdout):
    frame = read_movielens(ml_folder, holdout=holdout)
    held = 0
    for _, rows in frame.groupby("user_id", sort=False):
        assert rows["timestamp"].is_monotonic_increasing
        split = rows["split"].tolist()
        if len(rows) < 2 * holdout + 1:
            assert set(split) == {"train"}
            continue
        held += 1
        assert split == ["train"] * (len(rows) - 2 * holdout) + ["validation"] * holdout + ["test"] * holdout
        time = {s: rows.loc[rows["split"] == s, "timestamp"] for s in ("train", "validation", "test")}
        assert time["train"].max() <= time["validation"].min() <= time["validation"].max() <= time["test"].min()
    assert held > 0 and (holdout == 5) == (held == ML_USERS)  # every user has 20+ ratings, not all 81+


def test_movielens_ties_are_never_in_each_others_history(tmp_path):
    write_tiny_100k(tmp_path, ["1\t10\t5\t1000", "1\t11\t4\t1000", "1\t12\t1\t4600", "1\t13\t5\t4600",
                               "1\t14\t5\t1000000"])
    frame = read_movielens(tmp_path, max_history=2)
    assert frame["item_id"].tolist() == ["10", "11", "12", "13", "14"]
    assert frame["hist_item_id"].tolist() == ["", "", "10|11", "10|11", "11|13"]
    assert frame["hist_gap"].tolist() == ["", "", "1|1", "1|1", "8|8"]  # 1 h; 277.5 h and 276.5 h
    assert frame["split"].tolist() == ["train"] * 5  # 5 < 2 * 5 + 1 ratings


def write_tiny_100k(folder, lines):
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    (folder / "u.user").write_text("1|17|F|student|T8H1N\n")
    flags = "|".join(["0"] * 19)
    (folder / "u.item").write_text("".join(f"{i}|Film {i} (1990)|01-Jan-1990||url|{flags}\n" for i in range(10, 15)))


def write_1m(folder, ratings, users=True):
    """The 100K slice rewritten in the 1M layout (`::`, genres by name, age codes)."""
    folder.mkdir()
    (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings.to_numpy()))
    if users:
        rows = [l.split("|") for l in real(f"{ML}/u.user").read_text().splitlines()]
        (folder / "users.dat").write_text("".join(f"{u}::{g}::{age_code(int(a))}::{o}::{z}\n"
                                                  for u, a, g, o, z in rows))
    movies = []
    for line in real(f"{ML}/u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        movies.append(f"{fields[0]}::{fields[1]}::{'|'.join(g for g, f in zip(ML_GENRES, fields[5:]) if f == '1')}\n")
    (folder / "movies.dat").write_text("".join(movies), encoding="latin-1")


def test_movielens_1m_layout_reads_the_same(ml, ratings, tmp_path):
    write_1m(tmp_path / "ml-1m", ratings)
    pd.testing.assert_frame_equal(read_movielens(tmp_path / "ml-1m"), ml)
    # 10M has no users.dat: the same rows, user columns empty
    write_1m(tmp_path / "ml-10m", ratings, users=False)
    frame = read_movielens(tmp_path / "ml-10m")
    assert (frame[["gender", "age", "occupation", "zip"]] == "").all(axis=None)
    pd.testing.assert_frame_equal(frame.drop(columns=["gender", "age", "occupation", "zip"]),
                                  ml.drop(columns=["gender", "age", "occupation", "zip"]))


def test_movielens_full_100k():
    frame = read_movielens(real(f"{ML}/u.data").parent)
    assert len(frame) == 100_000 and frame["label"].sum() == 34_174 + 21_201
    # 10 ratings of each of the 943 users held out, as the official ua/ub splits
    assert frame["split"].value_counts().to_dict() == {"train": 90_570, "validation": 4_715, "test": 4_715}


def test_movielens_errors(tmp_path):
    with pytest.raises(DataError, match=r"holds neither u.data .* nor ratings.dat"):
        read_movielens(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        read_movielens(tmp_path / "nope")
    write_tiny_100k(tmp_path, ["1\t10\t5\t1000", "1\t11\t4", "1\t12\t4\t1"])
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "u.data")) + r": line 2: expected 4 tab-separated"):
        read_movielens(tmp_path)
    write_tiny_100k(tmp_path, ["1\t10\t5\t1000", "", "1\t11\t4\t1\t7"])
    with pytest.raises(DataError, match=r"u.data: line 3: expected 4 tab-separated fields .* found 5"):
        read_movielens(tmp_path)
    write_tiny_100k(tmp_path, ["1\t10\t5\t1000", "1\t11\t4\t10:30"])
    with pytest.raises(DataError, match=r"u.data: line 2: field 'timestamp' must be a whole number, found '10:30'"):
        read_movielens(tmp_path)
    write_tiny_100k(tmp_path, ["1\t10\tfive\t1000"])
    with pytest.raises(DataError, match=r"u.data: line 1: field 'rating' must be a number, found 'five'"):
        read_movielens(tmp_path)
    write_tiny_100k(tmp_path, ["1\t10\t5\t1000"])
    with pytest.raises(DataError, match="holdout must be a whole number >= 0, got -1"):
        read_movielens(tmp_path, holdout=-1)
    (tmp_path / "u.user").write_text("1|17|F|student|T8H1N\n1|18|M|writer|10001\n")
    with pytest.raises(DataError, match=r"u.user: id 1 is on more than one line"):
        read_movielens(tmp_path)
    (tmp_path / "u.user").write_text("1|old|F|student|T8H1N\n")
    with pytest.raises(DataError, match=r"u.user: line 1: field 'age' must be a whole number, found 'old'"):
        read_movielens(tmp_path)
    (tmp_path / "u.user").unlink()
    with pytest.raises(DataError, match=r"data file not found: '.*u.user'"):
        read_movielens(tmp_path)
    (tmp_path / "u.data").write_text("\n \n")
    with pytest.raises(DataError, match=r"u.data: the file is empty"):
        read_movielens(tmp_path)
    one_m = tmp_path / "ml-1m"
    one_m.mkdir()
    (one_m / "ratings.dat").write_text("1::10::5::1000\n")
    with pytest.raises(DataError, match="has ratings.dat but no movies.dat"):
        read_movielens(one_m)
    (one_m / "movies.dat").write_text("10::Film (1990)::Drama\n")
    (one_m / "ratings.dat").write_text("1::10::5::1000\n1::11::5\n")
    with pytest.raises(DataError, match=r"ratings.dat: line 2: expected 4 '::'-separated fields"):
        read_movielens(one_m)


# ---------------------------------------------------------------------------------------------- Amazon

def first_attributes(path):
    return {k: str(v[0]) if v else "unknown" for k, v in json.loads(path.read_text()).items()}


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    """The first 300 users of Beauty.txt (line per user) with the attributes of their items."""
    folder = tmp_path_factory.mktemp("beauty")
    lines = real(BEAUTY).read_text().splitlines()[:300]
    items = {i for line in lines for i in line.split()[1:]}
    attributes = json.loads(real(BEAUTY).with_name("Beauty_item2attributes.json").read_text())
    (folder / "Beauty.txt").write_text("\n".join(lines) + "\n")
    (folder / "Beauty_item2attributes.json").write_text(json.dumps({i: attributes[i] for i in items}))
    return folder / "Beauty.txt"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The first 3,000 interactions of Video.txt (line per interaction)."""
    path = tmp_path_factory.mktemp("video") / "Video.txt"
    path.write_text("\n".join(real(VIDEO).read_text().splitlines()[:3000]) + "\n")
    return path


def sequences(path):
    """user -> items in order, read here from either layout."""
    out = {}
    lines = [l.split() for l in path.read_text().splitlines() if l.strip()]
    per_interaction = all(len(t) == 2 for t in lines) and len({t[0] for t in lines}) < len(lines)
    for t in lines:
        out.setdefault(t[0], []).extend(t[1:] if not per_interaction else [t[1]])
    return out


def check_amazon(frame, path, negatives, max_history, cat):
    """Every invariant of read_amazon's rows, against the sequences read from the file here."""
    seqs = sequences(path)
    assert list(frame.columns) == AMAZON_COLUMNS
    assert frame["label"].dtype == np.float32 and frame["position"].dtype == np.int64
    for name in set(AMAZON_COLUMNS) - {"label", "position"}:
        assert frame[name].dtype == object and frame[name].map(type).eq(str).all(), name
    assert len(frame) == sum(map(len, seqs.values())) * (1 + negatives)
    assert frame["label"].tolist() == ([1.0] + [0.0] * negatives) * (len(frame) // (1 + negatives))
    assert list(dict.fromkeys(frame["user_id"])) == list(seqs)  # users in file order
    all_items = {i for s in seqs.values() for i in s}
    positive = None
    for row in frame.itertuples():
        seq, k = seqs[row.user_id], row.position
        history = tokens(row.hist_item_id)
        assert history == seq[:k][-max_history:]
        # aligned by "|" count: with no attributes a one-item history's categories are "" too
        assert row.hist_item_cat.count("|") == row.hist_item_id.count("|")
        assert row.hist_item_cat == "|".join(cat(i) for i in history)
        assert row.item_cat == cat(row.item_id)
        if row.label == 1:
            positive = row
            assert row.item_id == seq[k]
        else:  # same user, position and history as its positive; never the target nor an earlier item
            assert (row.user_id, k, row.hist_item_id) == (positive.user_id, positive.position, positive.hist_item_id)
            assert row.item_id in all_items and row.item_id != seq[k] and row.item_id not in seq[:k]
        n = len(seq)
        assert row.split == ("train" if n < 3 or k < n - 2 else "validation" if k == n - 2 else "test")


def test_amazon_line_per_user_with_attributes(beauty):
    cats = first_attributes(beauty.with_name("Beauty_item2attributes.json"))
    frame = read_amazon(beauty, negatives=2, seed=3, max_history=4)
    check_amazon(frame, beauty, negatives=2, max_history=4, cat=lambda i: cats[i])
    assert (frame["item_cat"] != "").all() and frame["hist_item_id"].str.count(r"\|").max() == 3
    assert frame["split"].value_counts().to_dict() == {"test": 900, "validation": 900,
                                                       "train": len(frame) - 1800}


def test_amazon_line_per_interaction_without_attributes(video):
    frame = read_amazon(video)
    check_amazon(frame, video, negatives=1, max_history=50, cat=lambda i: "unknown")
    assert (frame["item_cat"] == "unknown").all()
    # One category per history item even without categories: a placeholder, never a blank item.
    assert (frame["hist_item_cat"].map(lambda h: len(tokens(h))) == frame["hist_item_id"].map(lambda h: len(tokens(h)))).all()
    assert not frame["hist_item_cat"].str.contains(r"^\||\|\||\|$").any()
    assert (frame["hist_item_id"].map(lambda h: len(tokens(h))) == 50).any()  # a long user is cut
    seqs = sequences(video)
    assert any(len(s) < 3 for s in seqs.values())  # and short users are all train (checked above)


def test_amazon_layouts_read_the_same(beauty, tmp_path):
    """Beauty's slice rewritten a line per interaction, with its attributes: the same frame."""
    lines = [l.split() for l in beauty.read_text().splitlines()]
    path = tmp_path / "Pairs.txt"
    path.write_text("".join(f"{t[0]} {i}\n" for t in lines for i in t[1:]))
    (tmp_path / "Pairs_item2attributes.json").write_bytes(beauty.with_name("Beauty_item2attributes.json").read_bytes())
    pd.testing.assert_frame_equal(read_amazon(path), read_amazon(beauty))
    (tmp_path / "Pairs_item2attributes.json").unlink()
    bare = read_amazon(path)
    assert (bare["item_cat"] == "unknown").all() and bare["hist_item_cat"].str.fullmatch(r"(unknown)?(\|unknown)*").all()


def test_amazon_negatives_are_seeded(beauty):
    a, b = read_amazon(beauty, seed=7), read_amazon(beauty, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = read_amazon(beauty, seed=8)
    assert not a["item_id"].equals(c["item_id"])
    pd.testing.assert_frame_equal(a[a["label"] == 1], c[c["label"] == 1])
    none = read_amazon(beauty, negatives=0)
    assert (none["label"] == 1).all()
    pd.testing.assert_frame_equal(none, a[a["label"] == 1].reset_index(drop=True))


def test_amazon_negatives_when_few_items_are_left(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("1 a b\n2 c\n")
    frame = read_amazon(path, negatives=5)
    negative = frame[frame["label"] == 0]
    # user 1: at position 0 b or c; at position 1 (history a, target b) only c is left
    one = negative[negative["user_id"] == "1"]
    assert set(one["item_id"][one["position"] == 0]) <= {"b", "c"}
    assert (one["item_id"][one["position"] == 1] == "c").all()
    assert set(negative["item_id"][negative["user_id"] == "2"]) <= {"a", "b"}
    path.write_text("1 a b c\n2 c\n")
    with pytest.raises(DataError, match=r"tiny.txt: user '1', position 2: no item is left"):
        read_amazon(path)
    assert len(read_amazon(path, negatives=0)) == 4


@pytest.mark.parametrize("name", [VIDEO, BEAUTY])
def test_amazon_full_files(name):
    path = real(name)
    frame = read_amazon(path)
    seqs = sequences(path)
    assert len(frame) == 2 * sum(map(len, seqs.values())) and frame["label"].mean() == 0.5
    held = sum(len(s) >= 3 for s in seqs.values())
    assert frame["split"].value_counts()[["validation", "test"]].tolist() == [2 * held, 2 * held]
    negative = frame.iloc[1::2]
    assert (negative["item_id"].to_numpy() != frame["item_id"].to_numpy()[0::2]).all()


def test_amazon_errors(tmp_path):
    path = tmp_path / "seq.txt"
    with pytest.raises(DataError, match=r"data file not found: '.*seq.txt'"):
        read_amazon(path)
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"seq.txt: the file is empty"):
        read_amazon(path)
    path.write_text("1 a b\n2\n3 c\n")
    with pytest.raises(DataError, match=r"seq.txt: line 2: expected `user item item ...`"):
        read_amazon(path)
    path.write_text("1 a b\n2 c d\n1 e\n")
    with pytest.raises(DataError, match=r"seq.txt: line 3: user '1' already has line 1"):
        read_amazon(path)
    path.write_text("1 a b\n2 c d\n")
    with pytest.raises(DataError, match="negatives must be a whole number >= 0, got -1"):
        read_amazon(path, negatives=-1)
    (tmp_path / "seq_item2attributes.json").write_text("{not json")
    with pytest.raises(DataError, match=r"seq_item2attributes.json: not readable as JSON"):
        read_amazon(path)


def test_loader_module_imports_no_framework():
    """kzoo.data reads these without Keras: only the standard library, numpy, pandas and kzoo.errors."""
    import ast
    import sys

    import kzoo.loaders_sequence as module

    tree = ast.parse(open(module.__file__).read())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    third_party = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == {"numpy", "pandas", "kzoo.errors"}
