"""Training examples/s against batch size: dcn_v2 (zoo config, synthetic Criteo-shaped data).

For each backend (each in its own process) and batch size, `train_on_batch` on a fixed
preprocessed batch after warm-up; the batch sizes take turns, REPEATS rounds of STEPS steps, and
each figure is the median step time. Printed as examples/s and as the ratio to the smallest batch
measured in the same run; a plot beside --out.

    .venv/bin/python bench/batch_size.py [--batches 256,1024,4096,16384] [--repeats 5] [--steps 5]
        [--out bench/out/batch_size.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(batches: list[int], repeats: int, steps: int) -> dict:
    import keras
    import tensorflow as tf

    import kzoo
    from kzoo import pipeline

    prepared = pipeline.prepare(REPO / "zoo_configs" / "dcn_v2.json", f"synthetic:{max(batches) * 2 + 1000}",
                                max(batches))
    model = kzoo.build(prepared.spec, prepared.stats)
    kzoo.compile(model, prepared.spec)
    x, y = tf.nest.map_structure(lambda t: t.numpy(), next(iter(prepared.train)))
    cut = {b: tf.nest.map_structure(lambda a, b=b: a[:b], (x, y)) for b in batches}
    for b in batches:  # compile (JAX) or trace (TF) every shape first
        for _ in range(2):
            model.train_on_batch(*cut[b])
    times = {b: [] for b in batches}
    for r in range(repeats):
        for b in batches[r % len(batches):] + batches[:r % len(batches)]:
            for _ in range(steps):
                start = time.perf_counter()
                loss = model.train_on_batch(*cut[b])
                float(loss if not isinstance(loss, list) else loss[0])
                times[b].append(time.perf_counter() - start)
    out = {"backend": keras.backend.backend(), "load_average": os.getloadavg(), "batches": {}}
    base = None
    for b in batches:
        ms = statistics.median(times[b]) * 1000
        rate = b / ms * 1000
        base = base or rate
        out["batches"][str(b)] = {"ms_per_step": round(ms, 1), "examples_per_s": round(rate),
                                  "ratio_to_smallest": round(rate / base, 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", default="256,1024,4096,16384")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "batch_size.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.child:
        print(json.dumps(child(batches, args.repeats, args.steps)))
        return
    results = []
    for backend in ("tensorflow", "jax"):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, __file__, "--child", "--batches", args.batches, "--repeats",
                               str(args.repeats), "--steps", str(args.steps)], capture_output=True, text=True,
                              env=env, cwd=REPO)
        if done.returncode:
            sys.exit(f"{backend} child failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        for b, r in result["batches"].items():
            print(f"{backend:10s} batch {int(b):>6,}: {r['ms_per_step']:>8} ms/step {r['examples_per_s']:>9,} examples/s "
                  f"(x{r['ratio_to_smallest']} of batch {batches[0]})")
        print(f"{backend:10s} load average {result['load_average']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "bench/batch_size.py " + " ".join(sys.argv[1:]), "results": results},
                              indent=1))
    plot(results, batches, out.with_suffix(".png"))


def plot(results: list, batches: list[int], path: Path) -> None:
    from kzoo.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(batches, [r["batches"][str(b)]["examples_per_s"] for b in batches], marker="o", label=r["backend"])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("training examples/s")
    ax.legend()
    save_figure(fig, path, "dcn_v2 training throughput against batch size (2 CPU cores)")


if __name__ == "__main__":
    main()
