"""What the export's checks cost (issue 13; kzoo/export_checks.py): the warmup replay before publishing,
and the request guards in the serving graph.

`kzoo export` replays the warmup requests it has just written (TF Serving's checks against the written
SignatureDef) on the archive's traced serving function before the version is renamed into place.
This measures, per zoo model trained on synthetic data, in one process: the whole export, the replay
inside it (timed around the exporter's call), and the alternative the exporter does not take, loading
the written SavedModel back (tf.saved_model.load, as TF Serving does) and replaying on it. Then the
guards: the same run exported once more with `guard_inputs` / `guard_outputs` replaced by the identity,
and the two versions' `serving_default` called alternately on the same rows (batch 1 and 256).

    KERAS_BACKEND=tensorflow python bench/export_warmup.py --models lr dcn_v2 --repeats 3 \
        --out bench/out/export_warmup.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(model: str, rows: int, repeats: int, tmp: Path) -> dict:
    import kzoo
    from kzoo import exporter
    from kzoo.export_checks import replay_warmup

    in_memory = []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return replay_warmup(*args, **kwargs)
        finally:
            in_memory.append(time.perf_counter() - start)

    run = tmp / model / "run"
    kzoo.train(model, f"synthetic:{rows}", run, epochs=1, verbose=0)
    exporter.replay_warmup = timed
    try:
        kzoo.export(run, tmp / model / "warm")  # first export: imports and traces once, not counted
        exports, loaded = [], []
        for i in range(repeats):
            start = time.perf_counter()
            version = kzoo.export(run, tmp / model / "exports")
            exports.append(time.perf_counter() - start)
            folder = tmp / model / f".tmp-copy-{i}"
            shutil.copytree(version, folder)
            start = time.perf_counter()
            replay_warmup(folder, version)  # no endpoint: the SavedModel loaded from disk
            loaded.append(time.perf_counter() - start)
    finally:
        exporter.replay_warmup = replay_warmup
    export_s, memory_s, load_s = (statistics.median(x) for x in (exports, in_memory[1:], loaded))
    guards = guard_latency(run, version, tmp / model / "unguarded")
    return {"model": model, "export_s": round(export_s, 3), "replay_in_memory_s": round(memory_s, 4),
            "replay_share": round(memory_s / export_s, 4), "replay_loaded_s": round(load_s, 3),
            "loaded_share": round(load_s / export_s, 3), "exports_s": [round(x, 3) for x in exports],
            "replays_in_memory_s": [round(x, 4) for x in in_memory[1:]], "replays_loaded_s": [round(x, 3) for x in loaded],
            "guards": guards}


def guard_latency(run: Path, guarded: Path, base: Path, calls: int = 200) -> dict:
    """Median ms per `serving_default` call, guarded against an export without the guards, alternating."""
    import numpy as np
    import tensorflow as tf

    import kzoo
    from kzoo import exporter
    from kzoo.serving.requests import columns

    saved = exporter.guard_inputs, exporter.guard_outputs
    exporter.guard_inputs = exporter.guard_outputs = lambda x: x
    try:
        unguarded = kzoo.export(run, base)
    finally:
        exporter.guard_inputs, exporter.guard_outputs = saved
    fns = [tf.saved_model.load(str(v)).signatures["serving_default"] for v in (guarded, unguarded)]
    signature = fns[0].structured_input_signature[1]
    rows = json.loads((guarded / "assets.extra" / "kzoo_warmup.json").read_text())["inputs"]
    out = {}
    for batch in (1, 256):
        cols = columns({k: (v * (batch // len(v) + 1))[:batch] for k, v in rows.items()}, signature)
        feed = {k: tf.constant(v.tolist() if v.dtype == object else v, signature[k].dtype) for k, v in cols.items()}
        times = [[], []]
        for fn in fns:
            fn(**feed)  # first call: graph optimisation, not counted
        for _ in range(calls):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn(**feed)
                times[i].append(time.perf_counter() - start)
        g, u = (1000 * statistics.median(t) for t in times)
        out[f"batch_{batch}"] = {"guarded_ms": round(g, 3), "unguarded_ms": round(u, 3), "ratio": round(g / u, 3)}
        np.testing.assert_allclose(*(fn(**feed)[next(iter(fn.structured_outputs))].numpy() for fn in fns), atol=1e-6)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["lr", "dcn_v2"])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit("run with KERAS_BACKEND=tensorflow: the export (and its replay) is TensorFlow's")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kzoo-export-warmup-") as tmp:
        results = [measure(m, args.rows, args.repeats, Path(tmp)) for m in args.models]
    out = {"results": results, "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "repeats": args.repeats, "rows": args.rows}
    for r in results:
        print(f"{r['model']:<10} export {r['export_s']:.2f} s (median of {args.repeats}); its warmup replay "
              f"{1000 * r['replay_in_memory_s']:.0f} ms ({100 * r['replay_share']:.1f}% of the export); loading the "
              f"SavedModel back and replaying would take {r['replay_loaded_s']:.2f} s ({100 * r['loaded_share']:.0f}%)")
        for batch, g in r["guards"].items():
            print(f"{'':<10} {batch}: guarded signature {g['guarded_ms']:.3f} ms, without guards {g['unguarded_ms']:.3f} ms "
                  f"(ratio {g['ratio']:.3f}, medians of alternating calls)")
    print(f"load average before {out['loadavg_before']}, after {out['loadavg_after']}")
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
