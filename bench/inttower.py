"""IntTower against two-tower models on one split: pointwise AUC and Recall@K against the corpus.

On MovieLens-100K (the loader's leave-last-out split by user in time order), for each seed:

    int_tower            the zoo config: Light-SE, FE-Block (multi-head, every user layer), CIR
    two_tower_pointwise  the same towers without Light-SE and CIR, one head, the item and user
                         outputs' dot product trained with BCE (the paper's DSSM-style baseline)
    two_tower            the retrieval zoo config (in-batch softmax on the positives, logQ)

AUC and GAUC of the pointwise score on every test rating (liked or not), and Recall@K / NDCG@K
of each test positive against the whole item corpus (1,682 movies): for the pointwise models
the trained score block scores every (query, item) pair (kzoo.inttower.scored_rank_report),
for two_tower its own report. The popularity baseline is printed beside them.

Results: bench/out/inttower.json and the section of docs/results.md between
`<!-- inttower:start -->` and `<!-- inttower:end -->`.

    python bench/inttower.py             # 3 seeds (about 15 minutes on 2 cores)
    python bench/inttower.py --report    # rewrite the docs section from the JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import data_dir, environment, log, ms, write_section  # noqa: E402

OUT_JSON = REPO / "bench" / "out" / "inttower.json"
DOC = REPO / "docs" / "results.md"
START, END = "<!-- inttower:start -->", "<!-- inttower:end -->"
MODELS = ["int_tower", "two_tower_pointwise", "two_tower"]
COLS = ["auc", "gauc", "recall@10", "ndcg@10", "recall@50", "recall@100", "ndcg@100"]




def spec_for(model: str, epochs: int) -> dict:
    name = "two_tower" if model == "two_tower" else "int_tower"
    raw = json.loads((REPO / "zoo_configs" / f"{name}.json").read_text())
    if model == "two_tower_pointwise":
        raw["name"] = model
        blocks = {b["name"]: b for b in raw["blocks"]}
        for side in ("query", "item"):
            blocks[f"{side}_tower"]["inputs"] = [f"{side}_emb"]
            blocks[f"{side}_tower"]["args"].update(project="output", heads=1)
        blocks["score"]["args"] = {"query_heads": 1, "item_heads": 1}
        raw["blocks"] = [b for b in raw["blocks"] if b["type"] != "LightSE"]
        raw["tasks"] = [t for t in raw["tasks"] if t["type"] != "contrastive"]
    raw["train"]["epochs"] = epochs
    return copy.deepcopy(raw)


def run_one(model: str, seed: int, epochs: int) -> dict:
    import kzoo
    from kzoo.pipeline import load_for, split_frames
    from kzoo.inttower import scored_rank_report
    from kzoo.rundir import RunDir

    data = f"movielens:{data_dir() / 'movielens_100k'}"
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = kzoo.train(spec_for(model, epochs), data, Path(tmp) / "run", seed=seed, verbose=0)
        wall = time.time() - t
        run = RunDir(Path(tmp) / "run")
        spec, net = run.spec(), run.model()
        if model == "two_tower":
            report = m["retrieval"]
            test = split_frames(*load_for(spec, data))[2]
            from kzoo.metrics import gauc

            score = kzoo.predict(Path(tmp) / "run", test)["retrieval"].to_numpy()
            report = {**report, "gauc": gauc(test["label"].to_numpy(), score, test["user_id"].to_numpy())}
        else:
            from kzoo.retrieval import Catalogue
            from kzoo.features import raw_inputs
            from kzoo.graph import features_reached

            frames = split_frames(*load_for(spec, data))
            columns = [f["name"] for f in raw_inputs(spec.features, features_reached(spec, "item_tower"))]
            catalogue = Catalogue.from_frames(list(frames), frames[0][frames[0]["label"] == 1], "item_id", columns)
            ranks = scored_rank_report(spec, net, run.preprocessing()["stats"], frames[2], catalogue, "query_tower",
                                       "item_tower", "score")
            report = {**m["ctr"], **ranks}
    return {"model": model, "seed": seed, "epochs": epochs, "report": report, "train_seconds": round(wall, 1),
            "params": m["params"]}




def markdown(doc: dict) -> str:
    rows, env = doc["runs"], doc["environment"]
    pop = next((r["report"]["popularity"] for r in rows if "popularity" in r["report"]), {})
    lines = [START, "## IntTower against two-tower models", "",
             f"`{doc['command']}` ({env['date']}, {env['machine']}, Keras {env['keras']}, {env['backend']} backend, "
             f"Python {env['python']}). MovieLens-100K, the loader's leave-last-out split; mean ± sd over seeds. "
             "AUC / GAUC: the pointwise score on every test rating (liked = rating ≥ 4). Recall / NDCG: each test "
             "positive's movie among all 1,682, every (user, movie) pair scored by the model's own score.", "",
             "| model | " + " | ".join(c.upper() if c in ("auc", "gauc") else c for c in COLS) + " | params |",
             "|---" * (len(COLS) + 2) + "|"]
    if pop:
        lines.append("| popularity | – | – | " + " | ".join(f"{pop[c]:.4f}" for c in COLS[2:]) + " | |")
    for model in [m for m in MODELS if any(r["model"] == m for r in rows)]:
        runs = [r for r in rows if r["model"] == model]
        lines.append(f"| {model} | " + " | ".join(ms([r["report"].get(c) for r in runs]) for c in COLS)
                     + f" | {runs[0]['params']:,} |")
    lines += ["", END]
    return "\n".join(lines)




def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--backend", default="jax", choices=["tensorflow", "jax"])
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.report:
        write_section(DOC, START, END, markdown(json.loads(OUT_JSON.read_text())))
        return
    runs = []
    for model in args.models.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            r = run_one(model, seed, args.epochs)
            runs.append(r)
            log(f"{model} seed {seed}: AUC {r['report'].get('auc', float('nan')):.4f} "
                f"R@100 {r['report']['recall@100']:.4f} ({r['train_seconds']} s)")
    command = "python bench/inttower.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"command": command.strip(), "environment": environment(args.backend), "runs": runs}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(doc, indent=1))
    write_section(DOC, START, END, markdown(doc))
    log(f"wrote {OUT_JSON} and {DOC}")


if __name__ == "__main__":
    main()
