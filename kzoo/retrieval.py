"""Retrieval: the two-tower in-batch softmax task, its item corpus, and full-corpus evaluation.

    RetrievalTask         `"type": "retrieval"`: `query` and `item` tower outputs, trained with
                          an in-batch softmax (temperature, logQ correction, accidental hits
                          removed, optional hard-negative mining and uniformly sampled negatives)
    InBatchSoftmax        that loss (keras-rs SamplingProbabilityCorrection, RemoveAccidentalHits,
                          HardNegativeMining, then softmax cross-entropy on the diagonal)
    Catalogue             the item corpus: each distinct item with its item-tower columns and its
                          count on the training split (items.parquet in the run dir)
    tower_models          the trained query and item towers as two Keras models
    rank_metrics          Recall@K / NDCG@K of every query against the whole corpus, in batches
                          (keras-rs BruteForceRetrieval and metrics)

The export (query tower, item tower, a top-K retrieval SavedModel, the item embeddings and an
ANN index) is kzoo.retrieval_export.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from keras import ops

from kzoo import metrics as kmetrics
from kzoo.tasks import Task, register_task

KS = (10, 50, 100)
MASKED_LOGIT = float(np.finfo("float32").min) / 100.0  # an accidental hit's logit: exp() of it is 0
ITEMS_FILE = "items.parquet"
DEFAULTS = {"item_id": "item_id", "temperature": 0.05, "normalize": True, "logq": True,
            "remove_accidental_hits": True, "hard_negatives": None, "uniform_negatives": 0, "k": 100}


# ---------------------------------------------------------------------------------------- layers

@keras.saving.register_keras_serializable(package="kzoo")
class InBatchScores(keras.layers.Layer):
    """(query (B, d), item (C, d)) -> q · iᵀ / temperature, (B, C): every row against every item."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        q, i = inputs
        return ops.matmul(q, ops.transpose(i)) / self.temperature

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="kzoo")
class PairScore(keras.layers.Layer):
    """(query (B, d), item (B, d)) -> the row's own score q · i / temperature, (B, 1)."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        q, i = inputs
        return ops.sum(q * i, axis=-1, keepdims=True) / self.temperature

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@keras.saving.register_keras_serializable(package="kzoo")
class InBatchSoftmax(keras.losses.Loss):
    """Softmax cross-entropy of each row's own item against the other items of the batch.

    y_pred: (B, B) logits, row r's query against the item of every row (InBatchScores); the
        positive of row r is column r.
    y_true: (B, 3) per row: [item code, the item's sampling probability, 1 for a real
        interaction / 0 for a row added only as a negative (uniform negatives)].

    With `logq`, log(probability of item j) is subtracted from column j (Yi et al., RecSys 2019:
    popular items are in-batch negatives more often than uniform sampling would make them);
    with `remove_accidental_hits` a column holding the row's own item in another row is not a
    negative; with `hard_negatives` N only the N highest-scoring negatives of each row are kept.
    The mean is over real rows.
    """

    def __init__(self, logq: bool = True, remove_accidental_hits: bool = True, hard_negatives: int | None = None,
                 name: str = "in_batch_softmax", **kwargs):
        super().__init__(name=name, **kwargs)
        self.logq, self.remove_accidental_hits = bool(logq), bool(remove_accidental_hits)
        self.hard_negatives = None if hard_negatives is None else int(hard_negatives)

    def call(self, y_true, y_pred):
        import keras_rs

        y_true = ops.cast(y_true, y_pred.dtype)
        codes, probability, real = y_true[:, 0], y_true[:, 1], y_true[:, 2]
        n = ops.shape(y_pred)[0]
        index = ops.arange(n)
        labels = ops.cast(ops.equal(ops.expand_dims(index, 1), ops.expand_dims(index, 0)), y_pred.dtype)
        logits = y_pred
        if self.logq:
            logits = keras_rs.layers.SamplingProbabilityCorrection()(
                logits, ops.broadcast_to(ops.expand_dims(probability, 0), ops.shape(logits)))
        if self.remove_accidental_hits:
            # Not keras_rs.layers.RemoveAccidentalHits: in keras-rs 0.4 it adds ~1e-40 to the hits,
            # which leaves them unchanged (keras-team/keras-rs PR #206, open); TFRS's MIN_FLOAT / 100.
            same = ops.equal(ops.expand_dims(codes, 1), ops.expand_dims(codes, 0))
            logits = ops.where(ops.logical_and(same, labels == 0), MASKED_LOGIT, logits)
        if self.hard_negatives:
            logits, labels = keras_rs.layers.HardNegativeMining(self.hard_negatives)(logits, labels)
        ce = keras.losses.categorical_crossentropy(labels, logits, from_logits=True)
        return ce * real * ops.cast(n, y_pred.dtype) / ops.maximum(ops.sum(real), 1.0)

    def get_config(self):
        return {**super().get_config(), "logq": self.logq, "remove_accidental_hits": self.remove_accidental_hits,
                "hard_negatives": self.hard_negatives}


# ---------------------------------------------------------------------------------------- corpus

class Catalogue:
    """The item corpus: one row per distinct item id seen in any split, with the item tower's raw
    columns (from the item's first row) and `count`, its rows in the training split.

    `codes(values)` maps raw item ids to corpus positions (-1 for an id not in the corpus).
    """

    def __init__(self, frame: pd.DataFrame, id_column: str):
        self.frame = frame.reset_index(drop=True)
        self.id_column = id_column
        self.ids = self.frame[id_column].astype(str).to_numpy()
        self._index = pd.Index(self.ids)
        if not self._index.is_unique:
            raise ValueError(f"the item corpus has repeated ids in '{id_column}'")

    @classmethod
    def from_frames(cls, frames: list[pd.DataFrame], train: pd.DataFrame, id_column: str, columns: list[str]):
        rows = pd.concat([f[columns] for f in frames], ignore_index=True)
        rows = rows.assign(**{id_column: rows[id_column].astype(str)}).drop_duplicates(id_column)
        counts = train[id_column].astype(str).value_counts()
        rows["count"] = counts.reindex(rows[id_column]).fillna(0).astype("int64").to_numpy()
        return cls(rows, id_column)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def counts(self) -> np.ndarray:
        return self.frame["count"].to_numpy(dtype="float64")

    def codes(self, values) -> np.ndarray:
        return self._index.get_indexer(pd.Series(values).astype(str)).astype("int64")

    def probability(self) -> np.ndarray:
        """Each item's share of the training rows (the in-batch sampling probability); an item
        absent from training gets the share of one row, so its log stays finite."""
        counts = np.maximum(self.counts, 1.0)
        return counts / counts.sum()

    def save(self, folder) -> Path:
        path = Path(folder) / ITEMS_FILE
        self.frame.to_parquet(path, index=False)
        return path

    @classmethod
    def load(cls, folder, id_column: str) -> "Catalogue":
        path = Path(folder) / ITEMS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a retrieval run writes its item corpus there when it trains")
        return cls(pd.read_parquet(path), id_column)


# ------------------------------------------------------------------------------------------ task

@register_task
class RetrievalTask(Task):
    """Two-tower retrieval: `query` and `item` tower outputs, an in-batch softmax over the batch's
    items (see InBatchSoftmax). Trains on the rows whose label is 1 (all rows when the data has no
    label); serves the pointwise score q · i / temperature under its name; metrics.json gets
    Recall@K and NDCG@K against the whole item corpus beside a popularity baseline, and the AUC of
    the pointwise score on every labelled row."""

    kind = "retrieval"
    default_loss = "in_batch_softmax"
    losses = ("in_batch_softmax",)

    def __init__(self, config: dict, label: str):
        super().__init__(config, label)
        self.options = {k: config.get(k, v) for k, v in DEFAULTS.items()}
        self.item_id: str = self.options["item_id"]
        self.catalogue: Catalogue | None = None
        self.batch_size = 512

    @property
    def inputs(self) -> list[str]:
        return [self.config["query"], self.config["item"]]

    @classmethod
    def problems(cls, config: dict, where: str) -> list[tuple[str, str]]:
        out = []
        for key in ("input", "loss", "metrics", "gauc_by", "given", "conditional_name", "sample_weight", "mask_by",
                    "missing_label", "negative_sampling"):
            if key in config:
                out.append((f"{where}.{key}", f"'{key}' does not apply to a retrieval task (it reads `query` and "
                                              "`item` and trains with the in-batch softmax)"))
        return out

    def graph_problems(self, spec, where: str) -> list[tuple[str, str]]:
        from kzoo.graph import features_reached

        if len(spec.tasks) > 1:
            return [("tasks", "a retrieval task trains alone: its batches hold positive interactions only; "
                              "use one spec per task")]
        query, item = (features_reached(spec, self.config[k]) for k in ("query", "item"))
        out = []
        both = sorted(set(query) & set(item))
        if both:
            out.append((f"{where}.item", f"features {both} feed both towers; the item tower must read item columns "
                                         "only (its corpus has one row per item)"))
        if self.item_id not in item:
            key = f"{where}.item_id" if "item_id" in self.config else where
            out.append((key, f"the item id feature '{self.item_id}' is not read by the item tower "
                             f"'{self.config['item']}' (it reads {item}); set `item_id`"))
        return out

    # ------------------------------------------------------------------ data
    def fit(self, spec, frames: dict, batch_size: int) -> None:
        from kzoo.features import raw_inputs
        from kzoo.graph import features_reached

        columns = [f["name"] for f in raw_inputs(spec.features, features_reached(spec, self.config["item"]))]
        self.batch_size = int(batch_size)
        train = frames["train"]
        self.catalogue = Catalogue.from_frames(list(frames.values()), train[self._keep(train)], self.item_id, columns)

    def _keep(self, frame) -> np.ndarray:
        keep = self.keep_rows(frame)
        return np.ones(len(frame), bool) if keep is None else keep

    def keep_rows(self, frame):
        if self.label not in frame.columns:
            return None
        return frame[self.label].to_numpy(dtype="float64") == 1

    def sampling_probability(self) -> np.ndarray:
        """Per corpus item, its chance of being a candidate in a batch: its training share plus,
        with S uniform negatives per batch of B, S / (B · N) (only ratios matter to the softmax)."""
        extra = self.options["uniform_negatives"] / (self.batch_size * len(self.catalogue))
        return self.catalogue.probability() + extra

    def labels(self, frame) -> np.ndarray:
        if self.catalogue is None:
            raise RuntimeError("a retrieval task's labels need its item corpus: call fit(spec, frames, batch_size) first")
        codes = self.catalogue.codes(frame[self.item_id])
        prob = np.where(codes >= 0, self.sampling_probability()[np.maximum(codes, 0)], 1.0 / max(len(codes), 1))
        return np.stack([codes, prob, np.ones(len(codes))], axis=1).astype("float32")

    def augment(self, ds, spec, pre):
        """With `uniform_negatives` S: each training batch of B rows gets S more rows whose item
        columns are corpus items drawn uniformly (afresh every epoch) and whose query columns are
        copies of random rows of the batch. They are candidates for every row but add no loss of
        their own (mixed negative sampling, Yang et al., WWW 2020)."""
        extra = int(self.options["uniform_negatives"])
        if not extra:
            return ds
        import tensorflow as tf

        from kzoo.features import Preprocessor, raw_arrays
        from kzoo.graph import features_reached

        item_pre = Preprocessor(spec.features, pre.stats, features_reached(spec, self.config["item"]))
        corpus = {n: tf.constant(np.asarray(v)) for n, v in
                  item_pre(raw_arrays(self.catalogue.frame, item_pre.raw)).items()}
        probability = tf.constant(self.sampling_probability(), tf.float32)
        size, name = len(self.catalogue), self.name

        def mix(x, y):
            rows = tf.shape(y[name])[0]
            pick = tf.random.uniform([extra], 0, size, dtype=tf.int64)
            copy = tf.random.uniform([extra], 0, rows, dtype=tf.int32)
            x = {n: tf.concat([v, tf.gather(corpus[n], pick) if n in corpus else tf.gather(v, copy)], 0)
                 for n, v in x.items()}
            added = tf.stack([tf.cast(pick, tf.float32), tf.gather(probability, pick), tf.zeros([extra])], axis=1)
            return x, {**y, name: tf.concat([y[name], added], 0)}

        return ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)

    def save(self, folder) -> None:
        self.catalogue.save(folder)

    def load(self, folder) -> None:
        self.catalogue = Catalogue.load(folder, self.item_id)

    # ------------------------------------------------------------------ graph
    def head(self, q, i, *, layer):
        if q.shape[-1] != i.shape[-1]:
            raise ValueError(f"the query tower gives {q.shape[-1]} dims and the item tower {i.shape[-1]}; a "
                             "two-tower score needs the same embedding size")
        if self.options["normalize"]:
            q = layer(f"{self.name}_query_norm", lambda: keras.layers.UnitNormalization(
                dtype="float32", name=f"{self.name}_query_norm"))(q)
            i = layer(f"{self.name}_item_norm", lambda: keras.layers.UnitNormalization(
                dtype="float32", name=f"{self.name}_item_norm"))(i)
        return q, i

    def train_output(self, towers, logits: dict, outputs: dict):
        return InBatchScores(self.options["temperature"], dtype="float32", name=f"{self.name}_in_batch")(list(towers))

    def serve(self, towers, served: dict) -> dict:
        return {self.name: PairScore(self.options["temperature"], dtype="float32", name=self.name)(list(towers))}

    def loss(self):
        return InBatchSoftmax(self.options["logq"], self.options["remove_accidental_hits"],
                              self.options["hard_negatives"])

    def metrics(self) -> list:
        return []

    def metric_names(self) -> list[str]:
        return []

    # ------------------------------------------------------------------ evaluation
    def report(self, frame, served: dict) -> dict:
        """AUC of the pointwise score on the labelled rows (both classes present), and the row count."""
        out = {"examples": int(len(frame))}
        if self.label in frame.columns:
            y = frame[self.label].to_numpy(dtype="float64")
            if 0 < y.sum() < len(y):
                out["auc"] = kmetrics.auc(y, served[self.name])
        return {self.name: out}

    def rank_report(self, model, spec, pre, frame, batch_size: int = 4096) -> dict:
        """Recall@K and NDCG@K (K in 10, 50, 100) of each positive row's item among the whole corpus,
        and the same for ranking every query by training popularity."""
        rows = frame[self._keep(frame)]
        query, item = tower_models(spec, model, self)
        items = embed(item, spec, pre.stats, self.catalogue.frame, batch_size)
        queries = embed(query, spec, pre.stats, rows, batch_size)
        targets = self.catalogue.codes(rows[self.item_id])
        ks = tuple(k for k in KS if k <= len(self.catalogue))
        popularity = rank_metrics(np.ones((len(rows), 1), "float32"), self.catalogue.counts[:, None].astype("float32"),
                                  targets, ks)
        return {self.name: {**rank_metrics(queries, items, targets, ks), "queries": int(len(rows)),
                            "corpus": int(len(self.catalogue)), "popularity": popularity}}


# ------------------------------------------------------------------------------------- towers

def tower_models(spec, model, task: RetrievalTask) -> tuple[keras.Model, keras.Model]:
    """The trained query and item towers of `model` as Keras models over their own preprocessed
    inputs (normalised when the task normalises); each model's `input` dict names its features."""
    from kzoo.graph import features_reached, walk

    w = walk(spec, model=model, tasks=[task.name])
    q, i = w.heads[task.name]
    query = keras.Model({n: w.inputs[n] for n in features_reached(spec, task.config["query"])}, q,
                        name=f"{spec.name}_query_tower")
    item = keras.Model({n: w.inputs[n] for n in features_reached(spec, task.config["item"])}, i,
                       name=f"{spec.name}_item_tower")
    return query, item


def embed(tower: keras.Model, spec, stats: dict, frame: pd.DataFrame, batch_size: int = 4096) -> np.ndarray:
    """(len(frame), d) float32 embeddings of `frame`'s raw columns through the preprocessing (with
    the training `stats`) and `tower`."""
    from kzoo.features import Preprocessor, raw_arrays

    names = list(tower.input)
    pre = Preprocessor(spec.features, stats, names)
    x = raw_arrays(frame, pre.raw)
    out = []
    for start in range(0, len(frame), batch_size):
        part = pre({k: v[start:start + batch_size] for k, v in x.items()})
        part = {n: keras.ops.convert_to_tensor(np.asarray(part[n])) for n in names}
        out.append(keras.ops.convert_to_numpy(tower(part, training=False)))
    d = tower.output.shape[-1]
    return np.concatenate(out).astype("float32") if out else np.zeros((0, d), "float32")


def rank_metrics(queries: np.ndarray, items: np.ndarray, targets: np.ndarray, ks=KS, batch_size: int = 1024,
                 score=None) -> dict:
    """Recall@K and NDCG@K of one relevant item per query (`targets`, corpus positions) when every
    query is scored against every item: by dot product, keras-rs BruteForceRetrieval giving each
    query's top max(ks); or by `score(query_batch, items) -> (batch, N)` and keras.ops.top_k.
    keras-rs RecallAtK / NDCG score each list. A target outside the top max(ks) is appended below
    the list, so it counts as relevant but never retrieved."""
    import keras_rs

    ks = tuple(ks)
    top = max(ks)
    if score is None:
        retrieval = keras_rs.layers.BruteForceRetrieval(k=top, return_scores=True)
        retrieval.update_candidates(items)
    else:
        def retrieval(q):
            return keras.ops.top_k(keras.ops.convert_to_tensor(score(q, items)), k=top)
    metrics = {}
    for k in ks:
        metrics[f"recall@{k}"] = keras_rs.metrics.RecallAtK(k=k)
        metrics[f"ndcg@{k}"] = keras_rs.metrics.NDCG(k=k)
    hits = []
    for start in range(0, len(queries), batch_size):
        q = queries[start:start + batch_size]
        t = targets[start:start + batch_size]
        _, ids = (keras.ops.convert_to_numpy(x) for x in retrieval(q))
        hits.append(ids == t[:, None])
    if hits:
        hit = np.concatenate(hits)
        y_true = np.concatenate([hit, ~hit.any(axis=1, keepdims=True)], axis=1).astype("float32")
        # The metrics re-sort by score: give them the retrieved order itself, so tied scores (a
        # popularity ranking has many) keep the order BruteForceRetrieval returned. One update per
        # 65,536 queries: each eager update costs about the same whatever its size.
        y_pred = np.broadcast_to(np.arange(top + 1, 0, -1, dtype="float32"), y_true.shape)
        for start in range(0, len(y_true), 65536):
            for m in metrics.values():
                m.update_state(y_true[start:start + 65536], y_pred[start:start + 65536])
    return {name: round(float(m.result()), 5) for name, m in metrics.items()} if len(queries) else \
        {name: math.nan for name in metrics}


def block_model(spec, model, ref: str) -> keras.Model:
    """The trained block output `ref` of `model` as a Keras model over the features it reads."""
    from kzoo.graph import features_reached, ref_block, ref_output

    out = model.get_layer(ref_block(ref)).output
    out = out[ref_output(ref)] if ref_output(ref) is not None else out
    return keras.Model({n: model.input[n] for n in features_reached(spec, ref)}, out, name=f"{ref_block(ref)}_model")


def ranked_items(queries: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) corpus positions by descending dot product (NumPy; for checks and small corpora)."""
    scores = queries @ items.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]
