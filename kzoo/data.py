"""The data layer: read tables and the named datasets, make the synthetic default, conform to a schema.

    load("synthetic" | "synthetic:ROWS" | "criteo:PATH" | "avazu:PATH" | FILE | DataFrame)
        -> (raw DataFrame, name of the bundled dataset schema it implies, or None)
        (multi-task data: "census:PATH", "mmoe_synthetic:CORR[:ROWS]", "mtmd_synthetic[:ROWS]", "aliccp:PATH",
        "aliexpress:PATH", read by kzoo.loaders_multitask; user histories: "movielens:FOLDER",
        "amazon:FILE", read by kzoo.loaders_sequence)
    conform(frame, dataset)  -> label + feature columns, checked and cast (float32 / str)
    split(frame, seed)       -> (train, validation, test)

Everything here is pandas; turning values into ids and normalised floats is kzoo.features' job,
because that part is exported with the model.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kzoo.columns import SEP, item_counts, to_float, to_ids, to_sequence, to_text  # noqa: F401  (re-exported)
from kzoo.features import LIST_TYPES
from kzoo.errors import DataError
from kzoo.loaders_multitask import (  # noqa: F401  (re-exported)
    mmoe_synthetic, mmoe_synthetic_argument, read_aliccp, read_aliexpress, read_census)
from kzoo.loaders_sequence import read_amazon, read_movielens  # noqa: F401  (re-exported)
from kzoo.synthetic import (  # noqa: F401  (re-exported: kdata.synthetic is the embedded default)
    CRITEO_CATEGORICAL, CRITEO_NUMERIC, SYNTHETIC_FIRST_ORDER, SYNTHETIC_NUMERIC_CROSS, SYNTHETIC_PAIRS, synthetic)

CRITEO_COLUMNS = ["label", *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
LOADERS = ("synthetic", "criteo", "avazu", "census", "mmoe_synthetic", "aliccp", "aliexpress", "movielens", "amazon",
           "mtmd_synthetic")
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet")

_COMPRESSION = (".gz", ".bz2", ".zip", ".xz", ".zst")
_LOADER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]+")




def data_dir() -> Path:
    """Where the real data lives: $KZOO_DATA_DIR, else `../shared/data` beside the repository root."""
    env = os.environ.get("KZOO_DATA_DIR")
    if env:
        return Path(env)
    return (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def bundled_dataset(name: str) -> dict:
    """The dataset schema shipped as kzoo/datasets/NAME.json (a fresh dict on every call)."""
    folder = Path(__file__).with_name("datasets")
    path = folder / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.json"))
        raise DataError(f"no bundled dataset {name!r}{_did_you_mean(name, known)}; bundled: {', '.join(known)}")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- reading

def read_table(path) -> pd.DataFrame:
    """A CSV (.csv), TSV (.tsv, .txt) or Parquet (.parquet) file with a header row.

    Text is read with every column as str and only empty fields missing; `conform` casts.
    A .txt file is tab separated unless its first line has commas and no tab: the DeepCTR
    samples (criteo_sample.txt, avazu_sample.txt) are CSV named .txt. Compressed text
    (.csv.gz, ...) works too.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".parquet":
        try:
            return pd.read_parquet(path, engine="pyarrow")
        except FileNotFoundError:
            raise DataError(f"data file not found: '{path}'") from None
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: cannot read as Parquet: {e}") from None
    if suffix not in TABLE_SUFFIXES:
        raise DataError(f"{path}: unknown table type {suffix or '(no suffix)'!r}; "
                        f"expected one of {', '.join(TABLE_SUFFIXES)}")
    return _read_text(path, sep={".csv": ",", ".tsv": "\t"}.get(suffix) or _sniff(path))


def read_criteo(path) -> pd.DataFrame:
    """Raw Kaggle Criteo (train.txt): tab separated, no header, `label, I1..I13, C1..C26`.

    Every column comes back as str, empty fields as missing. A file of 39 fields a line (the
    Kaggle test.txt) reads as I1..C26 without a label.
    """
    frame = _read_text(path, sep="\t", header=None)
    if len(frame) and str(frame.iloc[0, 0]).startswith("label"):
        raise DataError(f"{path}: raw Criteo has no header row, this file has one; pass the file itself "
                        "(--data PATH) to read it as a table")
    if frame.shape[1] == len(CRITEO_COLUMNS):
        frame.columns = CRITEO_COLUMNS
    elif frame.shape[1] == len(CRITEO_COLUMNS) - 1:
        frame.columns = CRITEO_COLUMNS[1:]
    else:
        raise DataError(f"{path}: raw Criteo has 40 tab-separated fields a line (label, I1..I13, C1..C26), "
                        f"this file has {frame.shape[1]}; for a table with a header row pass the file itself")
    return frame


