"""kzoo.data: loaders on the real slices in $KZOO_DATA_DIR, conform's checks and messages, split, synthetic."""

import datetime
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kzoo import data as kdata
from kzoo.data import DataError, conform
from tests.real_data import real

CRITEO_HEAD = "criteo/criteo_train_head10k.txt"
CRITEO_CSV = "criteo/criteo_sample_deepctr.txt"
AVAZU_HEAD = "avazu/avazu_train_head10k.csv"


@pytest.fixture(scope="module")
def criteo():
    return kdata.bundled_dataset("criteo")


@pytest.fixture(scope="module")
def avazu():
    return kdata.bundled_dataset("avazu")


# ------------------------------------------------------------------------------------------ bundled schemas

def test_bundled_datasets_follow_the_schema(criteo, avazu):
    import jsonschema
    spec_schema = json.loads((Path(kdata.__file__).with_name("schema.json")).read_text())
    for dataset in (criteo, avazu):
        jsonschema.validate(dataset, {"$defs": spec_schema["$defs"], "$ref": "#/$defs/dataset"})
    assert [f["name"] for f in criteo["features"]] == kdata.CRITEO_COLUMNS[1:]
    assert criteo["label"] == "label" and avazu["label"] == "click"
    names = [f["name"] for f in avazu["features"]]
    assert "id" not in names and "hour" not in names
    assert {"hour_of_day", "day_of_week", "device_ip", "C14", "C21"} <= set(names) and len(names) == 23
    assert all(f["type"] == "categorical" for f in avazu["features"])
    with pytest.raises(DataError, match="did you mean 'criteo'"):
        kdata.bundled_dataset("critoe")


# ----------------------------------------------------------------------------------------------- loaders

def test_criteo_raw_slice(criteo):
    path = real(CRITEO_HEAD)
    frame, implied = kdata.load(f"criteo:{path}")
    assert implied == "criteo" and frame.shape == (10_000, 40)
    frame = conform(frame, criteo)
    assert list(frame.columns) == kdata.CRITEO_COLUMNS
    assert frame["label"].dtype == np.float32 and frame["label"].mean() == pytest.approx(0.2182, abs=1e-6)
    assert all(frame[c].dtype == np.float32 for c in kdata.CRITEO_NUMERIC)
    assert frame["I1"].isna().mean() == pytest.approx(0.45, abs=0.01)
    assert frame["I2"].isna().sum() == 0
    for c in kdata.CRITEO_CATEGORICAL:
        assert all(isinstance(v, str) for v in frame[c]), c
    assert (frame["C22"] == "").mean() == pytest.approx(0.82, abs=0.01)
    first = frame.iloc[0]  # the well-known first row of Kaggle train.txt
    assert (first["label"], first["I1"], first["I5"], first["C1"]) == (0.0, 1.0, 1382.0, "68fd1e64")
    assert np.isnan(first["I12"])


def test_relative_path_found_under_data_dir(monkeypatch, tmp_path):
    real(CRITEO_HEAD)
    monkeypatch.setenv("KZOO_DATA_DIR", str(kdata.data_dir().resolve()))
    monkeypatch.chdir(tmp_path)
    frame, implied = kdata.load(f"criteo:{CRITEO_HEAD}")
    assert implied == "criteo" and len(frame) == 10_000
    monkeypatch.delenv("KZOO_DATA_DIR")
    with pytest.raises(DataError, match=re.escape(CRITEO_HEAD)):
        kdata.load(f"criteo:{CRITEO_HEAD}")


def test_avazu_loader(avazu):
    path = real(AVAZU_HEAD)
    raw, implied = kdata.load(f"avazu:{path}")
    assert implied == "avazu" and len(raw) == 9_999
    assert raw["id"].iloc[1] == "10000169349117863715"  # > int64 max: must stay text
    assert set(raw["hour"]) == {"14102100"}
    assert set(raw["hour_of_day"]) == {"00"}
    assert set(raw["day_of_week"]) == {str(datetime.date(2014, 10, 21).weekday())}
    frame = conform(raw, avazu)
    assert list(frame.columns) == ["click"] + [f["name"] for f in avazu["features"]]
    assert frame["click"].mean() == pytest.approx(0.1706, abs=1e-4)
    assert frame["C20"].iloc[0] == "-1" and frame["C14"].iloc[0] == "15706"
    assert all(isinstance(v, str) for v in frame["device_ip"])


