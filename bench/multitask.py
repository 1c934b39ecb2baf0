"""Multi-task benchmarks: shared-bottom vs MMoE vs PLE on the MMoE paper's synthetic data and on
UCI Census-Income, loss balancing on Census, and (where set up) FuxiCTR's MMoE as a peer.

    .venv/bin/python bench/multitask.py synthetic --corrs 1.0,0.9,0.5,0.0 --seeds 0,1,2
    .venv/bin/python bench/multitask.py census --seeds 0,1,2
    .venv/bin/python bench/multitask.py balancing --seeds 0
    .venv/bin/python bench/multitask.py peer --seeds 0  # FuxiCTR MMoE vs kzoo's (needs bench/peer/setup.sh)
    .venv/bin/python bench/multitask.py report          # rewrite the doc section from the .json

Every subcommand trains in this process (KERAS_BACKEND as set; JAX by default here), replaces its
table's rows in bench/out/multitask.json and rewrites the section of docs/results.md between
`<!-- multitask:start -->` and `<!-- multitask:end -->` (appended once if the markers are absent),
so reruns replace it and the rest of the page is left alone.

- synthetic: `mmoe_synthetic:CORR:ROWS` for each CORR (the tasks' weight-vector cosine), the three
  specs below (DenseFeatures over x0..x99 -> multi-task block -> per-task MLP towers -> two
  regression tasks y1, y2; parameter counts within ~15 % of each other), test MSE per task.
- census: zoo_configs/{shared_bottom,mmoe,ple}.json on `census:PATH` (80/10/10 split, split seed 0,
  the same test rows for every run), AUC per task, and paired-bootstrap intervals of
  MMoE - shared-bottom and PLE - shared-bottom per task (`kzoo.metrics.auc_difference` on the
  test predictions, averaged over the seeds).
- balancing: zoo_configs/mmoe.json with `train.balancing` static / uncertainty / gradnorm
  (shared: the mmoe block) / pcgrad, AUC per task, intervals against static.
- peer: kzoo's MMoE (bench/peer/kzoo_mmoe.py, one subprocess per --backends entry) and FuxiCTR's
  MMoE (bench/peer/fuxictr_mmoe.py in bench/peer/.venv) on the same Census split, one process at a
  time per seed; per-task AUC, paired-bootstrap AUC differences, steady-state (epoch 2) examples/s
  and the kzoo / FuxiCTR ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import data_dir, write_section  # noqa: E402

OUT_JSON = REPO / "bench" / "out" / "multitask.json"
DOC = REPO / "docs" / "results.md"
START, END = "<!-- multitask:start -->", "<!-- multitask:end -->"
CENSUS = "census_income_kdd/census-income.part1.gz"
CENSUS_TASKS = ["income", "never_married"]
MODELS = ["shared_bottom", "mmoe", "ple"]
BALANCING = ["static", "uncertainty", "gradnorm", "pcgrad"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- specs

def synthetic_spec(model: str, lr: float, batch_size: int, epochs: int) -> dict:
    """Two regression tasks on the 100 numeric inputs. Sizes (params with the towers):
    shared-bottom MLP [128] ~17.2k; MMoE 8 experts [16] + linear gates ~15.1k; PLE 2 levels of
    2 shared + 3 task experts [16] ~16.5k; towers MLP [16] per task, linear heads."""
    from kzoo import data as kdata

    tasks = ["y1", "y2"]
    block = {
        "shared_bottom": {"type": "SharedBottom", "args": {"tasks": tasks, "units": [128]}},
        "mmoe": {"type": "MMoE", "args": {"tasks": tasks, "experts": 8, "expert_units": [16]}},
        "ple": {"type": "PLE", "args": {"tasks": tasks, "levels": 2, "shared_experts": 2, "task_experts": 3,
                                        "expert_units": [16]}},
    }[model]
    return {
        "name": f"synthetic_{model}",
        "features": kdata.bundled_dataset("mmoe_synthetic"),
        "groups": {"all": ["*"]},
        "blocks": [
            {"name": "dense", "type": "DenseFeatures", "inputs": ["group:all"]},
            {"name": "mt", "inputs": ["dense"], **block},
            *({"name": f"{t}_tower", "type": "MLP", "inputs": [f"mt.{t}"], "args": {"units": [16]}} for t in tasks),
        ],
        "tasks": [{"name": t, "type": "regression", "input": f"{t}_tower", "label": t, "loss": "mse",
                   "metrics": ["mse"]} for t in tasks],
        "train": {"optimizer": {"type": "adam", "learning_rate": lr}, "batch_size": batch_size, "epochs": epochs},
    }


def census_spec(model: str, balancing: str | None = None) -> dict:
    from kzoo import data as kdata

    raw = json.loads((REPO / "zoo_configs" / f"{model}.json").read_text())
    raw["features"] = kdata.bundled_dataset("census")
    if balancing:
        raw["train"]["balancing"] = {"type": balancing, **({"shared": "mmoe"} if balancing == "gradnorm" else {})}
        raw["name"] = f"{model}_{balancing}"
    return raw


# ------------------------------------------------------------------------------------- training

def train_one(spec: dict, data, test_frame, tasks: list[str], seed: int, epochs=None, batch_size=None) -> dict:
    """kzoo.train on `data`, then the served outputs on `test_frame` (the run's own test split)."""
    import kzoo

    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        m = kzoo.train(spec, data, Path(tmp) / "run", seed=seed, epochs=epochs, batch_size=batch_size, verbose=0)
        wall = time.time() - t
        pred = kzoo.predict(Path(tmp) / "run", test_frame)
    return {"metrics": {k: m[k] for k in tasks}, "params": m["params"], "fit_seconds": m["fit_seconds"],
            "examples_per_s": m["train_examples_per_s"], "wall_seconds": round(wall, 1),
            "predictions": {k: [round(float(p), 6) for p in pred[k]] for k in tasks}}


def test_split(frame):
    from kzoo import data as kdata

    return kdata.split(frame, seed=0)[2]


def run_synthetic(args) -> list[dict]:
    from kzoo import data as kdata

    rows = []
    for corr in args.corrs:
        frame, _ = kdata.load(f"mmoe_synthetic:{corr}:{args.rows}")
        test = test_split(frame)
        for model in args.models:
            spec = synthetic_spec(model, args.lr, args.batch_size, args.epochs)
            for seed in args.seeds:
                r = train_one(spec, frame, test, ["y1", "y2"], seed)
                mse = {t: r["metrics"][t]["mse"] for t in ("y1", "y2")}
                row = {"table": "synthetic", "corr": corr, "model": model, "seed": seed, "mse": mse,
                       **{k: r[k] for k in ("params", "fit_seconds", "examples_per_s", "wall_seconds")}}
                rows.append(row)
                log(f"  synthetic corr {corr:<4} {model:<14} seed {seed}: mse y1 {mse['y1']:.4f} y2 {mse['y2']:.4f}"
                    f" ({row['params']:,} params, {r['wall_seconds']:.0f} s)")
    return rows


def census_rows(args, table: str, variants: list[tuple[str, str | None]]) -> list[dict]:
    """Train each (model, balancing) variant for each seed on the one Census split."""
    from kzoo import data as kdata

    path = data_dir() / CENSUS
    frame, _ = kdata.load(f"census:{path}")
    test = test_split(frame)
    labels = {"income": test["income_50k"].astype(int).tolist(), "never_married": test["never_married"].astype(int).tolist()}
    rows = []
    for model, balancing in variants:
        spec = census_spec(model, balancing)
        for seed in args.seeds:
            r = train_one(spec, frame, test, CENSUS_TASKS, seed)
            auc = {t: r["metrics"][t]["auc"] for t in CENSUS_TASKS}
            row = {"table": table, "model": model, "balancing": balancing or "static", "seed": seed, "auc": auc,
                   "logloss": {t: r["metrics"][t]["logloss"] for t in CENSUS_TASKS},
                   **{k: r[k] for k in ("params", "fit_seconds", "examples_per_s", "wall_seconds", "predictions")},
                   "labels": labels}
            rows.append(row)
            log(f"  {table} {model:<14} {row['balancing']:<12} seed {seed}: auc income {auc['income']:.4f} "
                f"never_married {auc['never_married']:.4f} ({r['wall_seconds']:.0f} s)")
    return rows


# ------------------------------------------------------------------------------------ reporting

def ms(values: list[float], fmt: str = ".4f") -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{fmt}} ± {sd:{fmt}}" if len(values) > 1 else f"{values[0]:{fmt}}"


