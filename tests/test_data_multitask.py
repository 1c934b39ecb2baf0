"""Multi-task loaders: Census-Income (KDD) on its real 50,000-row part, the MMoE paper's synthetic
generator, the Ali-CCP and AliExpress samples, their bundled schemas and their errors."""

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kzoo import data as kdata
from kzoo.data import DataError, conform
from tests.real_data import real
from kzoo.loaders_multitask import CENSUS_COLUMNS, CENSUS_NUMERIC, mmoe_synthetic

CENSUS = "census_income_kdd/census-income.part1.gz"
SAMPLES = "multitask_ctr_samples"
ALICCP_FIELDS = ("101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301,"
                 "109_14,110_14,127_14,150_14").split(",")


@pytest.fixture(scope="module")
def census_lines():
    """The raw lines of the 50,000-row part, parsed independently of the loader."""
    with gzip.open(real(CENSUS), "rt") as handle:
        return [line.rstrip("\n") for line in handle if line.strip()]


@pytest.fixture(scope="module")
def census():
    frame, implied = kdata.load(f"census:{real(CENSUS)}")
    assert implied == "census"
    return frame


def schema_of(name):
    import jsonschema
    spec_schema = json.loads((Path(kdata.__file__).with_name("schema.json")).read_text())
    dataset = kdata.bundled_dataset(name)
    jsonschema.validate(dataset, {"$defs": spec_schema["$defs"], "$ref": "#/$defs/dataset"})
    return dataset


# ------------------------------------------------------------------------------------------ bundled schemas

def test_bundled_multitask_schemas():
    for name in ("census", "mmoe_synthetic", "aliccp", "aliexpress"):
        assert name in kdata.LOADERS
    census = schema_of("census")
    names = {f["name"]: f for f in census["features"]}
    assert census["label"] == ["income_50k", "never_married"]
    # marital_stat is never_married's source, instance_weight a sampling weight, neither a feature
    assert not {"marital_stat", "instance_weight", "income_50k", "never_married"} & set(names)
    assert set(names) == set(CENSUS_COLUMNS) - {"marital_stat", "instance_weight", "income_50k"}
    numeric = {n for n, f in names.items() if f["type"] == "numeric"}
    assert numeric == set(CENSUS_NUMERIC) - {"instance_weight"}
    assert all(names[n]["norm"] in ("standard", "log_standard") for n in numeric)
    for code in ("detailed_industry_recode", "detailed_occupation_recode", "year", "veterans_benefits"):
        assert names[code]["type"] == "categorical"

    synthetic = schema_of("mmoe_synthetic")
    assert synthetic["label"] == ["y1", "y2"]
    assert [f["name"] for f in synthetic["features"]] == [f"x{i}" for i in range(100)]
    assert all(f["type"] == "numeric" and f["norm"] == "none" for f in synthetic["features"])

    aliccp = schema_of("aliccp")
    assert aliccp["label"] == ["click", "click_purchase"]
    assert [f["name"] for f in aliccp["features"] if f["type"] == "categorical"] == [f"f{c}" for c in ALICCP_FIELDS]
    aliexpress = schema_of("aliexpress")
    assert aliexpress["label"] == ["click", "conversion"]
    names = [f["name"] for f in aliexpress["features"]]
    assert "search_id" not in names and len(names) == 16 + 63


# ------------------------------------------------------------------------------------------------- census

