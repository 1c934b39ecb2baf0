"""Quality of every ranking zoo config on the real Criteo and Avazu slices, against FuxiCTR.

    .venv/bin/python bench/quality.py                         # full table -> docs/results.md
    .venv/bin/python bench/quality.py --models lr,dcn_v2 --seeds 0 --datasets criteo

Each (dataset, model, seed) trains with `kzoo.train` on the fixed 80/10/10 split (split seed 0),
evaluated on the test split. Every backend runs in its own subprocess (KERAS_BACKEND is per
process). With the peer venv set up (`bash bench/peer/setup.sh`), FuxiCTR's DCNv2 and DeepFM
train on the very same split files with matching sizes, in the same run, and the table shows
kzoo/FuxiCTR ratios of AUC and of training examples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import DATA, RANKING, apply_setting, data_dir, spec_for, tuned_setting  # noqa: E402

PEER = {"dcn_v2": "DCNv2", "deepfm": "DeepFM"}


def variant_spec(model: str, dataset: str, variant: str) -> dict:
    """The zoo config as-is ("default"), or with the settings bench/tune.py chose ("tuned")."""
    raw = spec_for(model, dataset)
    if variant == "default":
        return raw
    return apply_setting(raw, tuned_setting(model, dataset))


def test_predictions(run: Path, data: str):
    """Labels and predictions of the run's model on the test split (for paired comparisons)."""
    from kzoo.features import Preprocessor
    from kzoo.trainer import load_run, predict_frame, prepare_data, split_frames

    spec, prep, model = load_run(run)
    spec, frame = prepare_data(spec, data)
    test_df = split_frames(spec, frame)[2]
    pred = predict_frame(model, spec, Preprocessor(spec.features, prep["stats"], prep["used"]), test_df)["ctr"]
    return test_df[spec.task_label(spec.tasks[0])].astype(int).tolist(), [round(float(p), 5) for p in pred]


def worker(args) -> None:
    """Train the requested grid on this process's backend; one JSON line per run on stdout."""
    import keras

    import kzoo

    for dataset in args.datasets:
        data = f"{dataset}:{data_dir() / DATA[dataset]}"
        for model in args.models:
            spec = kzoo.load_spec(variant_spec(model, dataset, args.variant))
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    m = kzoo.train(spec, data, Path(tmp) / "run", seed=seed, verbose=0)
                    labels, preds = test_predictions(Path(tmp) / "run", data)
                row = {"backend": keras.backend.backend(), "variant": args.variant, "dataset": dataset,
                       "model": model, "seed": seed, "auc": m["ctr"]["auc"], "logloss": m["ctr"]["logloss"],
                       "params": m["params"], "fit_seconds": m["fit_seconds"],
                       "examples_per_s": m["train_examples_per_s"], "seconds": m["seconds"],
                       "labels": labels, "predictions": preds}
                print(json.dumps(row), flush=True)
                print(f"  [{row['backend']}] {dataset:<6} {model:<16} seed {seed}: auc {row['auc']:.4f} "
                      f"logloss {row['logloss']:.4f} ({row['seconds']:.0f} s)", file=sys.stderr, flush=True)


FAILED: list[str] = []