def gap(rows_a: list[dict], rows_b: list[dict], task: str) -> dict | None:
    from kzoo.metrics import auc_difference

    if not rows_a or not rows_b:
        return None
    d = auc_difference(rows_a[0]["labels"][task], [r["predictions"][task] for r in rows_a],
                       [r["predictions"][task] for r in rows_b], n_boot=1000)
    d["verdict"] = "better" if d["low"] > 0 else ("worse" if d["high"] < 0 else "no clear difference")
    return d


def fmt_gap(d: dict | None) -> str:
    return "–" if d is None else f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] {d['verdict']}"


def markdown(doc: dict) -> str:
    tables = doc["tables"]
    env = doc.get("environment", {})
    lines = [START, "## Multi-task models: shared-bottom, MMoE, PLE (MMoE synthetic data, Census-Income)", "",
             f"Made by `bench/multitask.py` on {env.get('date', '?')}: {env.get('machine', '?')}; "
             f"keras {env.get('keras', '?')} on the {env.get('backend', '?')} backend, python {env.get('python', '?')}. "
             "Timings are wall-clock on that shared, loaded machine (another job's test suite ran at the same "
             "time, and the tables ran as 3-4 processes at once), so read them as rough: seconds per run are "
             "several times what an idle machine gives.", ""]
    lines += ["| table | commands (`.venv/bin/python`, from the repository root) | wall time (sum over the commands) |", "|---|---|---|"]
    for name in ("synthetic", "census", "balancing", "peer"):
        t = tables.get(name)
        if t and t.get("command"):
            lines.append(f"| {name} | `{t['command']}` | {t.get('wall_seconds', 0) / 60:.1f} min |")
    lines.append("")

    # -- synthetic
    t = tables.get("synthetic")
    lines += ["### Synthetic task correlation (MMoE paper, Figure 4)", ""]
    if t:
        s = t["settings"]
        rows = t["rows"]
        lines += [f"`mmoe_synthetic:CORR:{s['rows']}` (Ma et al. 2018, section 3.2: y_i = w_i·x + Σ sin(α_j w_i·x + β_j) "
                  "+ ε, cos(w1, w2) = CORR; 100 numeric inputs), split 80/10/10 with split seed 0; test MSE "
                  f"per task, mean ± std over model seeds {', '.join(map(str, s['seeds']))}. All three: DenseFeatures "
                  "over x0..x99 → multi-task block → MLP [16] tower per task → linear regression head (MSE loss), "
                  f"Adam {s['lr']}, batch {s['batch_size']}, {s['epochs']} epochs, no early stopping. "
                  "shared-bottom: MLP [128]; MMoE: 8 experts [16], linear softmax gates; PLE: 2 levels of "
                  "2 shared + 3 task experts [16]. Specs: `synthetic_spec` in bench/multitask.py.", ""]
        params = {m: next((r["params"] for r in rows if r["model"] == m), None) for m in MODELS}
        lines += ["Parameters: " + ", ".join(f"{m} {p:,}" for m, p in params.items() if p) + ".", "",
                  "| CORR | model | MSE y1 | MSE y2 | MSE mean of tasks | Δ vs shared-bottom (mean of tasks) |",
                  "|---|---|---|---|---|---|"]
        for corr in s["corrs"]:
            by = {m: [r for r in rows if r["corr"] == corr and r["model"] == m] for m in MODELS}
            base = by["shared_bottom"]
            for m in MODELS:
                rs = by[m]
                if not rs:
                    continue
                avg = [(r["mse"]["y1"] + r["mse"]["y2"]) / 2 for r in rs]
                delta = "–"
                if m != "shared_bottom" and base:
                    b = statistics.mean((r["mse"]["y1"] + r["mse"]["y2"]) / 2 for r in base)
                    delta = f"{statistics.mean(avg) - b:+.4f} ({(statistics.mean(avg) - b) / b * 100:+.1f} %)"
                lines.append(f"| {corr} | {m} | {ms([r['mse']['y1'] for r in rs])} | "
                             f"{ms([r['mse']['y2'] for r in rs])} | {ms(avg)} | {delta} |")
        lines += ["", "Δ < 0: lower test MSE than shared-bottom. The finding under test is that MMoE's advantage "
                  "over shared-bottom grows as the correlation falls.", ""]
        if t.get("reading"):
            lines += [t["reading"], ""]
    else:
        lines += ["Not run yet (`python bench/multitask.py synthetic`).", ""]

    # -- census
    t = tables.get("census")
    lines += ["### Census-Income: shared-bottom vs MMoE vs PLE", ""]
    if t:
        s = t["settings"]
        rows = t["rows"]
        lines += [f"UCI Census-Income (KDD), the 50,000-row slice `{CENSUS}` (`census:PATH`), split 80/10/10 "
                  "with split seed 0 (40,000 train / 5,000 validation / 5,000 test; the same test rows for "
                  "every run). Tasks as in the MMoE paper: income > 50K (`income_50k`, 6.2 % positive on the "
                  "test rows) and never married. The zoo configs unchanged (embedding dim 8, Adam 0.003, "
                  "batch 512, 2 epochs). Test AUC, mean ± std over model seeds "
                  f"{', '.join(map(str, s['seeds']))}; Δ: paired bootstrap over the test rows of the seeds' mean "
                  "AUC (`kzoo.metrics.auc_difference`, 1,000 resamples, 95 % interval).", "",
                  "| model | params | AUC income | AUC never married | Δ income vs shared-bottom | "
                  "Δ never married vs shared-bottom | logloss income | logloss never married | s / run |",
                  "|---|---|---|---|---|---|---|---|---|"]
        by = {m: [r for r in rows if r["model"] == m] for m in MODELS}
        for m in MODELS:
            rs = by[m]
            if not rs:
                continue
            gi = gap(rs, by["shared_bottom"], "income") if m != "shared_bottom" else None
            gn = gap(rs, by["shared_bottom"], "never_married") if m != "shared_bottom" else None
            lines.append(f"| {m} | {rs[0]['params']:,} | {ms([r['auc']['income'] for r in rs])} | "
                         f"{ms([r['auc']['never_married'] for r in rs])} | {fmt_gap(gi)} | {fmt_gap(gn)} | "
                         f"{statistics.mean(r['logloss']['income'] for r in rs):.4f} | "
                         f"{statistics.mean(r['logloss']['never_married'] for r in rs):.4f} | "
                         f"{statistics.mean(r['wall_seconds'] for r in rs):.0f} |")
        lines.append("")
        if t.get("reading"):
            lines += [t["reading"], ""]
    else:
        lines += ["Not run yet (`python bench/multitask.py census`).", ""]

    # -- balancing
    t = tables.get("balancing")
    lines += ["### Census-Income: loss balancing (MMoE)", ""]
    if t and t.get("rows"):
        s = t["settings"]
        rows = t["rows"]
        lines += ["zoo_configs/mmoe.json unchanged but for `train.balancing`: static (the tasks' loss weights, "
                  "1 and 1), uncertainty (learned log-variances), gradnorm (α 1.5, gradient norms at the "
                  "`mmoe` block), pcgrad. Same split and test rows as above (static: the census table's MMoE runs of "
                  "the same seeds); test AUC, mean ± std over model "
                  f"seeds {', '.join(map(str, s['seeds']))}; Δ vs static as above.", "",
                  "| balancing | seeds | AUC income | AUC never married | Δ income vs static | Δ never married vs static | s / run |",
                  "|---|---|---|---|---|---|---|"]
        by = {b: [r for r in rows if r["balancing"] == b] for b in BALANCING}
        if not by["static"]:  # static MMoE is the census table's mmoe: reuse its runs of the same seeds
            by["static"] = [r for r in tables.get("census", {}).get("rows", [])
                            if r["model"] == "mmoe" and r["seed"] in s["seeds"]]
        for b in BALANCING:
            rs = by[b]
            if not rs:
                lines.append(f"| {b} | – | not run | | | | |")
                continue
            gi = gap(rs, by["static"], "income") if b != "static" else None
            gn = gap(rs, by["static"], "never_married") if b != "static" else None
            lines.append(f"| {b} | {', '.join(str(r['seed']) for r in sorted(rs, key=lambda r: r['seed']))} | {ms([r['auc']['income'] for r in rs])} | {ms([r['auc']['never_married'] for r in rs])} "
                         f"| {fmt_gap(gi)} | {fmt_gap(gn)} | {statistics.mean(r['wall_seconds'] for r in rs):.0f} |")
        lines.append("")
        if t.get("reading"):
            lines += [t["reading"], ""]
    else:
        lines += ["| balancing | AUC income | AUC never married |", "|---|---|---|",
                  "| TODO: not run | – | – |", "",
                  (t or {}).get("note", "Not run yet (`python bench/multitask.py balancing`)."), ""]

    # -- peer
    t = tables.get("peer") or {}
    lines += ["### Census-Income: against FuxiCTR's MMoE", ""]
    if t.get("rows"):
        lines += peer_markdown(t)
    else:
        lines += [t.get("note", PEER_NOTE), ""]

    if doc.get("reductions"):
        lines += ["### Reductions", ""] + [f"- {x}" for x in doc["reductions"]] + [""]
    lines.append(END)
    return "\n".join(lines)


