"""Sequence-model quality: DIN, DIEN, BST and a sequence-less baseline on real user histories.

For each dataset (MovieLens-100K, Amazon Beauty and Sports slices from ../shared/data), each
model and each seed, `kzoo.train` runs the zoo config on the loader's leave-last-out split, and
the test split's AUC, GAUC (per-user AUC weighted by rows) and logloss are kept with the test
predictions, so every sequence model's AUC gap to the baseline gets a paired bootstrap interval
(kzoo.metrics.auc_difference, seeds averaged). The baseline is the `deepfm` zoo config, whose
FeatureEmbedding mean-pools every history into one field ("DeepFM with the mean-pooled history").

Results: bench/out/sequence.json (every run) and the section of docs/results.md between
`<!-- sequence:start -->` and `<!-- sequence:end -->` (appended once if absent).

    python bench/sequence.py                      # the full table (about an hour on 2 cores)
    python bench/sequence.py --quick              # a smoke run: 1 seed, small slices
    python bench/sequence.py --report             # rewrite the docs section from the JSON
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import data_dir, environment, log, ms, write_section  # noqa: E402

OUT_JSON = REPO / "bench" / "out" / "sequence.json"
DOC = REPO / "docs" / "results.md"
START, END = "<!-- sequence:start -->", "<!-- sequence:end -->"
MODELS = ["deepfm", "din", "dien", "bst"]
BASELINE = "deepfm"
DATASETS = {  # name -> (loader, file or folder under the data dir)
    "movielens": ("movielens", "movielens_100k"),
    "beauty": ("amazon", "amazon_s3rec_seq/Beauty.txt"),
    "sports": ("amazon", "amazon_s3rec_seq/Sports_and_Outdoors.txt"),
}




def data_argument(dataset: str, users: int | None, tmp: Path) -> str:
    """The `--data` argument for `dataset`: Amazon files are cut to their first `users` lines (users)
    with the attribute map copied beside, so a table fits this machine's time."""
    loader, relative = DATASETS[dataset]
    source = data_dir() / relative
    if not source.exists():
        raise SystemExit(f"{source} is absent: set KZOO_DATA_DIR")
    if loader == "amazon" and users:
        folder = tmp / dataset
        folder.mkdir(parents=True, exist_ok=True)
        lines = source.read_text().splitlines()[:users]
        (folder / source.name).write_text("\n".join(lines) + "\n")
        attributes = source.with_name(f"{source.stem}_item2attributes.json")
        if attributes.is_file():
            (folder / attributes.name).write_bytes(attributes.read_bytes())
        source = folder / source.name
    return f"{loader}:{source}"


def spec_for(model: str, loader: str) -> dict:
    from kzoo import data as kdata

    raw = json.loads((REPO / "zoo_configs" / f"{model}.json").read_text())
    raw["features"] = kdata.bundled_dataset(loader)
    for task in raw["tasks"]:
        task["gauc_by"] = "user_id"  # the baseline config has none; GAUC for every row of the table
    return raw


def run_one(job: dict) -> dict:
    """One training run in a worker process: metrics and the test split's predictions."""
    import kzoo
    from kzoo import data as kdata
    from kzoo.pipeline import split_frames

    spec = kzoo.load_spec(spec_for(job["model"], job["loader"]))
    frame = kdata.load(job["data"], spec.dataset)[0]
    test = split_frames(spec, frame)[2]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = kzoo.train(spec, job["data"], Path(tmp) / "run", seed=job["seed"], epochs=job["epochs"], verbose=0)
        wall = time.time() - t
        pred = kzoo.predict(Path(tmp) / "run", test)["ctr"].to_numpy()
    return {**{k: job[k] for k in ("dataset", "model", "seed", "epochs")},
            "auc": m["ctr"]["auc"], "gauc": m["ctr"].get("gauc"), "logloss": m["ctr"]["logloss"],
            "examples": m["ctr"]["examples"], "params": m["params"], "examples_per_s": m["train_examples_per_s"],
            "wall_seconds": round(wall, 1), "labels": test["label"].astype(int).tolist(),
            "predictions": [round(float(p), 6) for p in pred]}




