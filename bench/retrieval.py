"""Two-tower retrieval quality, full-corpus evaluation time and the ANN index, on real data.

For each dataset (MovieLens-100K, Amazon Beauty, Amazon Video Games from ../shared/data), each
variant of the `two_tower` zoo config and each seed, `kzoo.train` runs on the loader's
leave-last-out split; Recall@K and NDCG@K (K = 10, 50, 100) of every test positive against the
whole item corpus come from the run's metrics.json, beside the popularity baseline (items
ranked by training count). The corpus evaluation is timed on its own. Seed 0 of the default
variant is exported and its faiss HNSW index is measured against exact search with the test
queries: recall@10 and milliseconds per single query.

Variants: `in-batch` (plain in-batch softmax), `default` (the zoo config: logQ correction and
accidental hits removed), `mixed` (default plus 256 uniformly sampled corpus items per batch).

Results: bench/out/retrieval.json and the section of docs/results.md between
`<!-- retrieval:start -->` and `<!-- retrieval:end -->`.

    python bench/retrieval.py                 # the full table (about 40 minutes on 2 cores)
    python bench/retrieval.py --quick         # smoke run: MovieLens only, 1 seed, 1 epoch
    python bench/retrieval.py --report        # rewrite the docs section from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import data_dir, environment, log, ms, write_section  # noqa: E402

OUT_JSON = REPO / "bench" / "out" / "retrieval.json"
DOC = REPO / "docs" / "results.md"
START, END = "<!-- retrieval:start -->", "<!-- retrieval:end -->"
DATASETS = {  # name -> (loader, path under the data dir, note)
    "movielens": ("movielens", "movielens_100k", "MovieLens-100K; test: the liked items among each user's last 5 ratings"),
    "beauty": ("amazon", "amazon_s3rec_seq/Beauty.txt", "Amazon Beauty (S3-Rec, 5-core); test: each user's last item"),
    "video": ("amazon", "amazon_video_games_seq/Video.txt", "Amazon Video Games (SASRec); test: each user's last item"),
}
VARIANTS = {
    "in-batch": {"logq": False, "remove_accidental_hits": False},
    "default": {},
    "mixed": {"uniform_negatives": 256},
}
KS = (10, 50, 100)




def spec_for(dataset: str, variant: str, epochs: int) -> dict:
    """The two_tower zoo config on `dataset`'s bundled schema: Amazon has no user side columns, so its
    query tower reads the user id and the history, its item tower the item id and category."""
    from kzoo import data as kdata

    raw = json.loads((REPO / "zoo_configs" / "two_tower.json").read_text())
    loader = DATASETS[dataset][0]
    raw["features"] = kdata.bundled_dataset(loader)
    if loader == "amazon":
        raw["groups"] = {"query": ["user_id", "hist_item_id", "hist_item_cat"], "item": ["item_id", "item_cat"]}
    raw["tasks"][0].update(VARIANTS[variant])
    raw["train"]["epochs"] = epochs
    return raw


def run_one(dataset: str, variant: str, seed: int, epochs: int, export: bool) -> dict:
    import kzoo
    from kzoo.pipeline import load_for, split_frames
    from kzoo.retrieval import embed, tower_models
    from kzoo.rundir import RunDir

    loader, relative, _ = DATASETS[dataset]
    data = f"{loader}:{data_dir() / relative}"
    spec = kzoo.load_spec(spec_for(dataset, variant, epochs))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = kzoo.train(spec, data, Path(tmp) / "run", seed=seed, verbose=0)
        wall = time.time() - t
        run = RunDir(Path(tmp) / "run")
        spec, model = run.spec(), run.model()
        task = run.tasks(spec)[0]
        test = split_frames(*load_for(spec, data))[2]
        t = time.time()
        task.rank_report(model, spec, run.preprocessor(), test)
        eval_seconds = time.time() - t
        out = {"dataset": dataset, "variant": variant, "seed": seed, "epochs": epochs,
               "metrics": m["retrieval"], "train_seconds": round(wall, 1), "eval_seconds": round(eval_seconds, 2),
               "examples_per_s": m["train_examples_per_s"], "params": m["params"]}
        if export:
            from kzoo.retrieval_export import ann_recall

            version = kzoo.export(Path(tmp) / "run", Path(tmp) / "exports" / "two_tower")
            query, _ = tower_models(spec, model, task)
            positives = test[task.keep_rows(test)]
            q = embed(query, spec, run.preprocessing()["stats"], positives)
            out["ann"] = {**ann_recall(version, q, k=10),
                          "index": json.loads((version / "assets.extra" / "kzoo.json").read_text())["index"]}
        return out




def markdown(doc: dict) -> str:
    rows, env = doc["runs"], doc["environment"]
    cols = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]
    lines = [START, "## Retrieval: two-tower against the whole item corpus", "",
             f"`{doc['command']}` ({env['date']}, {env['machine']}, Keras {env['keras']}, {env['backend']} backend, "
             f"Python {env['python']}). Each test positive's item ranked among every item of the corpus "
             "(brute force, keras-rs BruteForceRetrieval and metrics, in batches); mean ± sd over seeds. "
             "`popularity` ranks items by their training count for every query. `eval s`: the whole "
             "corpus evaluation (towers on the corpus and the queries, top 100, metrics) on 2 cores.", ""]
    for dataset in [d for d in DATASETS if any(r["dataset"] == d for r in rows)]:
        here = [r for r in rows if r["dataset"] == dataset]
        m0 = here[0]["metrics"]
        lines += [f"**{dataset}** ({DATASETS[dataset][2]}; {m0['corpus']:,} items, {m0['queries']:,} test queries, "
                  f"{here[0]['epochs']} epochs)", "",
                  "| model | " + " | ".join(c.replace("recall", "R").replace("ndcg", "NDCG") for c in cols)
                  + " | eval s | train s |", "|---" * (len(cols) + 3) + "|",
                  "| popularity | " + " | ".join(f"{m0['popularity'][c]:.4f}" for c in cols) + " | | |"]
        for variant in [v for v in VARIANTS if any(r["variant"] == v for r in here)]:
            runs = [r for r in here if r["variant"] == variant]
            lines.append(f"| two-tower, {variant} | " + " | ".join(ms([r["metrics"][c] for r in runs]) for c in cols)
                         + f" | {ms([r['eval_seconds'] for r in runs], '.1f')} | {ms([r['train_seconds'] for r in runs], '.0f')} |")
        lines.append("")
    ann = [r for r in rows if "ann" in r]
    if ann:
        lines += ["**ANN index** (faiss-cpu IndexHNSWFlat, inner product, M 32, efConstruction 200, efSearch 128; "
                  "the exported item embeddings of seed 0, default variant; the test queries' embeddings from the "
                  "query tower; one query at a time)", "",
                  "| dataset | items | queries | HNSW recall@10 vs exact | HNSW ms/query | exact NumPy ms/query |",
                  "|---|---|---|---|---|---|"]
        for r in ann:
            a = r["ann"]
            lines.append(f"| {r['dataset']} | {r['metrics']['corpus']:,} | {a['queries']:,} | {a['recall']:.4f} | "
                         f"{a['ann_ms_per_query']:.3f} | {a['exact_ms_per_query']:.3f} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)




def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--backend", default="jax", choices=["tensorflow", "jax"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report", action="store_true", help="only rewrite the docs section from bench/out/retrieval.json")
    args = p.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.report:
        write_section(DOC, START, END, markdown(json.loads(OUT_JSON.read_text())))
        return
    if args.quick:
        args.datasets, args.seeds, args.epochs = "movielens", "0", 1
    runs = []
    for dataset in args.datasets.split(","):
        for variant in args.variants.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                r = run_one(dataset, variant, seed, args.epochs, export=variant == "default" and seed == 0)
                runs.append(r)
                log(f"{dataset} {variant} seed {seed}: R@100 {r['metrics']['recall@100']:.4f} "
                    f"(popularity {r['metrics']['popularity']['recall@100']:.4f}), eval {r['eval_seconds']} s, "
                    f"train {r['train_seconds']} s" + (f", ANN recall@10 {r['ann']['recall']:.4f}" if "ann" in r else ""))
    command = "python bench/retrieval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"command": command.strip(), "environment": environment(args.backend), "runs": runs}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(doc, indent=1))
    write_section(DOC, START, END, markdown(doc))
    log(f"wrote {OUT_JSON} and {DOC}")


if __name__ == "__main__":
    main()
