"""Peak memory of streamed training against the number of rows (docs/scaling.md, Streaming data).

For each size N (2M and 20M rows by default), writes N Criteo-shaped rows as Parquet shards to a
temporary folder, then trains one epoch of a small model on that folder in a fresh child process
(`kzoo.train`, which streams a folder) and records the child's peak RSS (getrusage), its RSS over
time (/proc/self/status, every 0.5 s), the seconds and examples/s of the pass that learns the
statistics and of the training epoch, and the test AUC. Prints peak RSS of the largest size over
the smallest, the ratio that says whether memory grows with the data.

    KERAS_BACKEND=jax .venv/bin/python bench/streaming_memory.py                 # 2M and 20M rows
    KERAS_BACKEND=jax .venv/bin/python bench/streaming_memory.py --rows 200000 2000000   # quicker

Writes bench/out/streaming_memory.json and bench/out/streaming_memory.png; removes the shards.
Rows are drawn (with replacement) from a 200k-row pool of kzoo.synthetic, so every size has the
same distribution and planted signal; 6 numeric and 10 categorical columns keep writing fast.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
NUMERIC = ["I1", "I2", "I5", "I6", "I11", "I13"]
CATEGORICAL = ["C1", "C2", "C5", "C6", "C8", "C9", "C14", "C17", "C22", "C25"]


def spec(batch_size: int) -> dict:
    """Logistic regression over the columns: a small model, so the data path dominates."""
    features = [{"name": n, "type": "numeric", "fill": 0, "norm": "log_standard"} for n in NUMERIC]
    features += [{"name": n, "type": "categorical", "vocab": {"min_count": 2}} for n in CATEGORICAL]
    return {"name": "stream_lr", "features": {"name": "criteo_small", "label": "label", "features": features},
            "groups": {"all": ["*"]}, "blocks": [{"name": "linear", "type": "Linear", "inputs": ["group:all"]}],
            "tasks": [{"name": "ctr", "type": "binary", "input": "linear", "metrics": ["auc"]}],
            "train": {"optimizer": {"type": "adam", "learning_rate": 0.003}, "batch_size": batch_size, "epochs": 1,
                      "checkpoint_every": 0, "streaming": {}}}


def write_shards(folder: Path, rows: int, shard_rows: int, seed: int = 0) -> float:
    """`rows` rows as shard-NNNNN.parquet files of `shard_rows`; returns the seconds it took."""
    import numpy as np

    from kzoo.synthetic import synthetic

    start = time.time()
    pool = synthetic(200_000, seed=seed)[["label", *NUMERIC, *CATEGORICAL]]
    rng = np.random.default_rng(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for k, first in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - first)
        pool.iloc[rng.integers(0, len(pool), n)].to_parquet(folder / f"shard-{k:05d}.parquet", index=False,
                                                            row_group_size=131_072)
    return time.time() - start


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(folder: str, batch_size: int, out: str) -> None:
    """Train one streamed epoch on `folder`; write peak RSS, an RSS timeline and timings to `out`."""
    timeline, start, stop = [], time.time(), threading.Event()

    def sample():
        while not stop.wait(0.5):
            timeline.append((round(time.time() - start, 1), round(_rss_mb(), 1)))

    threading.Thread(target=sample, daemon=True).start()
    import kzoo
    from kzoo import trainer

    imported = _rss_mb()
    timed = {}

    def prepare(*args, **kwargs):  # the trainer's own call, timed: the statistics pass over every row
        t = time.time()
        prepared = trainer_prepare(*args, **kwargs)
        timed.update(seconds=time.time() - t, rows=prepared.rows)
        return prepared

    trainer_prepare, trainer.prepare = trainer.prepare, prepare
    result = kzoo.train(spec(batch_size), folder, out=Path(out).with_suffix(".run"), verbose=0, overwrite=True)
    pass_seconds, rows = timed["seconds"], timed["rows"]
    stop.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out).write_text(json.dumps({
        "peak_rss_mb": round(peak, 1), "rss_after_imports_mb": round(imported, 1), "rows": rows,
        "stats_pass_seconds": round(pass_seconds, 1), "stats_pass_rows_per_s": round(sum(rows.values()) / pass_seconds),
        "fit_seconds": result["fit_seconds"], "train_examples_per_s": result["train_examples_per_s"],
        "test_auc": result["ctr"]["auc"], "evaluated_test_rows": result["examples"],
        "seconds": round(time.time() - start, 1), "timeline": timeline}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 20_000_000])
    parser.add_argument("--shard-rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--tmp", default=None, help="folder for the shards (default: the system's temp folder)")
    parser.add_argument("--out", default=str(OUT / "streaming_memory.json"))
    parser.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.batch_size, args.child[1])

    import keras

    results = []
    for rows in args.rows:
        base = Path(tempfile.mkdtemp(prefix="kzoo-stream-", dir=args.tmp))
        try:
            write_seconds = write_shards(base / "shards", rows, args.shard_rows)
            size = sum(p.stat().st_size for p in (base / "shards").iterdir())
            load = os.getloadavg()
            subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--child",
                            str(base / "shards"), str(base / "child.json")], check=True)
            entry = json.loads((base / "child.json").read_text())
        finally:
            shutil.rmtree(base, ignore_errors=True)
        entry.update(total_rows=rows, shards=-(-rows // args.shard_rows), parquet_mb=round(size / 2**20, 1),
                     write_seconds=round(write_seconds, 1), loadavg_before=[round(x, 2) for x in load],
                     loadavg_after=[round(x, 2) for x in os.getloadavg()])
        results.append(entry)
        print(f"{rows:>11,} rows ({entry['parquet_mb']} MB Parquet): peak RSS {entry['peak_rss_mb']:.0f} MB, "
              f"statistics pass {entry['stats_pass_rows_per_s']:,} rows/s, training "
              f"{entry['train_examples_per_s']:,} examples/s, test AUC {entry['test_auc']:.4f}, "
              f"load {entry['loadavg_before']}", flush=True)
    ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    rows_ratio = results[-1]["total_rows"] / results[0]["total_rows"]
    print(f"peak RSS {results[-1]['total_rows']:,} / {results[0]['total_rows']:,} rows: {ratio:.3f} "
          f"(rows x{rows_ratio:.0f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"backend": keras.backend.backend(), "batch_size": args.batch_size,
                               "shard_rows": args.shard_rows, "peak_rss_ratio": round(ratio, 3),
                               "rows_ratio": rows_ratio, "cpus": os.cpu_count(), "results": results}, indent=2))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [r["total_rows"] / 1e6 for r in results]
    left.plot(rows, [r["peak_rss_mb"] for r in results], "o-", label="peak RSS (streamed)")
    left.set_xlabel("rows (millions)")
    left.set_ylabel("MB")
    left.set_ylim(bottom=0)
    left.set_title("Peak memory against data size")
    left.legend()
    for r in results:
        t, mb = zip(*r["timeline"]) if r["timeline"] else ((), ())
        right.plot(t, mb, label=f"{r['total_rows'] / 1e6:g}M rows")
    right.set_xlabel("seconds")
    right.set_ylabel("RSS (MB)")
    right.set_ylim(bottom=0)
    right.set_title("RSS over the run (statistics pass, then training)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
