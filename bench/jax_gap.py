#!/usr/bin/env python
"""The JAX CPU gap: where a dcn_v2 train step at batch 4096 loses to TensorFlow's, piece by piece.

    python bench/jax_gap.py [--rounds 12] [--calls 3] [--rows 50000] [--batch 4096]
                            [--variant NAME=XLA_FLAGS ...] [--no-profile] [--out bench/out/jax_gap.json]

One worker process per backend (and per JAX variant: the same model under other XLA_FLAGS), each
with the same model (kzoo.build of zoo_configs/dcn_v2.json on synthetic Criteo-shaped rows,
kzoo.compile: Adam, BCE, AUC + logloss metrics) and the same batch. The parent asks the workers in
turn, round after round (the order rotates), to time `--calls` calls of each piece, so the workers
of a round share the machine's load; per piece it reports the median over all calls of the wall
and the process CPU time (all threads), and the median over rounds of the paired ratio to
TensorFlow measured in the same round. The machine's load average goes with every round.

Pieces (JAX: jax.jit of the stateless Keras functions; TensorFlow: tf.function without XLA, as
Keras runs this model, whose lookup gradient uses tf.unique):

    step            model.train_on_batch(x, y), the model compiled by kzoo.compile (metrics too)
    step_nometrics  the same, compiled without metrics (loss only)
    forward         the model's forward pass, training=True
    forward_backward  loss and gradients (JAX: jax.value_and_grad of the stateless loss;
                    TensorFlow: GradientTape), no optimizer
    adam            Adam's update of every trainable variable from fixed gradients
    adam_table      ... of the embedding table alone (24,701 x 16 rows here)
    adam_dense      ... of every other variable

Every call also records the process's system CPU time and minor page faults (memory touched
for the first time). `JAX_GAP_EMBEDDING_OPTIMIZER=lazy_adam` (any row-sparse type) in a variant's environment
trains the two `step` pieces with kzoo.sparse's train step (the other pieces stay dense Adam).
`JAX_GAP_TAKE_MODE=promise_in_bounds` (or `clip`) in a variant's
environment swaps the embedding lookup for `table.at[ids].get(mode=...)` in that worker only.

Then (unless --no-profile) each worker profiles a few train steps (jax.profiler / tf.profiler)
and attributes the op time to: embedding gather, its gradient (JAX: scatter-add into the table;
TensorFlow: unique + segment sum), cross network and MLP forward and backward, head and loss,
Adam over the table and over the dense weights, metrics. Op times are summed per step; ops that
run concurrently overlap, so the sum can exceed the step's wall time. The JAX worker also writes
the optimized HLO of its train step (bench/out/jax_gap.hlo.txt) with an op count.

Results go to --out with the machine, versions, XLA flags and load averages.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import glob
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIECES = ("step", "step_nometrics", "forward", "forward_backward", "adam", "adam_table", "adam_dense")
CATEGORIES = ("emb_gather", "emb_grad", "cross_fwd", "cross_bwd", "mlp_fwd", "mlp_bwd", "head_loss",
              "adam_table", "adam_dense", "adam", "metrics", "other")


def loadavg() -> list:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------ worker

class Worker:
    """One backend's model and pieces; `run(piece, calls)` times them."""

    def __init__(self, rows: int, batch: int):
        import keras
        import numpy as np

        import kzoo
        from kzoo.spec import load_spec

        self.backend = keras.backend.backend()
        mode = os.environ.get("JAX_GAP_TAKE_MODE")
        if mode and self.backend == "jax":  # an experiment of this benchmark only: the lookup's jnp.take mode
            import jax.numpy as jnp

            import kzoo.blocks.core

            kzoo.blocks.core.gather_rows = lambda table, ids: jnp.asarray(table.value).at[ids].get(mode=mode)
        spec = json.loads((ROOT / "zoo_configs" / "dcn_v2.json").read_text())
        sparse = os.environ.get("JAX_GAP_EMBEDDING_OPTIMIZER")  # e.g. lazy_adam: kzoo.sparse's train step
        if sparse:
            spec["train"]["embedding_optimizer"] = {"type": sparse, "learning_rate": 0.003}
        data = kzoo.prepare(spec, f"synthetic:{rows}", batch)
        x, y = next(iter(data.train))[:2]
        self.x = {k: np.asarray(v) for k, v in x.items()}
        self.y = {k: np.asarray(v) for k, v in y.items()}
        keras.utils.set_random_seed(0)
        from kzoo.sparse import row_sparse

        self.model = row_sparse(kzoo.compile(kzoo.build(data.spec, data.stats), data.spec))
        bare = kzoo.build(data.spec, data.stats)
        kzoo.compile(bare, data.spec)
        bare.compile(optimizer=bare.optimizer, loss=bare.loss)
        self.bare = row_sparse(bare)
        dense_spec = load_spec({**spec, "train": {k: v for k, v in spec["train"].items()
                                                 if k != "embedding_optimizer"}}, ROOT / "zoo_configs")
        self.pieces_model = kzoo.compile(kzoo.build(dense_spec, data.stats), dense_spec)  # the pieces: dense Adam
        self.steps = {"step": lambda: self.model.train_on_batch(self.x, self.y),
                      "step_nometrics": lambda: self.bare.train_on_batch(self.x, self.y)}
        (self._jax_pieces if self.backend == "jax" else self._tf_pieces)()
        for name in PIECES:  # compile / trace every piece, and warm up
            for _ in range(2):
                self.run_once(name)

    def _split(self, variables):
        table = [i for i, v in enumerate(variables) if v.path.endswith("emb/embeddings")]
        return table, [i for i in range(len(variables)) if i not in table]

    def _jax_pieces(self):
        import jax
        import jax.numpy as jnp
        import keras

        m = self.pieces_model
        m.train_on_batch(self.x, self.y)  # builds the optimizer and metrics state
        x = {k: jnp.asarray(v) for k, v in self.x.items()}
        y = {k: jnp.asarray(v) for k, v in self.y.items()}
        tv = [v.value for v in m.trainable_variables]
        ntv = [v.value for v in m.non_trainable_variables]
        ov = [v.value for v in m.optimizer.variables]
        mv = [v.value for v in m.metrics_variables]

        def loss(tv, ntv, x, y):
            return m.compute_loss_and_updates(tv, ntv, mv, x, y, None, training=True, optimizer_variables=ov)[0]

        forward = jax.jit(lambda tv, ntv, x: m.stateless_call(tv, ntv, x, training=True)[0])
        fwd_bwd = jax.jit(jax.value_and_grad(loss))
        grads = fwd_bwd(tv, ntv, x, y)[1]
        table, dense = self._split(m.trainable_variables)
        adams = {}
        for name, idx in (("adam", table + dense), ("adam_table", table), ("adam_dense", dense)):
            opt = keras.optimizers.Adam(learning_rate=0.003)
            opt.build([m.trainable_variables[i] for i in idx])
            state = [v.value for v in opt.variables]
            fn = jax.jit(lambda s, g, w, opt=opt: opt.stateless_apply(s, g, w))
            adams[name] = (fn, state, [grads[i] for i in idx], [tv[i] for i in idx])
        self.steps.update(
            forward=lambda: forward(tv, ntv, x),
            forward_backward=lambda: fwd_bwd(tv, ntv, x, y),
            **{k: (lambda f=f, s=s, g=g, w=w: f(s, g, w)) for k, (f, s, g, w) in adams.items()})
        self._block = jax.block_until_ready
        # The train step as Keras jits it (state donated), for the HLO and the profile.
        state = tuple([v.value for v in vs] for vs in (m.trainable_variables, m.non_trainable_variables,
                                                         m.optimizer.variables, m.metrics_variables))
        self.jit_step = jax.jit(m.train_step, donate_argnums=0)
        self.jit_state, self.jit_data = state, (x, y, None)
        self.compiled = self.jit_step.lower(state, self.jit_data).compile()
        self.temp_bytes = self.compiled.memory_analysis().temp_size_in_bytes

    def _tf_pieces(self):
        import keras
        import tensorflow as tf

        m = self.pieces_model
        m.train_on_batch(self.x, self.y)
        x = {k: tf.constant(v) for k, v in self.x.items()}
        y = {k: tf.constant(v) for k, v in self.y.items()}

        @tf.function
        def fwd_bwd(x, y):
            with tf.GradientTape() as tape:
                loss = m.compute_loss(x=x, y=y, y_pred=m(x, training=True), training=True)
            return loss, tape.gradient(loss, m.trainable_variables)

        forward = tf.function(lambda x: m(x, training=True))
        grads = fwd_bwd(x, y)[1]  # the table's gradient is IndexedSlices, as in Keras' own step
        table, dense = self._split(m.trainable_variables)
        adams = {}
        for name, idx in (("adam", table + dense), ("adam_table", table), ("adam_dense", dense)):
            opt = keras.optimizers.Adam(learning_rate=0.003)
            weights = [m.trainable_variables[i] for i in idx]
            opt.build(weights)
            adams[name] = (_tf_apply(opt, weights), [grads[i] for i in idx])
        self.steps.update(forward=lambda: forward(x), forward_backward=lambda: fwd_bwd(x, y),
                          **{k: (lambda f=f, g=g: f(g)) for k, (f, g) in adams.items()})
        self._block = lambda r: tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, r)
        self.jit_compile = m.jit_compile

    def run_once(self, name):
        return self._block(self.steps[name]())

    def run(self, name: str, calls: int) -> dict:
        out = {"wall": [], "cpu": [], "sys": [], "faults": []}
        for _ in range(calls):
            t, r = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
            self.run_once(name)
            wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
            out["wall"].append(wall)
            out["cpu"].append(r1.ru_utime + r1.ru_stime - r.ru_utime - r.ru_stime)
            out["sys"].append(r1.ru_stime - r.ru_stime)
            out["faults"].append(r1.ru_minflt - r.ru_minflt)  # minor page faults: fresh memory touched
        return {**out, "load": loadavg()}

    # -------------------------------------------------------------------------------- profile
    def profile(self, steps: int, hlo_out: str | None) -> dict:
        from jax.profiler import ProfileData  # parses any XSpace, TensorFlow's too

        folder = tempfile.mkdtemp(prefix="jax_gap_")
        if self.backend == "jax":
            import jax

            state = self.jit_state
            state = self.compiled(state, self.jit_data)[1]
            t = time.perf_counter()
            with jax.profiler.trace(folder):
                for _ in range(steps):
                    state = jax.block_until_ready(self.compiled(state, self.jit_data)[1])
            wall = (time.perf_counter() - t) / steps
            self.jit_state = state
            text = self.compiled.as_text()
            labels = hlo_labels(text)
            if hlo_out:
                Path(hlo_out).write_text(text)
        else:
            import tensorflow as tf

            t = time.perf_counter()
            tf.profiler.experimental.start(folder)
            for _ in range(steps):
                self.steps["step"]()
            tf.profiler.experimental.stop()
            wall = (time.perf_counter() - t) / steps
            labels = None
        pb = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0]
        per_op = collections.defaultdict(float)
        for plane in ProfileData.from_file(pb).planes:
            for line in plane.lines:
                for ev in line.events:
                    if labels is not None and ev.name in labels:
                        per_op[ev.name] += ev.duration_ns / 1e6 / steps
                    elif labels is None and ":" in ev.name and "::" not in ev.name and not ev.name.startswith("Eager"):
                        per_op[ev.name] += ev.duration_ns / 1e6 / steps
        out = {"wall_ms_per_step_profiled": wall * 1000, "categories": dict.fromkeys(CATEGORIES, 0.0), "top_ops": []}
        for op, ms in per_op.items():
            cat = categorise_jax(op, labels[op]) if labels is not None else categorise_tf(op)
            out["categories"][cat] += ms
        for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:25]:
            desc = f"{labels[op][0]} {labels[op][1]}" if labels is not None else ""
            out["top_ops"].append([op, round(ms, 2), desc])
        out["categories"] = {k: round(v, 2) for k, v in out["categories"].items()}
        out["ops"] = {op: [round(ms, 3), categorise_jax(op, labels[op]) if labels is not None else categorise_tf(op)]
                      for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1]) if ms >= 0.05}
        if labels is not None:
            kinds = collections.Counter(k for k, _, _ in labels.values())
            out["hlo_ops"] = dict(kinds.most_common())
        return out


