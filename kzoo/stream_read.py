"""Reading shards chunk by chunk, and the stable split of streamed rows.

    Shards(paths)                           the data's files in sorted order, their row counts once known,
                                            so an error names a row of the whole data
    Shards.chunks(i, columns, chunk_rows)   (first row in the file, raw DataFrame) chunks of file i, read
                                            with pyarrow: Parquet by record batches of `chunk_rows`, only
                                            the columns asked for; CSV/TSV by blocks, every column as text
    Shards.located(error, i, row0)          a DataError from kzoo.data.conform on a chunk, its row made a row
                                            of the file and of the whole data, the file named
    Splitter(split, shards, seed)           part of each row (0 train, 1 validation, 2 test): by a stable
                                            hash of a key column, of the row's place in its file, or by file;
                                            and a second hash per row, the priority of the evaluation sample

The hash is FNV-1a (64 bit) over the key's UTF-8 bytes, then MurmurHash3's fmix64 finaliser: a
published, fixed function computed here in NumPy, so a row lands in the same split in every
process, on every machine and in every later version (pandas' and Python's own hashes promise
neither).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kzoo.columns import to_text
from kzoo.errors import DataError, SpecError

PARTS = ("train", "validation", "test")
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_COMPRESSION = (".gz", ".bz2", ".zip", ".xz", ".zst")
_CSV_BLOCK = 1 << 23  # bytes of CSV text per chunk
_ROW = re.compile(r"row (\d+)")


def _suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


# ------------------------------------------------------------------------------------------------ reading

class Shards:
    """The files of a streamed data set, in sorted order (the order rows are numbered in)."""

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        self.rows: list[int | None] = [self._parquet_rows(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    @staticmethod
    def _parquet_rows(path: Path) -> int | None:
        if _suffix(path) != ".parquet":
            return None
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: cannot read as Parquet: {e}") from None

    def first_row(self, i: int) -> int | None:
        """0-based row of the whole data where file i starts (None while an earlier file's count is unknown)."""
        before = self.rows[:i]
        return None if any(n is None for n in before) else int(sum(before))

    def located(self, error: DataError, i: int, row0: int) -> DataError:
        """`error` (rows 1-based within a chunk starting at row `row0` of file i) about file i."""
        start = self.first_row(i)

        def where(m):
            row = row0 + int(m.group(1))
            whole = f" (row {start + row} of the data)" if start is not None else ""
            return f"row {row} of this file{whole}"

        return DataError(f"{self.paths[i]}: {_ROW.sub(where, str(error), count=1)}")

    def chunks(self, i: int, columns: list[str], chunk_rows: int, text_columns=()):
        """(first 0-based row in the file, DataFrame) of file i, `columns` only (those the file has).
        Integer or dictionary columns among `text_columns` are cast to text by Arrow (7 -> "7"), as
        kzoo.columns.to_text would, without a Python loop per row."""
        path = self.paths[i]
        row = 0
        for batch in (self._parquet(path, columns, chunk_rows) if _suffix(path) == ".parquet"
                      else self._text(path, columns)):
            frame = _to_pandas(batch, text_columns)
            yield row, frame
            row += len(frame)
        self.rows[i] = row

    @staticmethod
    def _parquet(path: Path, columns: list[str], chunk_rows: int):
        import pyarrow.parquet as pq

        try:
            file = pq.ParquetFile(path)
            present = set(file.schema_arrow.names)
            yield from file.iter_batches(batch_size=chunk_rows, columns=[c for c in columns if c in present])
        except OSError as e:
            raise DataError(f"{path}: cannot read as Parquet: {e}") from None

    @staticmethod
    def _text(path: Path, columns: list[str]):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        suffix = _suffix(path)
        if suffix not in (".csv", ".tsv", ".txt"):
            raise DataError(f"{path}: unknown table type {suffix or '(no suffix)'!r}; expected .csv, .tsv, .txt "
                            "or .parquet")
        with pd.io.common.get_handle(path, "r", compression="infer", errors="replace") as handle:
            first = handle.handle.readline()
        if not first.strip():
            raise DataError(f"{path}: the file is empty (no header row, no data)")
        sep = {".csv": ",", ".tsv": "\t"}.get(suffix) or ("," if "\t" not in first and "," in first else "\t")
        quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
        header = next(csv.reader([first], delimiter=sep, quoting=quoting))
        wanted = [c for c in columns if c in header]
        try:
            reader = pacsv.open_csv(
                path, read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK),
                parse_options=pacsv.ParseOptions(delimiter=sep, quote_char=False if sep == "\t" else '"'),
                convert_options=pacsv.ConvertOptions(
                    include_columns=wanted, column_types={c: pa.string() for c in wanted},
                    null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True))
            yield from reader
        except pa.ArrowInvalid as e:  # a cut-off line, a stray quote
            raise DataError(f"{path}: {e}; an empty value still needs its separator") from None


def _to_pandas(batch, text_columns) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays, names = [], []
    for name, array in zip(batch.schema.names, batch.columns):
        if name in text_columns:
            if pa.types.is_dictionary(array.type):
                array = array.dictionary_decode()
            if pa.types.is_integer(array.type):
                array = pc.cast(array, pa.string())
        arrays.append(array)
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names).to_pandas()


