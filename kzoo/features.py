"""Features: statistics learned on the training split, and the raw -> model-input stage.

The stage is TensorFlow code on purpose: it runs inside `tf.data` for training on every
backend (JAX, TF, torch) and is composed into the SavedModel's serving function at export,
so TF Serving clients send the raw columns the training data has.

Statistics are plain JSON (`preprocessing.json` in the run dir): vocabularies, means, stds.
No pickles; the stage is rebuilt from that JSON and the spec.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kzoo.columns import SEP, item_counts, raw_column, to_sequence

ID_TYPES = ("categorical", "sequence", "tags")  # features whose values become ids (one, or a list)
LIST_TYPES = ("sequence", "tags")  # a variable-length list of ids per row
PAD = -1  # the id of a padded position of a sequence/tags input (blocks mask it out)

OOV = 1  # one out-of-vocabulary id (id 0) per vocabulary lookup
# A cross's id is keras.layers.Hashing(num_bins=hash_buckets) of its columns' values as strings
# (ints in decimal) joined with this separator, in the order of `columns`.
CROSS_SEPARATOR = "\x1f"


def _log(x):
    return np.sign(x) * np.log1p(np.abs(x))


def fit_stats(features: list[dict], train: pd.DataFrame) -> dict:
    """Learn what the preprocessing needs from the training split only."""
    stats: dict[str, dict] = {}
    shared_vocab: dict[str, list[str]] = {}
    for f in features:
        if f["type"] == "numeric":
            x = train[f["name"]].astype("float64").fillna(f.get("fill", 0.0)).to_numpy()
            if f.get("norm") in ("log", "log_standard"):
                x = _log(x)
            std = float(x.std()) if len(x) else 1.0
            stats[f["name"]] = {"mean": float(x.mean()) if len(x) else 0.0, "std": std if std > 1e-12 else 1.0}
        elif f["type"] in ID_TYPES and ("vocab" in f or not any(k in f for k in ("hash_buckets", "max_id"))):
            table = f.get("embedding")
            if table:  # features sharing a table share one vocabulary, learned on all their columns
                shared_vocab.setdefault(table, [])
                shared_vocab[table].append(f["name"])
            else:
                stats[f["name"]] = {"vocab": _vocabulary(_values(train, f), f.get("vocab", {}))}
    by_name = {f["name"]: f for f in features}
    for table, names in shared_vocab.items():
        spec = by_name[names[0]].get("vocab", {})
        vocab = _vocabulary(pd.concat([_values(train, by_name[n]) for n in names], ignore_index=True), spec)
        for n in names:
            stats[n] = {"vocab": vocab}
    return stats


def check_declared(features: list[dict], frame: pd.DataFrame) -> None:
    """A DataError for the first row of the training data whose value of a feature with a declared
    vocabulary (`vocab.values`, e.g. the domains an MTMD tower has experts for) is not declared."""
    from kzoo.errors import DataError

    for f in features:
        declared = f.get("vocab", {}).get("values")
        if not declared or f["name"] not in frame.columns:
            continue
        values = frame[f["name"]].astype(str)
        bad = np.flatnonzero(~values.isin([str(v) for v in declared]).to_numpy())
        if len(bad):
            r = bad[0]
            raise DataError(f"column {f['name']!r}, row {r + 1}: value {values.iloc[r]!r} is not one of its declared "
                            f"values {declared} ({len(bad)} row{'s' if len(bad) > 1 else ''} in all); declare it in "
                            "vocab.values (a domain needs its expert) or drop those rows")


def _values(frame: pd.DataFrame, feature: dict) -> pd.Series:
    """The values a vocabulary counts: a categorical column, or every item of a sequence/tags column."""
    column = frame[feature["name"]]
    if feature["type"] not in LIST_TYPES:
        return column
    sep = feature.get("sep", SEP)
    items = column.astype(str).str.split(sep, regex=False).explode().str.strip()
    return items[items.notna() & (items != "")].reset_index(drop=True)


def sequence_report(features: list[dict], stats: dict, frame: pd.DataFrame) -> dict:
    """Per sequence/tags feature of `frame`: rows, mean and max items, rows cut by `max_len`, empty
    rows, and items outside the vocabulary (mapped to the OOV id). For the run's report."""
    out = {}
    for f in features:
        if f["type"] not in LIST_TYPES or f["name"] not in frame.columns:
            continue
        counts = pd.Series(item_counts(frame[f["name"]], f.get("sep", SEP)))
        entry = {"rows": int(len(frame)), "mean_items": round(float(counts.mean()), 3) if len(frame) else 0.0,
                 "max_items": int(counts.max()) if len(frame) else 0,
                 "rows_cut_to_max_len": int((counts > f["max_len"]).sum()), "empty_rows": int((counts == 0).sum())}
        if "vocab" in stats.get(f["name"], {}):
            known = set(stats[f["name"]]["vocab"])
            flat = _values(frame, f)
            entry["items"] = int(len(flat))
            entry["oov_items"] = int((~flat.isin(known)).sum())
        out[f["name"]] = entry
    return out