def test_avazu_derived_hours(tmp_path):
    frame = pd.DataFrame({"hour": ["14102100", "14102523", "15010107"], "click": ["0", "1", "0"]})
    path = tmp_path / "train.csv"
    frame.to_csv(path, index=False)
    out = kdata.read_avazu(path)
    assert list(out["hour_of_day"]) == ["00", "23", "07"]
    days = [datetime.date(2014, 10, 21), datetime.date(2014, 10, 25), datetime.date(2015, 1, 1)]
    assert list(out["day_of_week"]) == [str(d.weekday()) for d in days]
    frame.loc[1, "hour"] = "141025"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'hour', row 2: '141025'"):
        kdata.read_avazu(path)


def test_deepctr_csv_sample_conforms(criteo):
    path = real(CRITEO_CSV)  # comma separated although named .txt
    frame, implied = kdata.load(str(path))
    assert implied is None and frame.shape == (200, 40)
    frame = conform(frame, criteo)
    assert frame["I3"].iloc[0] == 260.0 and frame["I3"].dtype == np.float32
    assert frame["I2"].iloc[1] == -1.0
    assert frame["label"].mean() == pytest.approx(0.245)
    assert frame["C1"].iloc[0] == "05db9164" and frame["C19"].iloc[0] == ""


def test_load_forms(tmp_path, criteo):
    frame, implied = kdata.load("synthetic:300")
    assert implied == "criteo" and len(frame) == 300
    same, implied = kdata.load(frame)
    assert same is frame and implied is None
    conformed, _ = kdata.load("synthetic:300", criteo)
    pd.testing.assert_frame_equal(conformed, conform(frame, criteo))
    conformed.to_parquet(tmp_path / "s.parquet")
    again, implied = kdata.load(str(tmp_path / "s.parquet"))
    assert implied is None
    pd.testing.assert_frame_equal(conform(again, criteo), conformed, check_dtype=False)
    conformed.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    again = conform(kdata.load(tmp_path / "s.tsv")[0], criteo)
    pd.testing.assert_frame_equal(again, conformed, check_dtype=False)


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match=r"unknown loader 'critoe' \(did you mean 'criteo'\?\)"):
        kdata.load("critoe:x.txt")
    with pytest.raises(DataError, match=r"did you mean 'synthetic'"):
        kdata.load("synthtic")
    with pytest.raises(DataError, match="ROWS"):
        kdata.load("synthetic:many")
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        kdata.load(str(missing))
    with pytest.raises(DataError, match="nope.txt"):
        kdata.load(f"criteo:{tmp_path / 'nope.txt'}")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="not a .csv"):
        kdata.load(str(tmp_path / "x.json"))


# -------------------------------------------------------------------------------------------------- conform

def small(criteo, rows=30):
    """A raw all-text Criteo frame, as read_table gives it."""
    frame = conform(kdata.synthetic(rows, seed=1), criteo)
    return frame.astype(object).where(frame.notna(), None).map(lambda v: None if v is None else str(v))


def test_conform_casts(criteo):
    frame = small(criteo)
    frame.loc[0, "I1"], frame.loc[1, "I1"], frame.loc[2, "I1"] = "", "NA", " 7 "
    frame.loc[0, "C1"], frame.loc[1, "C1"] = None, "NA"
    out = conform(frame, criteo)
    assert out["I1"].iloc[:2].isna().all() and out["I1"].iloc[2] == 7.0
    assert list(out["C1"].iloc[:2]) == ["", "NA"]  # "NA" may be a real category (Namibia)
    numbers = pd.DataFrame({"label": [1, 0, 1], "n": ["1", "2", "3"], "c": [260.0, np.nan, 1.5]})
    spec = {"label": "label", "features": [{"name": "c", "type": "categorical"}, {"name": "n", "type": "numeric"}]}
    out = conform(numbers, spec)
    assert list(out.columns) == ["label", "c", "n"]
    assert list(out["c"]) == ["260", "", "1.5"]
    assert out["label"].dtype == np.float32 and out["n"].dtype == np.float32


def test_conform_cross_and_labels():
    frame = pd.DataFrame({"click": [1, 0], "buy": [0, 0], "a": ["x", "y"], "b": [3, 4], "extra": [9, 9]})
    spec = {"label": ["click", "buy"], "features": [
        {"name": "a", "type": "categorical"},
        {"name": "a_x_b", "type": "cross", "columns": ["a", "b"]}]}
    out = conform(frame, spec)
    assert list(out.columns) == ["click", "buy", "a", "b"]  # b is kept for the cross
    assert list(out["b"]) == ["3", "4"]
    out = conform(frame.drop(columns=["click", "buy"]), spec, require_label=False)
    assert list(out.columns) == ["a", "b"]


def test_conform_bad_number(criteo):
    frame = small(criteo)
    frame.loc[16, "I3"] = "abc"
    with pytest.raises(DataError, match=r"^column 'I3', row 17: 'abc' is not a number$"):
        conform(frame, criteo)