def test_census_reads_the_real_part(census, census_lines):
    fields = [[v.strip() for v in line.split(",")] for line in census_lines]
    assert {len(f) for f in fields} == {42} and len(fields) == 50_000
    assert census.shape == (50_000, 43)
    assert list(census.columns) == [*CENSUS_COLUMNS, "never_married"]
    # every column against an independent parse of the text
    for i, name in enumerate(CENSUS_COLUMNS[:-1]):
        raw = [f[i] for f in fields]
        if name in CENSUS_NUMERIC:
            expected = np.array([np.nan if v == "?" else float(v) for v in raw], dtype=np.float32)
            np.testing.assert_array_equal(census[name].to_numpy(), expected, err_msg=name)
        else:
            assert census[name].tolist() == ["" if v == "?" else v for v in raw], name
    incomes = [f[41] for f in fields]
    assert set(incomes) == {"- 50000.", "50000+."}
    np.testing.assert_array_equal(census["income_50k"], [float(v == "50000+.") for v in incomes])
    np.testing.assert_array_equal(census["never_married"], [float(f[7] == "Never married") for f in fields])
    # the MMoE tasks' positive rates (UCI: about 6 % and 43 %)
    assert census["income_50k"].mean() == pytest.approx(0.0631, abs=0.0005)
    assert census["never_married"].mean() == pytest.approx(0.4311, abs=0.0005)
    assert census["income_50k"].dtype == np.float32 and census["never_married"].dtype == np.float32

    text = [n for n in CENSUS_COLUMNS[:-1] if n not in CENSUS_NUMERIC]
    assert all(not (census[n] == "?").any() for n in text)
    assert all(not census[n].str.match(r"^\s|.*\s$").any() for n in text)  # " ... citizen of U S " too
    assert (census["state_of_previous_residence"] == "").sum() == 155  # its `?` rows
    assert (census["migration_code_change_in_msa"] == "").sum() == 24_991
    assert set(census["detailed_industry_recode"]) >= {"0", "33", "43"}  # codes, as text
    weights = census["instance_weight"]
    assert weights.dtype == np.float32 and (weights > 0).all() and weights.iloc[0] == pytest.approx(1032.38)


def test_census_conforms_to_its_schema(census):
    dataset = kdata.bundled_dataset("census")
    out = conform(census, dataset)
    features = [f["name"] for f in dataset["features"]]
    assert list(out.columns) == ["income_50k", "never_married", *features]
    assert out.shape == (50_000, 2 + len(features))
    assert not out[[f["name"] for f in dataset["features"] if f["type"] == "numeric"]].isna().any().any()
    # no feature is a copy of a label: none determines income_50k or never_married on every row
    for label in ("income_50k", "never_married"):
        for name in features:
            purity = out.groupby(name)[label].agg(lambda y: max(y.mean(), 1 - y.mean()))
            assert not (purity == 1).all(), (label, name)


def test_census_plain_and_gzip_read_the_same(census, census_lines, tmp_path):
    text = "\n".join(census_lines[:300]) + "\n"
    plain = tmp_path / "census-income.data"
    plain.write_text(text)
    zipped = tmp_path / "census-income-test"  # gzip found by its first bytes, not its name
    zipped.write_bytes(gzip.compress(text.encode()))
    head = census.iloc[:300].reset_index(drop=True)
    for path in (plain, zipped):
        frame, implied = kdata.load(f"census:{path}")
        assert implied == "census"
        pd.testing.assert_frame_equal(frame, head)


def test_census_errors(census_lines, tmp_path):
    short = tmp_path / "short.data"
    short.write_text("\n".join(line.rsplit(",", 1)[0] for line in census_lines[:5]) + "\n")
    with pytest.raises(DataError, match=re.escape(str(short)) + r".*42 comma-separated fields.*this file has 41"):
        kdata.load(f"census:{short}")

    bad = tmp_path / "bad.data"
    lines = census_lines[:5]
    lines[3] = lines[3].replace(" - 50000.", " 50000")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"column 'income_50k' \(field 42\), row 4: '50000' is neither"):
        kdata.load(f"census:{bad}")

    lines = census_lines[:5]
    lines[1] = lines[1].replace(" Married-civilian spouse present,", " ?,")
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"column 'marital_stat', row 2: missing; the never_married label"):
        kdata.load(f"census:{bad}")

    header = tmp_path / "header.csv"
    header.write_text(",".join(CENSUS_COLUMNS) + "\n" + "\n".join(census_lines[:3]) + "\n")
    with pytest.raises(DataError, match="row 1: 'income_50k' is neither.*no header row"):
        kdata.load(f"census:{header}")

    with pytest.raises(DataError, match="nope.gz"):
        kdata.load(f"census:{tmp_path / 'nope.gz'}")
    with pytest.raises(DataError, match=r"census loader needs its argument, as census:PATH"):
        kdata.load("census")
    with pytest.raises(DataError, match=r"unknown loader 'cesnus' \(did you mean 'census'\?\)"):
        kdata.load("cesnus:x.data")