def markdown(doc: dict) -> str:
    from kzoo.metrics import auc_difference

    rows, env = doc["runs"], doc["environment"]
    lines = [START, "## Sequence models", "",
             f"`{doc['command']}` ({env['date']}, {env['machine']}, Keras {env['keras']}, "
             f"{env['backend']} backend, Python {env['python']}). Test split of each loader's leave-last-out "
             "split by user in time order; mean ± sd over seeds; the gap is the model's AUC minus the "
             f"baseline's ({BASELINE}: every history mean-pooled into one field) with its 95 % paired "
             "bootstrap interval over test rows, seeds averaged. Examples/s: training, 2 jobs sharing 2 cores.", ""]
    for dataset in [d for d in DATASETS if any(r["dataset"] == d for r in rows)]:
        here = [r for r in rows if r["dataset"] == dataset]
        base = [r for r in here if r["model"] == BASELINE]
        note = doc["data"].get(dataset, "")
        lines += [f"**{dataset}** ({note}; {here[0]['examples']} test rows)", "",
                  "| model | AUC | GAUC | logloss | AUC gap to baseline [95 % CI] | examples/s | params |",
                  "|---|---|---|---|---|---|---|"]
        for model in [m for m in MODELS if any(r["model"] == m for r in here)]:
            runs = sorted([r for r in here if r["model"] == model], key=lambda r: r["seed"])
            gap = "–"
            if model != BASELINE and base:
                d = auc_difference(runs[0]["labels"], [r["predictions"] for r in runs],
                                   [r["predictions"] for r in base], n_boot=1000)
                verdict = "better" if d["low"] > 0 else ("worse" if d["high"] < 0 else "no clear difference")
                gap = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] {verdict}"
            lines.append(f"| {model} | {ms([r['auc'] for r in runs])} | {ms([r['gauc'] for r in runs])} | "
                         f"{ms([r['logloss'] for r in runs])} | {gap} | {ms([r['examples_per_s'] for r in runs], '.0f')} | "
                         f"{runs[0]['params']:,} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_doc(doc: dict) -> None:
    write_section(DOC, START, END, markdown(doc))




def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--users", type=int, default=6000, help="Amazon: the first N users of each file")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--backend", default="tensorflow", choices=["tensorflow", "jax"])
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 300 Amazon users")
    p.add_argument("--report", action="store_true", help="only rewrite the docs section from bench/out/sequence.json")
    args = p.parse_args(argv)
    os.environ["KERAS_BACKEND"] = args.backend
    if args.report:
        write_doc(json.loads(OUT_JSON.read_text()))
        return
    if args.quick:
        args.seeds, args.users = "0", 300
    datasets, models = args.datasets.split(","), args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kzoo-seq-bench-"))
    jobs, notes = [], {}
    for dataset in datasets:
        data = data_argument(dataset, args.users, tmp)
        loader = DATASETS[dataset][0]
        notes[dataset] = ("MovieLens-100K, all 943 users" if loader == "movielens"
                          else f"first {args.users} users of {Path(DATASETS[dataset][1]).name}, 1 sampled negative per positive")
        for seed in seeds:
            for model in models:
                jobs.append({"dataset": dataset, "model": model, "seed": seed, "loader": loader, "data": data,
                             "epochs": args.epochs})
    log(f"{len(jobs)} runs, {args.jobs} at a time, {args.backend}")
    runs = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_one, j): j for j in jobs}
        for f in concurrent.futures.as_completed(futures):
            r = f.result()
            runs.append(r)
            log(f"{r['dataset']} {r['model']} seed {r['seed']}: AUC {r['auc']:.4f} GAUC {r['gauc']:.4f} "
                f"({r['wall_seconds']} s)")
    command = "python bench/sequence.py " + " ".join(argv if argv is not None else sys.argv[1:])
    doc = {"command": command.strip(), "environment": environment(args.backend), "data": notes, "runs": runs}
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(doc))
    write_doc(doc)
    log(f"wrote {OUT_JSON} and {DOC}")


if __name__ == "__main__":
    main()