def read_avazu(path) -> pd.DataFrame:
    """Kaggle Avazu train.csv (with its header), every column as str (`id` exceeds int64).

    Adds `hour_of_day` ("00".."23") and `day_of_week` ("0" Monday .. "6" Sunday) derived from
    `hour` (YYMMDDHH, years 20YY).
    """
    frame = _read_text(path, sep=",")
    if "hour" not in frame.columns:
        raise DataError(f"{path}: Avazu data needs the column 'hour' (YYMMDDHH){_did_you_mean('hour', frame.columns)}; "
                        f"columns present: {_listing(frame.columns)}")
    text = frame["hour"].astype(object).fillna("").map(str).str.strip()
    when = pd.to_datetime(text, format="%y%m%d%H", errors="coerce")
    bad = np.flatnonzero((when.isna() | ~text.str.fullmatch(r"\d{8}")).to_numpy())
    if len(bad):
        raise DataError(f"column 'hour', row {bad[0] + 1}: {text.iloc[bad[0]]!r} is not a YYMMDDHH hour")
    frame["hour_of_day"] = when.dt.strftime("%H").astype(object)
    frame["day_of_week"] = when.dt.day_of_week.astype(str).astype(object)
    return frame


def _read_text(path, sep: str, header="infer") -> pd.DataFrame:
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    try:
        frame = pd.read_csv(path, sep=sep, header=header, dtype=str, keep_default_na=False, na_values=[""],
                            quoting=quoting)
    except FileNotFoundError:
        raise DataError(f"data file not found: '{path}'") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (no header row, no data)") from None
    except UnicodeDecodeError:
        raise DataError(_not_utf8(path, sep, header is not None)) from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: {e}".strip()) from None
    _check_row_lengths(path, sep, quoting, frame, header is not None)
    return frame


def _not_utf8(path, sep: str, has_header: bool) -> str:
    """Where a text file stops being UTF-8: the row (1-based, the header not counted) and the column."""
    names = None
    with pd.io.common.get_handle(path, "rb", compression="infer", is_text=False) as handle:
        for line_no, line in enumerate(handle.handle):
            if line_no == 0 and has_header:
                names = line.decode("utf-8", errors="replace").rstrip("\r\n").split(sep)
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                field = line[:e.start].decode("utf-8", errors="replace").count(sep)
                row = "the header" if has_header and line_no == 0 else f"row {line_no + (0 if has_header else 1)}"
                column = f"column {names[field]!r}" if line_no and names and field < len(names) else f"field {field + 1}"
                return (f"{path}, {row}, {column}: {line[e.start:e.end + 3]!r} is not UTF-8; "
                        "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")
    return f"{path}: not UTF-8 text; save the file as UTF-8"


def _check_row_lengths(path, sep: str, quoting: int, frame: pd.DataFrame, has_header: bool) -> None:
    """pandas fills a line with too few fields with missing values; a cut-off line is refused instead,
    naming its row. Only a short line leaves the last column missing, so files whose last column is
    complete are not read twice."""
    if frame.empty or not frame.iloc[:, -1].isna().any():
        return
    width = frame.shape[1]
    with pd.io.common.get_handle(path, "r", compression="infer", errors="replace") as handle:
        lines = (fields for fields in csv.reader(handle.handle, delimiter=sep, quoting=quoting) if fields)
        if has_header:
            next(lines, None)
        for row, fields in enumerate(lines):
            if len(fields) < width:
                raise DataError(f"{path}, row {row + 1}: {len(fields)} fields where the file has {width} columns "
                                "(a cut-off line?); an empty value still needs its separator")


def _sniff(path: Path) -> str:
    try:
        with pd.io.common.get_handle(path, "r", compression="infer", errors="replace") as handle:
            first = handle.handle.readline()
    except FileNotFoundError:
        raise DataError(f"data file not found: '{path}'") from None
    return "," if "\t" not in first and "," in first else "\t"


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


# ---------------------------------------------------------------------------------------------- loading

# NAME:PATH loaders; each implies the bundled schema kzoo/datasets/NAME.json.
_PATH_READERS = {"criteo": read_criteo, "avazu": read_avazu, "census": read_census, "aliccp": read_aliccp,
                 "aliexpress": read_aliexpress, "movielens": read_movielens}


