"""Loaders for sequence CTR models (DIN, DIEN, BST): rows of (user, history, target, label).

    read_movielens(folder, holdout=5, max_history=50)
                              MovieLens 100K (u.data, u.user, u.item) or 1M/10M (ratings.dat,
                              users.dat, movies.dat); label = rating >= 4, history = earlier likes
    read_amazon(path, negatives=1, seed=0, max_history=50)
                              Amazon review sequences (SASRec's Video.txt, S3-Rec's Beauty.txt, ...);
                              every item a positive, `negatives` sampled negatives per positive

A history is one text column, the items joined by "|" oldest first and cut to the most recent
`max_history`, "" when empty; its side sequences (`hist_item_cat`, `hist_gap`) have exactly as many
"|"-separated tokens in every row. Categorical columns are Python str (object dtype), `label` is
float32 1/0, `split` is "train", "validation" or "test" (leave-last-out per user, in time order).
No history ever holds an event that is not strictly earlier than its row's. kzoo.data registers
them as `--data movielens:FOLDER` and `--data amazon:FILE`. This module must not import kzoo.data
(kzoo.data imports it).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from kzoo.errors import DataError

SEP = "|"  # the separator of a history's items, as kzoo.columns.SEP
ML_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
             "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
             "War", "Western"]  # u.genre, in flag order
ML_AGES = [(18, "1"), (25, "18"), (35, "25"), (45, "35"), (50, "45"), (56, "50")]  # (below, 1M code); else "56"
MAX_GAP = 20
_REDRAWS = 10  # vectorised rejection rounds; the few rows still rejected get an exact draw
_UNIT = "\x1f"  # stands in for a multi-character separator ("::") so pandas' C parser can split on it


# -------------------------------------------------------------------------------------------- MovieLens

NO_CATEGORY = "unknown"  # an item without a category: a real token, so side sequences stay aligned

def read_movielens(folder, holdout: int = 5, max_history: int = 50) -> pd.DataFrame:
    """MovieLens ratings as rows for sequence CTR models: one row per rating, label rating >= 4.

    The layout is told by the files in `folder`: 100K (`u.data`, `u.user`, `u.item`) or 1M/10M
    (`ratings.dat`, `movies.dat` and, 1M only, `users.dat`; without it the user columns are "").

    Columns: `label` (float32, rating >= 4), `user_id`, `gender`, `age` (the 1M codes "1", "18",
    "25", "35", "45", "50", "56"; 100K ages are bucketed to them), `occupation`, `zip` (its first
    character), `item_id`, `item_cat` (the first genre, "unknown" if none), `item_genres` (all
    genres joined by "|"), `year` (release year, "" if unknown), `hist_item_id` (the items the user
    liked, rating >= 4, at a timestamp strictly earlier than the row's: ratings at the same second
    are never in each other's history), `hist_item_cat` (their item_cat), `hist_gap` (per history
    item min(floor(log2(1 + hours before this row)), 20)), `timestamp` (int64) and `split`.

    Split per user in time order (timestamp, then item id): the last `holdout` ratings are
    "test", the `holdout` before them "validation", the rest "train"; a user with fewer than
    2 * holdout + 1 ratings has all of them in "train". Rows come by user, then time. A rated
    item or user missing from the side files gets "" side columns (item_cat "unknown").

    Args:
        folder: str or Path. The MovieLens folder (ml-100k, ml-1m, ml-10M100K).
        holdout: int. Ratings per user in each of test and validation. Defaults to `5`.
        max_history: int. The most recent liked items kept in a history. Defaults to `50`.
    """
    folder = Path(folder)
    _check_args(folder, holdout=holdout, max_history=max_history)
    if not folder.is_dir():
        raise DataError(f"MovieLens: '{folder}' is not a folder; expected one holding u.data, u.user and u.item "
                        "(100K) or ratings.dat and movies.dat (1M/10M)")
    if (folder / "u.data").is_file():
        ratings, users, items = _movielens_100k(folder)
    elif (folder / "ratings.dat").is_file():
        ratings, users, items = _movielens_1m(folder)
    else:
        raise DataError(f"MovieLens: '{folder}' holds neither u.data (the 100K layout, with u.user and u.item) nor "
                        "ratings.dat (the 1M/10M layout, with movies.dat and users.dat)")
    user, item, rating, time = ratings
    order = np.lexsort((item, time, user))  # by user, then time, then item; lexsort is stable
    user, item, rating, time = user[order], item[order], rating[order], time[order]
    liked = rating >= 4
    start, count = _runs(user)
    position = np.arange(len(user)) - np.repeat(start, count)
    size = np.repeat(count, count)
    split = _split(position, size, holdout, min_size=2 * holdout + 1)

    # History of row r: the user's likes with time < t_r. Rows and likes are both sorted by
    # (user, time), so one searchsorted on a (user, time) key finds where each row's likes end.
    span = int(time.max() - time.min()) + 1
    user_code = np.repeat(np.arange(len(start)), count)
    key = user_code * span + (time - time.min())
    liked_key, liked_time = key[liked], time[liked]
    stop = np.searchsorted(liked_key, key, side="left")
    first = np.searchsorted(liked_key, user_code * span, side="left")
    begin = np.maximum(first, stop - max_history)

    item_text = _text(item)
    cat = items["item_cat"].reindex(item, fill_value="unknown").to_numpy(dtype=object)
    liked_ids, liked_cats = item_text[liked].tolist(), cat[liked].tolist()
    frame = {
        "label": liked.astype(np.float32),
        "user_id": _text(user),
    }
    user_side = users.reindex(user, fill_value="")
    for name in ("gender", "age", "occupation", "zip"):
        frame[name] = user_side[name].to_numpy(dtype=object)
    frame["item_id"] = item_text
    frame["item_cat"] = cat
    item_side = items.reindex(item, fill_value="")
    frame["item_genres"] = item_side["item_genres"].to_numpy(dtype=object)
    frame["year"] = item_side["year"].to_numpy(dtype=object)
    frame["hist_item_id"] = _join_ranges(liked_ids, begin, stop)
    frame["hist_item_cat"] = _join_ranges(liked_cats, begin, stop)
    frame["hist_gap"] = _gaps(time, liked_time, begin, stop)
    frame["timestamp"] = time.astype(np.int64)
    frame["split"] = split
    return _frame(frame)


def _movielens_100k(folder: Path):
    path = folder / "u.data"
    table = _read_table(path, "\t", ["user", "item", "rating", "timestamp"], integer=("user", "item", "timestamp"),
                        number=("rating",))
    ratings = (table["user"], table["item"], table["rating"], table["timestamp"])
    table = _read_table(folder / "u.user", "|", ["user", "age", "gender", "occupation", "zip"],
                        integer=("user", "age"))
    users = _by_id(folder / "u.user", table["user"], {
        "gender": table["gender"], "age": _age_code(table["age"]), "occupation": table["occupation"],
        "zip": _first_char(table["zip"])})
    flags = [f"g{i}" for i in range(len(ML_GENRES))]
    table = _read_table(folder / "u.item", "|", ["item", "title", "date", "video_date", "url", *flags],
                        integer=("item", *flags), encoding="latin-1")
    marked = np.stack([table[f] != 0 for f in flags], axis=1)
    genres = [[g for g, on in zip(ML_GENRES, row) if on] for row in marked.tolist()]
    years = [_year(title, date) for title, date in zip(table["title"], table["date"])]
    return ratings, users, _items(folder / "u.item", table["item"], genres, years)


def _movielens_1m(folder: Path):
    movies = folder / "movies.dat"
    if not movies.is_file():
        raise DataError(f"MovieLens: '{folder}' has ratings.dat but no movies.dat; the 1M/10M layout needs both "
                        "(and users.dat for 1M)")
    table = _read_table(folder / "ratings.dat", "::", ["user", "item", "rating", "timestamp"],
                        integer=("user", "item", "timestamp"), number=("rating",))  # 10M: half stars
    ratings = (table["user"], table["item"], table["rating"], table["timestamp"])
    if (folder / "users.dat").is_file():
        table = _read_table(folder / "users.dat", "::", ["user", "gender", "age", "occupation", "zip"],
                            integer=("user",))
        users = _by_id(folder / "users.dat", table["user"], {
            "gender": table["gender"], "age": table["age"], "occupation": table["occupation"],
            "zip": _first_char(table["zip"])})
    else:  # 10M has no user file
        users = pd.DataFrame({n: pd.Series(dtype=object) for n in ("gender", "age", "occupation", "zip")},
                             index=pd.Index([], dtype=np.int64))
    table = _read_table(movies, "::", ["item", "title", "genres"], integer=("item",), encoding="latin-1")
    genres = [[g for g in text.split("|") if g and g != "(no genres listed)"] for text in table["genres"]]
    years = [_year(title, "") for title in table["title"]]
    return ratings, users, _items(movies, table["item"], genres, years)


def _items(path: Path, ids: np.ndarray, genres: list, years: list) -> pd.DataFrame:
    return _by_id(path, ids, {"item_cat": [g[0] if g else "unknown" for g in genres],
                              "item_genres": [SEP.join(g) for g in genres], "year": years})


def _by_id(path: Path, ids: np.ndarray, columns: dict) -> pd.DataFrame:
    """A side table indexed by id; an id on two lines is a DataError (which line would win?)."""
    twice = pd.Index(ids).duplicated()
    if twice.any():
        raise DataError(f"{path}: id {ids[np.flatnonzero(twice)[0]]} is on more than one line; each user or "
                        "item needs exactly one")
    return pd.DataFrame(columns, index=ids, dtype=object)


def _text(ids: np.ndarray) -> np.ndarray:
    """Integer ids as Python str, each distinct id converted once."""
    unique, code = np.unique(ids, return_inverse=True)
    return np.array([str(i) for i in unique.tolist()], dtype=object)[code]


def _age_code(ages: np.ndarray) -> np.ndarray:
    codes = np.full(len(ages), "56", dtype=object)
    for below, code in reversed(ML_AGES):
        codes[ages < below] = code
    return codes


def _first_char(values: np.ndarray) -> np.ndarray:
    return np.array([v.strip()[:1] for v in values], dtype=object)


def _year(title: str, date: str) -> str:
    """The last "(YYYY)" of the title ("... (1995) (V)"), else the year that ends the release date."""
    found = re.findall(r"\((\d{4})\)", title)
    if found:
        return found[-1]
    found = re.search(r"(\d{4})\s*$", date)
    return found.group(1) if found else ""


def _gaps(time: np.ndarray, liked_time: np.ndarray, begin: np.ndarray, stop: np.ndarray,
          chunk: int = 200_000) -> np.ndarray:
    """The hist_gap strings, `chunk` rows at a time so 1M/10M histories never sit in memory whole.

    floor(log2(1 + s / 3600)) == floor(log2(1 + s // 3600)) for whole seconds s (2**g <= x iff
    2**g <= floor(x)), and frexp gives floor(log2) of an integer exactly: no float rounding.
    """
    names = np.array([str(g) for g in range(MAX_GAP + 1)], dtype=object)
    out = np.empty(len(time), dtype=object)
    for lo in range(0, len(time), chunk):
        b, e, t = begin[lo:lo + chunk], stop[lo:lo + chunk], time[lo:lo + chunk]
        length = e - b
        offset = np.repeat(np.cumsum(length) - length, length)
        flat = np.repeat(b, length) + np.arange(length.sum()) - offset
        seconds = np.repeat(t, length) - liked_time[flat]
        _, exponent = np.frexp((1 + seconds // 3600).astype(np.float64))
        tokens = names[np.minimum(exponent - 1, MAX_GAP)].tolist()
        ends = np.cumsum(length)
        out[lo:lo + chunk] = _join_ranges(tokens, ends - length, ends)
    return out


# ----------------------------------------------------------------------------------------------- Amazon

def read_amazon(path, negatives: int = 1, seed: int = 0, max_history: int = 50) -> pd.DataFrame:
    """Amazon review sequences as rows for sequence CTR models, with sampled negatives.

    Two layouts, told apart by the file: a line per interaction `user item` in time order
    (SASRec's Video.txt: every line two tokens, users repeating) or a line per user
    `user item item ...` in time order (S3-Rec's Beauty.txt, Sports_and_Outdoors.txt, ...).
    When `<stem>_item2attributes.json` lies beside the file ({"item": [attribute ids]}), an
    item's `item_cat` is its first attribute id ("unknown" for an item without one); without that
    file item_cat is "unknown" everywhere. (Never "": a side sequence keeps one item per history item,
    and the preprocessing drops blank items.)

    For a user with items i_0..i_{n-1}: a positive row (label 1) per position k, target i_k,
    history i_0..i_{k-1} cut to the last `max_history` ("" at k = 0); after it, `negatives`
    rows (label 0) with the same user and history and a target drawn uniformly from the file's
    items (numpy default_rng(seed)), never the positive target nor an item the user had before
    position k. Columns: `label` (float32), `user_id`, `item_id`, `item_cat`, `hist_item_id`,
    `hist_item_cat`, `position` (k, int64), `split`: the user's last position is "test" (with
    its negatives), the one before "validation", the rest "train"; a user with fewer than 3
    items has all rows in "train". Rows come by user (file order), then position. The same seed
    gives the same frame.

    Args:
        path: str or Path. The sequence file.
        negatives: int. Negative rows per positive, >= 0. Defaults to `1`.
        seed: int. Seed of the negative sampler. Defaults to `0`.
        max_history: int. The most recent items kept in a history. Defaults to `50`.
    """
    path = Path(path)
    _check_args(path, negatives=negatives, max_history=max_history)
    user, item = _read_sequences(path)
    item_ids, item_code = np.unique(item, return_inverse=True)
    item_ids = item_ids.astype(object)
    n_items = len(item_ids)
    cat_of = _attributes(path, item_ids)
    start, count = _runs(user)
    position = np.arange(len(user)) - np.repeat(start, count)
    first = np.repeat(start, count)
    begin = np.maximum(first, np.arange(len(user)) - max_history)
    history = _join_ranges(item.tolist(), begin, np.arange(len(user)))
    history_cat = _join_ranges(cat_of[item_code].tolist(), begin, np.arange(len(user)))
    split = _split(position, np.repeat(count, count), 1, min_size=3)

    per = 1 + negatives
    target = np.empty((len(user), per), dtype=np.int64)
    target[:, 0] = item_code
    if negatives:
        target[:, 1:] = _negatives(path, user, item_code, position, n_items, negatives, seed)
    rows = np.repeat(np.arange(len(user)), per)
    target = target.ravel()
    label = np.zeros((len(user), per), dtype=np.float32)
    label[:, 0] = 1.0
    return _frame({
        "label": label.ravel(),
        "user_id": user[rows],
        "item_id": item_ids[target],
        "item_cat": cat_of[target],
        "hist_item_id": history[rows],
        "hist_item_cat": history_cat[rows],
        "position": position[rows].astype(np.int64),
        "split": split[rows],
    })


def _read_sequences(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) per interaction, grouped by user in order of first appearance, file order within."""
    lines = _read_text(path, "Amazon sequences: a line per interaction `user item` or per user "
                             "`user item item ...`").split("\n")
    tokens = [line.split() for line in lines]
    numbered = [(n, t) for n, t in enumerate(tokens, 1) if t]
    if all(len(t) == 2 for _, t in numbered) and len({t[0] for _, t in numbered}) < len(numbered):
        user = np.array([t[0] for _, t in numbered], dtype=object)
        item = np.array([t[1] for _, t in numbered], dtype=object)
        codes, _ = pd.factorize(pd.Series(user, dtype=object), sort=False)
        order = np.argsort(codes, kind="stable")
        return user[order], item[order]
    seen = {}
    for number, t in numbered:
        if len(t) < 2:
            raise DataError(f"{path}: line {number}: expected `user item item ...` (a line per user) or "
                            f"`user item` (a line per interaction), found {' '.join(t)!r}")
        if t[0] in seen:
            raise DataError(f"{path}: line {number}: user {t[0]!r} already has line {seen[t[0]]}; in the "
                            "line-per-user layout each user has one line (a line-per-interaction file has "
                            "exactly two tokens on every line)")
        seen[t[0]] = number
    user = np.array([t[0] for _, t in numbered for _ in range(len(t) - 1)], dtype=object)
    item = np.array([i for _, t in numbered for i in t[1:]], dtype=object)
    return user, item


def _attributes(path: Path, item_ids: np.ndarray) -> np.ndarray:
    """Each item's first attribute id as text, from <stem>_item2attributes.json beside `path`."""
    source = path.with_name(f"{path.stem}_item2attributes.json")
    if not source.is_file():
        return np.full(len(item_ids), NO_CATEGORY, dtype=object)
    try:
        mapping = json.loads(source.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{source}: not readable as JSON ({e})") from None
    if not isinstance(mapping, dict):
        raise DataError(f"{source}: expected a JSON object {{\"item\": [attribute ids]}}, "
                        f"found a {type(mapping).__name__}")
    first = {}
    for key, value in mapping.items():
        if not isinstance(value, list):
            raise DataError(f"{source}: item {key!r}: expected a list of attribute ids, found {value!r}")
        first[str(key)] = str(value[0]) if value else NO_CATEGORY
    return np.array([first.get(i, NO_CATEGORY) for i in item_ids], dtype=object)


def _negatives(path, user, item_code, position, n_items, negatives, seed) -> np.ndarray:
    """`negatives` item codes per interaction, uniform over the items that are neither the target
    nor in the user's items before it: vectorised rejection, then an exact draw for what is left."""
    rng = np.random.default_rng(seed)
    _, count = _runs(user)
    user_code = np.repeat(np.arange(len(count)), count)
    # the position where each (user, item) first occurs: a candidate is in row k's history iff < k
    key = user_code * n_items + item_code
    seen_key, where = np.unique(key, return_index=True)
    seen_at = position[where]

    def rejected(candidate, rows):
        k = user_code[rows, None] * n_items + candidate
        at = np.minimum(np.searchsorted(seen_key, k), len(seen_key) - 1)
        before = (seen_key[at] == k) & (seen_at[at] < position[rows, None])
        return before | (candidate == item_code[rows, None])

    out = rng.integers(0, n_items, size=(len(user), negatives))
    bad = rejected(out, np.arange(len(user)))
    for _ in range(_REDRAWS):
        if not bad.any():
            return out
        rows, cols = np.nonzero(bad)
        out[rows, cols] = rng.integers(0, n_items, size=len(rows))
        bad[rows, cols] = rejected(out[rows, cols][:, None], rows)[:, 0]
    for r, c in zip(*np.nonzero(bad)):  # users who have seen nearly every item
        allowed = np.setdiff1d(np.arange(n_items), item_code[r - position[r]:r + 1])
        if not len(allowed):
            raise DataError(f"{path}: user {user[r]!r}, position {position[r]}: no item is left to draw a "
                            f"negative from (the file has {n_items} items, all seen by then); use negatives=0")
        out[r, c] = allowed[rng.integers(len(allowed))]
    return out


# ---------------------------------------------------------------------------------------------- shared

def _check_args(where, **values) -> None:
    for name, value in values.items():
        low = 1 if name == "max_history" else 0
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise DataError(f"{where}: {name} must be a whole number >= {low}, got {value!r}")


def _runs(user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each run of equal values in `user` (grouped already)."""
    if not len(user):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(user[1:] != user[:-1]) + 1
    start = np.concatenate([[0], change])
    return start, np.diff(np.concatenate([start, [len(user)]]))


def _split(position: np.ndarray, size: np.ndarray, holdout: int, min_size: int) -> np.ndarray:
    split = np.full(len(position), "train", dtype=object)
    held = size >= min_size
    split[held & (position >= size - 2 * holdout)] = "validation"
    split[held & (position >= size - holdout)] = "test"
    return split


def _join_ranges(tokens: list, begin: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """"|".join(tokens[b:e]) for each row: list slices, so a history costs its (capped) length."""
    out = np.empty(len(begin), dtype=object)
    out[:] = [SEP.join(tokens[b:e]) for b, e in zip(begin.tolist(), stop.tolist())]
    return out


def _frame(columns: dict) -> pd.DataFrame:
    """A frame whose text columns stay object dtype (pandas 3 would infer its `str` dtype)."""
    return pd.DataFrame({name: pd.Series(values, dtype=object if values.dtype == object else None)
                         for name, values in columns.items()})


def _read_text(path: Path, expected: str, encoding: str = "utf-8") -> str:
    try:
        text = path.read_bytes().decode(encoding)
    except FileNotFoundError:
        raise DataError(f"data file not found: '{path}' (expected {expected})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: {e}") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty; expected {expected}")
    return text


def _read_table(path: Path, sep: str, fields: list, integer=(), number=(), encoding="utf-8") -> dict:
    """The `sep`-separated `fields` of `path` as arrays (text; int64 for `integer`, float64 for
    `number`). Blank lines are skipped. pandas' C parser reads; when anything is off, a line-by-line
    scan names the first bad line (1-based)."""
    layout = sep.join(fields)
    text = _read_text(path, f"`{layout}` lines", encoding)
    one = _UNIT if len(sep) > 1 else sep
    data = text.replace(sep, one) if len(sep) > 1 else text
    try:
        table = pd.read_csv(io.StringIO(data), sep=one, header=None, names=list(range(len(fields))),
                            dtype=object, na_filter=False, quoting=csv.QUOTE_NONE, engine="c")
        # pandas fails a line with too many fields but pads one with too few; with none too
        # many, the separator count says whether any line is short
        short = data.count(one) != (len(fields) - 1) * len(table)
    except (pd.errors.ParserError, ValueError):
        short = True
    out = {}
    for i, name in enumerate([] if short else fields):
        column = table[i].to_numpy(dtype=object)
        try:
            if name in integer:
                column = column.astype(np.int64)
            elif name in number:
                column = column.astype(np.float64)
                if not np.isfinite(column).all():
                    raise ValueError(name)
        except (ValueError, OverflowError):
            short = True
            break
        out[name] = column
    if short:
        _scan(path, text, sep, fields, integer, number)
        raise DataError(f"{path}: not readable as `{layout}` lines")  # the scan found nothing to name
    return out


def _scan(path, text, sep, fields, integer, number) -> None:
    """Raise a DataError naming the first line of `text` that is not `fields` joined by `sep`."""
    shown = "tab" if sep == "\t" else repr(sep)
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line:  # pandas skips empty lines too
            continue
        values = line.split(sep)
        if len(values) != len(fields):
            raise DataError(f"{path}: line {n}: expected {len(fields)} {shown}-separated fields "
                            f"({sep.join(fields)}), found {len(values)}: {line[:120]!r}")
        for name, value in zip(fields, values):
            if name in integer and not re.fullmatch(r"\s*[-+]?\d+\s*", value):
                raise DataError(f"{path}: line {n}: field {name!r} must be a whole number, found {value!r}")
            if name in number and not re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
                raise DataError(f"{path}: line {n}: field {name!r} must be a number, found {value!r}")