def test_conform_missing_column(criteo):
    frame = small(criteo).rename(columns={"I3": "i3"})
    with pytest.raises(DataError) as info:
        conform(frame, criteo)
    message = str(info.value)
    assert "'I3' (did you mean 'i3'?)" in message and "columns present: label, I1, I2, i3" in message


def test_conform_missing_label(criteo):
    frame = small(criteo)
    frame.loc[4, "label"] = None
    with pytest.raises(DataError, match=r"column 'label', row 5: the label is missing"):
        conform(frame, criteo)
    with pytest.raises(DataError, match=r"expects column 'label'"):
        conform(small(criteo).drop(columns=["label"]), criteo)


# ---------------------------------------------------------------------------------------------------- split

def test_split_is_seeded_and_disjoint():
    frame = pd.DataFrame({"row": np.arange(1000)})
    train, val, test = kdata.split(frame, seed=3)
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    ids = [set(part["row"]) for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set.union(*ids) == set(range(1000))
    assert all(list(part.index) == list(range(len(part))) for part in (train, val, test))
    for a, b in zip((train, val, test), kdata.split(frame, seed=3)):
        pd.testing.assert_frame_equal(a, b)
    assert set(kdata.split(frame, seed=4)[2]["row"]) != ids[2]
    assert len(kdata.split(frame, validation=0, test=0.25)[1]) == 0
    with pytest.raises(DataError, match="validation"):
        kdata.split(frame, validation=0.6, test=0.5)


# ------------------------------------------------------------------------------------------------ synthetic

def test_synthetic_is_deterministic_and_criteo_shaped(criteo):
    frame = kdata.synthetic(2000, seed=5)
    pd.testing.assert_frame_equal(frame, kdata.synthetic(2000, seed=5))
    assert not frame.equals(kdata.synthetic(2000, seed=6))
    assert list(frame.columns) == kdata.CRITEO_COLUMNS
    pd.testing.assert_frame_equal(conform(frame, criteo), frame, check_dtype=False)
    assert 0.2 <= frame["label"].mean() <= 0.3
    assert 0.35 < frame["I1"].isna().mean() < 0.55 and frame["I2"].isna().sum() == 0
    tokens = frame["C3"][frame["C3"] != ""]
    assert tokens.str.fullmatch(r"[0-9a-f]{8}").all()
    assert frame["C9"].nunique() <= 3 and frame["C3"].nunique() > 500
    assert (frame["C19"] == "").mean() == pytest.approx(0.45, abs=0.05)


def one_hot(table: pd.DataFrame, cut: int):
    """One-hot columns of values seen at least twice in the first `cut` rows; the rest share one column."""
    from scipy import sparse

    rows, blocks = np.arange(len(table)), []
    for column in table.columns:
        codes, uniques = pd.factorize(table[column])
        keep = np.bincount(codes[:cut], minlength=len(uniques)) >= 2
        ids = np.where(keep, np.cumsum(keep), 0)[codes]
        blocks.append(sparse.csr_matrix((np.ones(len(table)), (rows, ids)), shape=(len(table), keep.sum() + 1)))
    return sparse.hstack(blocks).tocsr()


def test_synthetic_signal_needs_crosses():
    """Logistic regression on one-hot features stays well below the oracle; the planted crosses lift it."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rows = 20_000
    frame, logit = kdata.synthetic(rows, seed=0, return_logit=True)
    cut, y = int(rows * 0.8), frame["label"].to_numpy()
    numbers = frame[kdata.CRITEO_NUMERIC].fillna(0).to_numpy(dtype=float)
    numbers = np.sign(numbers) * np.log1p(np.abs(numbers))
    numbers = sparse.csr_matrix((numbers - numbers[:cut].mean(0)) / numbers[:cut].std(0))
    categories = frame[kdata.CRITEO_CATEGORICAL]

    def holdout_auc(table):
        x = sparse.hstack([numbers, one_hot(table, cut)]).tocsr()
        model = LogisticRegression(C=0.03, solver="liblinear", random_state=0).fit(x[:cut], y[:cut])
        return roc_auc_score(y[cut:], model.predict_proba(x[cut:])[:, 1])

    oracle = roc_auc_score(y[cut:], logit[cut:])
    linear = holdout_auc(categories)
    crosses = {f"{a}x{b}": categories[a] + "|" + categories[b] for a, b in kdata.SYNTHETIC_PAIRS}
    with_crosses = holdout_auc(categories.assign(**crosses))
    print(f"oracle {oracle:.4f} linear {linear:.4f} with crosses {with_crosses:.4f}")
    assert oracle > 0.80
    assert linear < oracle - 0.08, (oracle, linear)
    assert with_crosses > linear + 0.03, (linear, with_crosses)