def load(data, dataset_schema: dict | None = None, negatives: int = 1,
         seed: int = 0) -> tuple[pd.DataFrame, str | None]:
    """Parse a `--data` argument into (frame, implied bundled dataset name or None).

    `synthetic` / `synthetic:ROWS` -> synthetic(), "criteo"; `criteo:PATH` -> read_criteo, "criteo";
    `avazu:PATH` -> read_avazu, "avazu"; `census:PATH`, `aliccp:PATH`, `aliexpress:PATH`,
    `movielens:FOLDER`, `amazon:FILE` -> read_census / read_aliccp / read_aliexpress /
    read_movielens / read_amazon and the loader's name; `mmoe_synthetic:CORR[:ROWS]`
    -> mmoe_synthetic(CORR, ROWS), "mmoe_synthetic"; a .csv/.tsv/.txt/.parquet path -> read_table, None;
    a DataFrame -> itself, None. A relative PATH that is not under the current directory is
    also looked for under $KZOO_DATA_DIR when that is set.

    dataset_schema: dict or None. When given, the frame comes back already `conform`ed to it.
    negatives, seed: negative rows sampled per positive, and their seed, for loaders that sample
        them (`amazon:FILE`; a spec sets them as `train.negatives` and `train.split.seed`).
    """
    if isinstance(data, pd.DataFrame):
        frame, implied = data, None
    elif isinstance(data, (str, os.PathLike)):
        frame, implied = _load_argument(os.fspath(data), negatives, seed)
    else:
        raise DataError(f"data must be a DataFrame, a path or a loader argument such as 'synthetic', "
                        f"got {type(data).__name__}")
    if dataset_schema is not None:
        frame = conform(frame, dataset_schema)
    return frame, implied


def _load_argument(text: str, negatives: int = 1, seed: int = 0) -> tuple[pd.DataFrame, str | None]:
    name, colon, rest = text.partition(":")
    if text.strip() == "synthetic":
        return synthetic(), "criteo"
    if text.strip() == "mtmd_synthetic" or (name == "mtmd_synthetic" and colon):
        from kzoo.loaders_mtmd import mtmd_synthetic

        try:
            rows = int(rest) if rest else 60000
        except ValueError:
            raise DataError(f"--data {text!r}: expected mtmd_synthetic:ROWS with ROWS a whole number") from None
        return mtmd_synthetic(rows, seed=seed), "mtmd_synthetic"
    if colon and _LOADER_NAME.fullmatch(name) and not Path(text).exists():
        if name == "synthetic":
            try:
                rows = int(rest)
            except ValueError:
                raise DataError(f"--data {text!r}: expected synthetic:ROWS with ROWS a whole number") from None
            return synthetic(rows), "criteo"
        if name == "mmoe_synthetic":
            return mmoe_synthetic_argument(text, rest), name
        if name == "amazon":
            return read_amazon(_resolve(rest), negatives=negatives, seed=seed), name
        if name == "aliexpress" and _resolve(rest).is_dir():  # one folder per country: countries as domains
            from kzoo.loaders_multitask import read_aliexpress_countries

            return read_aliexpress_countries(_resolve(rest)), "aliexpress_domains"
        if name in _PATH_READERS:
            return _PATH_READERS[name](_resolve(rest)), name
        raise DataError(f"--data {text!r}: unknown loader {name!r}{_did_you_mean(name, LOADERS)}; "
                        f"use one of {', '.join(LOADERS)} (as NAME:PATH) or a {'/'.join(TABLE_SUFFIXES)} file")
    if text in LOADERS:
        form = f"{text}:CORR[:ROWS]" if text == "mmoe_synthetic" else f"{text}:PATH"
        raise DataError(f"--data {text!r}: the {text} loader needs its argument, as {form}")
    path = Path(text)
    if shard_paths(text) is not None:
        raise DataError(f"--data {text!r} is a folder or glob of shards, which streams: `kzoo train` (kzoo.prepare) "
                        "reads it chunk by chunk (docs/scaling.md, Streaming data); other commands take one file")
    if _suffix(path) not in TABLE_SUFFIXES:
        hint = _did_you_mean(text, LOADERS)
        raise DataError(f"--data {text!r}: not a loader ({', '.join(LOADERS)}){hint} "
                        f"and not a {'/'.join(TABLE_SUFFIXES)} file")
    return read_table(_resolve(text)), None


