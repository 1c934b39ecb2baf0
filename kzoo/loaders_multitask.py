"""Loaders for multi-task data: the MMoE paper's Census-Income and synthetic data, Ali-CCP, AliExpress.

    read_census(path)         UCI Census-Income (KDD), original file (plain or gzip)
                              -> 42 named columns; labels income_50k, never_married
    mmoe_synthetic(corr, rows=20_000, seed=0)
                              the MMoE paper's two regression tasks of label correlation ~ corr
    read_aliccp(path)         Ali-CCP as preprocessed by torch-rechub -> labels click, click_purchase
    read_aliexpress(path)     AliExpress (Tianchi 74690) as preprocessed -> labels click, conversion

kzoo.data registers them as `--data census:PATH`, `mmoe_synthetic:CORR[:ROWS]`, `aliccp:PATH`
and `aliexpress:PATH`; each implies the bundled schema of the same name (kzoo/datasets/). This
module must not import kzoo.data (kzoo.data imports it).
"""

from __future__ import annotations

import re

from pathlib import Path

import numpy as np
import pandas as pd

from kzoo.columns import to_float
from kzoo.errors import DataError

# census-income.names, attribute by attribute, in file order, snake_cased. Column 25 (1-based) is
# the CPS sampling weight, column 42 the income class.
CENSUS_COLUMNS = [
    "age", "class_of_worker", "detailed_industry_recode", "detailed_occupation_recode", "education",
    "wage_per_hour", "enroll_in_edu_inst_last_wk", "marital_stat", "major_industry_code",
    "major_occupation_code", "race", "hispanic_origin", "sex", "member_of_a_labor_union",
    "reason_for_unemployment", "full_or_part_time_employment_stat", "capital_gains", "capital_losses",
    "dividends_from_stocks", "tax_filer_stat", "region_of_previous_residence", "state_of_previous_residence",
    "detailed_household_and_family_stat", "detailed_household_summary_in_household", "instance_weight",
    "migration_code_change_in_msa", "migration_code_change_in_reg", "migration_code_move_within_reg",
    "live_in_this_house_1_year_ago", "migration_prev_res_in_sunbelt", "num_persons_worked_for_employer",
    "family_members_under_18", "country_of_birth_father", "country_of_birth_mother", "country_of_birth_self",
    "citizenship", "own_business_or_self_employed", "fill_inc_questionnaire_for_veterans_admin",
    "veterans_benefits", "weeks_worked_in_year", "year", "income_50k",
]
CENSUS_NUMERIC = ["age", "wage_per_hour", "capital_gains", "capital_losses", "dividends_from_stocks",
                  "instance_weight", "num_persons_worked_for_employer", "weeks_worked_in_year"]
_INCOME = {"- 50000.": 0.0, "50000+.": 1.0}

MMOE_DIM, MMOE_SINES, MMOE_ROWS = 100, 10, 20_000
_GZIP_MAGIC = b"\x1f\x8b"


# ------------------------------------------------------------------------------------------------ census

def read_census(path) -> pd.DataFrame:
    """UCI Census-Income (KDD) as published: census-income.data / .test, plain or gzip, unchanged.

    No header, 42 comma-separated fields a line with a leading space each, `?` for missing.
    Returns the 42 columns named as census-income.names lists them (snake_case): categorical
    text stripped, `?` -> "" (the detailed industry/occupation recodes are codes, kept as text);
    the numeric columns (age, wage_per_hour, capital_gains, capital_losses, dividends_from_stocks,
    instance_weight, num_persons_worked_for_employer, weeks_worked_in_year) as float32. Then the
    MMoE paper's two labels, float32: `income_50k` (1 for "50000+.", 0 for "- 50000.", read from
    the last field) and `never_married` (1 where marital_stat is "Never married"). marital_stat
    stays a column: a schema with the never_married task must not use it as a feature.
    `instance_weight` is the CPS sampling weight, a possible sample weight, not a feature.
    """
    raw = _read_csv(path, header=None, skipinitialspace=True, na_values=["", "?"],
                    compression="gzip" if _is_gzip(path) else "infer")
    if raw.shape[1] != len(CENSUS_COLUMNS):
        raise DataError(f"{path}: Census-Income (KDD) has {len(CENSUS_COLUMNS)} comma-separated fields a line "
                        f"(age, ..., instance weight, ..., year, income), this file has {raw.shape[1]}")
    raw.columns = CENSUS_COLUMNS
    income = raw["income_50k"].fillna("").str.strip()
    known = income.isin(list(_INCOME))
    if not known.all():
        row = int(np.flatnonzero(~known.to_numpy())[0])
        value = raw["income_50k"].iloc[row]
        hint = ("; census:PATH reads the original file, which has no header row" if row == 0 else "")
        raise DataError(f"{path}: column 'income_50k' (field 42), row {row + 1}: "
                        f"{'missing' if pd.isna(value) else repr(value)} is neither ' - 50000.' nor ' 50000+.'{hint}")
    out = {}
    for name in CENSUS_COLUMNS[:-1]:
        column = raw[name]
        if name in CENSUS_NUMERIC:
            out[name] = _numbers(column, name)
        else:  # some values end in a space too ("... citizen of U S ")
            out[name] = column.fillna("").str.strip().to_numpy(dtype=object)
    out["income_50k"] = income.map(_INCOME).to_numpy(dtype=np.float32)
    marital = out["marital_stat"]
    if (marital == "").any():
        row = int(np.flatnonzero(marital == "")[0])
        raise DataError(f"{path}: column 'marital_stat', row {row + 1}: missing; the never_married label "
                        "is read from it")
    out["never_married"] = (marital == "Never married").astype(np.float32)
    return pd.DataFrame(out)


