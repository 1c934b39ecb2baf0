"""Step time against embedding-table size: dense Adam (Keras) vs the row-sparse rules (kzoo.sparse).

DCN-V2 (zoo_configs/dcn_v2.json: 13 numeric and 26 hashed categorical fields, dim 16), batch 4096,
`train_on_batch` after warm-up, ids drawn uniformly per field (every batch touches ~100k distinct rows).
The hash buckets are set so that the fused table has 1e5, 1e6, 1e7 rows (and 1e8 with --huge, Adagrad
only: 6.4 GB of table + 6.4 GB of accumulator). Each (backend, optimizer) runs in its own process, which
builds one model per size and then alternates their timed steps (so every size sees the same machine
load: the machine is shared and timings are noisy); each step time is reported as a ratio to the same
process's 1e5-row step time, with the load average. `--alone` runs each size in its own process
instead, so that its peak RSS (ru_maxrss) is its own.

    python bench/table_size.py                       # both backends, 1e5..1e7, interleaved, ~10 min
    python bench/table_size.py --huge                # + 1e8 rows in the Adagrad process of each backend
    python bench/table_size.py --alone               # peak RSS per size (one process each)
    python bench/table_size.py --backends jax --sizes 100000 10000000 --variants adam adagrad

Writes bench/out/table_size.json and bench/out/table_size.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
FIELDS, DIM, BATCH = 26, 16, 4096
VARIANTS = {  # name -> train section (the dense weights use Adam in every variant)
    "adam": {},  # Keras' dense Adam for the tables too: the issue's reference
    "adagrad": {"embedding_optimizer": {"type": "adagrad", "learning_rate": 0.01}},
    "lazy_adam": {"embedding_optimizer": {"type": "lazy_adam", "learning_rate": 0.001}},
}


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


def bench_spec(rows: int, variant: str) -> dict:
    raw = json.loads((REPO / "zoo_configs" / "dcn_v2.json").read_text())
    buckets = rows // FIELDS
    raw["features"] = {"name": "table_size", "label": "label", "features":
                       [{"name": f"I{i}", "type": "numeric"} for i in range(1, 14)]
                       + [{"name": f"C{i}", "type": "categorical", "hash_buckets": buckets} for i in range(1, 27)]}
    raw["train"] = {"optimizer": {"type": "adam", "learning_rate": 0.001}, **VARIANTS[variant]}
    return raw


def _model_and_batches(rows: int, variant: str):
    import numpy as np

    import kzoo
    from kzoo.sparse import row_sparse
    from kzoo.spec import load_spec

    spec = load_spec(bench_spec(rows, variant))
    model = kzoo.compile(kzoo.build(spec, {}), spec)
    rng = np.random.default_rng(0)
    buckets = rows // FIELDS
    batches = []
    for _ in range(4):
        x = {f"I{i}": rng.normal(size=(BATCH, 1)).astype("float32") for i in range(1, 14)}
        x.update({f"C{i}": rng.integers(0, buckets, size=(BATCH, 1)).astype("int32") for i in range(1, 27)})
        batches.append((x, {"ctr": rng.integers(0, 2, size=(BATCH, 1)).astype("float32")}))
    return model, row_sparse(model), batches


def child(sizes: list, variant: str, steps: int, warmup: int) -> list:
    """Measurements in this process: a model per table size, warmed up, then `steps` rounds of one timed
    `train_on_batch` per size in turn (interleaved, so that every size sees the same machine load)."""
    import resource

    import keras
    import numpy as np

    runs = []
    for rows in sizes:
        t0 = time.time()
        model, fit, batches = _model_and_batches(rows, variant)
        for i in range(warmup):
            fit.train_on_batch(*batches[i % len(batches)])
        runs.append({"model": model, "fit": fit, "batches": batches, "build_s": time.time() - t0, "ms": [],
                     "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20})
    loads = []
    for i in range(steps):
        loads.append(os.getloadavg()[0])
        for run in runs:
            t = time.perf_counter()
            logs = run["fit"].train_on_batch(*run["batches"][i % len(run["batches"])], return_dict=True)
            float(logs["loss"])  # block until the step is done
            run["ms"].append((time.perf_counter() - t) * 1000)
    out = []
    for rows, run in zip(sizes, runs):
        table = run["model"].get_layer("emb").embeddings
        out.append({"backend": keras.backend.backend(), "rows": int(table.shape[0]), "variant": variant,
                    "mode": "interleaved" if len(sizes) > 1 else "alone", "ms": run["ms"],
                    "median_ms": float(np.median(run["ms"])), "build_and_warmup_s": round(run["build_s"], 1),
                    # peak RSS of this process once this size's model was built and warmed up (cumulative
                    # when several sizes share the process)
                    "peak_rss_gb": run["rss_gb"], "table_gb": table.shape[0] * DIM * 4 / 1e9,
                    "loadavg": os.getloadavg(), "loadavg_1min_during": [min(loads), max(loads)]})
    return out


def run_child(backend: str, sizes: list, variant: str, steps: int, warmup: int) -> list:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, __file__, "--child", variant, *map(str, sizes), "--steps", str(steps),
           "--warmup", str(warmup)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    if done.returncode or not lines:
        error = f"exit {done.returncode} (-9: killed, e.g. out of memory)\n{done.stderr[-2000:]}"
        return [{"backend": backend, "rows": rows, "variant": variant, "error": error} for rows in sizes]
    return json.loads(lines[-1])


def plot(results: list, path: Path) -> None:
    """Step time / the same process's 1e5-row step time, per backend and optimizer (latest measurement of
    each size): ratios, because absolute times on this shared machine move with its load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest = {}
    for r in results:
        if "ratio_to_smallest" in r:
            latest[r["backend"], r["variant"], r["rows"]] = r
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, backend in zip(axes, ("jax", "tensorflow")):
        for variant in VARIANTS:
            rows = sorted((r for (b, v, _), r in latest.items() if b == backend and v == variant),
                          key=lambda r: r["rows"])
            if rows:
                ax.plot([r["rows"] for r in rows], [r["ratio_to_smallest"] for r in rows], marker="o",
                        label=("dense " if variant == "adam" else "row-sparse ") + variant)
        ax.axhline(1.2, color="grey", linestyle="--", linewidth=1, label="target 1.2x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"DCN-V2, batch {BATCH}, {backend}")
        ax.set_xlabel("table rows (26 fields, dim 16)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("step time / step time at 1e5 rows")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs="+", metavar="VARIANT ROWS", help=argparse.SUPPRESS)
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow"])
    p.add_argument("--sizes", nargs="+", type=int, default=[10 ** 5, 10 ** 6, 10 ** 7])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--huge", action="store_true", help="add the 1e8-row Adagrad run (needs ~14 GB free)")
    p.add_argument("--alone", action="store_true",
                   help="one process per size (clean peak RSS per size) instead of interleaved sizes")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=OUT / "table_size.json")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child([int(r) for r in args.child[1:]], args.child[0], args.steps, args.warmup)))
        return
    results, run = [], {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": argv or sys.argv[1:],
                        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES")}  # e.g. glibc.malloc.hugetlb=1
    for backend in args.backends:
        for variant in args.variants:
            sizes = list(args.sizes) + ([10 ** 8] if args.huge and variant == "adagrad" else [])
            free = mem_available_gb()
            need = sum(sizes) * DIM * 4 * (3 if variant != "adagrad" else 2) / 2 ** 30 + 2
            if need > free:
                measured = [{"backend": backend, "rows": rows, "variant": variant,
                             "error": f"skipped: needs ~{need:.1f} GiB, {free:.1f} GiB available"} for rows in sizes]
            elif args.alone:
                measured = [m for rows in sizes for m in run_child(backend, [rows], variant, args.steps, args.warmup)]
            else:
                measured = run_child(backend, sizes, variant, args.steps, args.warmup)
            base = measured[0].get("median_ms")
            for r in measured:
                r["run"] = run  # ratios compare results of one run only
                if "median_ms" in r and base:
                    r["ratio_to_smallest"] = r["median_ms"] / base
                print(f"{backend:10s} {r['rows']:>11,d} {variant:9s} " + (
                    f"{r['median_ms']:8.1f} ms/step  x{r.get('ratio_to_smallest', float('nan')):.2f}  "
                    f"peak RSS {r['peak_rss_gb']:.2f} GiB (table {r['table_gb']:.2f} GB)  load {r['loadavg'][0]:.2f}"
                    if "median_ms" in r else r["error"].strip().splitlines()[0]), flush=True)
            results += measured
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    everything = previous.get("results", []) + results  # every run's results, each naming its run
    args.out.write_text(json.dumps({"command": "python bench/table_size.py [--huge] [--alone] ...",
                                    "batch": BATCH, "fields": FIELDS, "dim": DIM, "cpus": os.cpu_count(),
                                    "results": everything}, indent=1))
    plot(everything, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
