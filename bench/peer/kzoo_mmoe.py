"""kzoo's side of the FuxiCTR MMoE comparison: zoo_configs/mmoe.json on a Census path, trained the way
kzoo.train trains it (seed, prepare, build, compile, fit unshuffled with validation), plus a Keras
callback that times every training batch; per-task test AUC and steady-state examples/s as JSON.

Runs in kzoo's venv, with the backend from KERAS_BACKEND (jax, tensorflow, torch):

    KERAS_BACKEND=jax .venv/bin/python bench/peer/kzoo_mmoe.py \
        --data census:/work/shared/data/census_income_kdd/census-income.part1.gz --out /tmp/kzoo_mmoe.json

`steady_examples_per_s` = training rows of the epochs after the first / (end of the epoch's last
batch - start of its first batch), so it leaves out epoch 1 (tracing / XLA compilation) and the
end-of-epoch validation, as fuxictr_mmoe.py does on its side. With --write-split DIR it also writes
the train/valid/test frames as CSV for fuxictr_mmoe.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="census:PATH")
    p.add_argument("--spec", default=str(REPO / "zoo_configs" / "mmoe.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: the spec's (2)")
    p.add_argument("--write-split", default=None, help="write train/valid/test CSVs here and exit")
    p.add_argument("--predictions", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import keras

    import kzoo
    from kzoo.evaluate import evaluate_frame
    from kzoo.trainer import compile as kzoo_compile

    if args.write_split:
        prepared = kzoo.prepare(args.spec, args.data)
        os.makedirs(args.write_split, exist_ok=True)
        for name, part in (("train", "train"), ("valid", "validation"), ("test", "test")):
            prepared.frames[part].to_csv(os.path.join(args.write_split, f"{name}.csv"), index=False)
        print(json.dumps({k: len(v) for k, v in prepared.frames.items()}))
        return 0

    keras.utils.set_random_seed(args.seed)  # as kzoo.train: seed, then prepare / build / compile / fit
    prepared = kzoo.prepare(args.spec, args.data)
    spec = prepared.spec
    epochs = int(args.epochs or spec.train.get("epochs", 1))
    model = kzoo_compile(kzoo.build(spec, prepared.stats), spec)
    steps = []  # (epoch, start, end)

    class BatchTimer(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            steps.append((self.epoch, self.t, time.perf_counter()))

    t0 = time.perf_counter()
    model.fit(prepared.train, validation_data=prepared.validation, epochs=epochs, callbacks=[BatchTimer()],
              verbose=0, shuffle=False)
    fit_seconds = time.perf_counter() - t0
    rows = len(prepared.frames["train"])
    per_epoch = {}
    for epoch, s, e in steps:
        first, last = per_epoch.get(epoch, (s, e))
        per_epoch[epoch] = (min(first, s), max(last, e))
    steady = [ep for ep in per_epoch if ep >= 1]
    steady_secs = sum(per_epoch[ep][1] - per_epoch[ep][0] for ep in steady)
    test = prepared.frames["test"]
    report = evaluate_frame(model, spec, prepared.preprocessor, test, prepared.batch_size)
    tasks = [t["name"] for t in spec.tasks]
    result = {
        "model": "kzoo MMoE (zoo_configs/mmoe.json)",
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "tasks": {t: {"auc": float(report[t]["auc"]), "logloss": float(report[t]["logloss"])} for t in tasks},
        "steady_examples_per_s": rows * len(steady) / steady_secs if steady_secs else None,
        "steady_epochs": sorted(steady),
        "epoch_examples_per_s": {str(ep): rows / (last - first) for ep, (first, last) in sorted(per_epoch.items())},
        "fit_examples_per_s": rows * epochs / fit_seconds,
        "fit_seconds_total": fit_seconds,
        "train_steps": len(steps),
        "params": int(model.count_params()),
        "seed": args.seed,
        "epochs": epochs,
        "batch_size": prepared.batch_size,
    }
    if args.predictions:
        from kzoo.predict import predict_frame

        served = predict_frame(model, spec, prepared.preprocessor, test, prepared.batch_size)
        result["predictions"] = {t: [round(float(x), 6) for x in served[t]] for t in tasks}
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
