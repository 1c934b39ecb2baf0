"""Training examples/s against the number of devices: `--distribute data|model` on virtual CPU devices.

DCN-V2 (zoo_configs/dcn_v2.json) on `synthetic` rows, global batch 512 (the same global batch for
every device count: each of n replicas gets 512/n rows). Each configuration (backend, mode, devices)
runs in its own process (the device count is fixed before a backend starts): build and compile under
the plan, one warm-up fit on 2 batches (compilation), then `--repeats` timed fits of `--steps`
batches; it reports the median wall-clock examples/s and examples per CPU-second (process time).

Reference: plain one-device training (no distribution), measured in this run at the start and at the
end of each backend's configurations; every figure is a ratio to the mean of those two, with the load
average when it was measured (the machine is shared).

**Read it as overhead, not speed-up.** Virtual devices are slices of the same CPU (here 2 cores shared
with other jobs): 8 "devices" run 8 partitions of each step on the same cores, so the ratios measure
what the distribution machinery costs (partitioning, collectives, per-replica dispatch), not what 8
real accelerators would gain.

    python bench/devices.py                                    # both backends, 1/2/4/8 devices, ~10 min
    python bench/devices.py --backends jax --devices 1 8 --steps 8

Writes bench/out/devices.json and bench/out/devices.png.
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
OUT = REPO / "bench" / "out"
BATCH = 512


def child(mode: str, devices: int, rows: int, steps: int, repeats: int) -> dict:
    """One configuration in this process; mode "one" is plain one-device training."""
    import keras

    import kzoo
    from kzoo import distribute

    spec = kzoo.load_spec("dcn_v2")
    plan = distribute.setup(None if mode == "one" else mode, spec, batch_size=BATCH, virtual_devices=devices)
    prepared = kzoo.prepare(spec, f"synthetic:{rows}", BATCH)
    keras.utils.set_random_seed(0)
    t0 = time.time()
    model = plan.build(lambda: kzoo.compile(kzoo.build(prepared.spec, prepared.stats), prepared.spec))
    batches = plan.batches(prepared.train).take(steps)
    for _ in batches:  # preprocessing into the tf.data cache, outside the timing
        pass
    with plan.scope():
        model.fit(batches.take(2), epochs=1, verbose=0, shuffle=False)
        compile_s = time.time() - t0
        runs = []
        for _ in range(repeats):
            load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
            model.fit(batches, epochs=1, verbose=0, shuffle=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            runs.append({"examples_per_s": steps * BATCH / wall, "examples_per_cpu_s": steps * BATCH / cpu,
                         "load": load})
    return {"backend": keras.backend.backend(), "mode": mode, "devices": devices, "summary": plan.summary(),
            "tables": dict(plan.tables), "compile_s": round(compile_s, 1), "runs": runs,
            "examples_per_s": statistics.median(r["examples_per_s"] for r in runs),
            "examples_per_cpu_s": statistics.median(r["examples_per_cpu_s"] for r in runs),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def run_child(backend: str, mode: str, devices: int, args) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, __file__, "--child", mode, str(devices), "--rows", str(args.rows), "--steps",
           str(args.steps), "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode:
        return {"backend": backend, "mode": mode, "devices": devices, "error": done.stderr[-1500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list, png: Path) -> None:
    sys.path.insert(0, str(REPO))
    from kzoo.plots import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8))
    for (backend, mode), rows in _lines(results).items():
        n = [r["devices"] for r in rows]
        for ax, key in zip(axes, ("ratio", "cpu_ratio")):
            ax.plot(n, [r[key] for r in rows], "o-", label=f"{backend} --distribute {mode}")
    for ax, what in zip(axes, ("examples/s (wall clock)", "examples per CPU-second")):
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        ax.set_xlabel("virtual CPU devices")
        ax.set_ylabel(f"{what} / one device")
        ax.legend(fontsize=8)
    save_figure(fig, png, "DCN-V2 training on virtual CPU devices (2 shared cores): overhead, not speed-up")


def _lines(results: list) -> dict:
    lines = {}
    for r in results:
        if r["mode"] != "one" and "ratio" in r:
            lines.setdefault((r["backend"], r["mode"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["devices"]) for k, v in lines.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow"])
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=2, metavar=("MODE", "DEVICES"), help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(OUT / "devices.json"))
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.rows, args.steps, args.repeats)))
        return

    start, results = time.time(), []
    for backend in args.backends:
        modes = ["data", "model"] if backend == "jax" else ["data"]  # TensorFlow refuses model (docs/scaling.md)
        refs = [run_child(backend, "one", 1, args)]
        for mode in modes:
            for n in args.devices:
                results.append(run_child(backend, mode, n, args))
                print(json.dumps({k: results[-1].get(k) for k in ("backend", "mode", "devices", "examples_per_s",
                                                                  "loadavg", "error")}), flush=True)
        refs.append(run_child(backend, "one", 1, args))
        good = [r for r in refs if "error" not in r]
        if not good:
            raise SystemExit(f"{backend}: the one-device reference failed: {refs[0]['error']}")
        ref_wall = statistics.mean(r["examples_per_s"] for r in good)
        ref_cpu = statistics.mean(r["examples_per_cpu_s"] for r in good)
        for r in results:
            if r["backend"] == backend and "error" not in r:
                r["ratio"] = round(r["examples_per_s"] / ref_wall, 3)
                r["cpu_ratio"] = round(r["examples_per_cpu_s"] / ref_cpu, 3)
        results.extend(refs)

    import keras  # versions only

    report = {"batch": BATCH, "rows": args.rows, "steps": args.steps, "repeats": args.repeats,
              "cpus": os.cpu_count(), "keras": keras.__version__, "seconds": round(time.time() - start),
              "date": time.strftime("%Y-%m-%d %H:%M"), "note": "virtual CPU devices share the same cores: the "
              "ratios measure the distribution machinery's overhead, not a speed-up", "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"\n{'backend':<11} {'mode':<6} {'devices':>7} {'examples/s':>11} {'ratio':>6} {'per CPU-s':>10} "
          f"{'ratio':>6} {'load':>5}")
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<11} {r['mode']:<6} {r['devices']:>7}  FAILED: {r['error'].splitlines()[-1]}")
            continue
        print(f"{r['backend']:<11} {r['mode']:<6} {r['devices']:>7} {r['examples_per_s']:>11.0f} "
              f"{r.get('ratio', 1.0):>6.2f} {r['examples_per_cpu_s']:>10.0f} {r.get('cpu_ratio', 1.0):>6.2f} "
              f"{r['loadavg'][0]:>5.1f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
