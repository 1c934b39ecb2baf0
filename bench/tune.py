"""Practitioner tuning pass for the ranking zoo on the Criteo and Avazu slices.

    .venv/bin/python bench/tune.py                       # every model, both datasets -> bench/tuned.json
    .venv/bin/python bench/tune.py --models dcn --datasets criteo
    .venv/bin/python bench/tune.py --spec my.json --data criteo:PATH --write-spec my.tuned.json

A coordinate search, one knob at a time in the order a practitioner would try them, keeping a
change only when it raises the *validation* AUC (the test split is never looked at here):

    learning_rate  0.003 (zoo default) | 0.001
    dim            embedding sizes as in the config (16) | halved (8)
    embedding_l2   0 | 0.01 | 0.1        (train.embedding_l2: every embedding table)
    dropout        0 | 0.2               (every block with a `dropout` argument: MLP, WuKong, MaskNet, ...)

Every candidate trains up to 3 epochs with early stopping on validation AUC (patience 0, best
weights restored), so the number of epochs is tuned too. A knob that does not change a model's
spec (dim for LR, dropout where no block has a `dropout` argument) is not tried. Halving the embedding size also
halves DLRM's dense-tower output (the dot interaction needs equal sizes). Model seed 0, split seed 0 (the
split of bench/quality.py). The result, bench/tuned.json, is what `bench/quality.py --variant
tuned` trains with; the search trace goes into docs/tuning.md.

Each dataset runs in its own subprocess, both at once (2 cores: TensorFlow's small-batch steps
do not use both cores well, two processes do).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import DATA, DEFAULT, KNOBS, MAX_EPOCHS, RANKING, TUNED_JSON, apply_setting, data_dir, spec_for  # noqa: E402

SEARCHED = [k for k, _ in KNOBS]  # --knobs picks a subset


def train_once(raw: dict, data: str, seed: int = 0) -> dict:
    import kzoo

    spec = kzoo.load_spec(raw)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        kzoo.train(spec, data, Path(tmp) / "run", seed=seed, verbose=0)
        lines = (Path(tmp) / "run" / "history.csv").read_text().splitlines()
    header = lines[0].split(",")
    val = [float(line.split(",")[header.index(raw["train"]["early_stopping"]["monitor"])]) for line in lines[1:]]
    best = max(range(len(val)), key=val.__getitem__)
    return {"val_auc": val[best], "epochs": best + 1, "val_auc_per_epoch": val, "seconds": round(time.time() - start, 1)}


def search(raw: dict, data: str, label: str, knobs: list[str] = SEARCHED) -> dict:
    """Coordinate search for spec `raw` on `data`; returns the chosen setting and the trace."""
    current = dict(DEFAULT)
    first = train_once(apply_setting(raw, current), data)
    trace = [{"setting": dict(current), **first, "kept": True}]
    best = first["val_auc"]
    log(f"{label} default: val AUC {best:.4f} (epochs {first['epochs']}, {first['seconds']} s)")
    for knob, values in KNOBS:
        if knob not in knobs:
            continue
        chosen = current
        for value in values[1:]:
            candidate = {**current, knob: value}
            if apply_setting(raw, candidate) == apply_setting(raw, current):
                continue  # the knob does not exist in this model
            res = train_once(apply_setting(raw, candidate), data)
            kept = res["val_auc"] > best
            trace.append({"setting": candidate, **res, "kept": kept})
            log(f"{label} {knob}={value}: val AUC {res['val_auc']:.4f} (epochs {res['epochs']}, "
                f"{res['seconds']} s){'  <- kept' if kept else ''}")
            if kept:
                best, chosen = res["val_auc"], candidate
        current = chosen
    chosen_row = next(t for t in trace if t["setting"] == current)
    return {"setting": {k: v for k, v in chosen_row["setting"].items() if v != DEFAULT[k]},
            "val_auc": chosen_row["val_auc"], "epochs": chosen_row["epochs"], "default_val_auc": first["val_auc"],
            "trace": trace}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def worker(args) -> None:
    dataset = args.datasets[0]
    for model in args.models:
        result = search(spec_for(model, dataset), f"{dataset}:{data_dir() / DATA[dataset]}",
                        f"{dataset:<6} {model:<16}", args.knobs)
        print(json.dumps({"dataset": args.datasets[0], "model": model, **result}), flush=True)


def tune_own(args) -> None:
    """`--spec my.json --data ...`: the same search on a user's spec; prints the chosen setting."""
    import kzoo

    if not args.data:
        raise SystemExit("--spec needs --data (e.g. --data criteo:PATH or --data my.parquet)")
    raw = kzoo.load_spec(args.spec).raw
    result = search(raw, args.data, Path(args.spec).stem, args.knobs)
    print(json.dumps({k: result[k] for k in ("setting", "val_auc", "epochs", "default_val_auc")}, indent=1))
    if args.write_spec:
        Path(args.write_spec).write_text(json.dumps(apply_setting(raw, result["setting"]), indent=2))
        log(f"wrote the tuned spec to {args.write_spec}")