def test_named_data_brings_its_schema(census_lines, tmp_path):
    from kzoo.pipeline import load_for
    from kzoo.spec import load_spec

    plain = tmp_path / "census-income.data"
    plain.write_text("\n".join(census_lines[:50]) + "\n")
    spec, frame = load_for(load_spec("dcn_v2"), f"census:{plain}")
    assert spec.dataset["name"] == "census" and spec.labels == ["income_50k", "never_married"]
    assert frame.shape[0] == 50 and "marital_stat" not in frame.columns
    frame, implied = kdata.load("mmoe_synthetic:0.3:200")
    assert implied == "mmoe_synthetic" and {"y1", "y2", "x0"} <= set(frame.columns)
    # dcn_v2's binary task cannot take mmoe_synthetic's regression labels: said at the label, not later.
    with pytest.raises(DataError, match=r"column 'y1', row 1: label [-\d.]+ is not 0 or 1, as binary task 'ctr'"):
        load_for(load_spec("dcn_v2"), "mmoe_synthetic:0.3:200")


# ----------------------------------------------------------------------------------------- mmoe_synthetic

def test_mmoe_synthetic_correlation_follows_corr():
    r, cosine = {}, {}
    for p in (0.0, 0.5, 0.9):
        frame, implied = kdata.load(f"mmoe_synthetic:{p}")
        assert implied == "mmoe_synthetic" and frame.shape == (20_000, 102)
        r[p] = np.corrcoef(frame["y1"], frame["y2"])[0, 1]
        # the paper's construction: each label is near-linear in w_i.x, so least squares on x
        # recovers directions whose cosine is the weight vectors' cosine p
        x = np.c_[frame[[f"x{i}" for i in range(100)]].to_numpy(np.float64), np.ones(len(frame))]
        y = frame[["y1", "y2"]].to_numpy(np.float64)
        b1, b2 = np.linalg.solve(x.T @ x, x.T @ y)[:-1].T  # x ~ N(0, I): well conditioned
        cosine[p] = b1 @ b2 / np.linalg.norm(b1) / np.linalg.norm(b2)
    assert r[0.0] < r[0.5] < r[0.9]
    assert abs(r[0.0]) < 0.03 and r[0.5] == pytest.approx(0.5, abs=0.05) and r[0.9] == pytest.approx(0.9, abs=0.05)
    for p, c in cosine.items():
        assert c == pytest.approx(p, abs=0.02)
    negative = mmoe_synthetic(-0.9, rows=5000)
    assert np.corrcoef(negative["y1"], negative["y2"])[0, 1] < -0.8


