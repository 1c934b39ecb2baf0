#!/usr/bin/env python
"""The JAX CPU gap: where a dcn_v2 train step at batch 4096 loses to TensorFlow's, piece by piece.

    python bench/jax_gap.py [--rounds 12] [--calls 3] [--rows 50000] [--batch 4096] [--no-profile]
                            [--variant 'NAME|VAR=VALUE[|VAR=VALUE]' ...] [--out bench/out/jax_gap.json]

One worker process per backend, and one per JAX variant (the same worker under other environment
variables: XLA_FLAGS, GLIBC_TUNABLES, ...). Each builds the same model (kzoo.build of
zoo_configs/dcn_v2.json on synthetic Criteo-shaped rows; kzoo.compile: Adam, BCE, AUC + logloss) and
takes the same batch. Round after round (the order rotates) the parent asks every worker to time
`--calls` calls of each piece, so the workers of a round share the machine's load. Per piece: the
median over all calls of the wall and process CPU time (all threads), system CPU and minor page
faults (memory touched for the first time), and the median over rounds of the ratio to the
TensorFlow worker of the same round. The load average is recorded every round.

Pieces (JAX: jax.jit of Keras' stateless functions; TensorFlow: tf.function without XLA, as Keras
runs this model, whose lookup gradient uses tf.unique):

    step              model.train_on_batch(x, y) of the model kzoo.compile made (metrics too)
    step_nometrics    the same, compiled with the loss only
    step_fn           the compiled step without train_on_batch's Python (JAX: the jitted Keras
                      train_step, state donated; TensorFlow: Keras' train_function)
    forward           the forward pass, training=True
    forward_backward  loss and gradients (jax.value_and_grad of the stateless loss; GradientTape)
    adam, adam_table, adam_dense   Adam's update from fixed gradients: of every variable, of the
                      embedding table alone (24,701 x 16 here), of every other variable

A variant's environment may also hold JAX_GAP_EMBEDDING_OPTIMIZER=lazy_adam (any row-sparse type:
the two `step` pieces then train with kzoo.sparse's train step) or JAX_GAP_TAKE_MODE=promise_in_bounds
(or clip: the lookup becomes `table.at[ids].get(mode=...)`), experiments of this benchmark only.

Then (unless --no-profile) each worker profiles a few steps (JAX: the jitted train step under
jax.profiler; TensorFlow: train_on_batch under tf.profiler) and sums the op time per step by part:
embedding gather, its gradient (JAX: scatter-add into the table; TF: unique + segment sum), cross
network and MLP forward and backward, head and loss, Adam (JAX: table and dense apart), metrics.
Ops that run concurrently overlap, so the sum can exceed the step's wall time; the share of the
profiled time with k ops running at once is reported too. The JAX worker writes the optimized HLO of
its train step next to --out (jax_gap.hlo.txt); bench/jax_gap_profile.py does the attribution.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.jax_gap_profile import attribute, hlo_labels  # noqa: E402
PIECES = ("step", "step_nometrics", "step_fn", "forward", "forward_backward", "adam", "adam_table", "adam_dense")


def loadavg() -> list:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------ worker

class Worker:
    """One backend's models and pieces; `run(piece, calls)` times them, `profile` attributes a step."""

    def __init__(self, rows: int, batch: int):
        import keras
        import numpy as np

        import kzoo
        from kzoo.sparse import row_sparse
        from kzoo.spec import load_spec

        self.backend = keras.backend.backend()
        mode = os.environ.get("JAX_GAP_TAKE_MODE")
        if mode and self.backend == "jax":
            import jax.numpy as jnp

            import kzoo.blocks.core

            kzoo.blocks.core.gather_rows = lambda table, ids: jnp.asarray(table.value).at[ids].get(mode=mode)
        spec = json.loads((ROOT / "zoo_configs" / "dcn_v2.json").read_text())
        dense_spec = load_spec(json.dumps(spec), ROOT / "zoo_configs")
        if os.environ.get("JAX_GAP_EMBEDDING_OPTIMIZER"):
            spec["train"]["embedding_optimizer"] = {"type": os.environ["JAX_GAP_EMBEDDING_OPTIMIZER"],
                                                    "learning_rate": 0.003}
        data = kzoo.prepare(spec, f"synthetic:{rows}", batch)
        x, y = next(iter(data.train))[:2]
        self.x, self.y = ({k: np.asarray(v) for k, v in d.items()} for d in (x, y))
        keras.utils.set_random_seed(0)
        self.model = row_sparse(kzoo.compile(kzoo.build(data.spec, data.stats), data.spec))
        bare = kzoo.compile(kzoo.build(data.spec, data.stats), data.spec)
        bare.compile(optimizer=bare.optimizer, loss=bare.loss)
        self.bare = row_sparse(bare)
        self.pieces_model = kzoo.compile(kzoo.build(dense_spec, data.stats), dense_spec)  # dense Adam
        self.pieces_model.train_on_batch(self.x, self.y)  # builds the optimizer and metric state
        self.steps = {"step": lambda: self.model.train_on_batch(self.x, self.y),
                      "step_nometrics": lambda: self.bare.train_on_batch(self.x, self.y)}
        (self._jax_pieces if self.backend == "jax" else self._tf_pieces)()
        for name in PIECES:  # compile / trace every piece, and warm up
            for _ in range(2):
                self.run_once(name)

    def _groups(self):
        variables = self.pieces_model.trainable_variables
        table = [i for i, v in enumerate(variables) if v.path.endswith("emb/embeddings")]
        dense = [i for i in range(len(variables)) if i not in table]
        return {"adam": table + dense, "adam_table": table, "adam_dense": dense}

    def _adam(self, idx: list):
        import keras

        opt = keras.optimizers.Adam(learning_rate=0.003)
        opt.build([self.pieces_model.trainable_variables[i] for i in idx])
        return opt

    def _jax_pieces(self):
        import jax
        import jax.numpy as jnp

        m = self.pieces_model
        x, y = ({k: jnp.asarray(v) for k, v in d.items()} for d in (self.x, self.y))
        tv, ntv, ov, mv = ([v.value for v in vs] for vs in (m.trainable_variables, m.non_trainable_variables,
                                                            m.optimizer.variables, m.metrics_variables))

        def loss(tv, ntv, x, y):
            return m.compute_loss_and_updates(tv, ntv, mv, x, y, None, training=True, optimizer_variables=ov)[0]

        forward = jax.jit(lambda tv, ntv, x: m.stateless_call(tv, ntv, x, training=True)[0])
        fwd_bwd = jax.jit(jax.value_and_grad(loss))
        grads = fwd_bwd(tv, ntv, x, y)[1]
        self.steps.update(forward=lambda: forward(tv, ntv, x), forward_backward=lambda: fwd_bwd(tv, ntv, x, y))
        for name, idx in self._groups().items():
            opt = self._adam(idx)
            apply = jax.jit(opt.stateless_apply)
            args = ([v.value for v in opt.variables], [grads[i] for i in idx], [tv[i] for i in idx])
            self.steps[name] = lambda apply=apply, args=args: apply(*args)
        # The train step as Keras jits it (state donated, so in buffers of its own): step_fn, HLO, profile.
        self.state = tuple([jnp.array(v.value, copy=True) for v in vs] for vs in (
            m.trainable_variables, m.non_trainable_variables, m.optimizer.variables, m.metrics_variables))
        self.data = (x, y, None)
        self.compiled = jax.jit(m.train_step, donate_argnums=0).lower(self.state, self.data).compile()
        self.temp_bytes = self.compiled.memory_analysis().temp_size_in_bytes
        self.steps["step_fn"] = self._jax_step
        self._block = jax.block_until_ready

    def _jax_step(self):
        self.state = self.compiled(self.state, self.data)[1]
        return self.state

    def _tf_pieces(self):
        import tensorflow as tf

        m = self.pieces_model
        x, y = ({k: tf.constant(v) for k, v in d.items()} for d in (self.x, self.y))

        @tf.function
        def fwd_bwd(x, y):
            with tf.GradientTape() as tape:
                loss = m.compute_loss(x=x, y=y, y_pred=m(x, training=True), training=True)
            return loss, tape.gradient(loss, m.trainable_variables)

        forward = tf.function(lambda x: m(x, training=True))
        grads = fwd_bwd(x, y)[1]  # the table's gradient is IndexedSlices, as in Keras' own step
        self.steps.update(step_fn=lambda: m.train_function(iter([(x, y, None)])),
                          forward=lambda: forward(x), forward_backward=lambda: fwd_bwd(x, y))
        for name, idx in self._groups().items():
            apply = _tf_apply(self._adam(idx), [m.trainable_variables[i] for i in idx])
            self.steps[name] = lambda apply=apply, g=[grads[i] for i in idx]: apply(g)
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
            out["faults"].append(r1.ru_minflt - r.ru_minflt)
        return {**out, "load": loadavg()}

    def profile(self, steps: int, hlo_out: str | None) -> dict:
        folder = tempfile.mkdtemp(prefix="jax_gap_")
        labels = None
        t = time.perf_counter()
        if self.backend == "jax":
            import jax

            with jax.profiler.trace(folder):
                for _ in range(steps):
                    self.run_once("step_fn")
            text = self.compiled.as_text()
            labels = hlo_labels(text)
            if hlo_out:
                Path(hlo_out).write_text(text)
        else:
            import tensorflow as tf

            tf.profiler.experimental.start(folder)
            for _ in range(steps):
                self.run_once("step")
            tf.profiler.experimental.stop()
        wall = (time.perf_counter() - t) / steps
        xplane = glob.glob(f"{folder}/**/*.xplane.pb", recursive=True)[0]
        return {"wall_ms_per_step_profiled": round(wall * 1000, 2), **attribute(xplane, steps, labels)}


def _tf_apply(opt, weights):
    import tensorflow as tf

    return tf.function(lambda grads: opt.apply(grads, weights))  # weights closed over, not traced


def worker_main(args) -> None:
    worker = Worker(args.rows, args.batch)
    print(json.dumps({"ready": {"backend": worker.backend, "jit_compile": getattr(worker, "jit_compile", True),
                                "xla_temp_bytes_per_step": getattr(worker, "temp_bytes", None)}}), flush=True)
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
        print("  share of the time with k ops running at once: " + ", ".join(
            f"{k}: {100 * v:.0f} %" for k, v in prof["ops_in_flight_share"].items()))
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
    main()