def write_doc(doc: dict) -> None:
    write_section(DOC, START, END, markdown(doc))


def row_key(r: dict) -> tuple:
    return (r.get("corr"), r["model"], r.get("balancing"), r["seed"])


def load_doc() -> dict:
    return json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"tables": {}, "reductions": []}


def environment() -> dict:
    import keras

    return {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPU cores shared with other jobs, no GPU",
            "keras": keras.__version__, "backend": keras.backend.backend(), "python": platform.python_version()}


def balancing_available() -> str | None:
    """None when kzoo.load_spec accepts every balancing type, else why not."""
    import kzoo

    try:
        for b in BALANCING:
            kzoo.load_spec(census_spec("mmoe", b))
    except Exception as e:  # noqa: BLE001 - reported in the doc
        return f"{type(e).__name__}: {e}"
    return None


PEER_PYTHON = REPO / "bench" / "peer" / ".venv" / "bin" / "python"
PEER_LABELS = {"income": "income_50k", "never_married": "never_married"}  # kzoo task -> label column


def run_peer(args) -> list[dict]:
    """Per seed, one process at a time: kzoo's MMoE on each backend (bench/peer/kzoo_mmoe.py, kzoo's
    venv) and FuxiCTR's MMoE (bench/peer/fuxictr_mmoe.py, the peer venv) on the same split, which
    kzoo writes once as CSV. Each returns per-task test AUC, test predictions and steady-state
    (epoch 2) examples/s."""
    import subprocess

    path = data_dir() / CENSUS
    data = f"census:{path}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="kzoo_peer_census_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        subprocess.run([sys.executable, str(REPO / "bench/peer/kzoo_mmoe.py"), "--data", data,
                        "--write-split", str(tmp)], check=True, env=env, stdout=subprocess.DEVNULL)
        import pandas as pd

        test = pd.read_csv(tmp / "test.csv", usecols=list(PEER_LABELS.values()))
        labels = {t: test[c].astype(int).tolist() for t, c in PEER_LABELS.items()}
        for seed in args.seeds:
            jobs = [(f"kzoo ({b})", b, None) for b in args.backends.split(",")]
            jobs += [(f"FuxiCTR (torch, {n} thread{'s' if n > 1 else ''})", None, n)
                     for n in (int(x) for x in args.peer_threads.split(","))]
            for side, backend, threads in jobs:
                out = tmp / f"{seed}_{backend or f'fuxictr{threads}'}.json"
                if backend:
                    cmd = [sys.executable, str(REPO / "bench/peer/kzoo_mmoe.py"), "--data", data, "--seed", str(seed),
                           "--predictions", "--out", str(out)]
                    run_env = {**env, "KERAS_BACKEND": backend}
                else:
                    cmd = [str(PEER_PYTHON), str(REPO / "bench/peer/fuxictr_mmoe.py"), "--train", str(tmp / "train.csv"),
                           "--valid", str(tmp / "valid.csv"), "--test", str(tmp / "test.csv"),
                           "--schema", str(REPO / "kzoo/datasets/census.json"), "--seed", str(seed),
                           "--embedding-dim", "8", "--experts", "8", "--expert-units", "32", "--gate-units", "",
                           "--tower-units", "16", "--batch-size", "512", "--lr", "0.003", "--epochs", "2",
                           "--threads", str(threads), "--predictions", "--out", str(out)]
                    run_env = env
                t = time.time()
                proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True)
                if proc.returncode != 0:
                    log(proc.stderr[-3000:])
                    raise SystemExit(f"{side} seed {seed} failed ({proc.returncode})")
                r = json.loads(out.read_text())
                key = (lambda t: t) if backend else (lambda t: PEER_LABELS[t])
                row = {"table": "peer", "model": side, "backend": backend or "torch", "threads": threads, "seed": seed,
                       "auc": {t: r["tasks"][key(t)]["auc"] for t in CENSUS_TASKS},
                       "logloss": {t: r["tasks"][key(t)]["logloss"] for t in CENSUS_TASKS},
                       "params": r["params"], "steady_examples_per_s": r["steady_examples_per_s"],
                       "epoch_examples_per_s": r["epoch_examples_per_s"], "fit_examples_per_s": r["fit_examples_per_s"],
                       "wall_seconds": round(time.time() - t, 1),
                       "predictions": {t: r["predictions"][key(t)] for t in CENSUS_TASKS}, "labels": labels,
                       "versions": {k: r[k] for k in ("keras", "fuxictr_version", "torch_version") if k in r}}
                if not backend:
                    row["notes"] = r["notes"]
                rows.append(row)
                log(f"  peer {side:<18} seed {seed}: auc income {row['auc']['income']:.4f} never_married "
                    f"{row['auc']['never_married']:.4f}; steady {row['steady_examples_per_s']:,.0f} ex/s "
                    f"(epoch 1 {r['epoch_examples_per_s']['0']:,.0f}) ({row['wall_seconds']:.0f} s)")
    return rows


