"""Export of a retrieval run: the towers apart, a top-K retrieval SavedModel, the item embeddings
and an ANN index over them. Runs on the TensorFlow backend (kzoo.exporter calls it).

Layout, every part with the same VERSION:

    BASE/VERSION/                    retrieval SavedModel (TF Serving): the query's raw columns in,
                                     `item_ids` (batch, K) strings and `scores` (batch, K) out; brute
                                     force over the whole corpus inside the graph (keras-rs
                                     BruteForceRetrieval)
        assets.extra/items.npz       `ids` (N,) and `embeddings` (N, d) float32, the item tower's output
        assets.extra/items.faiss     an HNSW index of the embeddings (faiss-cpu, inner product)
        assets.extra/kzoo.json       what was exported, with the sha256 of items.npz the index was built from
    BASE_query/VERSION/              the query tower: raw query columns -> `query_embedding` (batch, d)
    BASE_item/VERSION/               the item tower: raw item columns -> `item_embedding` (batch, d)

    load_index(version)      the index and its items, refused when they disagree
    ann_recall(version, queries, k)   the index's recall@k against exact search, and both latencies

Why faiss: Meta's library is maintained, ships CPU wheels, has the exact inner-product index to
check against and the compressed ones (IVF-PQ) a larger corpus needs, and `reconstruct` lets a
loader check an index against the embeddings it claims to hold.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from kzoo.errors import SpecError

ITEMS = "items.npz"
INDEX = "items.faiss"
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 200, 128


class IndexMismatchError(ValueError):
    """An ANN index and the item file beside it do not describe the same items."""


def tower_base(base: Path, tower: str) -> Path:
    """BASE_query / BASE_item: the model base path of a tower exported apart."""
    return base.parent / f"{base.name}_{tower}"


def export_retrieval(run, base: Path, version: int, task, write) -> Path:
    """Write the retrieval SavedModel to BASE/VERSION and the towers to BASE_query/VERSION and
    BASE_item/VERSION. `write(archive, base, version, pre, meta, extra)` is kzoo.exporter's atomic
    version writer. Returns BASE/VERSION."""
    import keras
    import keras_rs
    import tensorflow as tf

    from kzoo.export_checks import guard_inputs, guard_outputs
    from kzoo.retrieval import embed, tower_models

    spec, model = run.spec(), run.model()
    task.load(run.path)
    catalogue = task.catalogue
    k = int(task.options["k"])
    where = f"tasks[{[t['name'] for t in spec.tasks].index(task.name)}].k"
    if k > len(catalogue):
        raise SpecError([(where, f"k = {k} is larger than the item corpus ({len(catalogue)} items); lower it")],
                        spec.source)
    query, item = tower_models(spec, model, task)
    stats = run.preprocessing()["stats"]
    embeddings = embed(item, spec, stats, catalogue.frame)
    ids = catalogue.ids.astype(str)

    for tower, output in ((query, "query_embedding"), (item, "item_embedding")):
        pre = run.preprocessor(list(tower.input))
        archive = tower_archive(tower, pre)
        endpoint = archive.add_endpoint(name="serving_default", fn=tower_serve(tower, pre, [output]),
                                        input_signature=[pre.signature()])
        write(archive, tower_base(base, output.split("_")[0]), version, pre,
              {"spec": spec.name, "task": task.name, "tower": output.split("_")[0], "outputs": [output],
               "dim": int(embeddings.shape[1])}, endpoint=endpoint)

    pre = run.preprocessor(list(query.input))
    retrieval = keras_rs.layers.BruteForceRetrieval(candidate_embeddings=embeddings, k=k, return_scores=True)
    id_of = keras.layers.StringLookup(vocabulary=list(ids), invert=True, num_oov_indices=0, mask_token=None,
                                      name="item_ids")
    id_of.build((None,))
    archive = tower_archive(query, pre)
    archive.track(retrieval)
    archive.track(id_of)

    def serve(raw):  # the request guards of kzoo.export_checks, as on a ranking export
        scores, index = retrieval(query(pre(guard_inputs(raw)), training=False))
        return guard_outputs({"item_ids": id_of(tf.cast(index, tf.int64)), "scores": scores})

    endpoint = archive.add_endpoint(name="serving_default", fn=serve, input_signature=[pre.signature()])

    def extra(folder: Path) -> dict:
        np.savez(folder / ITEMS, ids=ids, embeddings=embeddings)
        index = build_index(embeddings)
        import faiss

        faiss.write_index(index, str(folder / INDEX))
        return {"items_sha256": _sha256(folder / ITEMS), "index": {
            "library": "faiss-cpu", "version": faiss.__version__, "type": "IndexHNSWFlat", "metric": "inner_product",
            "M": HNSW_M, "ef_construction": EF_CONSTRUCTION, "ef_search": EF_SEARCH,
            "self_recall@10": round(_self_recall(index, embeddings), 4)}}

    return write(archive, base, version, pre, {
        "spec": spec.name, "task": task.name, "outputs": ["item_ids", "scores"], "k": k, "corpus": len(ids),
        "dim": int(embeddings.shape[1]), "towers": {t: tower_base(base, t).name for t in ("query", "item")}},
        extra, endpoint=endpoint)


def tower_serve(tower, pre, names: list):
    """The serving function of a tower exported apart: raw columns in, behind kzoo.export_checks' request
    guards, and one output per name in `names` (a block of several outputs gives them in its declared
    order, `<side>_<output>`)."""
    from kzoo.export_checks import guard_inputs, guard_outputs

    def serve(raw):  # no default arguments: tf.function would take them for inputs
        out = tower(pre(guard_inputs(raw)), training=False)
        if isinstance(out, dict):  # a block of several outputs, in its declared order
            out = [out[n.split("_", 1)[1]] for n in names]
        return guard_outputs(dict(zip(names, out if isinstance(out, (list, tuple)) else [out])))

    return serve


def tower_archive(tower, pre):
    """An ExportArchive tracking `tower` and the preprocessing layers of `pre`."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(tower)
    for layer in pre.layers.values():
        archive.track(layer)
    return archive


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def build_index(embeddings: np.ndarray):
    """A faiss HNSW index (inner product) over `embeddings`, in their order."""
    import faiss

    index = faiss.IndexHNSWFlat(int(embeddings.shape[1]), HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    index.add(np.ascontiguousarray(embeddings, dtype="float32"))
    index.hnsw.efSearch = EF_SEARCH
    return index


def _self_recall(index, embeddings: np.ndarray, queries: int = 1000, k: int = 10) -> float:
    """Recall@k of the index against exact search with up to `queries` corpus items as the queries."""
    pick = np.linspace(0, len(embeddings) - 1, min(queries, len(embeddings))).astype(int)
    return ann_recall_of(index, embeddings, embeddings[pick], k)["recall"]


def load_index(version) -> tuple:
    """(faiss index, ids (N,), embeddings (N, d)) of an exported retrieval version.

    Refused (IndexMismatchError) when items.npz is not the file the index was built from (its
    sha256 in kzoo.json), when the index holds another number of vectors or another dimension, or
    when the vectors it holds are not the file's embeddings."""
    import faiss

    extra = Path(version) / "assets.extra"
    meta = json.loads((extra / "kzoo.json").read_text())
    if "items_sha256" not in meta:
        raise IndexMismatchError(f"{version} is not a retrieval export (kzoo.json names no item file)")
    if _sha256(extra / ITEMS) != meta["items_sha256"]:
        raise IndexMismatchError(f"{extra / ITEMS} is not the item file this export wrote (sha256 differs); "
                                 "re-export instead of replacing one of its files")
    items = np.load(extra / ITEMS)
    ids, embeddings = items["ids"], items["embeddings"]
    index = faiss.read_index(str(extra / INDEX))
    if index.ntotal != len(ids) or index.d != embeddings.shape[1]:
        raise IndexMismatchError(f"{extra / INDEX} holds {index.ntotal} vectors of {index.d} dims but {ITEMS} has "
                                 f"{len(ids)} items of {embeddings.shape[1]}; they were not exported together")
    rows = np.unique(np.linspace(0, len(ids) - 1, min(64, len(ids))).astype(int))
    held = np.stack([index.reconstruct(int(r)) for r in rows]) if len(rows) else embeddings[:0]
    if not np.allclose(held, embeddings[rows], atol=1e-6):
        raise IndexMismatchError(f"{extra / INDEX} does not hold the embeddings of {ITEMS} in its order; they were "
                                 "not exported together")
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(meta.get("index", {}).get("ef_search", EF_SEARCH))
    return index, ids, embeddings


def ann_recall_of(index, embeddings: np.ndarray, queries: np.ndarray, k: int = 10) -> dict:
    """Recall@k of `index` against exact inner-product search over `embeddings` (the share of each
    query's exact top k the index returns), with the mean milliseconds per single-query search of
    each (up to 200 queries, one at a time, as a server answers them)."""
    queries = np.ascontiguousarray(queries, dtype="float32")
    exact = np.argsort(-(queries @ embeddings.T), axis=1, kind="stable")[:, :k]
    _, found = index.search(queries, k)
    recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact, found)])) if len(queries) else float("nan")
    timed = queries[:200]
    start = time.perf_counter()
    for q in timed:
        index.search(q[None, :], k)
    ann_ms = (time.perf_counter() - start) / max(len(timed), 1) * 1000
    start = time.perf_counter()
    for q in timed:
        np.argpartition(-(embeddings @ q), k)[:k]
    exact_ms = (time.perf_counter() - start) / max(len(timed), 1) * 1000
    return {"recall": recall, "ann_ms_per_query": round(ann_ms, 4), "exact_ms_per_query": round(exact_ms, 4),
            "queries": int(len(queries)), "k": int(k)}


def ann_recall(version, queries: np.ndarray, k: int = 10) -> dict:
    """`ann_recall_of` for the index of an exported retrieval version (checked by `load_index`)."""
    index, _, embeddings = load_index(version)
    return ann_recall_of(index, embeddings, queries, k)