# ------------------------------------------------------------------------------------------------ hashing

def fnv1a(texts, state=_FNV_OFFSET) -> np.ndarray:
    """uint64 FNV-1a of each string's UTF-8 bytes (vectorised over the strings' byte positions).
    `state`: where the fold starts (the offset basis; or the state after a common prefix, since
    FNV is a left fold over the bytes: fnv1a(keys, fnv1a([p])[0]) == fnv1a([p + k for k in keys]))."""
    import pyarrow as pa

    array = pa.array(texts, type=pa.large_string())
    n = len(array)
    h = np.full(n, state, dtype=np.uint64)
    if n == 0:
        return h
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:array.offset + n + 1]
    data = array.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    for j in range(int(lengths.max(initial=0))):
        active = np.flatnonzero(lengths > j)
        h[active] = (h[active] ^ data[starts[active] + j].astype(np.uint64)) * _FNV_PRIME
    return h


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: every input bit moves every output bit."""
    h = np.asarray(h, dtype=np.uint64).copy()
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def unit(h: np.ndarray) -> np.ndarray:
    """A hash as a float64 in [0, 1) (its top 53 bits)."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


class Splitter:
    """Which part each streamed row belongs to, from the spec's `train.split`:

        {"by": "random"} (the default)  a hash of (seed, file name, row in the file): a row's place
                                        decides, so re-reading the same files gives the same split
        {"by": "hash", "key": COLUMN}   a hash of (seed, the key's text): every row of a user (a key)
                                        falls in one part; a row without a key is a DataError
        {"by": "file", "validation_files": [...], "test_files": [...]}   whole files, by name or glob

    `validation` / `test` are the fractions of rows (or keys) sent there (defaults 0.1 / 0.1).
    """

    def __init__(self, split: dict, shards: Shards, seed: int = 0):
        self.by = split.get("by", "random")
        self.key = split.get("key")
        self.validation, self.test = float(split.get("validation", 0.1)), float(split.get("test", 0.1))
        self.seed_text = f"kzoo-split\x1f{int(split.get('seed', seed))}\x1f"
        self.file_part = np.zeros(len(shards), dtype=np.int8)
        if self.by == "file":
            names = [p.name for p in shards.paths]
            for part, key in ((1, "validation_files"), (2, "test_files")):
                for j, pattern in enumerate(split.get(key, [])):
                    hit = [i for i, p in enumerate(shards.paths) if p.match(pattern) or p.name == pattern]
                    if not hit:
                        raise SpecError([(f"train.split.{key}[{j}]", f"{pattern!r} names none of the data's "
                                          f"{len(names)} files ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")])
                    self.file_part[hit] = part
            if not (self.file_part == 0).any():
                raise SpecError([("train.split", "every file is a validation or test file; leave some to train on")])
        self._seed_state = fnv1a([self.seed_text])[0]
        self._file_state = [fnv1a([p.name], self._seed_state)[0] for p in shards.paths]

    @property
    def columns(self) -> list[str]:
        """Raw columns the split reads besides the dataset's."""
        return [self.key] if self.by == "hash" else []

    def describe(self) -> dict:
        out = {"by": self.by}
        if self.by == "hash":
            out["key"] = self.key
        if self.by != "file":
            out.update(validation=self.validation, test=self.test)
        return out

    def hashes(self, raw: pd.DataFrame, shards: Shards, i: int, row0: int) -> np.ndarray:
        """uint64 hash per row of a raw chunk of file i that starts at row `row0` of the file."""
        if self.by == "hash":
            if self.key not in raw.columns:
                raise DataError(f"{shards.paths[i]}: train.split.key {self.key!r} is not a column of this file; "
                                f"columns present: {', '.join(map(str, raw.columns))}")
            keys = to_text(raw[self.key])
            empty = np.flatnonzero(keys == "")
            if len(empty):
                raise shards.located(DataError(
                    f"column {self.key!r}, row {empty[0] + 1}: the split key is missing ({len(empty)} row"
                    f"{'s' if len(empty) > 1 else ''} in this chunk); a row without a key has no part to go to: "
                    "fill it, drop the row, or split by row (train.split.by \"random\")"), i, row0)
            return fmix64(fnv1a(keys, self._seed_state))
        rows = np.arange(row0, row0 + len(raw), dtype=np.uint64)
        return fmix64(self._file_state[i] ^ fmix64(rows + np.uint64(0x9E3779B97F4A7C15)))

    def parts(self, h: np.ndarray, i: int) -> np.ndarray:
        """int8 part per row (0 train, 1 validation, 2 test) from its hash, for a row of file i."""
        if self.by == "file":
            return np.full(len(h), self.file_part[i], dtype=np.int8)
        u = unit(h)
        return np.where(u < self.validation, 1, np.where(u < self.validation + self.test, 2, 0)).astype(np.int8)


def priority(h: np.ndarray) -> np.ndarray:
    """A second hash of each row, independent of its part: the evaluation sample keeps the lowest."""
    return fmix64(h ^ np.uint64(0x5BD1E9955BD1E995))