PEER_TARGET = 2.0


def peer_markdown(t: dict) -> list[str]:
    rows = t["rows"]
    s = t["settings"]
    sides = list(dict.fromkeys(r["model"] for r in rows))
    by = {m: [r for r in rows if r["model"] == m] for m in sides}
    fx_sides = [m for m in sides if by[m][0]["backend"] == "torch"]
    fx = by[fx_sides[0]] if fx_sides else []  # the AUC reference: the first FuxiCTR run
    seeds = ", ".join(map(str, s["seeds"]))
    notes = fx[0].get("notes", []) if fx else []
    lines = [f"zoo_configs/mmoe.json on the Census split above (40,000 / 5,000 / 5,000 rows, split seed 0), against "
             "FuxiCTR 2.3.10's MMoE (PyTorch, CPU; run once with 2 torch threads and once with 1, see below) trained on exactly those rows: kzoo writes its "
             "train / validation / test frames as CSV and `bench/peer/fuxictr_mmoe.py` runs them through FuxiCTR's "
             "FeatureProcessor (in this process, fitted on train; kzoo/datasets/census.json mapped to FuxiCTR "
             "feature specs: categoricals with kzoo's min_count and a missing value as its own token, numerics "
             "with kzoo's fill, sign·log1p and StandardScaler on train statistics), FuxiCTR's NpzDataLoader and "
             "MultiTaskModel.fit. Both sides: the same 39 features, embedding dim 8, 8 experts MLP [32] (ReLU), "
             "linear softmax gate per task, tower MLP [16] per task → sigmoid, BCE per task summed with weight 1, "
             "Adam 0.003, batch 512, 2 epochs, train rows unshuffled in the split's order (the same batches), "
             f"final weights; model seed{'s' if len(s['seeds']) > 1 else ''} {seeds}"
             f"{' (one seed: the time budget)' if len(s['seeds']) == 1 else ''}. The PyPI package ships "
             "MultiTaskModel but not the model zoo's MMoE, so `MMoE_Layer` / `MMoE` are written in that script "
             "on MultiTaskModel following FuxiCTR's model_zoo/multitask/MMoE. Not matched: FuxiCTR's "
             "initialisation (embeddings N(0, 1e-4), xavier_normal dense layers) and its gradient-norm clipping "
             "at 10; one extra padding/OOV row per categorical field (params).", "",
             "Steady-state examples/s: training rows of epoch 2 / (end of its last training step − start of its "
             "first), timed per step in both processes (kzoo: a Keras batch callback, which also makes each "
             "step synchronous, as kzoo.train's StepLogger does; FuxiCTR: a wrapper round BaseModel.train_step); "
             "so epoch 1 (XLA / tf.function compilation; torch warm-up) and the end-of-epoch validation are left "
             "out. Epoch 1 examples/s shown for reference. The processes ran one at a time, interleaved per "
             "seed, on a 2-core machine shared with another job's test suite: absolute rates are rough; the "
             "ratio within a seed is the better number.", "",
             "| side | params | AUC income | AUC never married | Δ income vs FuxiCTR | Δ never married vs FuxiCTR "
             "| steady examples/s (epoch 2) | epoch 1 examples/s | "
             + " | ".join(f"steady ratio kzoo / {m}" for m in fx_sides) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(fx_sides)]
    verdicts = []
    for m in sides:
        rs = by[m]
        is_fx = m in fx_sides
        gi = gap(rs, fx, "income") if not is_fx and fx else None
        gn = gap(rs, fx, "never_married") if not is_fx and fx else None
        cells = []
        for fm in fx_sides:
            ratios = []
            if not is_fx:
                for r in rs:
                    f = next((x for x in by[fm] if x["seed"] == r["seed"]), None)
                    if f:
                        ratios.append(r["steady_examples_per_s"] / f["steady_examples_per_s"])
            cells.append(ms(ratios, ".2f") + "×" if ratios else "–")
            if ratios:
                mean = statistics.mean(ratios)
                verdicts.append(f"{m} / {fm}: {mean:.2f}× ("
                                + ("met" if min(ratios) >= PEER_TARGET else
                                   "met on average, not on every seed" if mean >= PEER_TARGET else "not met") + ")")
        ratio = " | ".join(cells)
        lines.append(f"| {m} | {rs[0]['params']:,} | {ms([r['auc']['income'] for r in rs])} | "
                     f"{ms([r['auc']['never_married'] for r in rs])} | {fmt_gap(gi)} | {fmt_gap(gn)} | "
                     f"{ms([r['steady_examples_per_s'] for r in rs], ',.0f')} | "
                     f"{ms([r['epoch_examples_per_s']['0'] for r in rs], ',.0f')} | {ratio} |")
    lines += ["", f"Δ: paired bootstrap over the test rows of kzoo's AUC − FuxiCTR's (seeds' mean predictions; "
              "1,000 resamples, 95 % interval). Speed target (the issue): kzoo's steady-state examples/s ≥ "
              f"{PEER_TARGET:.0f}× FuxiCTR's on this model. Measured ratio (mean over seeds): "
              + ("; ".join(verdicts) if verdicts else "–") + ".", ""]
    if notes:
        lines += ["<details><summary>FuxiCTR run notes (from fuxictr_mmoe.py's JSON)</summary>", "",
                  *[f"- {n}" for n in notes], "", "</details>", ""]
    if t.get("reading"):
        lines += [t["reading"], ""]
    return lines


