"""Every multi-task zoo config x every loss-balancing method x every backend, through the CLI.

For each (config, method, backend): `kzoo train` (the config with `train.balancing` set; 1 epoch on
4,000 rows of its dataset), `kzoo export` (one output per task, checked in kzoo.json) and, for the
static runs, `kzoo diagnose`. Prints one line per run and a markdown table at the end.

    .venv/bin/python bench/zoo_matrix.py [--rows 4000] [--backends jax,tensorflow]

A smoke matrix, not a quality table: docs/results.md has the measured comparisons.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {"shared_bottom": "bottom", "mmoe": "mmoe", "ple": "ple", "esmm": "emb"}  # -> GradNorm's shared block
METHODS = ["static", "uncertainty", "gradnorm", "pcgrad"]


def data_file(config: str, rows: int, folder: Path) -> Path:
    """A CSV of `rows` rows of the config's dataset (Census slice; Ali-CCP samples tiled)."""
    import pandas as pd

    from kzoo import data as kdata

    root = kdata.data_dir()
    if config == "esmm":
        parts = [root / "multitask_ctr_samples" / f"ali_ccp_{p}_sample.csv" for p in ("train", "val", "test")]
        frame = pd.concat([kdata.load(f"aliccp:{p}")[0] for p in parts], ignore_index=True)
        frame = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).iloc[:rows]
    else:
        frame = kdata.load(f"census:{root / 'census_income_kdd' / 'census-income.part1.gz'}")[0].iloc[:rows]
    path = folder / f"{'aliccp' if config == 'esmm' else 'census'}.csv"
    if not path.exists():
        frame.to_csv(path, index=False)
    return path


def run(cmd: list[str], backend: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    return subprocess.run([sys.executable, "-m", "kzoo.cli", *cmd], capture_output=True, text=True, env=env)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4000)
    p.add_argument("--backends", default="jax,tensorflow")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for backend in args.backends.split(","):
            for config, shared in CONFIGS.items():
                data = data_file(config, args.rows, tmp)
                for method in METHODS:
                    spec = json.loads((REPO / "zoo_configs" / f"{config}.json").read_text())
                    spec["train"]["epochs"] = 1
                    if method != "static":
                        spec["train"]["balancing"] = {"type": method, **({"shared": shared} if method == "gradnorm" else {})}
                    path = tmp / f"{config}_{method}.json"
                    path.write_text(json.dumps(spec))
                    out = tmp / "runs" / f"{backend}_{config}_{method}"
                    start = time.time()
                    trained = run(["train", str(path), "--data", str(data), "--out", str(out)], backend)
                    row = {"backend": backend, "config": config, "method": method, "train": trained.returncode == 0}
                    if trained.returncode == 0:
                        metrics = json.loads((out / "metrics.json").read_text())
                        row["auc"] = {t["name"]: round(metrics[t["name"]]["auc"], 4) for t in spec["tasks"]}
                        exported = run(["export", str(out), "--out", str(tmp / "exports" / out.name)], backend)
                        row["export"] = exported.returncode == 0
                        if exported.returncode == 0:
                            meta = json.loads((tmp / "exports" / out.name / "1" / "assets.extra" / "kzoo.json").read_text())
                            row["outputs"] = meta["outputs"]
                        if method == "static":
                            diag = run(["diagnose", str(out), "--rows", "1000"], backend)
                            row["diagnose"] = diag.returncode == 0 and (out / "diagnose.png").is_file()
                    else:
                        row["error"] = trained.stderr.strip().splitlines()[-1:]
                    row["seconds"] = round(time.time() - start, 1)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| backend | config | method | trains | exports (outputs) | diagnose | test AUC per task |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['config']} | {r['method']} | {'yes' if r['train'] else 'NO'} | "
              f"{'yes' if r.get('export') else 'NO'} ({', '.join(r.get('outputs', []))}) | "
              f"{'yes' if r.get('diagnose') else ('-' if r['method'] != 'static' else 'NO')} | "
              f"{', '.join(f'{k} {v}' for k, v in r.get('auc', {}).items())} |")
    return 0 if all(r["train"] and r.get("export") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
