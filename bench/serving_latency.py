"""Serving latency: the SavedModel's signature against Keras' own forward, and through gRPC.

    .venv/bin/python bench/serving_latency.py                       # -> bench/out/serving_latency.json
    .venv/bin/python bench/serving_latency.py --models dcn_v2 --backends tensorflow --repeats 50

For each model (dcn_v2, deepfm, dlrm) and each training backend (jax, tensorflow) it trains on the
Criteo slice (`kzoo train`, one epoch), makes the int8 copy (`kzoo compress --method int8`) and exports
both (`kzoo export`: a JAX run is exported by a TensorFlow subprocess). Then, at batch 1 and 256:

- signature: `serving_default` of the SavedModel (raw columns in: lookups, normalisation and the
  model) in a process that imports TensorFlow only, p50 / p99 over --repeats calls;
- keras: in one TensorFlow-backend process, `model.predict_on_batch` of the run's Keras model on
  already-preprocessed inputs (the bare forward, no lookups) interleaved call by call with the same
  export's signature, so that their ratio is measured under the same load;
- grpc: a PredictRequest through `kzoo.serving.client.GrpcClient` to the project's testing server
  (serving/testing_server.py, one process per export) on loopback: the protocol's cost on top.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import DATA, data_dir  # noqa: E402

MODELS = ["dcn_v2", "deepfm", "dlrm"]
BATCHES = [1, 256]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}

# The TensorFlow-only timing process: no kzoo, no Keras. argv: rows.parquet out.json repeats export...
SIGNATURE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np, pandas as pd, tensorflow as tf
    frame, out, repeats = pd.read_parquet(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    result = {"kzoo_imported": None, "exports": {}}
    for path in sys.argv[4:]:
        fn = tf.saved_model.load(path).signatures["serving_default"]
        spec = fn.structured_input_signature[1]
        result["exports"][path] = {}
        for n in (1, 256):
            rows = frame.iloc[:n]
            feed = {k: tf.constant(rows[k].astype(str).tolist() if s.dtype == tf.string else rows[k].to_numpy(),
                                   s.dtype) for k, s in spec.items()}
            for _ in range(5):
                fn(**feed)
            times = []
            for _ in range(repeats):
                t = time.perf_counter(); fn(**feed); times.append(time.perf_counter() - t)
            result["exports"][path][str(n)] = times
    result["kzoo_imported"] = "kzoo" in sys.modules
    json.dump(result, open(out, "w"))
""")


def percentiles(times: list[float]) -> dict:
    import numpy as np

    ms = np.asarray(times) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "n": len(ms)}