def shard_paths(text: str) -> list[Path] | None:
    """The table files a folder or a glob (`shards/*.parquet`) names, sorted; None when `text` is neither.

    A folder's own .csv/.tsv/.txt/.parquet files count (not its subfolders; hidden files and
    `_SUCCESS`-style markers are skipped). A relative path is also looked for under $KZOO_DATA_DIR.
    A folder or glob that names no table file is a DataError. Read by kzoo.streaming.
    """
    import glob

    candidates = [Path(text).expanduser()]
    env = os.environ.get("KZOO_DATA_DIR")
    if env and not candidates[0].is_absolute():
        candidates.append(Path(env) / candidates[0])
    is_glob = any(c in text for c in "*?[")
    for path in candidates:
        if path.is_dir():
            found = [p for p in path.iterdir() if p.is_file()]
        elif is_glob:
            found = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
        else:
            continue
        found = sorted(p for p in found if _suffix(p) in TABLE_SUFFIXES and not p.name.startswith((".", "_")))
        if not found and (path.is_dir() or path == candidates[-1]):
            raise DataError(f"--data {text!r}: no {'/'.join(TABLE_SUFFIXES)} files in {'the folder' if path.is_dir() else 'what the glob matches'} "
                            f"({path})")
        if found:
            return found
    return None


def _resolve(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists():
        return path
    tried = [str(path.resolve())]
    env = os.environ.get("KZOO_DATA_DIR")
    if env and not path.is_absolute():
        under = Path(env) / path
        if under.exists():
            return under
        tried.append(str(under))
    raise DataError(f"data file not found: '{text}' (looked for {' and '.join(tried)})")


# -------------------------------------------------------------------------------------------- conformance

def conform(df: pd.DataFrame, dataset: dict, *, require_label: bool = True, weights: tuple = (),
            labels_may_miss: tuple = ()) -> pd.DataFrame:
    """Check and cast `df` to a dataset schema; returns label columns, then features, in schema order.

    numeric -> float32, NaN for missing ("", NA, nan, null, none); a value that does not parse is a
    DataError naming the column, the 1-based data row (header not counted) and the value.
    categorical -> Python str, "" for missing; whole floats lose their ".0" (260.0 -> "260").
    cross -> skipped (kzoo.features computes it); its `columns` are kept as str even when the schema
    lists no feature of that name. label(s) -> float32; a missing label is a DataError.

    require_label: bool. With False, absent label columns are left out (data to predict on).
        Defaults to `True`.
    weights: column names read as non-negative float32 weights (sample weights): a missing,
        non-numeric or negative value is a DataError naming the column and row.
    labels_may_miss: label columns whose missing values stay NaN (a task masks those rows).
    """
    labels = dataset.get("label") or []
    labels = [labels] if isinstance(labels, str) else list(labels)
    features = [f for f in dataset.get("features", []) if f.get("type") != "cross"]
    names = [f["name"] for f in features]
    crossed = [c for f in dataset.get("features", []) if f.get("type") == "cross"
               for c in f.get("columns", []) if c not in names]
    crossed = list(dict.fromkeys(crossed))
    if not require_label:
        labels = [c for c in labels if c in df.columns]
    weights = [w for w in dict.fromkeys(weights) if w not in labels and w not in names]
    _check_columns(df, dataset, [*labels, *names, *crossed, *weights])

    out = {}
    for name in labels:
        out[name] = to_float(df[name], name, missing_ok=name in labels_may_miss)
    for name in weights:
        values = to_float(df[name], name, missing_ok=False, what="the sample weight")
        negative = np.flatnonzero(values < 0)
        if len(negative):
            raise DataError(f"column {name!r}, row {negative[0] + 1}: sample weight {float(values[negative[0]])!r} is "
                            f"negative ({len(negative)} row{'s' if len(negative) > 1 else ''} in all); weights must be >= 0")
        out[name] = values
    for feature in features:
        name, kind = feature["name"], feature.get("type")
        if kind == "numeric":
            out[name] = to_float(df[name], name, missing_ok=True)
        elif kind == "categorical":
            if "max_id" in feature:  # refuse a non-whole id here, naming the file's row, not a split's
                to_ids(df[name], name)
            out[name] = to_text(df[name])
        elif kind in LIST_TYPES:
            out[name] = to_sequence(df[name], name, feature.get("sep", SEP))
        else:
            raise DataError(f"feature {name!r}: unknown type {kind!r} (expected numeric, categorical, sequence, "
                            "tags or cross)")
    _check_aligned(out, [f for f in features if f.get("type") == "sequence"])
    for name in crossed:
        out[name] = to_text(df[name])
    split_column = dataset.get("split_column")
    if split_column and split_column in df.columns:
        out[split_column] = to_text(df[split_column])
    return pd.DataFrame(out, index=pd.RangeIndex(len(df)))


def _check_aligned(columns: dict, sequences: list[dict]) -> None:
    """The `sequence` features of a dataset describe one history (an item, its category, the time
    since): every row has as many items in each. A mismatch is a DataError naming both columns and
    the first row."""
    if len(sequences) < 2:
        return
    lengths = {f["name"]: item_counts(columns[f["name"]], f.get("sep", SEP)) for f in sequences}
    first = sequences[0]["name"]
    for name, n in lengths.items():
        bad = np.flatnonzero(n != lengths[first])
        if len(bad):
            r = bad[0]
            raise DataError(f"column {name!r}, row {r + 1}: {n[r]} items, but {first!r} has {lengths[first][r]}; "
                            "the sequence features of a dataset are one history and align item by item "
                            f"({len(bad)} row{'s' if len(bad) > 1 else ''} in all)")


def _check_columns(df: pd.DataFrame, dataset: dict, expected: list[str]) -> None:
    present = [str(c) for c in df.columns]
    missing = [name for name in expected if name not in df.columns]
    if not missing:
        return
    where = f"dataset {dataset['name']!r}" if dataset.get("name") else "the dataset schema"
    parts = [f"{name!r}{_did_you_mean(name, present)}" for name in missing[:5]]
    if len(missing) > 5:
        parts.append(f"and {len(missing) - 5} more")
    message = (f"{where} expects column{'s' if len(missing) > 1 else ''} {', '.join(parts)}, "
               f"not in the data; columns present: {_listing(present)}")
    if len(present) == 1 and ("," in present[0] or ";" in present[0]):
        message += ". The file seems to have another separator than the one its suffix implies"
    elif sum(_looks_like_value(c) for c in present) > len(present) / 2:
        message += ". The first row looks like data, not a header: for raw Criteo use criteo:PATH"
    elif {"hour_of_day", "day_of_week"} & set(missing) and "hour" in present:
        message += ". hour_of_day and day_of_week are derived from 'hour' by the avazu:PATH loader"
    raise DataError(message)


def _looks_like_value(name: str) -> bool:
    """A column name that is really data: the file had no header row (pandas renames repeats "1.1")."""
    if name.startswith("Unnamed: ") or re.fullmatch(r"[0-9a-f]{8}", name):
        return True
    try:
        float(re.sub(r"\.\d+$", "", name) if name.count(".") > 1 else name)
    except ValueError:
        return False
    return True


def _did_you_mean(name: str, options) -> str:
    options = [str(o) for o in options]
    same_but_case = [o for o in options if o.lower() == str(name).lower()]
    close = same_but_case or difflib.get_close_matches(str(name), options, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(columns, limit: int = 30) -> str:
    columns = [str(c) for c in columns]
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns) - limit} more)" if len(columns) > limit else "")


