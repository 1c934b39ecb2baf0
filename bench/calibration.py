"""Calibration before and after Platt scaling and isotonic regression, on the Criteo and Avazu slices,
for a model trained with BCE, calibrated BCE and focal loss.

    .venv/bin/python bench/calibration.py                      # -> bench/out/calibration.json, docs/results.md
    .venv/bin/python bench/calibration.py --datasets criteo --losses focal --seeds 0

Each (dataset, loss, seed) trains the zoo's DeepFM with `kzoo.train` on the fixed 80/10/10 split
(split seed 0; the training seed varies), then `kzoo.calibration.calibrate` fits Platt and isotonic
on the validation split; every number is on the test split (the rows neither fit saw).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import DATA, data_dir, environment, log, ms, spec_for, write_section  # noqa: E402

MODEL = "deepfm"
LOSSES = {"bce": "bce", "calibrated_bce": {"type": "calibrated_bce", "lambda": 1.0},
          "focal": {"type": "focal", "gamma": 2.0}}
METRICS = ("ece", "ece_quantile", "logloss", "auc", "calibration_slope")
OUT = REPO / "bench" / "out" / "calibration.json"
DOC = REPO / "docs" / "results.md"
START, END = "<!-- calibration:start -->", "<!-- calibration:end -->"


def one(dataset: str, loss: str, seed: int, epochs: int, tmp: Path) -> dict:
    import kzoo
    from kzoo.calibration import calibrate

    raw = spec_for(MODEL, dataset)
    raw["tasks"][0]["loss"] = LOSSES[loss]
    data = f"{dataset}:{data_dir() / DATA[dataset]}"
    run = tmp / f"{dataset}_{loss}_{seed}"
    start = time.time()
    kzoo.train(raw, data, run, epochs=epochs, seed=seed, verbose=0, overwrite=True)
    out = {"dataset": dataset, "loss": loss, "seed": seed, "train_seconds": round(time.time() - start, 1)}
    for method in ("platt", "isotonic"):
        entry = calibrate(run, method)["tasks"]["ctr"]
        test = entry["metrics"]["test"]
        out["raw"] = {k: test["before"][k] for k in METRICS}
        out[method] = {k: test["after"][k] for k in METRICS}
        out[f"{method}_params"] = (entry["params"] if method == "platt"
                                   else {"knots": len(entry["params"]["x_thresholds"])})
    out["test_rows"] = test["before"]["examples"]
    out["validation_rows"] = entry["metrics"]["validation"]["before"]["examples"]
    return out


def table(results: list[dict]) -> str:
    lines = ["| data | loss | scores | ECE (10 equal-width bins) | ECE (10 equal-mass bins) | logloss | AUC | "
             "calibration slope |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["loss"]) for r in results}, key=lambda k: (k[0], list(LOSSES).index(k[1])))
    for dataset, loss in keys:
        rows = [r for r in results if (r["dataset"], r["loss"]) == (dataset, loss)]
        for when, label in (("raw", "as trained"), ("platt", "Platt"), ("isotonic", "isotonic")):
            cells = [ms([r[when][m] for r in rows], ".3f" if m == "calibration_slope" else ".4f") for m in METRICS]
            lines.append(f"| {dataset} | {loss} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section(report: dict) -> str:
    env, results = report["environment"], report["results"]
    seeds = sorted({r["seed"] for r in results})
    rows = results[0]
    return f"""{START}
## Calibration: Platt and isotonic, after BCE, calibrated BCE and focal loss

`{report['command']}` ({env['date']}, {env['machine']}, Keras {env['keras']} on {env['backend']},
{report['seconds'] / 60:.1f} min). The zoo's DeepFM trained {report['epochs']} epoch(s) on each slice with three
losses (`bce`; `calibrated_bce` with lambda 1; `focal` with gamma 2 and no class weighting), then `kzoo calibrate`'s two
methods fitted on the validation split ({rows['validation_rows']} rows) and measured on the test split
({rows['test_rows']} rows); mean ± sd over training seeds {seeds}. A calibration slope of 1 means calibrated
(below 1: over-confident scores, above 1: under-confident). Raw numbers: `bench/out/calibration.json`.

{table(results)}

Reading it: {report['reading']}

