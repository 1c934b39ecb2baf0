"""kzoo's DIN against FuxiCTR's DIN on MovieLens-100K: the same split, features and sizes, in one run.

    .venv/bin/python bench/sequence_peer.py                   # seeds 0,1,2; batch 256 and 4096
    .venv/bin/python bench/sequence_peer.py --quick           # smoke test: 300 users, seed 0, short windows
    .venv/bin/python bench/sequence_peer.py --seeds 0 --backends jax

Needs FuxiCTR's venv (`bash bench/peer/setup.sh`). What it does:

1. Loads MovieLens-100K with kzoo's loader (`kzoo.data.load("movielens:FOLDER")`: one row per rating,
   label rating >= 4, history = the user's earlier likes, cut to 50; leave-last-5-out split per user in
   the `split` column) and keeps the features both sides use: user_id, gender, age, occupation, zip,
   item_id, item_cat, item_genres (tags), year, hist_item_id, hist_item_cat (hist_gap is left out:
   kzoo's DIN spec does not read the unpaired context sequence). Writes the frame as a pickle for
   kzoo's processes and the train / validation / test rows as CSV for FuxiCTR (the histories' items
   joined by "^", FuxiCTR's sequence splitter).
2. For each seed and batch size, one process at a time: FuxiCTR's DIN (bench/peer/fuxictr_din.py in
   bench/peer/.venv) and kzoo's DIN on each --backends entry (bench/peer/kzoo_din.py, KERAS_BACKEND
   set per process). Every process is pinned to the same --threads CPUs (torch also gets
   set_num_threads); each trains 1 epoch on the same unshuffled batches and predicts the test rows.
   FuxiCTR batches in its training process (--fuxictr-loader-workers 0; its default worker process,
   1, competed with the torch threads on a 2-core machine and was several times slower; pass 0,1
   to run both).
3. Reports, per batch size: test AUC, GAUC (per user, kzoo.metrics.gauc) and logloss, all computed
   here from each side's test predictions with the same code; a paired bootstrap interval of the
   kzoo - FuxiCTR AUC gap (kzoo.metrics.auc_difference on the seeds' predictions, 1,000 resamples);
   steady-state training examples/s (full-batch steps after --warmup-steps, at most --timed-steps of
   them, timed from the end of the last warm-up step to the end of the last timed step: compilation,
   validation and preprocessing outside) and the kzoo / FuxiCTR ratio per seed.

Results: bench/out/sequence_peer.json (--quick: bench/out/sequence_peer_quick.json), and a table on
stdout. Timings are wall-clock: run it on an otherwise idle machine.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common import data_dir, ms  # noqa: E402

PEER_PYTHON = REPO / "bench" / "peer" / ".venv" / "bin" / "python"
FUXICTR_DIN = REPO / "bench" / "peer" / "fuxictr_din.py"
KZOO_DIN = REPO / "bench" / "peer" / "kzoo_din.py"
OUT = REPO / "bench" / "out"
FEATURES = ["user_id", "gender", "age", "occupation", "zip", "item_id", "item_cat", "item_genres", "year",
            "hist_item_id", "hist_item_cat"]
LISTS = ["item_genres", "hist_item_id", "hist_item_cat"]  # kzoo joins items with "|", FuxiCTR splits on "^"
SPEED_TARGET = 2.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="MovieLens-100K folder (default: $KZOO_DATA_DIR or ../shared/data, "
                                                "movielens_100k)")
    p.add_argument("--seeds", default=None, help="model seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--batch-sizes", default="256,4096")
    p.add_argument("--backends", default="jax,tensorflow", help="kzoo's Keras backends, one process each")
    p.add_argument("--threads", type=int, default=2, help="CPUs every process is pinned to (and torch threads)")
    p.add_argument("--warmup-steps", type=int, default=None, help="untimed steps first (default 5; --quick 2)")
    p.add_argument("--timed-steps", type=int, default=None,
                   help="timed steps at most (default 300; --quick 40); fewer where the epoch has fewer full batches")
    p.add_argument("--users", type=int, default=None, help="keep the first N users' rows (default all; --quick 300)")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--attention-units", default="80,40")
    p.add_argument("--mlp", default="200,80")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--genres", action=argparse.BooleanOptionalAction, default=True,
                   help="use item_genres on both sides (default on)")
    p.add_argument("--fuxictr-init", choices=["fuxictr", "kzoo"], default="fuxictr",
                   help="FuxiCTR's own initialisers, or kzoo's N(0, 0.05) for its embedding tables")
    p.add_argument("--fuxictr-loader-workers", default="0",
                   help="FuxiCTR runs, one per NpzDataLoader num_workers value (e.g. 0,1). Default 0: batches made in "
                        "the training process. FuxiCTR's own default, 1, adds a worker process that competes with the "
                        "torch threads for the pinned CPUs; on 2 cores it was the slower setting "
                        "(see bench/peer/README.md)")
    p.add_argument("--quick", action="store_true", help="smoke test: 300 users, seed 0, 2 + <= 40 steps timed")
    p.add_argument("--out", default=None, help="result JSON (default bench/out/sequence_peer.json)")
    args = p.parse_args(argv)
    q = args.quick
    args.seeds = [int(s) for s in (args.seeds or ("0" if q else "0,1,2")).split(",")]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.backends = [b for b in args.backends.split(",") if b]
    args.fuxictr_loader_workers = [int(w) for w in args.fuxictr_loader_workers.split(",")]
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (2 if q else 5)
    args.timed_steps = args.timed_steps if args.timed_steps is not None else (40 if q else 300)
    args.users = args.users if args.users is not None else (300 if q else None)
    args.data = Path(args.data) if args.data else data_dir() / "movielens_100k"
    args.out = Path(args.out) if args.out else OUT / ("sequence_peer_quick.json" if q else "sequence_peer.json")
    return args


def write_inputs(args, tmp: Path):
    """kzoo's MovieLens frame (pickle, for kzoo's processes) and its split as CSV (for FuxiCTR)."""
    from kzoo import data as kdata

    t = time.time()
    frame, _ = kdata.load(f"movielens:{args.data}")
    if args.users:
        keep = frame["user_id"].drop_duplicates().iloc[:args.users]
        frame = frame[frame["user_id"].isin(keep)].reset_index(drop=True)
    features = [f for f in FEATURES if args.genres or f != "item_genres"]
    frame = frame[["label", *features, "split"]]
    frame.to_pickle(tmp / "movielens.pkl")
    for name, part in (("train", "train"), ("valid", "validation"), ("test", "test")):
        rows = frame[frame["split"] == part].drop(columns=["split"])
        for c in LISTS:
            if c in rows:
                if rows[c].str.contains("^", regex=False).any():
                    raise SystemExit(f"{c}: an item holds '^', FuxiCTR's sequence splitter")
                rows[c] = rows[c].str.replace("|", "^", regex=False)
        rows.to_csv(tmp / f"{name}.csv", index=False)
    test = frame[frame["split"] == "test"]
    sizes = {p: int((frame["split"] == p).sum()) for p in ("train", "validation", "test")}
    log(f"data: {args.data} -> {sizes} rows, {frame['user_id'].nunique()} users ({time.time() - t:.0f} s)")
    return features, sizes, test["label"].astype(int).to_numpy(), test["user_id"].to_numpy()


def run_job(args, tmp: Path, side: str, backend: str | None, seed: int, batch: int, workers: int = 0) -> dict:
    out = tmp / f"{side}_{backend or f'torch{workers}'}_{seed}_{batch}.json"
    common = ["--embedding-dim", str(args.embedding_dim), "--attention-units", args.attention_units, "--mlp", args.mlp,
              "--max-len", str(args.max_len), "--batch-size", str(batch), "--lr", str(args.lr), "--epochs", "1",
              "--seed", str(seed), "--warmup-steps", str(args.warmup_steps), "--timed-steps", str(args.timed_steps),
              "--threads", str(args.threads), "--predictions", "--out", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if side == "fuxictr":
        cmd = [str(PEER_PYTHON), str(FUXICTR_DIN), "--train", str(tmp / "train.csv"), "--valid", str(tmp / "valid.csv"),
               "--test", str(tmp / "test.csv"), "--init", args.fuxictr_init, "--loader-workers", str(workers),
               "--genres" if args.genres else "--no-genres", *common]
    else:
        features = [f for f in FEATURES if args.genres or f != "item_genres"]
        cmd = [sys.executable, str(KZOO_DIN), "--data", str(tmp / "movielens.pkl"), "--features", ",".join(features),
               *common]
        env["KERAS_BACKEND"] = backend
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        log(proc.stdout[-2000:])
        log(proc.stderr[-4000:])
        raise SystemExit(f"{side} ({backend or 'torch'}) seed {seed} batch {batch} failed ({proc.returncode})")
    r = json.loads(out.read_text())
    r["wall_seconds"] = round(time.time() - t, 1)
    return r


def side_name(side: str, backend: str | None, workers: int | None = None) -> str:
    return f"FuxiCTR (torch, num_workers={workers})" if side == "fuxictr" else f"kzoo ({backend})"




def summarise(rows: list[dict], labels, users, args) -> dict:
    from kzoo.metrics import auc_difference

    summary = {}
    for batch in args.batch_sizes:
        at = [r for r in rows if r["batch_size"] == batch]
        fx_names = list(dict.fromkeys(r["name"] for r in at if r["side"] == "fuxictr"))
        fx = [r for r in at if fx_names and r["name"] == fx_names[0]]  # the AUC reference: the first FuxiCTR run
        entry = {}
        for name in dict.fromkeys(r["name"] for r in at):
            rs = [r for r in at if r["name"] == name]
            e = {"auc": [r["auc"] for r in rs], "gauc": [r["gauc"] for r in rs], "logloss": [r["logloss"] for r in rs],
                 "steady_examples_per_s": [r["steady_examples_per_s"] for r in rs],
                 "timed_steps": [r["timed_steps"] for r in rs], "params": rs[0]["params"]}
            if rs[0]["side"] == "kzoo" and fx:
                d = auc_difference(labels, [r["predictions"] for r in rs], [r["predictions"] for r in fx], n_boot=1000)
                d["verdict"] = "better" if d["low"] > 0 else ("worse" if d["high"] < 0 else "within the noise")
                e["auc_minus_fuxictr"] = d
                e["speed_ratio_vs"], e["speed_target_met"] = {}, {}
                for fname in fx_names:
                    ratios = []
                    for r in rs:
                        f = next((x for x in at if x["name"] == fname and x["seed"] == r["seed"]), None)
                        if f and f["steady_examples_per_s"] and r["steady_examples_per_s"]:
                            ratios.append(r["steady_examples_per_s"] / f["steady_examples_per_s"])
                    e["speed_ratio_vs"][fname] = ratios
                    if ratios:
                        e["speed_target_met"][fname] = min(ratios) >= SPEED_TARGET
            entry[name] = e
        summary[str(batch)] = entry
    return summary


def table(summary: dict) -> str:
    fx_names = list(dict.fromkeys(n for entry in summary.values() for n in entry if n.startswith("FuxiCTR")))
    lines = ["| batch | side | params | test AUC | GAUC | logloss | AUC - FuxiCTR [95 %] | steady ex/s | "
             + " | ".join(f"kzoo / {n}" for n in fx_names) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(fx_names)]
    for batch, entry in summary.items():
        for name, e in entry.items():
            d = e.get("auc_minus_fuxictr")
            gap = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] {d['verdict']}" if d else "-"
            ratios = []
            for fname in fx_names:
                ratio = ms((e.get("speed_ratio_vs") or {}).get(fname) or [], ".2f")
                ratios.append(ratio + "×" if ratio != "-" else "-")
            lines.append(f"| {batch} | {name} | {e['params']:,} | {ms(e['auc'])} | {ms(e['gauc'])} | "
                         f"{ms(e['logloss'])} | {gap} | {ms(e['steady_examples_per_s'], ',.0f')} | "
                         + " | ".join(ratios) + " |")
    return "\n".join(lines)


def verdicts(summary: dict) -> list[str]:
    """One line per batch size and kzoo backend: the AUC gap's verdict and the speed ratio against the target."""
    lines = []
    for batch, entry in summary.items():
        for name, e in entry.items():
            d = e.get("auc_minus_fuxictr")
            if not d:
                continue
            speed = "; ".join(
                f"{statistics.mean(r):.2f}× {fname}, target {SPEED_TARGET:g}× "
                + ("met on every seed" if e["speed_target_met"].get(fname) else "not met")
                for fname, r in e["speed_ratio_vs"].items() if r)
            lines.append(f"batch {batch}, {name}: AUC {d['diff']:+.4f} vs FuxiCTR, {d['verdict']}; "
                         f"speed {speed or '-'}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    if not PEER_PYTHON.is_file():
        raise SystemExit(f"no FuxiCTR venv at {PEER_PYTHON}: run `bash bench/peer/setup.sh` first")
    from kzoo.metrics import auc, gauc, logloss

    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kzoo_seq_peer_") as tmp:
        tmp = Path(tmp)
        features, sizes, labels, users = write_inputs(args, tmp)
        for seed in args.seeds:
            for batch in args.batch_sizes:
                jobs = [("fuxictr", None, w) for w in args.fuxictr_loader_workers]
                jobs += [("kzoo", b, None) for b in args.backends]
                for side, backend, workers in jobs:
                    r = run_job(args, tmp, side, backend, seed, batch, workers or 0)
                    p = r.pop("predictions")
                    row = {"name": side_name(side, backend, workers), "side": side,
                           "backend": backend or f"torch_w{workers}", "seed": seed, "batch_size": batch,
                           "auc": auc(labels, p), "gauc": gauc(labels, p, users), "logloss": logloss(labels, p),
                           "self_reported_auc": r["test_auc"], "predictions": p,
                           **{k: r.get(k) for k in ("steady_examples_per_s", "timed_steps", "warmup_steps",
                                                    "timed_seconds", "step_seconds_median", "step_seconds_max",
                                                    "between_steps_seconds",
                                                    "warmup_step_seconds", "fit_examples_per_s", "fit_seconds_total",
                                                    "preprocess_seconds", "train_steps", "params", "cpus",
                                                    "wall_seconds", "vocab_sizes", "features")},
                           "versions": {k: r[k] for k in ("keras", "fuxictr_version", "torch_version") if k in r}}
                    if side == "fuxictr":
                        row["notes"] = r["notes"]
                    rows.append(row)
                    rate = row["steady_examples_per_s"]
                    log(f"  seed {seed} batch {batch:>5} {row['name']:<36} auc {row['auc']:.4f} gauc {row['gauc']:.4f} "
                        f"logloss {row['logloss']:.4f}; steady "
                        + (f"{rate:,.0f} ex/s over {row['timed_steps']} steps" if rate else "n/a")
                        + f" ({row['wall_seconds']:.0f} s)")
    summary = summarise(rows, labels, users, args)
    import keras

    doc = {
        "command": "python bench/sequence_peer.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "environment": {"machine": f"{os.cpu_count()} CPU cores", "python": platform.python_version(),
                        "keras": keras.__version__, "load_1min": os.getloadavg()[0]},
        "settings": {"data": str(args.data), "users": args.users, "rows": sizes, "features": features,
                     "seeds": args.seeds, "batch_sizes": args.batch_sizes, "backends": args.backends,
                     "threads": args.threads, "warmup_steps": args.warmup_steps, "timed_steps": args.timed_steps,
                     "embedding_dim": args.embedding_dim, "attention_units": args.attention_units, "mlp": args.mlp,
                     "lr": args.lr, "epochs": 1, "max_len": args.max_len, "fuxictr_init": args.fuxictr_init,
                     "fuxictr_loader_workers": args.fuxictr_loader_workers,
                     "quick": args.quick},
        "summary": summary,
        "speed_target": SPEED_TARGET,
        "table": table(summary),
        "verdicts": verdicts(summary),
        "wall_seconds": round(time.time() - start, 1),
        "rows": [{k: v for k, v in r.items() if k != "predictions"} for r in rows],
        "test_labels": labels.tolist(),
        "predictions": {f"{r['backend']}_{r['seed']}_{r['batch_size']}": r["predictions"] for r in rows},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc))
    print(doc["table"])
    print("\n" + "\n".join(doc["verdicts"]))
    print(f"\nwrote {args.out} ({doc['wall_seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
