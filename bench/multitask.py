"""Multi-task benchmarks: shared-bottom vs MMoE vs PLE on the MMoE paper's synthetic data and on
UCI Census-Income, loss balancing on Census, and (where set up) FuxiCTR's MMoE as a peer.

    .venv/bin/python bench/multitask.py synthetic --corrs 1.0,0.9,0.5,0.0 --seeds 0,1,2
    .venv/bin/python bench/multitask.py census --seeds 0,1,2
    .venv/bin/python bench/multitask.py balancing --seeds 0
    .venv/bin/python bench/multitask.py peer            # FuxiCTR MMoE: says what is missing
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
"""

from __future__ import annotations

import argparse
import copy
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

from common import data_dir  # noqa: E402

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
    lines += ["### Census-Income: against FuxiCTR's MMoE", "", t.get("note", PEER_NOTE), ""]

    if doc.get("reductions"):
        lines += ["### Reductions", ""] + [f"- {x}" for x in doc["reductions"]] + [""]
    lines.append(END)
    return "\n".join(lines)


def write_doc(doc: dict) -> None:
    section = markdown(doc)
    text = DOC.read_text() if DOC.is_file() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


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


PEER_NOTE = (
    "TODO: not run. The peer venv is set up (`bash bench/peer/setup.sh`: fuxictr 2.3.10, torch 2.13.0 CPU), "
    "but bench/peer/fuxictr_run.py trains single-task DCNv2 / DeepFM only. What an MMoE comparison on this "
    "split still needs: (1) an MMoE model class in fuxictr_run.py. The PyPI package ships "
    "`fuxictr.pytorch.models.MultiTaskModel` (per-task output activations and losses, `feature_map.labels`, "
    "per-task evaluate) but neither the model zoo's `MMoE` class nor its `MMoE_Layer`; both would be written "
    "from FuxiCTR's repository (`model_zoo/multitask/MMoE`) on MultiTaskModel, as DCNv2 / DeepFM are on "
    "BaseModel, sized as zoo_configs/mmoe.json (embedding dim 8, 8 experts [32], softmax gates, towers [16], "
    "Adam 0.003, batch 512, 2 epochs). (2) Two labels in the script's data path: it takes one binary label "
    "(`feature_cols_from_schema` exits on a list) and reads one label column back for test AUC; it needs "
    "FuxiCTR's `label_col` list (`income_50k`, `never_married`) and per-task test AUC. (3) The Census split "
    "written from kzoo (as `run_peer` in bench/quality.py does for Criteo / Avazu) and Census's schema "
    "(kzoo/datasets/census.json) mapped to FuxiCTR feature specs, with kzoo's numeric normalisation. "
    "(4) A steady-state examples/s on both sides (kzoo's `train_examples_per_s` includes first-step "
    "compilation). None of this fit in this run's one-hour budget, so there is no FuxiCTR number here.")


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
        table = {"command": None, "note": PEER_NOTE}
        log(PEER_NOTE)
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
