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

from kzoo.columns import raw_column

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
        elif f["type"] == "categorical" and ("vocab" in f or not any(k in f for k in ("hash_buckets", "max_id"))):
            table = f.get("embedding")
            if table:  # features sharing a table share one vocabulary, learned on all their columns
                shared_vocab.setdefault(table, [])
                shared_vocab[table].append(f["name"])
            else:
                stats[f["name"]] = {"vocab": _vocabulary(train[f["name"]], f.get("vocab", {}))}
    for table, names in shared_vocab.items():
        spec = next(f.get("vocab", {}) for f in features if f["name"] == names[0])
        vocab = _vocabulary(pd.concat([train[n] for n in names], ignore_index=True), spec)
        for n in names:
            stats[n] = {"vocab": vocab}
    return stats


def _vocabulary(column: pd.Series, spec: dict) -> list[str]:
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
    """The dtype a client sends for a raw feature."""
    if feature["type"] == "numeric":
        return "float32"
    return "int64" if "max_id" in feature else "string"


def model_dtype(feature: dict) -> str:
    return "float32" if feature["type"] == "numeric" else "int32"


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
        desc = {"name": name, "kind": "categorical", "vocab_size": size}
        if f.get("embedding"):
            desc["table"] = f["embedding"]
        out.append(desc)
    return out


def raw_arrays(df: pd.DataFrame, raw: list[dict]) -> dict[str, np.ndarray]:
    """NumPy columns with the dtypes the preprocessing (and the serving signature) expects."""
    return {f["name"]: raw_column(df[f["name"]], raw_dtype(f), f["name"]) for f in raw}