# ------------------------------------------------------------------------------------------------ split

SPLIT_PARTS = ("train", "validation", "test")


def split_by_column(df: pd.DataFrame, column: str):
    """(train, validation, test) as a loader assigned them in `column` (a time-ordered, per-user split),
    each keeping the data's row order; the column itself is dropped."""
    values = df[column].astype(str)
    bad = np.flatnonzero(~values.isin(SPLIT_PARTS).to_numpy())
    if len(bad):
        raise DataError(f"column {column!r}, row {bad[0] + 1}: {values.iloc[bad[0]]!r} is not one of "
                        f"{', '.join(SPLIT_PARTS)}")
    parts = tuple(df[values == p].drop(columns=[column]).reset_index(drop=True) for p in SPLIT_PARTS)
    if len(parts[0]) == 0:
        raise DataError(f"column {column!r} puts no row in 'train'")
    return parts


def split(df: pd.DataFrame, seed: int = 0, validation: float = 0.1, test: float = 0.1):
    """A seeded random split into (train, validation, test), each keeping the data's row order.

    Sizes are round(n * fraction); a positive fraction gets at least one row when n >= 3.
    """
    for what, fraction in (("validation", validation), ("test", test)):
        if not 0 <= fraction < 1:
            raise DataError(f"split: {what} must be a fraction in [0, 1), got {fraction!r}")
    if validation + test >= 1:
        raise DataError(f"split: validation + test must leave rows to train on, got {validation} + {test}")
    n = len(df)

    def size(fraction):
        k = int(round(n * fraction))
        return max(k, 1) if fraction > 0 and n >= 3 else k

    n_val, n_test = size(validation), size(test)
    if n - n_val - n_test < 1:
        raise DataError(f"split: {n} rows are too few for validation={validation}, test={test}")
    order = np.random.default_rng(seed).permutation(n)
    parts = (order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test])
    return tuple(df.iloc[np.sort(p)].reset_index(drop=True) for p in parts)
