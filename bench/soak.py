"""Soak run: many steps of a small model through `kzoo.train`, with step-level checkpoints, sampling
the process's resident memory and the step time, to show that neither grows.

    .venv/bin/python bench/soak.py [--steps 300000] [--batch 64] [--spec fm] [--data DATA]
        [--checkpoint-every 5000] [--sample-every 1000] [--out bench/out/soak.json]

DATA defaults to Parquet shards of synthetic Criteo-shaped rows written to a temporary folder and
streamed (kzoo.streaming); `--data synthetic:ROWS` trains from memory instead. The epochs are
as many as reach `--steps`. Every `--sample-every` steps it records the RSS (/proc/self/statm) and
the mean step time since the last sample. SIGTERM ends the run early with the same output. The verdict compares the last tenth of the run with the
tenth after warm-up (the first tenth is left out: compilation, first pass over the data): RSS growth
in MiB and the step-time ratio. Writes the samples to --out and a plot beside it (.png).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_shards(folder: Path, rows: int, shards: int) -> None:
    from kzoo.synthetic import synthetic

    folder.mkdir(parents=True, exist_ok=True)
    per = math.ceil(rows / shards)
    for i in range(shards):
        synthetic(per, seed=100 + i).to_parquet(folder / f"part-{i:03d}.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--spec", default="fm")
    parser.add_argument("--data", default=None)
    parser.add_argument("--rows", type=int, default=200000, help="rows of the written shards")
    parser.add_argument("--checkpoint-every", type=int, default=5000)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "soak.json"))
    args = parser.parse_args()

    import keras

    import kzoo
    from kzoo.spec import load_spec

    tmp = Path(tempfile.mkdtemp(prefix="kzoo-soak-"))
    data = args.data
    if data is None:
        write_shards(tmp / "shards", args.rows, 8)
        data = str(tmp / "shards")
    raw = load_spec(args.spec).raw
    raw["train"] = {**raw.get("train", {}), "checkpoint_every": args.checkpoint_every}
    train_rows = args.rows * 0.8 if args.data is None else None
    samples = []

    class Sampler(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step, self.last = 0, time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % args.sample_every == 0:
                now = time.perf_counter()
                samples.append({"step": self.step, "rss_mib": round(rss_mib(), 1),
                                "ms_per_step": round(1000 * (now - self.last) / args.sample_every, 3),
                                "load": round(os.getloadavg()[0], 2)})
                self.last = now
                if len(samples) % 20 == 0:
                    print(f"soak: step {self.step:,}  rss {samples[-1]['rss_mib']} MiB  "
                          f"{samples[-1]['ms_per_step']} ms/step", file=sys.stderr, flush=True)
            if self.step >= args.steps or stop:
                self.model.stop_training = True

    # SIGTERM ends the run at the next step and still writes the summary of what ran.
    import signal
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

    epochs = max(1, math.ceil(args.steps / max(1, (train_rows or args.steps * args.batch) // args.batch)))
    start = time.time()
    try:
        kzoo.train(raw, data, tmp / "run", epochs=epochs, batch_size=args.batch, verbose=0, callbacks=[Sampler()])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tenth = max(1, len(samples) // 10)
    early, late = samples[tenth:2 * tenth], samples[-tenth:]
    summary = {
        "steps": samples[-1]["step"] if samples else 0, "seconds": round(time.time() - start),
        "backend": keras.backend.backend(), "spec": args.spec, "batch": args.batch, "data": args.data or "shards",
        "checkpoint_every": args.checkpoint_every,
        "rss_mib_after_warmup": statistics.median(s["rss_mib"] for s in early),
        "rss_mib_at_end": statistics.median(s["rss_mib"] for s in late),
        "rss_mib_max": max(s["rss_mib"] for s in samples),
        "ms_per_step_after_warmup": statistics.median(s["ms_per_step"] for s in early),
        "ms_per_step_at_end": statistics.median(s["ms_per_step"] for s in late)}
    summary["rss_growth_mib"] = round(summary["rss_mib_at_end"] - summary["rss_mib_after_warmup"], 1)
    summary["step_time_ratio_end_over_start"] = round(summary["ms_per_step_at_end"] / summary["ms_per_step_after_warmup"], 3)
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "bench/soak.py " + " ".join(sys.argv[1:]), "summary": summary,
                               "samples": samples}, indent=1))
    plot(samples, out.with_suffix(".png"), summary)


def plot(samples, path: Path, summary: dict) -> None:
    from kzoo.plots import pyplot, save_figure

    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    steps = [s["step"] for s in samples]
    top.plot(steps, [s["rss_mib"] for s in samples])
    top.set_ylabel("RSS (MiB)")
    bottom.plot(steps, [s["ms_per_step"] for s in samples])
    bottom.set_ylabel("ms per step")
    bottom.set_xlabel("step")
    save_figure(fig, path, f"soak: {summary['spec']} batch {summary['batch']} [{summary['backend']}], "
                           f"checkpoint every {summary['checkpoint_every']} steps")


if __name__ == "__main__":
    main()