These slices are small (10,000 rows, so 1,000 validation rows to fit on and 1,000 test rows to measure):
an ECE difference below about 0.01 is within the test split's noise. Isotonic regression, which fits a
step per block of validation rows, overfits at this size. In the case we looked into, the cause is its end
blocks: for Avazu, BCE, seed 0 (logloss 0.4528 -> 0.4815), every validation row above a raw
score of 0.648 was a click, so isotonic maps those scores to exactly 1.0, and the two test non-clicks
scored there cost 15 nats each: 0.030 of mean logloss over 1,000 rows, more than the whole 0.029 rise. With 1,000 rows to fit on, Platt's two parameters
are the safer choice; isotonic needs far more validation rows (a day of traffic, not a 10k slice).
{END}"""


def reading(results: list[dict]) -> str:
    """One plain paragraph from the numbers (mean over seeds and datasets)."""
    import statistics

    def mean(loss, when, metric):
        return statistics.mean(r[when][metric] for r in results if r["loss"] == loss)

    losses = {r["loss"] for r in results}
    parts = []
    if "focal" in losses:
        versus = (f", against {mean('bce', 'raw', 'ece_quantile'):.4f} and {mean('bce', 'raw', 'calibration_slope'):.2f} "
                  "for BCE") if "bce" in losses else ""
        parts.append(f"focal loss is the miscalibrated one: its raw scores have an equal-mass ECE of "
                     f"{mean('focal', 'raw', 'ece_quantile'):.4f} and a calibration slope of "
                     f"{mean('focal', 'raw', 'calibration_slope'):.2f}{versus} (averaged over both slices); "
                     f"Platt brings focal to {mean('focal', 'platt', 'ece_quantile'):.4f} and isotonic to "
                     f"{mean('focal', 'isotonic', 'ece_quantile'):.4f}, and its logloss from "
                     f"{mean('focal', 'raw', 'logloss'):.4f} to {mean('focal', 'platt', 'logloss'):.4f} (Platt)")
    for dataset in sorted({r["dataset"] for r in results}):
        rows = [r for r in results if r["dataset"] == dataset]
        parts.append(f"on {dataset}, logloss averaged over the losses goes "
                     f"{statistics.mean(r['raw']['logloss'] for r in rows):.4f} (as trained) -> "
                     f"{statistics.mean(r['platt']['logloss'] for r in rows):.4f} (Platt) -> "
                     f"{statistics.mean(r['isotonic']['logloss'] for r in rows):.4f} (isotonic)")
    parts.append(f"AUC moves little: Platt is monotone and leaves it unchanged (mean change "
                 f"{statistics.mean(r['platt']['auc'] - r['raw']['auc'] for r in results):+.4f}), while isotonic "
                 f"merges scores into ties and changes it by "
                 f"{statistics.mean(r['isotonic']['auc'] - r['raw']['auc'] for r in results):+.4f} on average")
    return "; ".join(parts) + "."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="criteo,avazu")
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--no-doc", action="store_true", help="write bench/out/calibration.json only")
    p.add_argument("--doc-only", action="store_true", help="rewrite the docs section from bench/out/calibration.json")
    args = p.parse_args(argv)
    if args.doc_only:
        report = json.loads(OUT.read_text())
        report["reading"] = reading(report["results"])
        OUT.write_text(json.dumps(report, indent=2))
        write_section(DOC, START, END, section(report))
        return 0
    import keras

    start = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="kzoo-calibration-") as tmp:
        for dataset in args.datasets.split(","):
            for loss in args.losses.split(","):
                for seed in map(int, args.seeds.split(",")):
                    log(f"{dataset} {loss} seed {seed}")
                    results.append(one(dataset, loss, seed, args.epochs, Path(tmp)))
                    log(f"  raw ece_mass {results[-1]['raw']['ece_quantile']:.4f} -> platt "
                        f"{results[-1]['platt']['ece_quantile']:.4f}, isotonic {results[-1]['isotonic']['ece_quantile']:.4f}")
    command = "bench/calibration.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    report = {"command": f".venv/bin/python {command}", "environment": environment(keras.backend.backend()),
              "model": MODEL, "epochs": args.epochs, "seconds": round(time.time() - start, 1), "results": results}
    report["reading"] = reading(results)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(table(results))
    if not args.no_doc:
        write_section(DOC, START, END, section(report))
        print(f"wrote {OUT} and the calibration section of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
