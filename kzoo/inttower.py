"""IntTower support (Li et al., CIKM 2022; blocks in kzoo.blocks.inttower):

    ContrastiveTask       `"type": "contrastive"`, CIR: a training-only in-batch softmax between two
                          towers' representations on the positive rows
    scored_rank_report    Recall@K / NDCG@K of a pointwise two-tower ranker against the whole item
                          corpus, every (query, item) pair scored by its own score block
"""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd

from kzoo.retrieval import KS, Catalogue, InBatchScores, InBatchSoftmax, block_model, embed, rank_metrics
from kzoo.tasks import Task, register_task


def scored_rank_report(spec, model, stats: dict, frame, catalogue: Catalogue, query: str, item: str, score: str,
                       label: str = "label", ks=KS, batch_size: int = 4096) -> dict:
    """Recall@K / NDCG@K of a pointwise two-tower ranker (IntTower) against the whole corpus: the
    `query` and `item` blocks embed the positive rows of `frame` and the corpus once, and the trained
    `score` block (reading [query, item]) scores every query against every item. The ranking is
    the task logit's when the score block feeds the task head directly (a width-1 block does)."""
    rows = frame[frame[label].to_numpy(dtype="float64") == 1] if label in frame.columns else frame
    queries = embed(block_model(spec, model, query), spec, stats, rows, batch_size)
    items = embed(block_model(spec, model, item), spec, stats, catalogue.frame, batch_size)
    layer = model.get_layer(score)
    n = len(items)

    def scores(q, corpus):
        per = max(1, 65536 // n)
        out = []
        for start in range(0, len(q), per):
            part = q[start:start + per]
            pairs = [np.repeat(part, n, axis=0), np.tile(corpus, (len(part),) + (1,) * (corpus.ndim - 1))]
            out.append(keras.ops.convert_to_numpy(layer(pairs)).reshape(len(part), n))
        return np.concatenate(out)

    ks = tuple(k for k in ks if k <= n)
    return {**rank_metrics(queries, items, catalogue.codes(rows[catalogue.id_column]), ks, 256, score=scores),
            "queries": int(len(rows)), "corpus": int(n)}



# --------------------------------------------------------------------------- contrastive (IntTower CIR)

@keras.saving.register_keras_serializable(package="kzoo")
class LastRepresentation(keras.layers.Layer):
    """(batch, L, d) -> (batch, d), the last of L representations (an FETower's deepest); a
    (batch, d) input passes through."""

    def call(self, x):
        return x[:, -1, :] if len(x.shape) == 3 else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@register_task
class ContrastiveTask(Task):
    """A training-only regulariser over a query and an item representation: the in-batch softmax
    of each *positive* row's pair against the batch's other items (IntTower's CIR, Li et al.
    CIKM 2022). Rows with label 0 add no loss but their items are candidates. Nothing is served.

    Keys: `query`, `item` (block outputs; an FETower's last representation is used), `item_id`
    (accidental hits: another row with the same item is not a negative; default `item_id`),
    `temperature` (default 0.07), `loss_weight` (its weight beside the other tasks).
    """

    kind = "contrastive"
    default_loss = "in_batch_softmax"
    losses = ("in_batch_softmax",)
    served = False

    def __init__(self, config: dict, label: str):
        super().__init__(config, label)
        self.item_id = config.get("item_id", "item_id")
        self.temperature = float(config.get("temperature", 0.07))

    @property
    def inputs(self) -> list[str]:
        return [self.config["query"], self.config["item"]]

    @classmethod
    def problems(cls, config: dict, where: str) -> list[tuple[str, str]]:
        allowed = {"name", "type", "query", "item", "item_id", "temperature", "loss_weight", "label"}
        return [(f"{where}.{key}", f"'{key}' does not apply to a contrastive task (it takes {sorted(allowed)})")
                for key in config if key not in allowed]

    def labels(self, frame) -> np.ndarray:
        codes = pd.factorize(frame[self.item_id].astype(str))[0] if self.item_id in frame.columns \
            else np.arange(len(frame))
        positive = frame[self.label].to_numpy(dtype="float64") == 1 if self.label in frame.columns \
            else np.ones(len(frame), bool)
        return np.stack([codes, np.ones(len(frame)), positive], axis=1).astype("float32")

    def head(self, q, i, *, layer):
        out = []
        for side, x in (("query", q), ("item", i)):
            x = layer(f"{self.name}_{side}_last", lambda s=side: LastRepresentation(name=f"{self.name}_{s}_last"))(x)
            out.append(layer(f"{self.name}_{side}_norm", lambda s=side: keras.layers.UnitNormalization(
                dtype="float32", name=f"{self.name}_{s}_norm"))(x))
        if out[0].shape[-1] != out[1].shape[-1]:
            raise ValueError(f"the contrastive task's query gives {out[0].shape[-1]} dims and its item "
                             f"{out[1].shape[-1]}; they must match")
        return tuple(out)

    def train_output(self, towers, logits: dict, outputs: dict):
        return InBatchScores(self.temperature, dtype="float32", name=f"{self.name}_in_batch")(list(towers))

    def serve(self, towers, served: dict) -> dict:
        return {}

    def output_names(self) -> list[str]:
        return []

    def loss(self):
        return InBatchSoftmax(logq=False, remove_accidental_hits=True)

    def metrics(self) -> list:
        return []

    def metric_names(self) -> list[str]:
        return []

    def report(self, frame, served: dict) -> dict:
        return {}
