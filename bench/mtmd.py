"""MTMD on the synthetic multi-domain data: against one two-tower per domain (the paper's Table 1),
its ablations (Table 6), and the cost of a row as domains are added.

For each seed, `mtmd_synthetic` rows (3 surfaces × 2 ad product types, teacher CTR and GCTR) are
split 80/10/10 once; every model trains on the same training rows with KL to the teacher:

    mtmd                  the zoo config: one model, domain experts in both towers
    per-domain two-tower  one model per (surface, product type), each on its domain's rows only:
                          embeddings + continuous features -> MLP [256, 128] (batch norm) -> a projection per
                          task (ctr 128, gctr 32) in each tower, scored by DotScore; the same
                          tasks, losses and GCTR chain
    ablations             mtmd without domain adaptation (SE), without per-domain normalisation,
                          without DCNv2, without the routing layer

The metric is LogMAE (kzoo.metrics.prob_log_mae) of the test rows' predictions against the
teacher, per domain × task and overall. The cost table times one MTMDTower (the paper's sizes)
on a batch of 4,096 rows as the number of domain experts grows, on TensorFlow with only each
row's expert run (`partition`) and with every expert run (`dense`, what JAX does).

Results: bench/out/mtmd.json and the section of docs/results.md between `<!-- mtmd:start -->`
and `<!-- mtmd:end -->`.

    python bench/mtmd.py                 # 3 seeds, small experts (about an hour on 2 cores)
    python bench/mtmd.py --quick         # 1 seed, 12,000 rows, 1 epoch
    python bench/mtmd.py --report        # rewrite the docs section from the JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import environment, log, ms, write_section  # noqa: E402

OUT_JSON = REPO / "bench" / "out" / "mtmd.json"
DOC = REPO / "docs" / "results.md"
START, END = "<!-- mtmd:start -->", "<!-- mtmd:end -->"
TASKS = ("ctr", "gctr")
ABLATIONS = {"no domain adaptation": {"adaptation": False}, "no per-domain normalisation": {"domain_norm": False},
             "no DCNv2": {"cross": False}, "no routing": {"routing": False}}




# The zoo config has the paper's sizes; "small" fits three seeds and four ablations in an hour on
# 2 CPU cores (the cost table always uses the paper's sizes).
SIZES = {"paper": {}, "small": {"deep_units": [128, 64], "shallow_units": [32], "routing_units": [32],
                                "tasks": {"ctr": 32, "gctr": 16}, "low_rank": 16}}


def mtmd_spec(epochs: int, change: dict | None = None, sizes: str = "small") -> dict:
    raw = json.loads((REPO / "zoo_configs" / "mtmd.json").read_text())
    from kzoo import data as kdata

    raw["features"] = {**kdata.bundled_dataset("mtmd_synthetic"), "split_column": "split"}
    for b in raw["blocks"]:
        if b["type"] == "MTMDTower":
            b["args"].update({**SIZES[sizes], **(change or {})})
    raw["train"]["epochs"] = epochs
    raw["train"]["batch_size"] = 256
    # Every model (MTMD and each small per-domain one) trains until its validation loss stops falling.
    raw["train"]["early_stopping"] = {"monitor": "val_loss", "patience": 1}
    return raw


def baseline_spec(epochs: int, sizes: str = "small") -> dict:
    """One domain's two-tower: no domain features, no experts; the same tasks, losses and task
    embedding sizes."""
    raw = mtmd_spec(epochs, sizes=sizes)
    # A domain has a sixth of the rows: batches of 64 and up to 5x the epochs give it as many steps
    # as the shared model gets, so the baseline is not undertrained (early stopping still applies).
    raw["train"].update(batch_size=64, epochs=5 * epochs, early_stopping={"monitor": "val_loss", "patience": 2})
    dims = SIZES[sizes].get("tasks", {"ctr": 128, "gctr": 32})
    raw["name"] = "per_domain_two_tower"
    raw["groups"] = {k: v for k, v in raw["groups"].items() if k not in ("surface", "product", "query_shallow",
                                                                         "item_shallow")}
    blocks = []
    for side, p in (("query", "q"), ("item", "i")):
        blocks += [
            {"name": f"{p}_emb", "type": "FeatureEmbedding", "inputs": [f"group:{side}_fields"], "args": {"dim": 16}},
            {"name": f"{p}_dense", "type": "DenseFeatures", "inputs": [f"group:{side}_dense"]},
            {"name": f"{p}_joined", "type": "Concat", "inputs": [f"{p}_emb", f"{p}_dense"]},
            {"name": f"{p}_mlp", "type": "MLP", "inputs": [f"{p}_joined"], "args": {"units": [256, 128], "norm": "batch"}},
            {"name": f"{p}_ctr", "type": "MLP", "inputs": [f"{p}_mlp"],
             "args": {"units": [dims["ctr"]], "output_activation": None}},
            {"name": f"{p}_gctr", "type": "MLP", "inputs": [f"{p}_mlp"],
             "args": {"units": [dims["gctr"]], "output_activation": None}},
        ]
    blocks += [{"name": "ctr_score", "type": "DotScore", "inputs": ["q_ctr", "i_ctr"]},
               {"name": "gctr_score", "type": "DotScore", "inputs": ["q_gctr", "i_gctr"]}]
    raw["blocks"] = blocks
    for t in raw["tasks"]:
        t.pop("report_by", None)
    return raw


def frame_for(rows: int, seed: int):
    import numpy as np

    from kzoo.loaders_mtmd import mtmd_synthetic

    frame = mtmd_synthetic(rows, seed=seed)
    u = np.random.default_rng(seed).random(len(frame))
    frame["split"] = np.where(u < 0.8, "train", np.where(u < 0.9, "validation", "test"))
    return frame


def train(raw: dict, frame, seed: int) -> dict:
    import kzoo

    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = kzoo.train(raw, frame, Path(tmp) / "run", seed=seed, verbose=0)
        m["wall_seconds"] = round(time.time() - t, 1)
    return m


def run_seed(seed: int, rows: int, epochs: int, ablations: bool, sizes: str) -> list[dict]:
    frame = frame_for(rows, seed)
    out = []
    m = train(mtmd_spec(epochs, sizes=sizes), frame, seed)
    out.append({"model": "mtmd", "seed": seed, "metrics": {t: m[t] for t in TASKS}, "params": m["params"],
                "wall_seconds": m["wall_seconds"]})
    log(f"seed {seed} mtmd: LogMAE ctr {m['ctr']['logmae']:.4f} gctr {m['gctr']['logmae']:.4f} ({m['wall_seconds']} s)")
    for surface in ("home", "search", "related"):
        for product in ("standard", "shopping"):
            part = frame[(frame["surface"] == surface) & (frame["product_type"] == product)].reset_index(drop=True)
            m = train(baseline_spec(epochs, sizes), part, seed)
            out.append({"model": "per-domain two-tower", "domain": f"{surface}|{product}", "seed": seed,
                        "metrics": {t: m[t] for t in TASKS}, "params": m["params"], "wall_seconds": m["wall_seconds"]})
            log(f"seed {seed} per-domain {surface}|{product}: LogMAE ctr {m['ctr']['logmae']:.4f}")
    for name, change in (ABLATIONS.items() if ablations else []):
        m = train(mtmd_spec(epochs, change, sizes), frame, seed)
        out.append({"model": name, "seed": seed, "metrics": {t: m[t] for t in TASKS}, "params": m["params"],
                    "wall_seconds": m["wall_seconds"]})
        log(f"seed {seed} {name}: LogMAE ctr {m['ctr']['logmae']:.4f} gctr {m['gctr']['logmae']:.4f}")
    return out


def cost_table(domains=(1, 2, 4, 8), batch: int = 4096, repeats: int = 10) -> list[dict]:
    """Milliseconds for one MTMDTower (paper sizes, 2 tasks) on `batch` rows spread over its domains."""
    import numpy as np
    import tensorflow as tf

    from kzoo.blocks.mtmd import MTMDTower

    rng = np.random.default_rng(0)
    fields = tf.constant(rng.normal(size=(batch, 2, 16)), tf.float32)
    dense = tf.constant(rng.normal(size=(batch, 2)), tf.float32)
    shallow = tf.constant(rng.normal(size=(batch, 1, 8)), tf.float32)
    out = []
    for n in domains:
        domain = tf.constant(rng.integers(0, n, (batch, 1)), tf.int32)
        row = {"domains": n}
        for execution in ("partition", "dense"):
            tower = MTMDTower(domains=n, tasks={"ctr": 128, "gctr": 32}, execution=execution)
            fn = tf.function(lambda a, b, c, d, tower=tower: tower([a, b, c, d], training=False))
            fn(fields, dense, shallow, domain)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn(fields, dense, shallow, domain)
                times.append(time.perf_counter() - t)
            row[execution] = round(1000 * statistics.median(times), 2)
        out.append(row)
        log(f"cost: {n} domains: partition {row['partition']} ms, dense {row['dense']} ms per {batch} rows")
    return out




def markdown(doc: dict) -> str:
    rows, env = doc["runs"], doc["environment"]
    mt = [r for r in rows if r["model"] == "mtmd"]
    domains = sorted(mt[0]["metrics"]["ctr"]["by"])
    lines = [START, "## MTMD on synthetic multi-domain data", "",
             f"`{doc['command']}` ({env['date']}, {env['machine']}, Keras {env['keras']}, {env['backend']} backend, "
             f"Python {env['python']}). `mtmd_synthetic:{doc['rows']}` (3 surfaces × 2 ad product types, "
             f"kzoo/loaders_mtmd.py), one 80/10/10 split per seed; MTMD up to {doc['epochs']} epochs in batches of 256, "
             f"each per-domain model up to {5 * doc['epochs']} in batches of 64, all with early stopping on "
             f"their validation loss; KL to the teacher's CTR and GCTR; expert sizes `{doc['sizes']['name']}` "
             f"({json.dumps({k: v for k, v in doc['sizes'].items() if k != 'name'}) or 'the paper'}); LogMAE of the "
             "test rows against the teacher (lower is better), mean ± sd over seeds.", "",
             "**MTMD against one two-tower per domain** (the paper's Table 1 shape; Δ = MTMD / per-domain − 1)", "",
             "| domain (surface, product) | test rows | CTR per-domain | CTR MTMD | Δ | GCTR per-domain | GCTR MTMD | Δ |",
             "|---|---|---|---|---|---|---|---|"]
    for d in domains:
        base = [r for r in rows if r.get("domain") == d]
        cells = []
        for t in TASKS:
            b = [r["metrics"][t]["logmae"] for r in base]
            m = [r["metrics"][t]["by"][d]["logmae"] for r in mt]
            cells += [ms(b), ms(m), f"{statistics.mean(m) / statistics.mean(b) - 1:+.1%}"]
        lines.append(f"| {d.replace('|', ', ')} | {mt[0]['metrics']['ctr']['by'][d]['examples']:,} | " + " | ".join(cells) + " |")
    lines += ["", "**Ablations** (the paper's Table 6 shape: each row removes one part of the full MTMD)", "",
              "| model | CTR LogMAE | Δ vs full | GCTR LogMAE | Δ vs full | params |", "|---|---|---|---|---|---|"]
    full = {t: statistics.mean(r["metrics"][t]["logmae"] for r in mt) for t in TASKS}
    for model in ["mtmd"] + [a for a in ABLATIONS if any(r["model"] == a for r in rows)]:
        runs = [r for r in rows if r["model"] == model]
        cells = []
        for t in TASKS:
            v = [r["metrics"][t]["logmae"] for r in runs]
            cells += [ms(v), "–" if model == "mtmd" else f"{statistics.mean(v) / full[t] - 1:+.1%}"]
        lines.append(f"| {'full MTMD' if model == 'mtmd' else model} | " + " | ".join(cells) + f" | {runs[0]['params']:,} |")
    if doc.get("cost"):
        lines += ["", "**Cost of a row as domains are added** (one MTMDTower with the paper's sizes, 2 tasks, "
                  "inference on a batch of 4,096 rows spread evenly over the domains, TensorFlow, median of 10; ms per batch)", "",
                  "| domain experts | only each row's expert (TensorFlow, every export) | every expert on every row (JAX) |",
                  "|---|---|---|"]
        for c in doc["cost"]:
            lines.append(f"| {c['domains']} | {c['partition']} | {c['dense']} |")
    lines += ["", END]
    return "\n".join(lines)




def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--rows", type=int, default=30000)
    p.add_argument("--epochs", type=int, default=5, help="at most (per-domain models: 5x); early stopping on the "
                                                       "validation loss")
    p.add_argument("--sizes", default="small", choices=sorted(SIZES))
    p.add_argument("--no-ablations", action="store_true")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"  # MTMD runs only each row's domain expert there
    if args.report:
        write_section(DOC, START, END, markdown(json.loads(OUT_JSON.read_text())))
        return
    if args.quick:
        args.seeds, args.rows, args.epochs = "0", 12000, 1
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        runs += run_seed(seed, args.rows, args.epochs, not args.no_ablations, args.sizes)
    command = "python bench/mtmd.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"command": command.strip(), "environment": environment("tensorflow"), "rows": args.rows,
           "epochs": args.epochs, "sizes": {"name": args.sizes, **SIZES[args.sizes]}, "runs": copy.deepcopy(runs), "cost": cost_table()}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(doc, indent=1))
    write_section(DOC, START, END, markdown(doc))
    log(f"wrote {OUT_JSON} and {DOC}")


if __name__ == "__main__":
    main()
