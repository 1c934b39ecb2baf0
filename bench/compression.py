"""Compression on the Criteo slice: fp32 against int8, pruned (50 %) and distilled DCN-V2.

    .venv/bin/python bench/compression.py                      # -> bench/out/compression.json
    .venv/bin/python bench/compression.py --repeats 50 --backend jax

Trains dcn_v2 (the zoo config) on the slice, then `kzoo compress`es it three ways: int8
(`model.quantize`, per-row int8 tables), prune (--sparsity 0.5, one fine-tuning epoch) and distill
(a smaller DCN-V2 spec, alpha 0.5, T 2); the small spec is also trained without a teacher, to see what
the teacher adds. Each run is exported (`kzoo export`) and measured: test AUC and logloss (one test
split for all, so the AUC differences are paired: `kzoo.metrics.auc_difference`, bootstrap 95 %),
SavedModel size on disk, parameter memory (bytes of the model's variables), and the latency of the
SavedModel's `serving_default` at 256 candidates in a TensorFlow-only process (bench/serving_latency.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import DATA, data_dir  # noqa: E402
from serving_latency import kzoo_cli, percentiles, raw_rows, time_signatures  # noqa: E402

STUDENT = {"dim": 8, "cross": {"layers": 2, "low_rank": 16}, "units": [64, 32]}


def student_spec(path: Path) -> Path:
    spec = json.loads((REPO / "zoo_configs" / "dcn_v2.json").read_text())
    spec["name"] = "dcn_v2_small"
    spec["description"] = "DCN-V2 student: dim 8, 2 low-rank-16 cross layers, MLP 64-32"
    blocks = {b["name"]: b for b in spec["blocks"]}
    blocks["emb"]["args"]["dim"] = STUDENT["dim"]
    blocks["cross"]["args"].update(STUDENT["cross"])
    blocks["deep"]["args"]["units"] = STUDENT["units"]
    path.write_text(json.dumps(spec, indent=2))
    return path


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="tensorflow", help="backend the runs train and compress on")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--work", default="/tmp/kzoo-compression")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "compression.json"))
    args = p.parse_args()
    work, backend = Path(args.work), args.backend
    work.mkdir(parents=True, exist_ok=True)
    data = f"criteo:{data_dir() / DATA['criteo']}"
    runs = {name: work / f"{name}_{backend}" for name in ("fp32", "int8", "pruned", "distilled", "small")}
    small = student_spec(work / "dcn_v2_small.json")
    steps = [("fp32", ["train", "dcn_v2", "--data", data]),
             ("int8", ["compress", runs["fp32"], "--method", "int8"]),
             ("pruned", ["compress", runs["fp32"], "--method", "prune", "--sparsity", "0.5", "--epochs", "1"]),
             ("distilled", ["compress", runs["fp32"], "--method", "distill", "--student", small, "--alpha", "0.5",
                            "--temperature", "2", "--epochs", "1"]),
             ("small", ["train", small, "--data", data])]
    for name, cmd in steps:
        if not (runs[name] / "metrics.json").is_file():
            print(f"  {name}: kzoo {cmd[0]}", file=sys.stderr, flush=True)
            kzoo_cli(*cmd, "--out", runs[name], "--overwrite", backend=backend)
        base = work / "exports" / runs[name].name
        if not (base / "1" / "saved_model.pb").is_file():
            kzoo_cli("export", runs[name], "--out", base, "--version", "1", backend=backend)

    import kzoo
    from kzoo.metrics import auc_difference
    from kzoo.pipeline import load_for, split_frames

    spec, frame = load_for(kzoo.load_spec("dcn_v2"), data)
    test = split_frames(spec, frame)[2].reset_index(drop=True)
    labels = test["label"].to_numpy()
    scores = {name: kzoo.predict(run, test.drop(columns=["label"]))["ctr"].to_numpy() for name, run in runs.items()}
    rows = raw_rows(data, 256, work / "rows.parquet")
    exports = {name: str(work / "exports" / run.name / "1") for name, run in runs.items()}
    latency = time_signatures(list(exports.values()), rows, args.repeats, work)
    results = []
    for name, run in runs.items():
        m = json.loads((run / "metrics.json").read_text())
        row = {"variant": name, "auc": m["ctr"]["auc"], "logloss": m["ctr"]["logloss"],
               "params": m["params"], "param_bytes": m.get("param_bytes") or 4 * m["params"],
               "savedmodel_bytes": disk_bytes(exports[name]), "model_keras_bytes": (run / "model.keras").stat().st_size,
               "latency_256": percentiles(latency[exports[name]]["256"]),
               "latency_1": percentiles(latency[exports[name]]["1"])}
        if name != "fp32":
            row["auc_vs_fp32"] = auc_difference(labels, scores[name], scores["fp32"])
        if "sparsity" in m:
            row["sparsity"] = m["sparsity"]["overall"]
        results.append(row)
    base = results[0]
    for r in results:
        r["speedup_256"] = round(base["latency_256"]["p50_ms"] / r["latency_256"]["p50_ms"], 3)
    out = {"command": "bench/compression.py " + " ".join(sys.argv[1:]), "backend": backend, "data": DATA["criteo"],
           "test_rows": len(test), "repeats": args.repeats, "student": STUDENT,
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared, under load)", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(table(results))
    print(f"wrote {args.out}")


def table(results: list[dict]) -> str:
    lines = ["| variant | AUC | ΔAUC vs fp32 [95 % CI] | logloss | SavedModel on disk | parameter memory | "
             "signature p50 / p99 at 256 (ms) | speed-up vs fp32 |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        d = r.get("auc_vs_fp32")
        delta = f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "—"
        lat = r["latency_256"]
        lines.append(f"| {r['variant']} | {r['auc']:.4f} | {delta} | {r['logloss']:.4f} | "
                     f"{r['savedmodel_bytes'] / 1e6:.2f} MB | {r['param_bytes'] / 1e6:.2f} MB | "
                     f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f} | {r['speedup_256']:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