def kzoo_cli(*args, backend: str = "tensorflow") -> None:
    done = subprocess.run([str(REPO / ".venv" / "bin" / "kzoo"), *map(str, args)], env={**ENV, "KERAS_BACKEND": backend},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kzoo {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")


def prepare_exports(work: Path, models: list[str], backends: list[str], data: str) -> list[dict]:
    """Train, int8-compress and export each (model, backend) once; reused when --work already has them."""
    items = []
    for backend in backends:
        for model in models:
            run, int8 = work / f"{model}_{backend}", work / f"{model}_{backend}_int8"
            if not (run / "metrics.json").is_file():
                print(f"  train {model} on {backend}", file=sys.stderr, flush=True)
                kzoo_cli("train", model, "--data", data, "--out", run, "--overwrite", backend=backend)
            if not (int8 / "metrics.json").is_file():
                kzoo_cli("compress", run, "--out", int8, "--method", "int8", "--overwrite", backend=backend)
            for variant, path in (("fp32", run), ("int8", int8)):
                base = work / "exports" / path.name
                if not (base / "1" / "saved_model.pb").is_file():
                    kzoo_cli("export", path, "--out", base, "--version", "1", backend=backend)
                items.append({"model": model, "backend": backend, "variant": variant, "run": str(path),
                              "export": str(base / "1"), "base": str(base)})
    return items


def raw_rows(data: str, n: int, path: Path) -> Path:
    """The first `n` rows of the slice's test split, raw, as a parquet file the timing processes read."""
    import kzoo
    from kzoo.pipeline import load_for, split_frames

    spec, frame = load_for(kzoo.load_spec("dcn_v2"), data)
    test = split_frames(spec, frame)[2].drop(columns=["label"]).reset_index(drop=True)
    test.iloc[:n].to_parquet(path)
    return path


def time_signatures(exports: list[str], rows: Path, repeats: int, work: Path) -> dict:
    """{export: {batch: times}} in a TensorFlow-only process."""
    script, out = work / "signature_timing.py", work / "signature_timing.json"
    script.write_text(SIGNATURE_SCRIPT)
    env = {k: v for k, v in ENV.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, str(script), str(rows), str(out), str(repeats), *exports],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"signature timing failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    assert result["kzoo_imported"] is False, "the signature timing process must import TensorFlow only"
    return result["exports"]


def keras_worker(args) -> None:
    """TensorFlow backend: predict_on_batch of each run's model and its export's signature, alternating."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from kzoo.features import raw_arrays
    from kzoo.rundir import RunDir

    frame = pd.read_parquet(args.rows)
    out = {}
    for item in json.loads(Path(args.items).read_text()):
        run = RunDir(item["run"])
        model, pre = run.model(), run.preprocessor()
        fn = tf.saved_model.load(item["export"]).signatures["serving_default"]
        spec = fn.structured_input_signature[1]
        out[item["export"]] = {}
        for n in BATCHES:
            rows = frame.iloc[:n]
            x = {k: v for k, v in pre(raw_arrays(rows, pre.raw)).items() if k in model.input}
            x = {k: np.asarray(v) for k, v in x.items()}
            feed = {k: tf.constant(rows[k].astype(str).tolist() if s.dtype == tf.string else rows[k].to_numpy(),
                                   s.dtype) for k, s in spec.items()}
            for _ in range(5):
                model.predict_on_batch(x), fn(**feed)
            keras_t, sig_t = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                model.predict_on_batch(x)
                keras_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                fn(**feed)
                sig_t.append(time.perf_counter() - t)
            out[item["export"]][str(n)] = {"keras": keras_t, "signature": sig_t}
    Path(args.out).write_text(json.dumps(out))


def time_keras(items: list[dict], rows: Path, repeats: int, work: Path) -> dict:
    (work / "items.json").write_text(json.dumps(items))
    out = work / "keras_timing.json"
    done = subprocess.run([sys.executable, __file__, "--keras-worker", "--items", str(work / "items.json"),
                           "--rows", str(rows), "--out", str(out), "--repeats", str(repeats)],
                          env={**ENV, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"keras timing failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_grpc(item: dict, rows: Path, repeats: int) -> dict:
    """A testing-server process for the export's base; GrpcClient.predict timed from this process."""
    import pandas as pd

    from kzoo.serving.client import GrpcClient

    grpc_port, rest_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "kzoo.serving.testing_server", item["base"], "--model-name",
                               "kzoo", "--grpc-port", str(grpc_port), "--rest-port", str(rest_port), "--quiet"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        server.stdout.readline()  # "serving kzoo version 1 ..." once loaded and warmed up
        frame = pd.read_parquet(rows)
        out = {}
        with GrpcClient(f"127.0.0.1:{grpc_port}", "kzoo", item["export"], timeout=30) as client:
            for n in BATCHES:
                records = frame.iloc[:n].to_dict("records")
                for _ in range(5):
                    client.predict(records)
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    client.predict(records)
                    times.append(time.perf_counter() - t)
                out[str(n)] = times
        return out
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--backends", default="jax,tensorflow")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--work", default="/tmp/kzoo-serving-latency", help="runs and exports (reused if present)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "serving_latency.json"))
    p.add_argument("--keras-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--items", help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.keras_worker:
        return keras_worker(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = f"criteo:{data_dir() / DATA['criteo']}"
    items = prepare_exports(work, args.models.split(","), args.backends.split(","), data)
    rows = raw_rows(data, max(BATCHES), work / "rows.parquet")
    print("  timing the signatures (TensorFlow-only process)", file=sys.stderr, flush=True)
    signature = time_signatures([i["export"] for i in items], rows, args.repeats, work)
    print("  timing Keras predict_on_batch against the signature (one TensorFlow-backend process)",
          file=sys.stderr, flush=True)
    keras_times = time_keras(items, rows, args.repeats, work)
    results = []
    for item in items:
        print(f"  gRPC: {item['model']} {item['backend']} {item['variant']}", file=sys.stderr, flush=True)
        grpc_times = time_grpc(item, rows, args.repeats)
        for n in BATCHES:
            k = keras_times[item["export"]][str(n)]
            row = {**{f: item[f] for f in ("model", "backend", "variant")}, "batch": n,
                   "signature": percentiles(signature[item["export"]][str(n)]),
                   "keras_predict_on_batch": percentiles(k["keras"]),
                   "signature_same_process": percentiles(k["signature"]),
                   "grpc": percentiles(grpc_times[str(n)])}
            row["ratio_signature_to_keras"] = round(row["signature_same_process"]["p50_ms"]
                                                    / row["keras_predict_on_batch"]["p50_ms"], 3)
            row["ratio_grpc_to_signature"] = round(row["grpc"]["p50_ms"] / row["signature"]["p50_ms"], 3)
            results.append(row)
    fp32 = {(r["model"], r["backend"], r["batch"]): r for r in results if r["variant"] == "fp32"}
    for r in results:
        if r["variant"] == "int8":
            r["speedup_int8_signature"] = round(fp32[(r["model"], r["backend"], r["batch"])]["signature"]["p50_ms"]
                                                / r["signature"]["p50_ms"], 3)
    out = {"command": "bench/serving_latency.py " + " ".join(sys.argv[1:]), "repeats": args.repeats,
           "data": DATA["criteo"], "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared, under load)",
           "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(table(results))
    print(f"wrote {args.out}")


def table(results: list[dict]) -> str:
    lines = ["| model | trained on | weights | batch | signature p50 / p99 ms | Keras predict_on_batch p50 / p99 ms "
             "| signature / Keras (same process, p50) | gRPC p50 / p99 ms | gRPC / signature | int8 speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, k, g = r["signature"], r["keras_predict_on_batch"], r["grpc"]
        lines.append(f"| {r['model']} | {r['backend']} | {r['variant']} | {r['batch']} | {s['p50_ms']:.2f} / "
                     f"{s['p99_ms']:.2f} | {k['p50_ms']:.2f} / {k['p99_ms']:.2f} | {r['ratio_signature_to_keras']:.2f}× "
                     f"| {g['p50_ms']:.2f} / {g['p99_ms']:.2f} | {r['ratio_grpc_to_signature']:.2f}× | "
                     f"{str(r['speedup_int8_signature']) + '×' if 'speedup_int8_signature' in r else '—'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