def _vocabulary(column: pd.Series, spec: dict) -> list[str]:
    if "values" in spec:  # declared: its order is the ids' order, whatever the data
        return [str(v) for v in spec["values"]]
    counts = column.astype(str).value_counts(sort=False)
    counts = counts[counts >= spec.get("min_count", 1)]
    # Most frequent first, ties by value: the same data always gives the same ids.
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if "max_size" in spec:
        ordered = ordered[: spec["max_size"]]
    return [v for v, _ in ordered]


def input_size(feature: dict, stats: dict) -> int | None:
    """Number of ids a categorical/cross feature produces (None for numeric)."""
    if feature["type"] == "numeric":
        return None
    if "hash_buckets" in feature:
        return int(feature["hash_buckets"])
    if "max_id" in feature:
        return int(feature["max_id"]) + 2  # ids 0..max_id, plus one for out of range
    return len(stats[feature["name"]]["vocab"]) + OOV


def raw_dtype(feature: dict) -> str:
    """The dtype a client sends for a raw feature (a sequence is one string of items joined by its `sep`)."""
    if feature["type"] == "numeric":
        return "float32"
    if feature["type"] in LIST_TYPES:
        return "string"
    return "int64" if "max_id" in feature else "string"


def model_dtype(feature: dict) -> str:
    return "float32" if feature["type"] == "numeric" else "int32"


def model_shape(feature: dict) -> tuple:
    """A model input's shape without the batch: (max_len,) ids for a sequence/tags, else (1,)."""
    return (int(feature["max_len"]),) if feature["type"] in LIST_TYPES else (1,)


def raw_inputs(features: list[dict], used: list[str]) -> list[dict]:
    """The raw columns the preprocessing reads for the used features (cross sources included)."""
    by_name = {f["name"]: f for f in features}
    need: list[str] = []
    for name in used:
        f = by_name[name]
        for col in f.get("columns", []) if f["type"] == "cross" else [name]:
            if col not in need:
                need.append(col)
    return [by_name[n] for n in sorted(need, key=list(by_name).index)]


class Preprocessor:
    """Raw feature columns -> model inputs, in TensorFlow (tf.data and the export graph).

    Call it with a dict of 1-D raw tensors (float32 numerics with NaN for missing, strings
    for vocabulary/hashed categoricals, int64 for bounded ids); it returns a dict of
    (batch, 1) tensors: float32 for numerics, int32 ids for categoricals and crosses.
    Lookups are Keras preprocessing layers (StringLookup, Hashing), which run in tf.data on
    any backend and are tracked by ExportArchive. Standardisation, bounded ids and the join
    before a cross's Hashing are plain TensorFlow ops: bench/preprocessing.py measured
    keras.layers.Normalization, IntegerLookup and HashedCrossing slower on batches of 4096
    (docs/benchmarks.md); IntegerLookup and HashedCrossing would also change the ids.
    """

    def __init__(self, features: list[dict], stats: dict, used: list[str]):
        import keras
        import tensorflow as tf

        self.tf = tf
        by_name = {f["name"]: f for f in features}
        self.used = [by_name[n] for n in used]
        self.raw = raw_inputs(features, used)
        self.stats = stats
        self.layers: dict[str, object] = {}
        for f in self.used:
            if f["type"] == "numeric":
                continue
            if "max_id" in f:
                continue  # bounded integer ids need no table
            if "hash_buckets" in f:
                layer = keras.layers.Hashing(num_bins=int(f["hash_buckets"]), name=f"hash_{f['name']}")
            else:
                layer = keras.layers.StringLookup(
                    vocabulary=stats[f["name"]]["vocab"] or ["<empty>"], num_oov_indices=OOV, mask_token=None,
                    name=f"lookup_{f['name']}")
            layer.build((None,))  # ExportArchive only tracks built layers
            self.layers[f["name"]] = layer

    def __call__(self, raw: dict) -> dict:
        tf = self.tf
        out = {}
        for f in self.used:
            name = f["name"]
            if f["type"] == "numeric":
                x = tf.cast(tf.reshape(raw[name], [-1]), tf.float32)
                x = tf.where(tf.math.is_nan(x), tf.constant(float(f.get("fill", 0.0))), x)
                norm = f.get("norm", "none")
                if norm in ("log", "log_standard"):
                    x = tf.sign(x) * tf.math.log1p(tf.abs(x))
                if norm in ("standard", "log_standard"):
                    s = self.stats[name]
                    x = (x - s["mean"]) / s["std"]
                out[name] = tf.reshape(x, [-1, 1])
                continue
            if f["type"] in LIST_TYPES:
                out[name] = self._items(f, raw[name])
                continue
            if f["type"] == "cross":
                parts = [tf.strings.as_string(raw[c]) if raw[c].dtype != tf.string else raw[c] for c in f["columns"]]
                value = tf.strings.join([tf.reshape(p, [-1]) for p in parts], separator=CROSS_SEPARATOR)
                ids = self.layers[name](value)
            elif "max_id" in f:
                x = tf.cast(tf.reshape(raw[name], [-1]), tf.int64)
                ids = tf.where((x < 0) | (x > f["max_id"]), tf.constant(f["max_id"] + 1, tf.int64), x)
            else:
                ids = self.layers[name](tf.reshape(raw[name], [-1]))
            out[name] = tf.reshape(tf.cast(ids, tf.int32), [-1, 1])
        return out

    def _items(self, f: dict, raw):
        """A sequence/tags string column -> (batch, max_len) int32 ids: split on `sep`, blanks dropped,
        the last `max_len` items kept (oldest first), PAD (-1) after them."""
        tf = self.tf
        tokens = tf.strings.strip(tf.strings.split(tf.reshape(raw, [-1]), sep=f.get("sep", SEP)))
        tokens = tf.ragged.boolean_mask(tokens, tf.strings.length(tokens) > 0)
        tokens = tokens[:, -int(f["max_len"]):]
        if "max_id" in f:
            def bounded(t):
                whole = tf.strings.regex_full_match(t, r"-?[0-9]{1,18}")
                x = tf.strings.to_number(tf.where(whole, t, "-1"), tf.int64)
                return tf.where((x < 0) | (x > f["max_id"]), tf.constant(f["max_id"] + 1, tf.int64), x)
            flat = bounded(tokens.flat_values)
        else:
            flat = self.layers[f["name"]](tokens.flat_values)  # a backend array when called eagerly off tf.data
        ids = tokens.with_flat_values(tf.cast(tf.convert_to_tensor(flat), tf.int32))
        return ids.to_tensor(default_value=PAD, shape=[None, int(f["max_len"])])

    def signature(self) -> dict:
        """tf.TensorSpec per raw input, for the serving signature."""
        tf = self.tf
        return {f["name"]: tf.TensorSpec([None], getattr(tf, raw_dtype(f)), name=f["name"]) for f in self.raw}


