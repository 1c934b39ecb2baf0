"""kzoo's side of the FuxiCTR DIN comparison: zoo_configs/din.json's graph (SequenceEmbedding -> DIN ->
Concat with the fields -> MLP with Dice) on the features and sizes of bench/peer/fuxictr_din.py,
trained the way kzoo.train trains it (seed, prepare, build, compile, fit unshuffled with validation),
plus a Keras callback that times every training batch; test AUC, predictions and steady-state
examples/s as JSON.

Runs in kzoo's venv, with the backend from KERAS_BACKEND (jax, tensorflow, torch):

    KERAS_BACKEND=jax .venv/bin/python bench/peer/kzoo_din.py \
        --data movielens:../shared/data/movielens_100k --batch-size 256 --out /tmp/kzoo_din.json

--data is `movielens:FOLDER` (kzoo's loader) or a pandas pickle of that loader's frame (with its
`split` column), which bench/sequence_peer.py writes so that every process reads the same rows.

Speed: `steady_examples_per_s` = rows of the full-batch steps warmup+1 .. warmup+timed of the epoch /
(end of the last of them - end of step `warmup`), timed at on_train_batch_end, which also makes each
step synchronous (Keras pythonifies the logs for a callback that is not async-safe, as for
kzoo.train's StepLogger). So compilation (the first steps), the end-of-epoch validation and a final
partial batch (a new shape: a recompile) are outside the window. The train split's tf.data cache
(kzoo's preprocessing of the raw columns, done once and cached by kzoo.pipeline) is filled before
fit by iterating the dataset once (--warm-cache, default on), as FuxiCTR's side transforms its data
before fit: both windows time training on preprocessed batches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from timing import pin_cpus, steady_window  # bench/peer/timing.py, beside this script

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

FEATURES = ["user_id", "gender", "age", "occupation", "zip", "item_id", "item_cat", "item_genres", "year",
            "hist_item_id", "hist_item_cat"]


def units(text: str) -> list[int]:
    return [int(u) for u in text.split(",") if u.strip()]


def din_spec(dataset: dict, features: list[str], dim: int, attention_units: list[int], mlp: list[int], lr: float,
             batch_size: int, epochs: int, max_len: int, initializer_scale: float = 0.05) -> dict:
    """zoo_configs/din.json's graph, inline, on `features` of kzoo's MovieLens schema."""
    chosen = []
    for f in dataset["features"]:
        if f["name"] in features:
            f = dict(f)
            if f.get("type") == "sequence":
                f["max_len"] = max_len
            chosen.append(f)
    missing = sorted(set(features) - {f["name"] for f in chosen})
    if missing:
        raise SystemExit(f"features not in kzoo's movielens schema: {missing}")
    return {
        "name": "din_peer",
        "description": "zoo_configs/din.json's graph at the FuxiCTR comparison's sizes (bench/sequence_peer.py)",
        # The dataset keeps its name: kzoo.prepare swaps in the bundled schema when a named loader's
        # dataset name differs from the spec's.
        "features": {**{k: v for k, v in dataset.items() if k != "features"}, "features": chosen},
        "groups": {"all": ["*"]},
        "blocks": [
            {"name": "emb", "type": "SequenceEmbedding", "inputs": ["group:all"],
             "args": {"dim": dim, "initializer_scale": initializer_scale}},
            {"name": "interest", "type": "DIN", "inputs": ["emb.target", "emb.history", "emb.mask"],
             "args": {"units": attention_units, "activation": "dice"}},
            {"name": "joined", "type": "Concat", "inputs": ["emb.fields", "interest"]},
            {"name": "deep", "type": "MLP", "inputs": ["joined"],
             "args": {"units": [*mlp, 1], "activation": "dice", "output_activation": None}},
        ],
        "tasks": [{"name": "ctr", "type": "binary", "input": "deep", "loss": "bce", "metrics": ["auc", "logloss"],
                   "gauc_by": "user_id"}],
        "train": {"optimizer": {"type": "adam", "learning_rate": lr}, "batch_size": batch_size, "epochs": epochs},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="movielens:FOLDER or a pickle of kzoo's MovieLens frame")
    p.add_argument("--features", default=",".join(FEATURES))
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--attention-units", default="80,40")
    p.add_argument("--mlp", default="200,80")
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--initializer-scale", type=float, default=0.05,
                   help="std of the embedding tables' normal init (kzoo's default 0.05; FuxiCTR's is 1e-4)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--timed-steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2, help="pin the process to this many CPUs")
    p.add_argument("--warm-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="fill the train split's tf.data cache (kzoo's preprocessing) before fit")
    p.add_argument("--predictions", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cpus = pin_cpus(args.threads)

    import keras
    import pandas as pd

    import kzoo
    from kzoo import data as kdata
    from kzoo.evaluate import evaluate_frame
    from kzoo.predict import predict_frame
    from kzoo.trainer import compile as kzoo_compile

    data = args.data
    if not data.startswith("movielens:"):
        data = pd.read_pickle(data)
    spec = din_spec(kdata.bundled_dataset("movielens"), args.features.split(","), args.embedding_dim,
                    units(args.attention_units), units(args.mlp), args.lr, args.batch_size, args.epochs, args.max_len,
                    args.initializer_scale)

    keras.utils.set_random_seed(args.seed)  # as kzoo.train: seed, then prepare / build / compile / fit
    t0 = time.perf_counter()
    prepared = kzoo.prepare(spec, data)
    spec = prepared.spec
    model = kzoo_compile(kzoo.build(spec, prepared.stats), spec)
    cache_seconds = None
    if args.warm_cache:
        t = time.perf_counter()
        for _ in prepared.train:
            pass
        cache_seconds = time.perf_counter() - t
    prep_seconds = time.perf_counter() - t0
    steps = []  # (epoch, start, end, rows)
    rows = len(prepared.frames["train"])
    n_batches = -(-rows // args.batch_size)
    batch_rows = [min(args.batch_size, rows - i * args.batch_size) for i in range(n_batches)]

    class BatchTimer(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            steps.append((self.epoch, self.t, time.perf_counter(), batch_rows[batch]))

    t0 = time.perf_counter()
    model.fit(prepared.train, validation_data=prepared.validation, epochs=args.epochs, callbacks=[BatchTimer()],
              verbose=0, shuffle=False)
    fit_seconds = time.perf_counter() - t0
    steady = steady_window(steps, args.warmup_steps, args.timed_steps, args.batch_size)
    test = prepared.frames["test"]
    report = evaluate_frame(model, spec, prepared.preprocessor, test, 4096)["ctr"]
    used = [f["name"] for f in spec.features]
    result = {
        "side": "kzoo",
        "model": "kzoo DIN (zoo_configs/din.json graph, inline spec)",
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "test_auc": float(report["auc"]),
        "test_logloss": float(report["logloss"]),
        "test_gauc": float(report["gauc"]) if "gauc" in report else None,
        **steady,
        "fit_examples_per_s": rows * args.epochs / fit_seconds,
        "fit_seconds_total": fit_seconds,
        "preprocess_seconds": prep_seconds,
        "cache_fill_seconds": cache_seconds,
        "train_steps": len(steps),
        "train_examples": rows,
        "params": int(model.count_params()),
        "features": used,
        "vocab_sizes": {k: len(v["vocab"]) for k, v in prepared.stats.items() if "vocab" in v},
        "cpus": cpus,
        "config": {k: getattr(args, k) for k in ("embedding_dim", "attention_units", "mlp", "max_len", "batch_size",
                                                 "lr", "epochs", "seed", "warmup_steps", "timed_steps", "threads",
                                                 "warm_cache")},
    }
    if args.predictions:
        served = predict_frame(model, spec, prepared.preprocessor, test, 4096)
        result["predictions"] = [round(float(x), 6) for x in served["ctr"]]
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text)
    print(json.dumps({k: v for k, v in result.items() if k not in ("predictions", "config")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
