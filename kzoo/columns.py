"""Raw column conversion: what training feeds the preprocessing and what a client sends.

One small module that kzoo.data (reading tables), kzoo.features (the tf.data input) and
kzoo.serving.requests (TF Serving requests) all use, so a served row and a training row with
the same raw values become the same tensors:

    to_float(column, name, missing_ok)   float32, NaN for missing ("", NA, nan, null, none)
    to_text(column)                      str, "" for missing, whole floats without ".0"
    to_ids(column, name)                 int64 ids read from their text, -1 for missing
    to_sequence(column, name, sep)       str, a list's items joined by `sep` ("" for an empty or missing list)
    item_counts(texts, sep)              items per joined sequence string (blank items not counted)
    raw_column(column, dtype, name)      one of the above by dtype name (float32, int64, string, ...)

Bad values raise DataError naming the column and the 1-based row.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from kzoo.errors import DataError

# Only these spellings mean "missing" in a numeric column. Categorical text is kept as written:
# "NA" or "null" can be real category values (Namibia), so a table's only missing marker is "".
_NUMERIC_NA = frozenset({"", "na", "nan", "n/a", "null", "none"})
SEP = "|"  # the default separator of a sequence's items in its raw string form
_NP = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64, "string": object}
DTYPES = tuple(_NP)


def to_float(column: pd.Series, name: str, missing_ok: bool, what: str = "the label") -> np.ndarray:
    """float32 values of `column`, NaN for missing; with `missing_ok` False a missing value is a
    DataError saying `what` is missing (the label, the sample weight)."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        text = None
    else:
        raw = column.astype(object)
        text = raw.map(lambda v: v.strip() if isinstance(v, str) else v)
        is_na = text.isna() | text.map(lambda v: isinstance(v, str) and v.lower() in _NUMERIC_NA)
        values = pd.to_numeric(text.where(~is_na, np.nan), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(values) & ~is_na.to_numpy())
        if len(bad):
            raise DataError(f"column {name!r}, row {bad[0] + 1}: {raw.iloc[bad[0]]!r} is not a number")
    # ±inf (and values past float32's range, which become inf when cast) would poison the feature's
    # mean and every loss after it: refused, like text.
    with np.errstate(over="ignore"):
        infinite = np.flatnonzero(~np.isfinite(values.astype(np.float32)) & ~np.isnan(values))
    if len(infinite):
        value = column.iloc[infinite[0]]
        value = value if isinstance(value, str) else float(value)
        raise DataError(f"column {name!r}, row {infinite[0] + 1}: {value!r} is not a finite float32 number "
                        f"({len(infinite)} row{'s' if len(infinite) > 1 else ''} in all); leave it empty for a missing value")
    if not missing_ok:
        gone = np.flatnonzero(np.isnan(values))
        if len(gone):
            raise DataError(f"column {name!r}, row {gone[0] + 1}: {what} is missing "
                            f"({len(gone)} row{'s' if len(gone) > 1 else ''} in all)")
    return values.astype(np.float32)


def to_text(column: pd.Series) -> np.ndarray:
    if pd.api.types.is_string_dtype(column) and not pd.api.types.is_object_dtype(column):
        return column.astype(object).where(column.notna(), "").to_numpy(dtype=object)
    return np.array([_category(v) for v in column.astype(object)], dtype=object)


def _category(value) -> str:
    if isinstance(value, str):
        return str(value)
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple, np.ndarray)):  # a list sent for a sequence input
        return SEP.join(_category(v) for v in value)
    return str(value)


def item_counts(texts, sep: str = SEP) -> np.ndarray:
    """Items per joined sequence string, counted as the preprocessing counts them: blank items
    (between two separators, or an empty string) are not items."""
    return np.array([sum(1 for x in str(v).split(sep) if x.strip()) for v in texts], dtype=np.int64)


def to_sequence(column: pd.Series, name: str, sep: str = SEP) -> np.ndarray:
    """A sequence or tags column as str: the items joined by `sep`, oldest first.

    A cell may be a list, tuple or NumPy array (a pandas column of lists, Parquet list<...>), a
    string already joined by `sep`, or a JSON list written as text ("[12, 45, 3]", as pandas
    writes lists to CSV); missing and empty lists give "". Text that opens a JSON list but does not
    parse is a DataError naming the column and the 1-based row.
    """
    out = np.empty(len(column), dtype=object)
    for i, value in enumerate(column.astype(object)):
        if isinstance(value, (list, tuple, np.ndarray)):
            out[i] = sep.join(_category(v) for v in value)
        elif isinstance(value, str) and value.lstrip().startswith("["):
            try:
                items = json.loads(value.replace("'", '"'))
            except json.JSONDecodeError:
                raise DataError(f"column {name!r}, row {i + 1}: {value[:60]!r} opens a list but is not one; "
                                f"write the items as [1, 2, 3] or joined by {sep!r}") from None
            if not isinstance(items, list):
                raise DataError(f"column {name!r}, row {i + 1}: {value[:60]!r} is not a list")
            out[i] = sep.join(_category(v) for v in items)
        else:
            out[i] = _category(value)
    return out


def to_ids(column: pd.Series, name: str, dtype: str = "int64") -> np.ndarray:
    """Integer ids read from their text, so 7, 7.0 and "7" are id 7; missing -> -1."""
    text = pd.Series(to_text(column), dtype=object)
    numbers = pd.to_numeric(text.where(text != "", np.nan), errors="coerce")
    bad = np.flatnonzero((numbers.isna() & (text != "")).to_numpy() |
                         (numbers.notna() & (numbers != numbers.round())).to_numpy())
    if len(bad):
        raise DataError(f"column {name!r}, row {bad[0] + 1}: {column.iloc[bad[0]]!r} is not a whole number "
                        f"({dtype} id)")
    return numbers.fillna(-1).to_numpy().astype(_NP[dtype])


def _utf8(value, name: str, i: int):
    """Bytes as the text they encode; bytes that are not UTF-8 are a DataError naming the row."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"column {name!r}, row {i + 1}: {value[:40]!r} is not UTF-8 text") from None


def raw_column(column, dtype: str, name: str) -> np.ndarray:
    """`column` (a Series or array-like) as the NumPy array a `dtype` input takes."""
    if dtype not in _NP:
        raise DataError(f"column {name!r}: dtype {dtype} is not one kzoo reads ({', '.join(DTYPES)})")
    if isinstance(column, (list, tuple)) and any(isinstance(v, (list, tuple, np.ndarray, bytes)) for v in column):
        array = np.empty(len(column), dtype=object)  # a list per row (a history), bytes: kept as they are
        array[:] = list(column)
    else:
        array = np.asarray(column).reshape(-1)
    if array.dtype.kind in ("iub" if dtype.startswith("int") else "fiub" if dtype != "string" else "U"):
        return array.astype(_NP[dtype])  # nothing is missing in these: a plain cast
    if dtype == "string" and array.dtype == object and pd.api.types.infer_dtype(array, skipna=False) == "string":
        return array  # already str (a conformed column): nothing to convert
    values = column if isinstance(column, pd.Series) else pd.Series(array.tolist(), dtype=object)
    values = values.reset_index(drop=True)
    if dtype == "string":
        return to_text(pd.Series([_utf8(v, name, i) for i, v in enumerate(values)], dtype=object))
    if dtype.startswith("float"):
        return to_float(values, name, missing_ok=True).astype(_NP[dtype])
    return to_ids(values, name, dtype)