def markdown(tuned: dict) -> str:
    lines = ["# Tuning the ranking zoo on the Criteo and Avazu slices", "",
             "Made by `python bench/tune.py` (TensorFlow backend, model seed 0, split seed 0). A coordinate "
             "search over learning rate (0.003 | 0.001), embedding size (as configured | halved), embedding "
             "L2 (`train.embedding_l2`: 0 | 0.01 | 0.1) and dropout in the blocks that take one (0 | 0.2), in "
             "that order, each candidate trained up "
             f"to {MAX_EPOCHS} epochs with early stopping on validation AUC; a change is kept only when it "
             "raises validation AUC. The test split is not used here: docs/results.md reports test AUC over 3 "
             "seeds of the chosen settings (`python bench/quality.py --variant tuned`).", "",
             "Validation is 1,000 rows (Criteo ~215 positives, Avazu ~170): AUC differences below ~0.01 "
             "between candidates are within its noise, so the chosen settings are a practitioner's "
             "best guess on this slice, not a precise optimum. Both columns train up to 3 epochs with early "
             "stopping: the zoo config's row is its settings unchanged otherwise.", "",
             "Tune your own spec the same way (on the backend of `KERAS_BACKEND`; it needs a validation "
             "split and a binary task with an `auc` metric):", "", "```",
             "python bench/tune.py --spec my_spec.json --data criteo:PATH --write-spec my_spec.tuned.json",
             "```", ""]
    for dataset, models in tuned.items():
        lines += [f"## {dataset.capitalize()}", "",
                  "| model | zoo config: val AUC (best epoch) | tuned: val AUC (best epoch) | chosen setting | "
                  "candidates tried |",
                  "|---|---|---|---|---|"]
        for model, r in models.items():
            first = r["trace"][0]
            setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "default (early stopping only)"
            lines.append(f"| {model} | {r['default_val_auc']:.4f} ({first['epochs']}) | {r['val_auc']:.4f} "
                         f"({r['epochs']}) | {setting} | {len(r['trace'])} |")
        lines.append("")
    lines += ["## Search trace", "", "Every candidate with its validation AUC per epoch (early stopping ends a "
              "run at the first epoch that does not improve).", ""]
    for dataset, models in tuned.items():
        for model, r in models.items():
            lines += [f"### {dataset} / {model}", ""]
            for t in r["trace"]:
                changed = {k: v for k, v in t["setting"].items() if v != DEFAULT[k]} or "default"
                per_epoch = ", ".join(f"{v:.4f}" for v in t["val_auc_per_epoch"])
                lines.append(f"- {changed}: val AUC per epoch [{per_epoch}]{' — kept' if t['kept'] else ''}")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="criteo,avazu")
    p.add_argument("--models", default=",".join(RANKING))
    p.add_argument("--out", default=str(TUNED_JSON))
    p.add_argument("--docs", default=str(REPO / "docs" / "tuning.md"))
    p.add_argument("--knobs", default=",".join(SEARCHED), help="knobs to search, in this order of KNOBS "
                   f"(all: {','.join(k for k, _ in KNOBS)})")
    p.add_argument("--spec", help="tune your own spec instead of the zoo (with --data; runs on KERAS_BACKEND)")
    p.add_argument("--data", help="the data for --spec, as for `kzoo train --data`")
    p.add_argument("--write-spec", help="with --spec: write the tuned spec here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.datasets = args.datasets.split(",")
    args.models = args.models.split(",")
    args.knobs = args.knobs.split(",")
    if unknown := set(args.knobs) - set(DEFAULT):
        raise SystemExit(f"unknown knob(s) {sorted(unknown)}; known: {', '.join(DEFAULT)}")
    if args.worker:
        return worker(args)
    if args.spec:
        return tune_own(args)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = Path(args.out)
    tuned = json.loads(out.read_text()) if out.is_file() else {}
    lock = threading.Lock()

    def run(dataset: str) -> int:
        # Every finished model is written at once, so a failure elsewhere loses nothing.
        proc = subprocess.Popen([sys.executable, __file__, "--worker", "--datasets", dataset, "--models",
                                 ",".join(args.models), "--knobs", ",".join(args.knobs)],
                                env=env, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if line.startswith("{"):
                row = json.loads(line)
                with lock:
                    tuned.setdefault(dataset, {})[row.pop("model")] = {k: v for k, v in row.items() if k != "dataset"}
                    out.write_text(json.dumps(tuned, indent=1))
        return proc.wait()

    with ThreadPoolExecutor(len(args.datasets)) as pool:
        codes = dict(zip(args.datasets, pool.map(run, args.datasets)))
    if failed := [d for d, c in codes.items() if c]:
        raise SystemExit(f"the {', '.join(failed)} worker(s) failed; finished models are in {out}")
    ordered = {d: {m: tuned[d][m] for m in RANKING if m in tuned[d]} for d in sorted(tuned, key=list(DATA).index)}
    out.write_text(json.dumps(ordered, indent=1))
    Path(args.docs).write_text(markdown(ordered))
    log(f"wrote {out} and {args.docs}")


if __name__ == "__main__":
    main()
