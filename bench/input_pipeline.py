"""Is the input pipeline ever the bottleneck? Preprocessing rows/s against dcn_v2's training rate.

For each backend (each in its own process), on `synthetic:ROWS`:
  - preprocessing: raw conformed DataFrame -> preprocessed tf.data batches of 4096, first pass
    (kzoo.pipeline.make_dataset: raw_arrays, batching, the Preprocessor mapped in parallel), timed
    end to end; also the per-row path it replaced (`from_tensor_slices(x).batch(B)`), in the same run;
  - training: dcn_v2 `train_on_batch` on a preprocessed batch of 4096 after warm-up.
The two alternate REPEATS times in one process; each figure is a median. The ratio that matters
is preprocessing rows/s over training rows/s (the issue asks for >= 5).

    .venv/bin/python bench/input_pipeline.py [--rows 200000] [--repeats 5] [--steps 10]
        [--out bench/out/input_pipeline.json]
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
BATCH = 4096


def child(rows: int, repeats: int, steps: int) -> dict:
    import keras
    import tensorflow as tf

    import kzoo
    from kzoo import pipeline
    from kzoo.features import raw_arrays

    prepared = pipeline.prepare(REPO / "zoo_configs" / "dcn_v2.json", f"synthetic:{rows}", BATCH)
    frame, pre, spec = prepared.frames["train"], prepared.preprocessor, prepared.spec
    model = kzoo.build(spec, prepared.stats)
    kzoo.compile(model, spec)
    x, y = tf.nest.map_structure(lambda t: t.numpy(), next(iter(prepared.train)))
    for _ in range(3):
        model.train_on_batch(x, y)

    def consume(ds):
        for _ in ds:
            pass

    def per_row_path():
        raw = raw_arrays(frame, pre.raw)
        labels, _ = pipeline.labels_of(frame, spec, prepared.tasks)
        ds = tf.data.Dataset.from_tensor_slices((raw, labels)).batch(BATCH)
        consume(ds.map(lambda a, b: (pre(a), b), num_parallel_calls=tf.data.AUTOTUNE))

    def kzoo_path():
        consume(pipeline.make_dataset(frame, spec, pre, BATCH, tasks=prepared.tasks, training=True))

    times = {"kzoo": [], "per_row": [], "raw_arrays": [], "step": []}
    for r in range(repeats):
        for name, fn in (("kzoo", kzoo_path), ("per_row", per_row_path),
                         ("raw_arrays", lambda: raw_arrays(frame, pre.raw))):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        for _ in range(steps):
            start = time.perf_counter()
            loss = model.train_on_batch(x, y)
            float(loss if not isinstance(loss, list) else loss[0])
            times["step"].append(time.perf_counter() - start)
    n = len(frame)
    median = {k: statistics.median(v) for k, v in times.items()}
    train_rate = BATCH / median["step"]
    return {"backend": keras.backend.backend(), "rows": n, "repeats": repeats, "steps": steps,
            "preprocess_rows_per_s": round(n / median["kzoo"]),
            "per_row_path_rows_per_s": round(n / median["per_row"]),
            "raw_arrays_rows_per_s": round(n / median["raw_arrays"]),
            "step_ms": round(1000 * median["step"], 1), "train_rows_per_s": round(train_rate),
            "preprocess_over_train": round(n / median["kzoo"] / train_rate, 2),
            "speedup_over_per_row_path": round(median["per_row"] / median["kzoo"], 2),
            "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "input_pipeline.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.rows, args.repeats, args.steps)))
        return
    results = []
    for backend in ("tensorflow", "jax"):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run([sys.executable, __file__, "--child", "--rows", str(args.rows), "--repeats",
                               str(args.repeats), "--steps", str(args.steps)], capture_output=True, text=True,
                              env=env, cwd=REPO)
        if done.returncode:
            sys.exit(f"{backend} child failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"{backend:10s} preprocessing {result['preprocess_rows_per_s']:>9,} rows/s "
              f"(per-row path {result['per_row_path_rows_per_s']:,}, x{result['speedup_over_per_row_path']}); "
              f"dcn_v2 step {result['step_ms']} ms = {result['train_rows_per_s']:,} rows/s; "
              f"preprocessing / training = {result['preprocess_over_train']}  load {result['load_average']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": "bench/input_pipeline.py " + " ".join(sys.argv[1:]),
                                          "results": results}, indent=1))


if __name__ == "__main__":
    main()
