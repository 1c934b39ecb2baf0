#!/usr/bin/env python
"""Training throughput: a spec-built kzoo model against the same architecture written by hand.

    python bench/throughput.py [--backend jax|tensorflow|both] [--rows 50000] [--batch-size 1024]
                               [--epochs 3] [--repeats 3] [--spec zoo_configs/dcn_v2.json]
                               [--out bench/out/throughput.json] [--steps 40] [--metrics] [--profile]

Models (one backend, one process, the same cached tf.data batches, Adam, BCE, same batch size):

    kzoo               kzoo.build(spec, stats): the spec-built functional model
    keras_fused        hand-written plain Keras, one Embedding over all categorical fields
                       (ids offset per field, one gather), as kzoo's FeatureEmbedding lays them out
    keras_per_feature  hand-written plain Keras, one keras.layers.Embedding per categorical
                       feature (the obvious way to write it)

The hand-written models are DCN-V2 (parallel) as in zoo_configs/dcn_v2.json: numeric features
embedded as value x learned vector, fields concatenated and flattened, 3 x
keras_rs.layers.FeatureCross(projection_dim=32) in parallel with Dense 256-128 relu,
concatenated, Dense(1, sigmoid). `kzoo` vs `keras_fused` is the cost of the spec layer itself;
`keras_fused` vs `keras_per_feature` is the cost of the table layout.

Timing: synthetic data is preprocessed once with kzoo's Preprocessor/make_dataset, and the batches
are cached in memory before any timing. Each model first trains on the first and the last batch
(compilation for both batch shapes; not timed). Then, for each repeat, every model trains
`--epochs` epochs, the models interleaved (the order rotates each repeat); a callback records each
epoch's wall time and the process's CPU time. Reported per model: the median over all timed epochs
of examples/s (wall clock) and of examples per CPU-second, and the ratios kzoo / hand-written.
Last, `--steps` rounds of one train step per model on one fixed batch, round-robin: the median
over rounds of the per-round step-time ratio is paired (the models of a round share the machine's
load), the least noisy figure on a shared machine.
`--profile` also counts the ops in each model's train step (jaxpr primitives / TF graph ops).

`--backend both` runs each backend in its own subprocess (KERAS_BACKEND is per process) and
prints one table. Results, with the machine (cpu count, versions, date, load), go to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("jax", "tensorflow")
MODELS = ("kzoo", "keras_fused", "keras_per_feature")
HAND = ("keras_fused", "keras_per_feature")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    p.add_argument("--rows", type=int, default=50_000, help="synthetic rows; all are trained on each epoch")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per model per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--spec", default=str(ROOT / "zoo_configs" / "dcn_v2.json"))
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "throughput.json"))
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--metrics", action="store_true",
                   help="compile every model with the spec's metrics (AUC, logloss); default: loss only")
    p.add_argument("--steps", type=int, default=40,
                   help="after the epochs, time N train steps per model on one fixed batch (0: skip)")
    p.add_argument("--profile", action="store_true", help="also count the ops in each model's train step, by type")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        p.error(f"--models: unknown {bad}; choose from {list(MODELS)}")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------- machine info

def machine_info() -> dict:
    from importlib import metadata

    cpu_model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("keras", "jax", "jaxlib", "tensorflow", "keras-rs", "numpy", "kzoo"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "versions": versions,
    }


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------ hand-written models

def _numeric_embedding_class():
    import keras

    class NumericEmbedding(keras.layers.Layer):
        """(batch, n) values -> (batch, n, dim): value_i * v_i, one learned vector per column."""

        def __init__(self, dim, initializer, **kwargs):
            super().__init__(**kwargs)
            self.dim, self.initializer = dim, initializer

        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.dim),
                                          initializer=self.initializer)

        def call(self, x):
            return keras.ops.expand_dims(x, -1) * self.kernel

        def compute_output_shape(self, input_shape):
            return (*input_shape, self.dim)

    return NumericEmbedding


def hand_written(spec, stats, fused: bool):
    """DCN-V2 (parallel) in plain Keras: the architecture of zoo_configs/dcn_v2.json.

    fused=False: one keras.layers.Embedding per categorical feature (what a user writes first).
    fused=True: the fields' ids offset into one Embedding, one gather per batch (kzoo's layout).
    Numeric features: value x learned vector (one small layer, as FuxiCTR / DeepCTR write it).
    """
    import keras
    import keras_rs

    from kzoo.features import input_size, model_dtype

    NumericEmbedding = _numeric_embedding_class()

    by_name = {f["name"]: f for f in spec.features}
    feats = [by_name[n] for n in spec.used_features()]
    emb = next(b for b in spec.blocks if b["type"] == "FeatureEmbedding")
    cross = next(b for b in spec.blocks if b["type"] == "CrossNetV2")
    deep = next(b for b in spec.blocks if b["type"] == "MLP")
    dim = emb["args"]["dim"]
    init = keras.initializers.RandomNormal(stddev=0.05)

    inputs = {f["name"]: keras.Input(shape=(1,), dtype=model_dtype(f), name=f["name"]) for f in feats}
    cats = [f for f in feats if f["type"] != "numeric"]
    nums = [f for f in feats if f["type"] == "numeric"]

    # Tables first, then the numeric vectors: kzoo's FeatureEmbedding creates its weights in this
    # order, so with one seed keras_fused's embeddings start from kzoo's very values.
    cat_fields = []  # (batch, n, dim) blocks
    if fused and cats:
        sizes = [input_size(f, stats) for f in cats]
        offsets, total = [], 0
        for s in sizes:
            offsets.append(total)
            total += s
        ids = keras.layers.Concatenate(name="ids")([inputs[f["name"]] for f in cats])
        ids = ids + keras.ops.convert_to_tensor([offsets], dtype="int32")
        cat_fields.append(keras.layers.Embedding(total, dim, embeddings_initializer=init, name="embedding")(ids))
    else:
        for f in cats:
            cat_fields.append(keras.layers.Embedding(input_size(f, stats), dim, embeddings_initializer=init,
                                                     name=f"emb_{f['name']}")(inputs[f["name"]]))
    num_fields = []
    if nums:
        x = keras.layers.Concatenate(name="numerics")([inputs[f["name"]] for f in nums])
        num_fields.append(NumericEmbedding(dim, init, name="numeric_emb")(x))
    # Schema order of the spec's group: I1..I13, then C1..C26.
    fields = num_fields + cat_fields if feats[0]["type"] == "numeric" else cat_fields + num_fields
    x0 = keras.layers.Flatten(name="flatten")(keras.layers.Concatenate(axis=1, name="fields")(fields))

    x = x0
    for i in range(cross["args"].get("layers", 3)):
        x = keras_rs.layers.FeatureCross(projection_dim=cross["args"].get("low_rank"), name=f"cross_{i}")(x0, x)
    h = x0
    for i, units in enumerate(deep["args"]["units"]):
        h = keras.layers.Dense(units, activation="relu", name=f"deep_{i}")(h)
    top = keras.layers.Concatenate(name="top")([x, h])
    task = spec.tasks[0]["name"]
    out = keras.layers.Dense(1, activation="sigmoid", name=task)(top)
    return keras.Model(inputs, {task: out}, name="fused" if fused else "per_feature")


# ------------------------------------------------------------------------------------- op counts, steps

def count_ops(model, batch) -> dict:
    """Ops in one Keras train step (forward, gradients, Adam, loss tracker), by type.

    JAX: primitives of the jaxpr of `model.train_step` (nested jaxprs included), before XLA
    fuses them. TF: ops of the graph of `tf.function(model.train_step)` (Const, Identity, NoOp,
    Placeholder, ReadVariableOp left out). The op types that matter here: gather / scatter-add
    (JAX) and GatherV2 / UnsortedSegmentSum (TF) are the embedding lookups and their gradients.
    """
    import collections

    import keras

    c = collections.Counter()
    if keras.backend.backend() == "jax":
        import jax

        state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                 [v.value for v in model.optimizer.variables], [v.value for v in model.metrics_variables])

        def walk(jaxpr):
            for e in jaxpr.eqns:
                c[e.primitive.name] += 1
                for v in e.params.values():
                    for sub in (v if isinstance(v, (list, tuple)) else [v]):
                        inner = getattr(sub, "jaxpr", sub)
                        if hasattr(inner, "eqns"):
                            walk(inner)

        walk(jax.make_jaxpr(model.train_step)(state, batch).jaxpr)
        skip = {"pjit", "jit", "custom_jvp_call", "custom_vjp_call"}
    else:
        import tensorflow as tf

        fn = tf.function(model.train_step).get_concrete_function(batch)
        c.update(op.type for op in fn.graph.get_operations())
        skip = {"Placeholder", "Identity", "NoOp", "Const", "ReadVariableOp"}
    by_type = {k: v for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])) if k not in skip}
    return {"total": sum(by_type.values()), "by_type": by_type}


def time_steps(models: dict, batch, n: int) -> dict:
    """The compiled train step on one fixed batch (`train_on_batch`, which waits for its result),
    n rounds of one step per model: min, quartiles and every round's time in ms. The models of one
    round run within a fraction of a second of each other, so per-round ratios are paired: they
    cancel most of the load that other processes put on a shared machine."""
    import keras
    import numpy as np

    # backend tensors, converted once: the steps time the model, not the conversion of 40 arrays
    x, y = (keras.tree.map_structure(keras.ops.convert_to_tensor, part) for part in batch)
    times = {name: [] for name in models}
    for m in models.values():
        m.train_on_batch(x, y)  # the fixed-batch path: compiled already by the warm-up, but once more to be sure
    for _ in range(n):
        for name, m in models.items():
            t = time.perf_counter()
            m.train_on_batch(x, y)
            times[name].append(1000 * (time.perf_counter() - t))
    return {name: {"min": float(np.min(ts)), "p25": float(np.percentile(ts, 25)), "median": float(np.median(ts)),
                   "all": ts} for name, ts in times.items()}


# ----------------------------------------------------------------------------------------- one backend

def run_backend(args) -> dict:
    backend = args.backend
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND") != backend:
        raise SystemExit("keras is already imported with another backend; run this script as its own process")
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras

    from kzoo.features import Preprocessor, fit_stats
    from kzoo.graph import build
    from kzoo.spec import load_spec
    from kzoo.trainer import make_dataset, prepare_data

    assert keras.backend.backend() == backend, keras.backend.backend()
    load_start = loadavg()
    log(f"[{backend}] keras {keras.__version__}, {os.cpu_count()} CPUs, load {load_start}")

    # ---- data: generated, preprocessed and cached once; nothing below times preprocessing
    t = time.perf_counter()
    spec = load_spec(args.spec)
    spec, frame = prepare_data(spec, f"synthetic:{args.rows}")
    stats = fit_stats(spec.features, frame)
    pre = Preprocessor(spec.features, stats, spec.used_features())
    ds = make_dataset(frame, spec, pre, args.batch_size)  # map(pre) -> cache() -> prefetch
    n_batches = 0
    for _ in ds:  # fills the in-memory cache
        n_batches += 1
    examples = len(frame)
    log(f"[{backend}] data: {examples} synthetic rows, {n_batches} batches of {args.batch_size}, "
        f"{len(spec.used_features())} features, preprocessed and cached in {time.perf_counter() - t:.1f}s")

    # ---- models
    opt_cfg = dict(spec.train.get("optimizer") or {})
    lr = float(opt_cfg.get("learning_rate", 0.001))
    task = spec.tasks[0]["name"]

    def make(name):
        keras.utils.set_random_seed(0)
        if name == "kzoo":
            model = build(spec, stats)
        else:
            model = hand_written(spec, stats, fused=(name == "keras_fused"))
        metrics = None
        if args.metrics:
            metrics = {task: [keras.metrics.AUC(name="auc", num_thresholds=1000),
                              keras.metrics.BinaryCrossentropy(name="logloss")]}
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                      loss={task: keras.losses.BinaryCrossentropy(name="bce")}, metrics=metrics)
        return model

    models = {}
    info = {}
    for name in args.models:
        m = make(name)
        models[name] = m
        info[name] = {"params": int(m.count_params()), "variables": len(m.trainable_variables),
                      "layers": len(m.layers)}
        log(f"[{backend}] built {name}: {info[name]['params']:,} params, {info[name]['variables']} variables, "
            f"{info[name]['layers']} layers")

    first = next(iter(ds.take(1)))
    batch = ({k: v.numpy() for k, v in first[0].items()}, {k: v.numpy() for k, v in first[1].items()})

    class EpochTimer(keras.callbacks.Callback):
        """Wall and process CPU seconds per epoch (CPU time: all threads of this process)."""

        def __init__(self):
            super().__init__()
            self.seconds, self.cpu_seconds = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):  # the epoch's loss is in `logs`: its steps have finished
            self.seconds.append(time.perf_counter() - self._t)
            self.cpu_seconds.append(time.process_time() - self._c)

    # ---- warm-up: the first and the last batch, so that the train step is compiled (JAX) or traced
    # (TF) for both batch shapes (full, and the last partial one) before anything is timed
    warm = ds.take(1).concatenate(ds.skip(n_batches - 1)) if n_batches > 1 else ds
    for name, m in models.items():
        t = time.perf_counter()
        m.fit(warm, epochs=1, verbose=0, shuffle=False)
        log(f"[{backend}] warm-up {name}: compiled in {time.perf_counter() - t:.1f}s "
            f"(jit_compile={getattr(m, 'jit_compile', None)})")

    if args.profile:  # after the warm-up: the optimizer is built
        for name, m in models.items():
            info[name]["train_step_ops"] = ops = count_ops(m, batch)
            top = ", ".join(f"{k} {v}" for k, v in list(ops["by_type"].items())[:10])
            log(f"[{backend}] ops in {name}'s train step: {ops['total']} ({top})")

    # ---- timed: models interleaved, order rotating per repeat
    results = {name: {"epoch_seconds": [], "epoch_cpu_seconds": [], "repeat_examples_per_s": []} for name in models}
    names = list(models)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            timer = EpochTimer()
            hist = models[name].fit(ds, epochs=args.epochs, verbose=0, shuffle=False, callbacks=[timer])
            results[name]["epoch_seconds"].extend(timer.seconds)
            results[name]["epoch_cpu_seconds"].extend(timer.cpu_seconds)
            eps = examples * len(timer.seconds) / sum(timer.seconds)
            results[name]["repeat_examples_per_s"].append(eps)
            log(f"[{backend}] repeat {r + 1}/{args.repeats} {name:<17} {eps:9,.0f} examples/s "
                f"(epochs {', '.join(f'{s:.2f}s' for s in timer.seconds)}; "
                f"CPU {sum(timer.cpu_seconds) / sum(timer.seconds):.2f} cores; loss {hist.history['loss'][-1]:.4f})")

    steps = time_steps(models, batch, args.steps) if args.steps else {}
    for name, st in steps.items():
        log(f"[{backend}] fixed-batch train step {name:<17} min {st['min']:6.1f} ms, p25 {st['p25']:6.1f}, "
            f"median {st['median']:6.1f}")

    for name, res in results.items():
        eps = [examples / s for s in res["epoch_seconds"]]
        res["examples_per_s_median"] = statistics.median(eps)
        res["examples_per_s_all"] = eps
        res["examples_per_cpu_s_median"] = statistics.median(examples / c for c in res["epoch_cpu_seconds"])
        res["epoch_step_ms_median"] = 1000 * statistics.median(res["epoch_seconds"]) / n_batches
        if name in steps:
            res["fixed_batch_step_ms"] = steps[name]
        res.update(info[name])

    ratios = {}
    if "kzoo" in results:
        k = results["kzoo"]
        for hand in HAND:
            if hand not in results:
                continue
            h = results[hand]
            paired = [a / b for a, b in zip(k["repeat_examples_per_s"], h["repeat_examples_per_s"])]
            ratios[f"kzoo/{hand}"] = r = {
                "examples_per_s": k["examples_per_s_median"] / h["examples_per_s_median"],
                "examples_per_s_paired_median": statistics.median(paired),
                "paired": paired,
                "examples_per_cpu_s": k["examples_per_cpu_s_median"] / h["examples_per_cpu_s_median"],
            }
            if steps:
                hs, ks = h["fixed_batch_step_ms"], k["fixed_batch_step_ms"]
                # per round, hand-written step time / kzoo step time (a speed ratio), then the median
                r["fixed_batch_step_paired_median"] = statistics.median(a / b for a, b in zip(hs["all"], ks["all"]))
                r["fixed_batch_step_min"] = hs["min"] / ks["min"]
                r["fixed_batch_step_p25"] = hs["p25"] / ks["p25"]
    for key, r in ratios.items():
        extra = (f", fixed-batch step paired {r['fixed_batch_step_paired_median']:.3f} (min "
                 f"{r['fixed_batch_step_min']:.3f}, p25 {r['fixed_batch_step_p25']:.3f})" if "fixed_batch_step_min" in r else "")
        log(f"[{backend}] {key}: examples/s {r['examples_per_s']:.3f} (per-repeat pairs, median "
            f"{r['examples_per_s_paired_median']:.3f}), examples/CPU-s {r['examples_per_cpu_s']:.3f}{extra}")

    return {
        "backend": backend,
        "examples_per_epoch": examples,
        "batches_per_epoch": n_batches,
        "models": results,
        "ratios": ratios,
        "load_average": {"start": load_start, "end": loadavg()},
    }


# ------------------------------------------------------------------------------------------ reporting

def table(result: dict) -> str:
    """Per backend and model: median examples/s and kzoo/this; median examples per CPU-second and
    kzoo/this; fixed-batch step p25 (ms) and the median over rounds of this step / kzoo step."""
    head = (f"{'backend':<11} {'model':<18} {'examples/s':>10} {'kzoo/this':>9} {'ex/CPU-s':>9} {'kzoo/this':>9} "
            f"{'step p25 ms':>11} {'kzoo/this':>9}")
    lines = [head, "-" * len(head)]

    def fmt(v):
        return f"{v:9.3f}" if v is not None else f"{'':9}"

    for backend, r in result["backends"].items():
        for name, m in r["models"].items():
            q = r["ratios"].get(f"kzoo/{name}", {})
            step = m.get("fixed_batch_step_ms", {}).get("p25")
            lines.append(f"{backend:<11} {name:<18} {m['examples_per_s_median']:10,.0f} {fmt(q.get('examples_per_s'))} "
                         f"{m['examples_per_cpu_s_median']:9,.0f} {fmt(q.get('examples_per_cpu_s'))} "
                         f"{'' if step is None else f'{step:11.1f}':>11} {fmt(q.get('fixed_batch_step_paired_median'))}")
    return "\n".join(lines)


def run_config(args) -> dict:
    return {"spec": os.path.relpath(args.spec, ROOT) if Path(args.spec).is_absolute() else args.spec,
            "data": f"synthetic:{args.rows}", "rows": args.rows, "batch_size": args.batch_size,
            "epochs": args.epochs, "repeats": args.repeats, "models": args.models,
            "metrics": bool(args.metrics), "fixed_batch_steps": args.steps, "optimizer": "adam", "loss": "bce"}


def child_argv(args, backend: str, out: str) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--backend", backend, "--rows", str(args.rows),
            "--batch-size", str(args.batch_size), "--epochs", str(args.epochs), "--repeats", str(args.repeats),
            "--spec", args.spec, "--out", out, "--models", ",".join(args.models)]
    if args.metrics:
        argv.append("--metrics")
    argv += ["--steps", str(args.steps)]
    if args.profile:
        argv.append("--profile")
    return argv


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    result = {"machine": machine_info(), "config": run_config(args), "backends": {}}
    if args.backend == "both":
        with tempfile.TemporaryDirectory() as tmp:
            for backend in BACKENDS:
                out = os.path.join(tmp, f"{backend}.json")
                env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "KZOO_BENCH_CHILD": "1"}
                log(f"running the {backend} backend in a subprocess")
                rc = subprocess.run(child_argv(args, backend, out), env=env, cwd=ROOT).returncode
                if rc != 0:
                    log(f"{backend}: subprocess failed with exit code {rc}")
                    return rc
                result["backends"][backend] = json.loads(Path(out).read_text())["backends"][backend]
    else:
        result["backends"][args.backend] = run_backend(args)
    result["seconds"] = round(time.perf_counter() - start, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    if args.backend == "both" or not os.environ.get("KZOO_BENCH_CHILD"):
        print()
        print(table(result))
        print(f"\n{result['seconds']:.0f}s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