PEER_NOTE = (
    "Not run: the FuxiCTR peer venv is not set up. `bash bench/peer/setup.sh`, then "
    "`python bench/multitask.py peer --seeds 0,1,2` (bench/peer/fuxictr_mmoe.py, bench/peer/kzoo_mmoe.py).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=["synthetic", "census", "balancing", "peer", "report"])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--corrs", default="1.0,0.9,0.5,0.0")
    p.add_argument("--rows", type=int, default=20000, help="synthetic rows (the loader's default 20,000)")
    p.add_argument("--epochs", type=int, default=20, help="synthetic epochs")
    p.add_argument("--batch-size", type=int, default=256, help="synthetic batch size")
    p.add_argument("--lr", type=float, default=0.003, help="synthetic Adam learning rate")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--balancing", default=",".join(BALANCING))
    p.add_argument("--backends", default="jax,tensorflow", help="peer: kzoo's Keras backends to time")
    p.add_argument("--peer-threads", default="2,1", help="peer: FuxiCTR runs, one per torch thread count")
    p.add_argument("--reading", help="a paragraph on how to read this table, stored with it")
    p.add_argument("--merge", action="store_true",
                   help="keep this table's earlier rows that this run does not redo (other CORRs, seeds, methods)")
    p.add_argument("--reading-for", help="with `report`: the table --reading is for")
    p.add_argument("--reduction", action="append", default=[], help="a reduction to state in the doc (repeatable)")
    args = p.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.corrs = [float(c) for c in args.corrs.split(",")]
    args.models = args.models.split(",")
    command = "python bench/multitask.py " + " ".join(sys.argv[1:])
    start = time.time()
    table = {"command": command, "settings": {"seeds": args.seeds}}
    if args.table == "synthetic":
        table["settings"] = {"seeds": args.seeds, "corrs": args.corrs, "rows": args.rows, "epochs": args.epochs,
                             "batch_size": args.batch_size, "lr": args.lr}
        table["rows"] = run_synthetic(args)
    elif args.table == "census":
        table["rows"] = census_rows(args, "census", [(m, None) for m in args.models])
    elif args.table == "balancing":
        why = balancing_available()
        if why:
            table["rows"], table["note"] = [], f"TODO: not run: kzoo.load_spec rejected `train.balancing`: {why}"
            log(table["note"])
        else:
            chosen = args.balancing.split(",")
            table["rows"] = census_rows(args, "balancing", [("mmoe", b if b != "static" else None) for b in chosen])
    elif args.table == "peer":
        if not PEER_PYTHON.is_file():
            table = {"command": None, "note": PEER_NOTE}
            log(PEER_NOTE)
        else:
            table["settings"] = {"seeds": args.seeds, "backends": args.backends.split(","),
                                 "peer_threads": [int(x) for x in args.peer_threads.split(",")]}
            table["rows"] = run_peer(args)
    import fcntl

    lock = open(Path(tempfile.gettempdir()) / "kzoo_bench_multitask.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # tables may run in parallel processes
    doc = load_doc()  # again: another table's process may have written it meanwhile
    if args.table != "report":
        table["wall_seconds"] = round(time.time() - start, 1)
        old = doc["tables"].get(args.table)
        if args.merge and old and table.get("rows"):
            new = {row_key(r) for r in table["rows"]}
            table["rows"] = [r for r in old["rows"] if row_key(r) not in new] + table["rows"]
            for k in ("seeds", "corrs"):
                if k in table["settings"]:
                    table["settings"][k] = sorted(set(old["settings"].get(k, [])) | set(table["settings"][k]),
                                                  reverse=(k == "corrs"))
            table["command"] = old["command"] + " ; " + command
            table["wall_seconds"] += old.get("wall_seconds", 0)
        if args.reading:
            table["reading"] = args.reading
        doc["tables"][args.table] = table
    elif args.reading:
        if args.reading_for not in doc["tables"]:
            raise SystemExit("report --reading needs --reading-for TABLE, a table in the .json")
        doc["tables"][args.reading_for]["reading"] = args.reading
    doc["environment"] = environment()
    for r in args.reduction:
        if r not in doc["reductions"]:
            doc["reductions"].append(r)
    OUT_JSON.parent.mkdir(parents=True, exist_ok=True)
    OUT_JSON.write_text(json.dumps(doc))
    write_doc(doc)
    log(f"wrote {OUT_JSON} and {DOC} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
