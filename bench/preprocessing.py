"""Preprocessing: Keras preprocessing layers against kzoo's hand-written TensorFlow ops.

For each transform that kzoo.features.Preprocessor writes by hand, this script times the
hand-written TensorFlow op and the Keras preprocessing layer that could replace it, in the same
process, taking turns, on the same data:

    numeric     13 Criteo numeric columns, standardised: (x - mean) / std  vs
                keras.layers.Normalization(axis=None, mean=, variance=) per column.
                The fill of NaN and sign*log1p come before it and are the same code either way,
                so the inputs are already filled and logged and only the standardisation is timed.
    max_id      bounded integer ids, 4 int64 columns: tf.where(out of [0, max_id] -> max_id + 1)  vs
                keras.layers.IntegerLookup(vocabulary=0..max_id, num_oov_indices=1, mask_token=None).
    cross       a hashed cross of two Criteo string columns (C5 x C14):
                tf.strings.join(separator="\\x1f") + keras.layers.Hashing  vs
                keras.layers.HashedCrossing(num_bins).

Every variant ends with the reshape to (batch, 1) and the cast kzoo does (int32 ids), so the
outputs have the same form. A `noop` row (that reshape/cast only) shows the floor of each context.

Contexts:
    tf.data       the raw rows, batched (--batch) and cached in memory; each timed run maps the
                  transform over all of them --epochs times (num_parallel_calls=AUTOTUNE, as
                  kzoo.pipeline does) and consumes the dataset with Dataset.reduce (no Python per batch).
    serve B       a tf.function with an input signature (what ExportArchive exports) called
                  on one batch of B rows: --calls times at B = --batch, 4 x --calls times at B = 64.

Each repeat times hand-written and Keras back to back, the order alternating; rows/s is the median
over repeats, and the ratio is the median over repeats of the paired ratio keras time / hand time
(the two runs of a pair are a fraction of a second apart, so they share the machine's load), with
its range over repeats. Ratio > 1 means the Keras layer is slower. An A/A control, the hand-written
op timed a second time in each repeat (hand again / hand), shows what noise alone gives; "extra
µs/batch" is the difference of the median times per batch.

Checks (full data): the Keras layer's outputs against the hand-written op's (Normalization: to
float32 rounding; IntegerLookup: exactly, up to its fixed id layout; HashedCrossing: its ids are
a different hash by construction, so only the bucket range and "same pair -> same id" are checked),
and an export of each Keras layer alone with keras.export.ExportArchive, reloaded with
tf.saved_model.load and compared with the in-process outputs.

    .venv/bin/python bench/preprocessing.py        # --rows 200000 --batch 4096 --epochs 3 --repeats 11 --calls 200

Runs on the TensorFlow backend (export needs it; in tf.data the layers run TF ops on any backend).
Results also go to --out (default bench/out/preprocessing.json, ignored by git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tf.data's "Optimization loop failed: CANCELLED" after each reduce

REPO = Path(__file__).resolve().parents[1]
SEP = "\x1f"  # kzoo.features' separator for crossed values
NUMERIC = [f"I{i}" for i in range(1, 14)]
CROSS = ("C5", "C14")


def load_rows(rows: int, seed: int = 0) -> dict:
    """Raw columns like kzoo.features.raw_arrays gives: the real Criteo head, tiled to `rows`."""
    import numpy as np

    from kzoo.columns import raw_column
    from kzoo.data import data_dir, read_criteo

    frame = read_criteo(data_dir() / "criteo" / "criteo_train_head10k.txt")
    frame = frame.iloc[np.arange(rows) % len(frame)].reset_index(drop=True)
    cols = {n: raw_column(frame[n], "float32", n) for n in NUMERIC}
    cols.update({n: raw_column(frame[n], "string", n) for n in CROSS})
    return cols


def build(args, cols: dict):
    """{transform: {"raw": numpy inputs, "hand": fn, "keras": fn, "layers": [...], "sig": {...}}}."""
    import keras
    import numpy as np
    import tensorflow as tf

    def column(x):
        return tf.reshape(x, [-1, 1])

    def ids(x):
        return tf.reshape(tf.cast(x, tf.int32), [-1, 1])

    # numeric: fill (0, as the Criteo schema says) and sign*log1p done here; statistics as fit_stats
    numeric = {}
    for n in NUMERIC:
        x = np.nan_to_num(cols[n].astype("float64"), nan=0.0)
        numeric[n] = (np.sign(x) * np.log1p(np.abs(x))).astype("float32")
    stats = {}
    for n, x in numeric.items():
        x64 = x.astype("float64")
        std = float(x64.std())
        stats[n] = (float(x64.mean()), std if std > 1e-12 else 1.0)
    norm_layers = {}
    for n in NUMERIC:
        mean, std = stats[n]
        layer = keras.layers.Normalization(axis=None, mean=mean, variance=std * std, name=f"norm_{n}")
        layer.build((None,))
        norm_layers[n] = layer

    def numeric_hand(raw):
        return {n: column((raw[n] - stats[n][0]) / stats[n][1]) for n in NUMERIC}

    def numeric_keras(raw):
        return {n: column(norm_layers[n](raw[n])) for n in NUMERIC}

    def numeric_noop(raw):
        return {n: column(raw[n]) for n in NUMERIC}

    # bounded ids: uniform over -1 (missing) .. 5 % past max_id, so about 5 % go to the OOV id
    rng = np.random.default_rng(0)
    id_names = [f"id{i}" for i in range(4)]
    top = args.max_id + args.max_id // 20
    id_raw = {n: rng.integers(-1, top + 1, size=args.rows).astype("int64") for n in id_names}
    int_layers = {}
    for n in id_names:
        layer = keras.layers.IntegerLookup(vocabulary=np.arange(args.max_id + 1, dtype="int64"), num_oov_indices=1,
                                           mask_token=None, vocabulary_dtype="int64", name=f"int_{n}")
        layer.build((None,))
        int_layers[n] = layer

    def max_id_hand(raw):
        return {n: ids(tf.where((raw[n] < 0) | (raw[n] > args.max_id), tf.constant(args.max_id + 1, tf.int64), raw[n]))
                for n in id_names}

    def max_id_keras(raw):
        return {n: ids(int_layers[n](raw[n])) for n in id_names}

    def max_id_noop(raw):
        return {n: ids(raw[n]) for n in id_names}

    # hashed cross of two string columns
    hashing = keras.layers.Hashing(num_bins=args.num_bins, name="hash_cross")
    hashing.build((None,))
    crossing = keras.layers.HashedCrossing(num_bins=args.num_bins, name="hashed_crossing")

    def cross_hand(raw):
        return {"x": ids(hashing(tf.strings.join([raw[c] for c in CROSS], separator=SEP)))}

    def cross_keras(raw):
        return {"x": ids(crossing(tuple(raw[c] for c in CROSS)))}

    def cross_noop(raw):
        return {"x": ids(tf.strings.length(raw[CROSS[0]]))}

    def sig(raw):
        return {n: tf.TensorSpec([None], tf.as_dtype(v.dtype if v.dtype != object else tf.string), name=n)
                for n, v in raw.items()}

    return {
        "numeric": {"raw": numeric, "hand": numeric_hand, "keras": numeric_keras, "noop": numeric_noop,
                    "layers": list(norm_layers.values()), "sig": sig(numeric),
                    "what": "13 numeric columns: (x-mean)/std vs Normalization"},
        "max_id": {"raw": id_raw, "hand": max_id_hand, "keras": max_id_keras, "noop": max_id_noop,
                   "layers": list(int_layers.values()), "sig": sig(id_raw),
                   "what": f"4 int64 id columns, max_id {args.max_id:,}: tf.where vs IntegerLookup"},
        "cross": {"raw": {c: cols[c] for c in CROSS}, "hand": cross_hand, "keras": cross_keras, "noop": cross_noop,
                  "layers": [crossing], "sig": sig({c: cols[c] for c in CROSS}),
                  "what": f"cross C5 x C14, {args.num_bins:,} bins: join + Hashing vs HashedCrossing"},
    }


def time_tfdata(batched, fn, epochs: int) -> float:
    import tensorflow as tf

    ds = batched.repeat(epochs).map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    t = time.perf_counter()
    ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy()
    return time.perf_counter() - t


def time_serve(fn, batch, calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn(batch)
    return time.perf_counter() - t


def measure(args, transforms) -> list[dict]:
    import tensorflow as tf

    rows = []
    for name, t in transforms.items():
        batched = tf.data.Dataset.from_tensor_slices(t["raw"]).batch(args.batch).cache()
        batched.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1)  # fill the cache
        fns = {**{v: t[v] for v in ("hand", "keras", "noop")}, "hand_again": t["hand"]}
        served = {v: tf.function(fn, input_signature=[t["sig"]]) for v, fn in fns.items()}
        batches = {b: {k: tf.constant(v[:b]) for k, v in t["raw"].items()} for b in (args.batch, 64)}
        contexts = {
            "tf.data": (lambda v: time_tfdata(batched, fns[v], args.epochs), args.rows * args.epochs),
            f"serve {args.batch}": (lambda v: time_serve(served[v], batches[args.batch], args.calls),
                                    args.batch * args.calls),
            "serve 64": (lambda v: time_serve(served[v], batches[64], args.calls * 4), 64 * args.calls * 4),
        }
        for ctx, (run, n_rows) in contexts.items():
            for v in fns:  # warm-up: traces, the cache, table initialisation
                run(v)
            times = {v: [] for v in fns}
            for r in range(args.repeats):
                # hand and keras back to back, alternating which goes first; then the A/A control
                order = ("hand", "keras") if r % 2 == 0 else ("keras", "hand")
                for v in (*order, "hand_again", "noop"):
                    times[v].append(run(v))
            paired = sorted(k / h for k, h in zip(times["keras"], times["hand"]))
            control = sorted(a / h for a, h in zip(times["hand_again"], times["hand"]))
            batches_per_pass = n_rows / (args.batch if ctx == "tf.data" else int(ctx.split()[1]))
            extra = (statistics.median(times["keras"]) - statistics.median(times["hand"])) / batches_per_pass
            row = {"transform": name, "context": ctx, "rows_per_pass": n_rows,
                   **{f"{v}_rows_s": n_rows / statistics.median(times[v]) for v in times},
                   "ratio": statistics.median(paired), "ratio_min": paired[0], "ratio_max": paired[-1],
                   "aa_ratio": statistics.median(control), "aa_min": control[0], "aa_max": control[-1],
                   "extra_us_per_batch": extra * 1e6, "times": times}
            rows.append(row)
            print(f"  {name:8s} {ctx:11s} hand {row['hand_rows_s']:>13,.0f}  keras {row['keras_rows_s']:>13,.0f}"
                  f"  ratio {row['ratio']:.3f} [{row['ratio_min']:.3f}-{row['ratio_max']:.3f}]"
                  f"  A/A {row['aa_ratio']:.3f} [{row['aa_min']:.3f}-{row['aa_max']:.3f}]", flush=True)
    return rows


def check_outputs(args, transforms) -> dict:
    import numpy as np

    out = {}
    for name, t in transforms.items():
        raw = {k: np.asarray(v) for k, v in t["raw"].items()}
        hand = {k: np.asarray(v)[:, 0] for k, v in t["hand"](raw).items()}
        kers = {k: np.asarray(v)[:, 0] for k, v in t["keras"](raw).items()}
        if name == "numeric":
            diff = max(float(np.max(np.abs(hand[k] - kers[k]))) for k in hand)
            ok = all(np.allclose(hand[k], kers[k], rtol=1e-5, atol=1e-5) for k in hand)
            note = f"same to float32 rounding (max |diff| {diff:.1e})" if ok else f"DIFFER (max |diff| {diff})"
            out[name] = {"same": ok, "max_abs_diff": diff, "ok": ok, "note": note}
        elif name == "max_id":
            oov = args.max_id + 1
            relabelled = all(np.array_equal(kers[k], np.where(hand[k] == oov, 0, hand[k] + 1)) for k in hand)
            same = all(np.array_equal(kers[k], hand[k]) for k in hand)
            share = float(np.mean([np.mean(hand[k] == oov) for k in hand]))
            out[name] = {"same": same, "same_after_relabel": relabelled, "oov_share": share, "ok": relabelled,
                         "note": ("ids differ: IntegerLookup gives id v+1 for v in [0, max_id] and 0 for OOV; kzoo "
                                  "gives v and max_id+1 (same count, max_id+2); identical after that relabelling"
                                  if relabelled else "DIFFER beyond the id layout")}
        else:
            a, b = raw[CROSS[0]], raw[CROSS[1]]
            pairs = {}
            consistent = True
            for x, y, h in zip(a, b, kers["x"]):
                consistent &= pairs.setdefault((x, y), h) == h
            in_range = bool(((kers["x"] >= 0) & (kers["x"] < args.num_bins)).all())
            agree = float(np.mean(kers["x"] == hand["x"]))
            out[name] = {"same": False, "in_range": in_range, "same_pair_same_id": bool(consistent),
                         "ok": in_range and bool(consistent),
                         "distinct_pairs": len(pairs), "distinct_ids_keras": int(len(np.unique(kers["x"]))),
                         "distinct_ids_hand": int(len(np.unique(hand["x"]))), "agreement": agree,
                         "note": (f"different hash by construction (FingerprintCat64 of the values vs farmhash of "
                                  f"the joined string): {agree:.1%} of ids agree; ids in range: {in_range}, same pair "
                                  f"-> same id: {consistent}; distinct ids keras {len(np.unique(kers['x'])):,} / hand "
                                  f"{len(np.unique(hand['x'])):,} for {len(pairs):,} distinct pairs")}
    return out


def check_export(transforms) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    out = {}
    for name, t in transforms.items():
        batch = {k: tf.constant(v[:256]) for k, v in t["raw"].items()}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                archive = keras.export.ExportArchive()
                for layer in t["layers"]:
                    archive.track(layer)
                archive.add_endpoint(name="serve", fn=t["keras"], input_signature=[t["sig"]])
                archive.write_out(tmp, verbose=False)
                size = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
                loaded = tf.saved_model.load(tmp)
                got = loaded.serve(batch)
                want = t["keras"](batch)
                same = all(np.array_equal(np.asarray(got[k]), np.asarray(want[k])) for k in want)
                out[name] = {"exported": True, "reload_same": same, "bytes": size}
            except Exception as e:  # noqa: BLE001  a layer that cannot be exported is disqualified
                out[name] = {"exported": False, "error": f"{type(e).__name__}: {e}"[:500]}
    return out


def versions() -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    return {"python": platform.python_version(), "keras": keras.__version__, "tensorflow": tf.__version__,
            "numpy": np.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--epochs", type=int, default=3, help="passes over the rows per timed tf.data run")
    p.add_argument("--calls", type=int, default=200, help="tf.function calls per timed serve run (x4 at batch 64)")
    p.add_argument("--max-id", type=int, default=10_000)
    p.add_argument("--num-bins", type=int, default=10_000)
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "preprocessing.json"))
    args = p.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from kzoo import _quiet

    _quiet.import_tensorflow()
    import tensorflow as tf

    start = time.time()
    load0 = os.getloadavg()
    cols = load_rows(args.rows)
    transforms = build(args, cols)
    print(f"{args.rows:,} rows (Criteo head tiled; ids synthetic) x {args.epochs}, batch {args.batch}, "
          f"{args.calls} calls, {args.repeats} repeats, "
          f"{os.cpu_count()} CPUs, load {load0[0]:.1f}")
    rows = measure(args, transforms)
    checks = check_outputs(args, transforms)
    exports = check_export(transforms)
    load1 = os.getloadavg()

    print()
    print("| transform | context | hand-written rows/s | Keras layer rows/s | Keras / hand (median, range) "
          "| A/A: hand / hand | Keras extra µs/batch | no-op rows/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['transform']} | {r['context']} | {r['hand_rows_s']:,.0f} | {r['keras_rows_s']:,.0f} | "
              f"**{r['ratio']:.3f}** ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
              f"{r['aa_ratio']:.3f} ({r['aa_min']:.2f}-{r['aa_max']:.2f}) | {r['extra_us_per_batch']:+,.0f} | "
              f"{r['noop_rows_s']:,.0f} |")
    print()
    for name, t in transforms.items():
        e = exports[name]
        exp = (f"exported and reloaded, outputs same: {e['reload_same']}, {e['bytes'] / 1e3:,.0f} kB"
               if e["exported"] else f"EXPORT FAILED: {e['error']}")
        print(f"- {name} ({t['what']}): {checks[name]['note']}; {exp}")
    print(f"\nload average {load0[0]:.1f} at start, {load1[0]:.1f} at end; {time.time() - start:.0f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "args": vars(args), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(), "versions": versions(),
        "load": [load0, load1], "results": rows, "checks": checks, "exports": exports,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")]}, indent=1, default=str))
    print(f"wrote {out}")
    failed = [n for n in transforms
              if not checks[n]["ok"] or not exports[n]["exported"] or not exports[n]["reload_same"]]
    if failed:
        print(f"FAILED checks or export: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