def run_backend(backend: str, args, models: list[str], datasets: list[str]) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--datasets", ",".join(datasets), "--models",
           ",".join(models), "--seeds", ",".join(map(str, args.seeds)), "--variant", args.variant]
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    print(f"== kzoo on {backend}: {', '.join(datasets)}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    rows = [json.loads(line) for line in proc.stdout if line.startswith("{")]
    if proc.wait() != 0:  # keep what finished; main() reports the failure after writing it
        FAILED.append(f"the {backend} worker on {', '.join(datasets)} (exit {proc.returncode})")
    return rows


def run_peer(args) -> list[dict]:
    """FuxiCTR's DCNv2 / DeepFM on the same split files, in its own venv."""
    python = REPO / "bench" / "peer" / ".venv" / "bin" / "python"
    if not python.is_file():
        print("== FuxiCTR peer: not set up (bash bench/peer/setup.sh); skipped", file=sys.stderr)
        return []
    from kzoo import data as kdata

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            schema = kdata.bundled_dataset(dataset)
            frame, _ = kdata.load(f"{dataset}:{data_dir() / DATA[dataset]}")
            frame = kdata.conform(frame, schema)
            parts = dict(zip(("train", "valid", "test"), kdata.split(frame, seed=0)))
            for name, part in parts.items():
                part.to_csv(Path(tmp) / f"{dataset}_{name}.csv", index=False)
            (Path(tmp) / f"{dataset}.json").write_text(json.dumps(schema))
            for model, peer_model in PEER.items():
                if model not in args.models:
                    continue
                for seed in args.seeds:
                    out = Path(tmp) / f"{dataset}_{model}_{seed}.json"
                    cmd = [str(python), str(REPO / "bench" / "peer" / "fuxictr_run.py"),
                           "--train", f"{tmp}/{dataset}_train.csv", "--valid", f"{tmp}/{dataset}_valid.csv",
                           "--test", f"{tmp}/{dataset}_test.csv", "--schema", f"{tmp}/{dataset}.json",
                           "--model", peer_model, "--embedding-dim", "16", "--mlp", "256,128",
                           "--cross-layers", "3", "--low-rank", "32", "--batch-size", "256", "--lr", "0.003",
                           "--epochs", "1", "--seed", str(seed), "--out", str(out)]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"  FuxiCTR {peer_model} on {dataset} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                        continue
                    res = json.loads(out.read_text())
                    rows.append({"backend": "fuxictr (torch)", "dataset": dataset, "model": model, "seed": seed,
                                 "auc": res["test_auc"], "logloss": res["test_logloss"], "params": res.get("params"),
                                 "examples_per_s": res["train_examples_per_s"], "notes": res.get("notes", "")})
                    print(f"  [fuxictr] {dataset:<6} {model:<16} seed {seed}: auc {res['test_auc']:.4f}",
                          file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> dict:
    """(dataset, model, backend, variant) -> mean/std AUC, logloss, params, speed, test predictions."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["backend"], r.get("variant", "default")), []).append(r)
    out = {}
    for key, rs in groups.items():
        aucs = [r["auc"] for r in rs]
        out[key] = {"auc": statistics.mean(aucs), "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                    "logloss": statistics.mean(r["logloss"] for r in rs), "params": rs[0]["params"],
                    "examples_per_s": statistics.median(r["examples_per_s"] for r in rs),
                    "seconds": statistics.mean(r.get("seconds") or 0 for r in rs), "n": len(rs),
                    "labels": rs[0].get("labels"), "predictions": [r["predictions"] for r in rs if "predictions" in r]}
    return out


def versus_lr(summary: dict, dataset: str, model: str, backend: str = "tensorflow", variant: str = "tuned"):
    """Paired bootstrap of mean AUC(model) - mean AUC(LR) over the seeds, on the same test rows."""
    from kzoo.metrics import auc_difference

    s, lr = summary.get((dataset, model, backend, variant)), summary.get((dataset, "lr", backend, variant))
    if model == "lr" or not s or not lr or not s["predictions"] or not lr["predictions"]:
        return None
    d = auc_difference(s["labels"], s["predictions"], lr["predictions"], n_boot=1000)
    d["verdict"] = "better" if d["low"] > 0 else ("worse" if d["high"] < 0 else "no clear difference")
    return d


VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "no clear difference": "tab:gray"}


def plot_versus_lr(gaps: dict, datasets: list[str], png: Path) -> bool:
    """One panel per dataset: each model's tuned AUC gap to tuned LR with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [d for d in datasets if any(k[0] == d for k in gaps)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharey=True, squeeze=False)
    for ax, dataset in zip(axes[0], panels):
        rows = [(m, g) for (d, m), g in gaps.items() if d == dataset]
        ys = range(len(rows))
        colors = [VERDICT_COLORS[g["verdict"]] for _, g in rows]
        for y, (_, g), color in zip(ys, rows, colors):
            ax.errorbar(g["diff"], y, xerr=[[g["diff"] - g["low"]], [g["high"] - g["diff"]]], fmt="o",
                        color=color, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(list(ys), [m for m, _ in rows])
        if ax is axes[0][0]:
            ax.invert_yaxis()  # the y axis is shared: invert it once, first model on top
        ax.set_title(f"{dataset.capitalize()}: tuned model AUC − tuned LR AUC")
        ax.set_xlabel("test AUC difference (mean over seeds), 95 % paired bootstrap interval")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def markdown(summary: dict, models: list[str], datasets: list[str], commands: list[str], png: Path) -> str:
    import keras
    import tensorflow as tf

    gaps = {(d, m): g for d in datasets for m in models if (g := versus_lr(summary, d, m))}
    plotted = plot_versus_lr(gaps, datasets, png)

    lines = ["# Results: ranking models on real Criteo and Avazu slices", "",
             "Made by " + " and ".join(f"`{c}`" for c in commands) + f" on {time.strftime('%Y-%m-%d')}, "
             f"{os.cpu_count()} CPU cores, no GPU; keras {keras.__version__}, tensorflow {tf.__version__}, "
             f"python {platform.python_version()}.", "",
             "Data: the first 10,000 rows of Kaggle Criteo `train.txt` and 9,999 rows of Kaggle Avazu `train.csv` "
             "(`../shared/data`), split 80/10/10 with split seed 0; metrics on the 1,000-row test split, "
             "mean ± std over model seeds 0, 1, 2.", "",
             "- **default**: every zoo config unchanged (embedding dim 16, Adam 0.003, batch 256, one epoch, no "
             "regularisation: chosen once on the synthetic data's validation split for DCN-V2, then used for all).",
             "- **tuned**: the per-model, per-dataset settings `bench/tune.py` chose on the *validation* split "
             "(learning rate, embedding size, embedding L2, dropout; up to 3 epochs with early stopping on "
             "validation AUC): see [tuning.md](tuning.md) for the search and what was chosen. LR is tuned "
             "the same way (learning rate, L2, epochs).",
             "- **Δ vs LR**: tuned model minus tuned LR, mean test AUC over the seeds, with a 95 % paired "
             "bootstrap interval over the test rows (`kzoo.metrics.auc_difference`, 1,000 resamples). With "
             "1,000 test rows (~200 positives) one AUC has a standard error near 0.015, so only intervals "
             "that exclude 0 say a model is better or worse than LR on this slice.", "",
             "Avazu gets the same graphs rewired for its columns where a config names Criteo columns or dense "
             "features (wide_deep crosses, multi_tower groups, dlrm without the dense tower; `AVAZU_OVERRIDES` "
             "in bench/common.py). `examples/s` in the FuxiCTR tables is training examples over `fit` wall "
             "time, first-step compilation included: on 8k rows that is dominated by kzoo's one-off XLA / "
             "tf.function compilation (5-10 s per run on 2 cores), which eager PyTorch (FuxiCTR) does not pay, "
             "so the speed ratio is a small-data, cold-start figure, not steady-state throughput (see "
             "docs/benchmarks.md for that).", ""]
    if plotted:
        lines += [f"![Tuned models against tuned LR]({png.name})", "",
                  "Green: better than LR beyond the test split's noise; red: worse; grey: no clear difference.", ""]
    for dataset in datasets:
        cols = sorted({(k[3], k[2]) for k in summary if k[0] == dataset and not k[2].startswith("fuxictr")},
                      key=lambda c: (c[0] != "default", c[1] != "tensorflow", c))
        lines += [f"## {dataset.capitalize()}", "",
                  "| model | " + " | ".join(f"AUC {v} ({b})" for v, b in cols) +
                  " | Δ vs LR, tuned (tensorflow) | logloss (tuned) | params (tuned) | seconds / run (tuned) |",
                  "|---|" + "---|" * len(cols) + "---|---|---|---|"]
        lr_auc = {c: summary.get((dataset, "lr", c[1], c[0]), {}).get("auc") for c in cols}
        for model in models:
            cells = []
            for v, b in cols:
                s = summary.get((dataset, model, b, v))
                if not s:
                    cells.append("–")
                    continue
                flag = "" if lr_auc[(v, b)] is None or model == "lr" or s["auc"] > lr_auc[(v, b)] else " ⚠ ≤ LR"
                cells.append(f"{s['auc']:.4f} ± {s['auc_std']:.4f}{flag}")
            info = summary.get((dataset, model, "tensorflow", "tuned")) or next(
                (summary[(dataset, model, b, v)] for v, b in cols if (dataset, model, b, v) in summary), None)
            if info:
                g = gaps.get((dataset, model))
                gap = f"{g['diff']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] {g['verdict']}" if g else "–"
                lines.append(f"| {model} | " + " | ".join(cells) + f" | {gap}"
                             f" | {info['logloss']:.4f} | {info['params']:,} | {info['seconds']:.1f} |")
        peer_rows = [(m, summary[(dataset, m, "fuxictr (torch)", "default")]) for m in PEER
                     if (dataset, m, "fuxictr (torch)", "default") in summary]
        if peer_rows:
            lines += ["", f"### Against FuxiCTR on {dataset.capitalize()} (same split, same sizes, same run)", "",
                      "Both sides with the default settings (dim 16, MLP 256-128, Adam 0.003, batch 256, one "
                      "epoch), measured in one run of `python bench/quality.py`.", "",
                      "| model | backend | kzoo AUC | FuxiCTR AUC | AUC ratio | kzoo ex/s | FuxiCTR ex/s | speed ratio |",
                      "|---|---|---|---|---|---|---|---|"]
            for model, peer in peer_rows:
                for b in sorted({c[1] for c in cols}):
                    s = summary.get((dataset, model, b, "default"))
                    if s:
                        lines.append(f"| {model} | {b} | {s['auc']:.4f} | {peer['auc']:.4f} | "
                                     f"{s['auc'] / peer['auc']:.3f} | {s['examples_per_s']:,.0f} | "
                                     f"{peer['examples_per_s']:,.0f} | {s['examples_per_s'] / peer['examples_per_s']:.2f} |")
        lines.append("")
    lines += ["## Reading the table", ""]
    for dataset in datasets:
        verdicts = {v: [m for (d, m), g in gaps.items() if d == dataset and g["verdict"] == v]
                    for v in ("better", "no clear difference", "worse")}
        if any(verdicts.values()):
            lines.append(f"- {dataset.capitalize()}, tuned: better than LR beyond the test split's noise: "
                         f"{', '.join(verdicts['better']) or 'none'}; no clear difference: "
                         f"{', '.join(verdicts['no clear difference']) or 'none'}; worse: "
                         f"{', '.join(verdicts['worse']) or 'none'}.")
    lines += ["- `⚠ ≤ LR` marks a model whose mean AUC does not beat logistic regression with the same settings "
              "variant and backend; the Δ column says whether the gap is larger than the test split's noise.",
              "- These are 8k-row training splits: one epoch is 32 Adam steps, and LR is a strong baseline at "
              "this size once it trains for 3 epochs (tuned). On the Criteo slice no deep model gets clear of "
              "a tuned LR: its 26 long-tailed categorical columns leave most ids seen a handful of times, and "
              "every deep model reaches its best validation AUC within 1-3 epochs and over-fits after; the "
              "gains the papers report on Criteo are measured on the full 45M rows. On Avazu, where the "
              "feature interactions carry more, most do (the lines above). The bigger models (MaskNet, WuKong, xDeepFM, the "
              "Rocket Launching booster) have far more parameters than 8k rows can pin down; tuning helps "
              "most where the defaults over-fit after the first epoch (tuning.md has the validation AUC of "
              "every epoch of every candidate).",
              "- TensorFlow and JAX now train the same model: an earlier version of this table had TF "
              "rows from Keras' TensorFlow optimizers mis-stepping on embedding rows repeated within a "
              "batch (Adam up to √k × the learning rate; fixed in kzoo, see docs/architecture.md). The "
              "remaining TF/JAX gaps come from the backends' different random initial weights.",
              "- LR's ± 0.0000: its weights start at zero, so the model seed does not change it.",
              "- FuxiCTR runs with its own initialisation (what a user of it gets); its DeepFM on Criteo is "
              "over-confident after 32 steps with it (see bench/peer/README.md; `--init kzoo` brings it to "
              "kzoo's level). FuxiCTR's CrossNetV2 is full-rank, ours low-rank 32.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="criteo,avazu")
    p.add_argument("--models", default=",".join(RANKING))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variant", choices=["default", "tuned"], default="default",
                   help="zoo configs as they are, or with bench/tuned.json's settings (bench/tune.py)")
    p.add_argument("--backends", default="tensorflow,jax")
    p.add_argument("--other-backend-models", default="dcn_v2,deepfm",
                   help="models trained on the backends after the first (all: every model)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes at once, one per (backend, dataset); >1 inflates the timing columns")
    p.add_argument("--no-peer", action="store_true", help="skip FuxiCTR (it only runs with --variant default)")
    p.add_argument("--out", default=str(REPO / "docs" / "results.md"))
    p.add_argument("--replace", action="store_true",
                   help="start a fresh results .json instead of keeping the rows of other variants in it")
    p.add_argument("--from-json", help="rewrite the markdown from a results .json of an earlier run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.datasets = args.datasets.split(",")
    args.models = args.models.split(",")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.worker:
        return worker(args)
    out = Path(args.out)
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        out.write_text(markdown(summarise(doc["rows"]), args.models, args.datasets, doc["commands"],
                                out.with_suffix(".png")))
        return
    jobs = []
    for i, backend in enumerate(args.backends.split(",")):
        models = args.models if i == 0 or args.other_backend_models == "all" else \
            [m for m in args.other_backend_models.split(",") if m in args.models]
        jobs += [(backend, models, [d]) for d in args.datasets] if args.jobs > 1 else [(backend, models, args.datasets)]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for part in pool.map(lambda job: run_backend(job[0], args, *job[1:]), jobs) for r in part]
    if not args.no_peer and args.variant == "default":
        rows += run_peer(args)
    command = ("python bench/quality.py " + " ".join(sys.argv[1:])).strip()
    # Keep the other variant's rows (and its command) from the previous results .json.
    store = out.with_suffix(".json")
    doc = {"commands": [], "rows": []}
    if store.is_file() and not args.replace:
        doc = json.loads(store.read_text())
        doc["rows"] = [r for r in doc["rows"] if r.get("variant", "default") != args.variant]
        doc["commands"] = [c for c in doc["commands"] if ("--variant tuned" in c) != (args.variant == "tuned")]
    doc["rows"] += rows
    doc["commands"].append(command)
    out.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(doc))
    out.write_text(markdown(summarise(doc["rows"]), args.models, args.datasets, doc["commands"], out.with_suffix(".png")))
    print(f"wrote {out} and {store}", file=sys.stderr)
    if FAILED:
        raise SystemExit("failed, its finished runs are in the results: " + "; ".join(FAILED))


if __name__ == "__main__":
    main()