def _numbers(column: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce")
    if (values.isna() & column.notna()).any():  # to_float names the row of a bad value
        return to_float(column, name, missing_ok=True)
    return values.to_numpy(dtype=np.float32, na_value=np.nan)


def _is_gzip(path) -> bool:
    """Gzip by its first bytes, so census-income.data.gz renamed without .gz reads too."""
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == _GZIP_MAGIC
    except OSError:
        return False  # _read_csv reports a missing file


# ---------------------------------------------------------------------------------------- mmoe_synthetic

def mmoe_synthetic(corr: float, rows: int = MMOE_ROWS, seed: int = 0, *, dim: int = MMOE_DIM,
                   sines: int = MMOE_SINES, scale: float = 1.0) -> pd.DataFrame:
    """The MMoE paper's synthetic data (Ma et al., KDD 2018, section 3.2): two regression tasks
    whose correlation is set by `corr`, the cosine similarity of their weight vectors.

        u1, u2 orthogonal unit vectors in R^dim;  w1 = c u1,  w2 = c (p u1 + sqrt(1 - p^2) u2)
        x ~ N(0, I_dim);  y_i = w_i.x + sum_{j=1..m} sin(alpha_j w_i.x + beta_j) + eps_i

    with p = corr, c = scale, m = sines, alpha_j, beta_j ~ N(0, 0.01) shared by both tasks and
    eps_i ~ N(0, 0.01), read as variances (standard deviation 0.1). For small alpha the sines
    are near-linear in w_i.x, so the Pearson correlation of y1 and y2 comes out close to p.

    Columns x0..x{dim-1} and labels y1, y2, all float32. Deterministic in `seed`; everything
    but w2 (and so y2) is drawn the same whatever `corr` is, so runs at several correlations
    differ only in how related the tasks are.

    Args:
        corr: float. The weight vectors' cosine similarity p, in [-1, 1].
        rows: int. Number of rows. Defaults to `20_000`.
        seed: int. Seed of the generator. Defaults to `0`.
        dim: int. Input dimension d. Defaults to `100` (the paper's).
        sines: int. Number m of sine terms. Defaults to `10` (the paper's).
        scale: float. The weight scale c. Defaults to `1.0` (the paper's).
    """
    corr = float(corr)
    if not -1.0 <= corr <= 1.0:  # also rejects NaN
        raise DataError(f"mmoe_synthetic: the correlation must be in [-1, 1], got {corr!r}")
    if rows < 1 or dim < 2 or sines < 0:
        raise DataError(f"mmoe_synthetic: needs rows >= 1, dim >= 2 and sines >= 0, got rows={rows}, "
                        f"dim={dim}, sines={sines}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, 2)))  # two orthonormal columns
    u1, u2 = basis[:, 0], basis[:, 1]
    alpha, beta = rng.normal(0.0, 0.1, sines), rng.normal(0.0, 0.1, sines)
    x = rng.standard_normal((rows, dim))
    noise = rng.normal(0.0, 0.1, (rows, 2))
    w1, w2 = scale * u1, scale * (corr * u1 + np.sqrt(1.0 - corr * corr) * u2)
    out = {f"x{i}": x[:, i].astype(np.float32) for i in range(dim)}
    for k, w in enumerate((w1, w2)):
        z = x @ w
        y = z + np.sin(np.outer(z, alpha) + beta).sum(axis=1) + noise[:, k]
        out[f"y{k + 1}"] = y.astype(np.float32)
    return pd.DataFrame(out)


def mmoe_synthetic_argument(text: str, rest: str) -> pd.DataFrame:
    """`mmoe_synthetic:CORR[:ROWS]` (`rest` is what follows the first colon of `text`)."""
    parts = rest.split(":")
    try:
        if len(parts) > 2:
            raise ValueError
        corr = float(parts[0])
        rows = int(parts[1]) if len(parts) == 2 else MMOE_ROWS
    except ValueError:
        raise DataError(f"--data {text!r}: expected mmoe_synthetic:CORR or mmoe_synthetic:CORR:ROWS, CORR a "
                        "number in [-1, 1] (the tasks' weight-vector cosine), ROWS a whole number") from None
    if not -1.0 <= corr <= 1.0:
        raise DataError(f"--data {text!r}: CORR must be in [-1, 1], got {parts[0]}")
    if rows < 1:
        raise DataError(f"--data {text!r}: ROWS must be at least 1, got {rows}")
    return mmoe_synthetic(corr, rows)


# --------------------------------------------------------------------------------- Ali-CCP, AliExpress

def read_aliccp(path) -> pd.DataFrame:
    """Ali-CCP (Alibaba click and conversion prediction, the ESMM paper's data) as torch-rechub
    preprocesses it: a CSV with header `click, purchase, 101, 121, ..., 150_14, D109_14, ..., D853`.

    ESMM's chain is impression -> click -> purchase, and `purchase` is already "clicked and
    purchased" on the impression space, so it comes back as `click_purchase` (the CTCVR label);
    a row with purchase 1 and click 0 is a DataError. Field ids that are not names (`101`,
    `109_14`) become `f101`, `f109_14`; the dense `D...` columns keep their names. Labels are
    float32 0/1; features stay text for `conform`.
    """
    frame = _read_csv(path)
    purchase = "click_purchase" if "click_purchase" in frame.columns else "purchase"
    _require(frame, path, "Ali-CCP", ("click", purchase))
    names = {purchase: "click_purchase"}
    names.update({c: f"f{c}" for c in frame.columns if re.match(r"\d", str(c))})
    frame = frame.rename(columns=names)
    for name in ("click", "click_purchase"):
        frame[name] = _binary(frame[name], name, path)
    orphan = np.flatnonzero((frame["click_purchase"] > frame["click"]).to_numpy())
    if len(orphan):
        raise DataError(f"{path}: row {orphan[0] + 1}: purchase is 1 but click is 0 ({len(orphan)} row"
                        f"{'s' if len(orphan) > 1 else ''} in all); Ali-CCP's purchase label means clicked and "
                        "purchased. Read the file as a plain CSV (--data PATH) if yours means something else")
    return frame


def read_aliexpress(path) -> pd.DataFrame:
    """AliExpress (Tianchi dataset 74690) as torch-rechub / MTReclib preprocess it: a CSV with header
    `search_id, categorical_1..16, numerical_1..63, click, conversion` (numerical already scaled).

    Labels `click` and `conversion` as float32 0/1; `search_id` (the query, not a feature) and
    the features stay text for `conform`.
    """
    frame = _read_csv(path)
    _require(frame, path, "AliExpress", ("click", "conversion"))
    for name in ("click", "conversion"):
        frame[name] = _binary(frame[name], name, path)
    return frame


ALIEXPRESS_COUNTRIES = ("ES", "FR", "NL", "US")


def read_aliexpress_countries(folder) -> pd.DataFrame:
    """The AliExpress countries as domains (MTMD): `folder` holds one folder per country as MTReclib
    lays the dataset out, `AliExpress_ES/`, `AliExpress_FR/`, `AliExpress_NL/`, `AliExpress_US/`,
    each with `train.csv` and `test.csv` in `read_aliexpress`'s format (any subset of the countries).

    Returns their rows with `country` (the folder's code, a declared domain of the
    `aliexpress_domains` schema) and `split` ("train" or "test"; 10 % of each country's training
    rows, the last ones, are "validation").
    """
    folder = Path(folder)
    parts = []
    for code in ALIEXPRESS_COUNTRIES:
        sub = folder / f"AliExpress_{code}"
        if not sub.is_dir():
            continue
        for name in ("train", "test"):
            path = sub / f"{name}.csv"
            if not path.is_file():
                raise DataError(f"{sub}: AliExpress country folder without {name}.csv")
            frame = read_aliexpress(path)
            split = np.full(len(frame), name, dtype=object)
            if name == "train":
                split[int(len(frame) * 0.9):] = "validation"
            parts.append(frame.assign(country=code, split=split))
    if not parts:
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise DataError(f"{folder}: no AliExpress_XX country folder ({', '.join('AliExpress_' + c for c in ALIEXPRESS_COUNTRIES)}) "
                        f"in it; found {found[:10]}")
    return pd.concat(parts, ignore_index=True)


def _require(frame: pd.DataFrame, path, what: str, columns) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        present = [str(c) for c in frame.columns]
        shown = ", ".join(present[:20]) + (f", ... ({len(present) - 20} more)" if len(present) > 20 else "")
        raise DataError(f"{path}: {what} data needs the label column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(map(repr, missing))}; columns present: {shown}")


def _binary(column: pd.Series, name: str, path) -> np.ndarray:
    values = to_float(column, name, missing_ok=False)
    bad = np.flatnonzero((values != 0) & (values != 1))
    if len(bad):
        raise DataError(f"{path}: column {name!r}, row {bad[0] + 1}: {column.iloc[bad[0]]!r} is not 0 or 1")
    return values


def _read_csv(path, **options) -> pd.DataFrame:
    options = {"sep": ",", "dtype": str, "keep_default_na": False, "na_values": [""], **options}
    try:
        return pd.read_csv(path, **options)
    except FileNotFoundError:
        raise DataError(f"data file not found: '{path}'") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path}: {e}".strip()) from None