def feature_descriptions(spec, stats: dict | None, group: str) -> list[dict]:
    """What a feature block is told about its group: kind, number of ids, shared table."""
    by_name = {f["name"]: f for f in spec.features}
    out = []
    for name in spec.groups[group]:
        f = by_name[name]
        if f["type"] == "numeric":
            out.append({"name": name, "kind": "numeric"})
            continue
        if stats is None:  # validation without data: any positive size builds the graph
            size = input_size(f, {name: {"vocab": ["?"]}})
        else:
            size = input_size(f, stats)
        kind = f["type"] if f["type"] in LIST_TYPES else "categorical"
        desc = {"name": name, "kind": kind, "vocab_size": size}
        if f.get("embedding"):
            desc["table"] = f["embedding"]
        if kind in LIST_TYPES:
            desc["max_len"] = int(f["max_len"])
            desc["pool"] = f.get("pool", "mean")
        out.append(desc)
    return out


def raw_arrays(df: pd.DataFrame, raw: list[dict]) -> dict[str, np.ndarray]:
    """NumPy columns with the dtypes the preprocessing (and the serving signature) expects."""
    return {f["name"]: (to_sequence(df[f["name"]], f["name"], f.get("sep", SEP)) if f["type"] in LIST_TYPES
                        else raw_column(df[f["name"]], raw_dtype(f), f["name"])) for f in raw}


def batches(arrays, batch_size: int):
    """A tf.data.Dataset of consecutive `batch_size`-row batches of `arrays` (a nest of NumPy arrays
    with rows on axis 0), the last one partial: what `from_tensor_slices(arrays).batch(batch_size)`
    gives, but sliced in NumPy, so tf.data handles one element per batch instead of one per row
    (bench/input_pipeline.py measured the per-row path at a fifth of the preprocessing's rate)."""
    import tensorflow as tf

    flat = tf.nest.flatten(arrays)
    n = len(flat[0])
    if n == 0:
        return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size)
    full = n // batch_size * batch_size
    parts = []
    if full:
        shaped = [a[:full].reshape((full // batch_size, batch_size) + a.shape[1:]) for a in flat]
        parts.append(tf.data.Dataset.from_tensor_slices(tf.nest.pack_sequence_as(arrays, shaped)))
    if n > full or not parts:
        parts.append(tf.data.Dataset.from_tensors(tf.nest.pack_sequence_as(arrays, [a[full:] for a in flat])))
    return parts[0] if len(parts) == 1 else parts[0].concatenate(parts[1])