def test_mmoe_synthetic_is_deterministic():
    a, b = mmoe_synthetic(0.5, rows=1000, seed=3), mmoe_synthetic(0.5, rows=1000, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == [*(f"x{i}" for i in range(100)), "y1", "y2"]
    assert (a.dtypes == np.float32).all()
    assert not np.array_equal(a["y1"], mmoe_synthetic(0.5, rows=1000, seed=4)["y1"])
    # only y2 depends on the correlation
    other = mmoe_synthetic(0.0, rows=1000, seed=3)
    pd.testing.assert_frame_equal(other.drop(columns="y2"), a.drop(columns="y2"))
    frame, _ = kdata.load("mmoe_synthetic:0.5:1000")
    pd.testing.assert_frame_equal(frame, mmoe_synthetic(0.5, rows=1000, seed=0))
    out = conform(frame, kdata.bundled_dataset("mmoe_synthetic"))
    assert list(out.columns[:2]) == ["y1", "y2"] and out.shape == (1000, 102)


@pytest.mark.parametrize("argument, message", [
    ("mmoe_synthetic:abc", "expected mmoe_synthetic:CORR or mmoe_synthetic:CORR:ROWS"),
    ("mmoe_synthetic:0.5:many", "expected mmoe_synthetic:CORR"),
    ("mmoe_synthetic:0.5:10:1", "expected mmoe_synthetic:CORR"),
    ("mmoe_synthetic:1.5", r"CORR must be in \[-1, 1\], got 1.5"),
    ("mmoe_synthetic:-1.01", r"CORR must be in \[-1, 1\]"),
    ("mmoe_synthetic:nan", r"CORR must be in \[-1, 1\]"),
    ("mmoe_synthetic:0.5:0", "ROWS must be at least 1"),
    ("mmoe_synthetic", r"needs its argument, as mmoe_synthetic:CORR\[:ROWS\]"),
])
def test_mmoe_synthetic_errors(argument, message):
    with pytest.raises(DataError, match=message):
        kdata.load(argument)


def test_mmoe_synthetic_function_checks_corr():
    with pytest.raises(DataError, match=r"correlation must be in \[-1, 1\], got -2.0"):
        mmoe_synthetic(-2)


# ------------------------------------------------------------------------------------- Ali-CCP, AliExpress

@pytest.mark.parametrize("part, rows, clicks, purchases", [("train", 100, 7, 1), ("val", 50, 3, 1), ("test", 50, 2, 1)])
def test_aliccp_samples(part, rows, clicks, purchases):
    frame, implied = kdata.load(f"aliccp:{real(f'{SAMPLES}/ali_ccp_{part}_sample.csv')}")
    assert implied == "aliccp" and frame.shape == (rows, 33)
    assert list(frame.columns[:2]) == ["click", "click_purchase"]
    assert [c for c in frame.columns if c.startswith("f")] == [f"f{c}" for c in ALICCP_FIELDS]
    assert frame["click"].sum() == clicks and frame["click_purchase"].sum() == purchases
    assert (frame["click_purchase"] <= frame["click"]).all()  # ESMM: purchases only after a click
    out = conform(frame, kdata.bundled_dataset("aliccp"))
    assert out.shape == (rows, 33) and out["click"].dtype == np.float32
    assert out["f205"].map(type).eq(str).all() and out["D853"].dtype == np.float32


@pytest.mark.parametrize("part, rows, clicks, conversions", [("train", 100, 60, 2), ("test", 20, 10, 2)])
def test_aliexpress_samples(part, rows, clicks, conversions):
    frame, implied = kdata.load(f"aliexpress:{real(f'{SAMPLES}/aliexpress_{part}_sample.csv')}")
    assert implied == "aliexpress" and frame.shape == (rows, 82)
    assert frame["click"].sum() == clicks and frame["conversion"].sum() == conversions
    out = conform(frame, kdata.bundled_dataset("aliexpress"))
    assert out.shape == (rows, 81) and "search_id" not in out.columns
    assert list(out.columns[:3]) == ["click", "conversion", "categorical_1"]


def test_aliccp_and_aliexpress_errors(tmp_path):
    sample = pd.read_csv(real(f"{SAMPLES}/ali_ccp_test_sample.csv"), dtype=str)
    orphan = sample.copy()
    orphan.loc[4, ["click", "purchase"]] = ["0", "1"]
    orphan.to_csv(tmp_path / "orphan.csv", index=False)
    with pytest.raises(DataError, match="row 5: purchase is 1 but click is 0"):
        kdata.load(f"aliccp:{tmp_path / 'orphan.csv'}")
    sample.loc[2, "click"] = "2"
    sample.to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(DataError, match=r"column 'click', row 3: '2' is not 0 or 1"):
        kdata.load(f"aliccp:{tmp_path / 'two.csv'}")
    sample.drop(columns="purchase").to_csv(tmp_path / "nolabel.csv", index=False)
    with pytest.raises(DataError, match=r"Ali-CCP data needs the label column 'purchase'"):
        kdata.load(f"aliccp:{tmp_path / 'nolabel.csv'}")
    express = pd.read_csv(real(f"{SAMPLES}/aliexpress_test_sample.csv"), dtype=str)
    express.drop(columns="conversion").to_csv(tmp_path / "express.csv", index=False)
    with pytest.raises(DataError, match=r"express.csv: AliExpress data needs the label column 'conversion'"):
        kdata.load(f"aliexpress:{tmp_path / 'express.csv'}")