def _tf_apply(opt, weights):
    import tensorflow as tf

    return tf.function(lambda grads: opt.apply(grads, weights))  # weights closed over, not traced


def hlo_labels(text: str) -> dict:
    """ENTRY instruction name -> (op kind, shape, JAX op_name), the op_name taken from the fused
    computation when the instruction has none."""
    comps, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%(\S+) ", line)
        if head and line.rstrip().endswith("{"):
            current = "ENTRY" if line.startswith("ENTRY") else head.group(1)
            comps[current] = []
        elif current:
            comps[current].append(line)
    labels = {}
    for line in comps.get("ENTRY", []):
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ([a-z-]+)\(", line)
        if not m or m.group(3) in ("parameter", "constant", "tuple", "get-tuple-element"):
            continue
        name, shape, kind = m.groups()
        op = re.search(r'op_name="([^"]*)"', line)
        if not op and (call := re.search(r"calls=%(\S+?)[,\s]", line)):
            op = next((o for o in (re.search(r'op_name="([^"]*)"', ln) for ln in comps.get(call.group(1), [])) if o),
                      None)
        fusion = re.search(r'"kind":"(__\w+)"', line)
        labels[name] = (f"{kind}{'/' + fusion.group(1) if fusion else ''}", shape.split("{")[0],
                        op.group(1) if op else "")
    return labels


def categorise_jax(name: str, label) -> str:
    _, shape, op = label
    if re.search(r"/adam(_\d+)?/", op):
        return "adam_table" if re.match(r"f32\[\d{4,},16\]", shape) else "adam_dense"
    for scope, fwd, bwd in (("emb", "emb_gather", "emb_grad"), ("cross", "cross_fwd", "cross_bwd"),
                            ("deep", "mlp_fwd", "mlp_bwd")):
        if f"transpose(jvp({scope}))" in op:
            return bwd
        if f"jvp({scope})" in op:
            return fwd
    if any(k in op for k in ("top", "ctr_logit", "compile_loss", "log_sigmoid", "bce")) or name.startswith("dot."):
        return "head_loss"
    if op:  # what is left of the step with a name: metric updates (AUC's scatter-add, sums)
        return "metrics"
    return "other"


def categorise_tf(name: str) -> str:
    if re.match(r"adam(_\d+)?/", name):
        return "adam"  # the table's and the dense weights' updates together (the pieces time them apart)
    grad = "gradient_tape/" in name
    if "UnsortedSegmentSum" in name or "Unique" in name:
        return "emb_grad"
    for scope, fwd, bwd in (("/emb", "emb_gather", "emb_grad"), ("/cross", "cross_fwd", "cross_bwd"),
                            ("/deep", "mlp_fwd", "mlp_bwd")):
        if scope in name:
            return bwd if grad else fwd
    if any(k in name for k in ("top", "ctr_logit", "compile_loss", "bce", "binary_crossentropy")):
        return "head_loss"
    if "auc" in name.lower() or "mean" in name.lower() or "metrics" in name.lower():
        return "metrics"
    return "other"


def worker_main(args) -> None:
    worker = Worker(args.rows, args.batch)
    info = {"backend": worker.backend, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "jit_compile": getattr(worker, "jit_compile", True),
            "xla_temp_bytes_per_step": getattr(worker, "temp_bytes", None)}
    print(json.dumps({"ready": info}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "run":
            print(json.dumps(worker.run(cmd["piece"], cmd["calls"])), flush=True)
        elif cmd["op"] == "profile":
            print(json.dumps(worker.profile(cmd["steps"], cmd.get("hlo"))), flush=True)
        else:
            break


# ------------------------------------------------------------------------------------------ parent

class Child:
    def __init__(self, name: str, backend: str, extra_env: dict, args):
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", **extra_env}
        self.name, self.env = name, extra_env
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", "--rows", str(args.rows),
                                      "--batch", str(args.batch)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.info = self._read()["ready"]

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.name} died (its stderr is above)")
            if line.startswith("{"):
                return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


def quartiles(xs: list) -> list:
    return statistics.quantiles(xs, n=4)[::2] if len(xs) > 1 else [xs[0], xs[0]]


def summarise(samples: dict, names: list) -> dict:
    """Per worker and piece: median wall / CPU ms over every call, and the median over rounds of
    the paired ratio to the TensorFlow worker's median in the same round."""
    out = {}
    for name in names:
        out[name] = {}
        for piece in PIECES:
            rounds = samples[name][piece]
            walls = [w for r in rounds for w in r["wall"]]
            cpus = [c for r in rounds for c in r["cpu"]]
            row = {"wall_ms": 1000 * statistics.median(walls), "cpu_ms": 1000 * statistics.median(cpus),
                   "sys_ms": 1000 * statistics.median([s for r in rounds for s in r["sys"]]),
                   "page_faults": float(statistics.median([f for r in rounds for f in r["faults"]])),
                   "wall_ms_q1_q3": [1000 * q for q in quartiles(walls)]}
            if name != "tensorflow":
                ref = samples["tensorflow"][piece]
                for key in ("wall", "cpu"):
                    ratios = [statistics.median(a[key]) / statistics.median(b[key]) for a, b in zip(rounds, ref)]
                    row[f"{key}_ratio_to_tf"] = statistics.median(ratios)
                    row[f"{key}_ratio_q1_q3"] = quartiles(ratios)
            out[name][piece] = {k: (round(v, 3) if isinstance(v, float) else [round(q, 3) for q in v])
                                for k, v in row.items()}
    return out


def print_table(summary: dict, names: list) -> None:
    print(f"\n{'piece':17s}" + "".join(f"{n:>34s}" for n in names))
    for piece in PIECES:
        cells = []
        for n in names:
            r = summary[n][piece]
            ratio = f" {r['wall_ratio_to_tf']:.2f}x/{r['cpu_ratio_to_tf']:.2f}x" if "wall_ratio_to_tf" in r else ""
            cells.append(f"{r['wall_ms']:8.1f} w {r['cpu_ms']:7.1f} c{ratio}")
        print(f"{piece:17s}" + "".join(f"{c:>34s}" for c in cells))
    print("(ms per call, median: w = wall, c = process CPU; ratio = paired median JAX/TF, wall/CPU)")
    print("train_on_batch: " + "; ".join(f"{n} {summary[n]['step']['page_faults']:.0f} page faults, "
                                         f"{summary[n]['step']['sys_ms']:.1f} ms system CPU" for n in names))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--calls", type=int, default=3, help="calls of each piece per worker per round")
    p.add_argument("--variant", action="append", default=[], metavar="NAME|VAR=VALUE[|VAR=VALUE]",
                   help="another JAX worker with these environment variables, e.g. "
                        "'no_ynn|XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=' (repeatable)")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "jax_gap.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    specs = [("tensorflow", "tensorflow", {}), ("jax", "jax", {})]
    for v in args.variant:
        name, *assignments = v.split("|")
        specs.append((f"jax[{name}]", "jax", dict(a.partition("=")[::2] for a in assignments)))
    load_start = loadavg()
    children = [Child(n, b, f, args) for n, b, f in specs]
    names = [c.name for c in children]
    samples = {n: {p: [] for p in PIECES} for n in names}
    loads = []
    try:
        for r in range(args.rounds):
            for i, piece in enumerate(PIECES):
                k = (r + i) % len(children)
                for child in children[k:] + children[:k]:
                    samples[child.name][piece].append(child.ask(op="run", piece=piece, calls=args.calls))
            loads.append(loadavg())
            print(f"round {r + 1}/{args.rounds} load {loads[-1]} "
                  f"step ms: " + ", ".join(f"{n} {1000 * statistics.median(samples[n]['step'][-1]['wall']):.0f}"
                                            for n in names), flush=True)
        profiles = {}
        if not args.no_profile:
            hlo = str(Path(args.out).with_suffix(".hlo.txt"))
            for child in children:
                profiles[child.name] = child.ask(op="profile", steps=args.profile_steps,
                                                 hlo=hlo if child.name == "jax" else None)
    finally:
        for child in children:
            child.close()
    summary = summarise(samples, names)
    print_table(summary, names)
    for n, prof in profiles.items():
        print(f"\n{n}: profiled step {prof['wall_ms_per_step_profiled']:.1f} ms wall; op time by part (ms/step):")
        print("  " + ", ".join(f"{k} {v:.1f}" for k, v in prof["categories"].items()))
    from bench.throughput import machine_info

    result = {"command": "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *(argv or sys.argv[1:])]),
              "machine": machine_info(), "load_start": load_start, "load_per_round": loads, "load_end": loadavg(),
              "workers": {c.name: {**c.info, "env": c.env} for c in children}, "rows": args.rows, "batch": args.batch,
              "rounds": args.rounds, "calls": args.calls, "summary": summary, "profiles": profiles, "samples": samples,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
