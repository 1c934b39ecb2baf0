"""Training on several devices: `kzoo train --distribute data|model [--mesh DxM] [--virtual-devices N]`.

    setup(mode, spec, batch_size=..., mesh=..., virtual_devices=...)  -> Plan, before anything runs
    plan.build(make)      the model made (built + compiled) under the plan: replicated, mirrored or sharded
    plan.scope()          the context `fit` runs in
    plan.batches(ds)      the tf.data batches the plan can split across its devices
    plan.describe()       what run.json records

The engines are the backends' own. On JAX, `keras.distribution`: `DataParallel` (every variable
replicated, each batch split across the devices) or `ModelParallel` over a (data, model) device mesh
(`TableSharding`) that shards every embedding table (`Block.table_variables()`) across the "model"
axis and replicates the dense weights. On TensorFlow, `tf.distribute.MirroredStrategy` (one host) or
`MultiWorkerMirroredStrategy` (when TF_CONFIG names a cluster); Keras 3 has no sharded-variable engine
on TensorFlow (its DTensor layer is a prototype marked "DO NOT USE", and `fit` does not drive a
ParameterServerStrategy), so `--distribute model` is refused there.

The batch size is the *global* batch: each of n data-parallel replicas gets batch/n rows, and one
step updates the weights once, as one device would with the whole batch. It must divide by n.
`virtual_devices` splits the host CPU into N devices (before the backend starts), to try all this
without accelerators; it is how the tests run on 8 devices.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field

import keras

from kzoo.errors import SpecError

MODES = ("data", "model")
ENV_VIRTUAL = "KZOO_VIRTUAL_DEVICES"
# Keras' own variables for several JAX processes (keras.distribution.initialize reads them).
ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
BATCH_WHERE = "batch size (--batch-size / train.batch_size)"
CPU_COLLECTIVE_TIMEOUT = "xla_cpu_collective_call_terminate_timeout_seconds"


def parse_mesh(text: str) -> tuple[int, int]:
    """"2x4" -> (2, 4): devices on the data axis x devices on the model axis."""
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        data, model = (int(p) for p in parts)
        if data < 1 or model < 1:
            raise ValueError
    except ValueError:
        raise SpecError([("--mesh", f"expected DATAxMODEL with two positive whole numbers (e.g. 2x4: 2 "
                                    f"data-parallel replicas, each sharding its tables over 4 devices), "
                                    f"received {text!r}")]) from None
    return data, model


def set_virtual_devices(count: int) -> None:
    """Split the host CPU into `count` devices and train on those (not on a GPU or TPU).

    Must run before the backend starts (JAX: before any JAX operation; TensorFlow: before its runtime
    starts); once started, an equal count is accepted and another one is a clear error."""
    if int(count) < 1:
        raise SpecError([("--virtual-devices", f"must be a positive whole number, received {count!r}")])
    count = int(count)
    if keras.backend.backend() == "jax":
        import jax

        # XLA:CPU aborts a collective whose participants have not all arrived within a timeout; N
        # virtual devices share the host's cores, so on a loaded machine one can arrive late (seen once
        # with 8 devices on 2 busy cores: an all-reduce aborted the process). Only the patience grows.
        flags = os.environ.get("XLA_FLAGS", "")
        if "collective_call_terminate_timeout" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --{CPU_COLLECTIVE_TIMEOUT}=600".strip()
        try:
            jax.config.update("jax_platforms", "cpu")
            jax.config.update("jax_num_cpu_devices", count)
            return
        except RuntimeError:
            if len(jax.devices()) == count and jax.devices()[0].platform == "cpu":
                return
        have = f"{len(jax.devices())} {jax.devices()[0].platform} device(s)"
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_visible_devices([cpu])  # the virtual devices stand in for any GPU
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
            return
        except RuntimeError:
            if len(tf.config.list_logical_devices("CPU")) == count:
                return
        have = f"{len(tf.config.list_logical_devices())} device(s)"
    else:
        raise SpecError([("--virtual-devices", f"needs the jax or tensorflow backend, not "
                                               f"{keras.backend.backend()!r}")])
    raise SpecError([("--virtual-devices", f"the {keras.backend.backend()} backend has already started with {have}; "
                                           f"the device count is fixed before it starts: pass --virtual-devices on "
                                           f"the command line, or call kzoo.train(..., virtual_devices={count}) "
                                           "first thing in a fresh process")])


@dataclass
class Plan:
    """How one training run uses its devices (one device when `mode` is None).

    Attributes:
        mode: None, "data" or "model".
        backend: the Keras backend.
        devices: devices in use.
        mesh: (data, model) device counts; (devices, 1) in data mode.
        engine: the keras Distribution (JAX) or tf.distribute Strategy (TensorFlow); None on one device.
        tables: table variable path -> how it is placed ("rows/8", "columns/8"), filled by `build`.
    """

    mode: str | None
    backend: str
    devices: int = 1
    mesh: tuple = (1, 1)
    engine: object = None
    tables: dict = field(default_factory=dict)
    processes: int = 1
    table_paths: frozenset = frozenset()
    _topped_up: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # id(ds) -> (ds, its topped-up form)

    @property
    def replicas(self) -> int:
        """Data-parallel replicas: each batch is split into this many equal parts."""
        return self.mesh[0]

    def scope(self):
        """The context to build, compile and fit in (a no-op on one device)."""
        if self.engine is None:
            return contextlib.nullcontext()
        return self.engine.scope()

    def build(self, make):
        """`make()` (build and compile the model) under the plan; returns its model.

        JAX: variables are created with their layouts (tables sharded at initialisation, never whole
        on one device). TensorFlow: mirrored variables, and an optimizer that sums the all-gathered
        sparse gradients per row before its update (see `_sum_duplicate_rows`)."""
        with self.scope():
            model = make()
        if self.engine is None:
            return model
        from kzoo.optim import embedding_variable_paths

        inner = getattr(model, "inner", model)
        if self.backend == "tensorflow" and getattr(inner, "optimizer", None) is not None:
            _sum_duplicate_rows(inner.optimizer)
        if self.mode == "model":
            for path in embedding_variable_paths(inner):
                placed = self.tables.get(path)
                if placed is None:  # a table the probe build did not name: never leave it silently whole
                    raise RuntimeError(f"kzoo.distribute: table {path} was not placed by the layout map "
                                       f"(placed: {sorted(self.tables)}); a block's table path changed between builds")
        return model

    def batches(self, ds):
        """`ds` as the plan can split it. On JAX every batch must divide by the data-parallel replicas
        (n): a last partial batch of r rows is topped up to the next multiple of n with its own first
        rows again (fewer than n rows of an epoch count twice; nothing is left out, and the number of
        batches stays known). TensorFlow's strategies split uneven batches themselves. The same `ds`
        (the trainer passes the same datasets every epoch) gets the same mapped dataset: tf.data
        traces a map when it is built, and a graph per epoch is garbage only a full collection frees."""
        if ds is None or self.backend != "jax" or self.replicas == 1:
            return ds
        if id(ds) in self._topped_up:
            return self._topped_up[id(ds)][1]
        import tensorflow as tf

        n = self.replicas

        def top_up(*parts):
            rows = tf.shape(tf.nest.flatten(parts)[0])[0]
            index = tf.range((rows + n - 1) // n * n) % rows
            parts = tf.cond(rows % n == 0, lambda: parts,
                            lambda: tf.nest.map_structure(lambda t: tf.gather(t, index), parts))
            return parts if len(parts) > 1 else parts[0]

        self._topped_up[id(ds)] = (ds, ds.map(top_up))  # `ds` kept: its id is not reused meanwhile
        return self._topped_up[id(ds)][1]

    def describe(self) -> dict | None:
        """What run.json records (None on one device); the tables' placement is known once the model is
        built (`tables`, and the line `announce` prints)."""
        if self.mode is None:
            return None
        engine = type(self.engine).__name__
        return {"mode": self.mode, "engine": engine, "devices": self.devices, "processes": self.processes,
                "mesh": {"data": self.mesh[0], "model": self.mesh[1]}}

    def summary(self) -> str:
        """One line for stderr."""
        if self.mode is None:
            return "one device"
        line = (f"{type(self.engine).__name__} on {self.devices} {self._kind()} device(s)"
                f"{f' in {self.processes} processes' if self.processes > 1 else ''}, mesh data {self.mesh[0]} x "
                f"model {self.mesh[1]}")
        if self.tables:
            line += "; tables " + ", ".join(f"{p} by {how}" for p, how in self.tables.items())
        return line

    def announce(self) -> None:
        """The plan on stderr, when it uses several devices."""
        if self.mode is not None:
            print(f"kzoo: --distribute {self.mode}: {self.summary()}", file=sys.stderr)

    def _kind(self) -> str:
        if self.backend == "jax":
            import jax

            return jax.devices()[0].platform
        return "GPU" if self._tf_gpus() else "CPU"

    @staticmethod
    def _tf_gpus():
        import tensorflow as tf

        return tf.config.list_logical_devices("GPU")


def setup(mode: str | None = None, spec=None, *, batch_size: int | None = None, mesh=None,
          virtual_devices: int | None = None) -> Plan:
    """The Plan for `mode` (None/"data"/"model"). Call it before anything runs on a device: it fixes
    virtual devices, joins several processes when their environment says so, and builds the engine.

    Args:
        mode: None (one device), "data" (replicate the model, split each batch) or "model" (JAX:
            shard the embedding tables over the mesh's model axis, split batches over its data axis).
        spec: the Spec (model mode reads its table paths from a shape-only build).
        batch_size: int. The global batch; must divide by the data-parallel replicas.
        mesh: "DxM" or (D, M), model mode only. Defaults to (1, all devices).
        virtual_devices: int. Split the host CPU into this many devices (default: $KZOO_VIRTUAL_DEVICES).
    """
    backend = keras.backend.backend()
    if mode is not None and mode not in MODES:
        raise SpecError([("--distribute", f"expected one of {', '.join(MODES)}, received {mode!r}")])
    if mesh is not None and mode != "model":
        raise SpecError([("--mesh", "a device mesh shards tables: it goes with --distribute model")])
    sparse = (spec.train.get("embedding_optimizer") or {}).get("type") if spec is not None else None
    if mode is not None and sparse:
        from kzoo.sparse import ROW_SPARSE

        if sparse in ROW_SPARSE:
            raise SpecError([("train.embedding_optimizer", f"the row-sparse optimizer {sparse!r} has its own train "
                                                           "step, which --distribute does not drive yet (not tested "
                                                           "on several devices); train on one device, or give the "
                                                           "tables a dense optimizer (leave embedding_optimizer out, "
                                                           "or use a type outside "
                                                           f"{', '.join(sorted(ROW_SPARSE))})")])
    if mode == "model" and backend != "jax":
        raise SpecError([("--distribute", f"'model' (sharded embedding tables) needs the jax backend; on "
                                          f"{backend} Keras 3 has no engine for sharded variables (its DTensor "
                                          "layer is an unfinished prototype and model.fit does not drive "
                                          "ParameterServerStrategy). Use --distribute data here, or "
                                          "KERAS_BACKEND=jax")])
    if not virtual_devices and os.environ.get(ENV_VIRTUAL):
        try:
            virtual_devices = int(os.environ[ENV_VIRTUAL])
        except ValueError:
            raise SpecError([(ENV_VIRTUAL, f"expected a whole number of devices, received "
                                           f"{os.environ[ENV_VIRTUAL]!r}")]) from None
    if virtual_devices:
        set_virtual_devices(virtual_devices)
    if mode is None:
        return Plan(None, backend)
    mesh = parse_mesh(mesh) if isinstance(mesh, str) else (tuple(mesh) if mesh is not None else None)
    if backend == "jax":
        plan = _jax_plan(mode, spec, mesh)
    else:
        plan = _tf_plan()
    if batch_size is not None:
        check_batch(int(batch_size), plan.replicas)
    return plan


def check_batch(batch_size: int, replicas: int) -> None:
    """The global batch must split into `replicas` equal parts; a SpecError suggesting the nearest that do."""
    if batch_size % replicas:
        n, b = replicas, batch_size
        raise SpecError([(BATCH_WHERE, f"{b} is the global batch, split over {n} data-parallel replicas, and does "
                                       f"not divide by {n}; use {b // n * n or n} or {(b // n + 1) * n}")])


def _jax_plan(mode: str, spec, mesh) -> Plan:
    import jax
    from keras import distribution as kd

    processes = 1
    if os.environ.get(ENV_PROCESSES) and int(os.environ[ENV_PROCESSES]) > 1:
        kd.initialize()  # jax.distributed.initialize with Keras' KERAS_DISTRIBUTION_* variables
        processes = jax.process_count()
    devices = kd.list_devices()
    n = len(devices)
    if mode == "data":
        return Plan("data", "jax", n, (n, 1), kd.DataParallel(devices=devices), processes=processes)
    data, model = mesh or (1, n)
    if data * model != n:
        raise SpecError([("--mesh", f"{data}x{model} is {data * model} devices, but there are {n}; the mesh must "
                                    f"use them all (e.g. 1x{n}{f' or 2x{n // 2}' if n % 2 == 0 and n > 2 else ''})")])
    device_mesh = kd.DeviceMesh((data, model), ("batch", "model"), devices)
    paths = frozenset(_table_paths(spec))
    plan = Plan("model", "jax", n, (data, model), None, processes=processes, table_paths=paths)
    plan.engine = TableSharding(plan, device_mesh)
    return plan


def _table_paths(spec) -> list[str]:
    """The embedding tables' variable paths, from a build with placeholder vocabulary sizes (block
    names fix the paths; the sizes do not). It runs before the run's seed is set, so the real
    model's initial weights are those of a one-device run with the same seed."""
    from kzoo.graph import build
    from kzoo.optim import embedding_variable_paths

    if spec is None:
        raise ValueError("--distribute model needs the spec, to find its embedding tables")
    return embedding_variable_paths(build(spec, None))


class TableSharding(keras.distribution.ModelParallel):
    """ModelParallel whose layout for an embedding table is decided from its shape when Keras creates
    it: its rows split over the "model" axis when they divide by its size, else its columns (JAX
    shards only evenly divisible dimensions, and a fused table's row count is a sum of vocabulary
    sizes); a table that divides neither way (a dim-1 table with an odd row count) stays replicated.
    Every other variable is replicated. `plan.tables` records each table's placement."""

    def __init__(self, plan: Plan, device_mesh):
        super().__init__(layout_map=keras.distribution.LayoutMap(device_mesh), batch_dim_name="batch")
        self.plan = plan

    def get_variable_layout(self, variable):
        if getattr(variable, "_layout", None) is not None or variable.path not in self.plan.table_paths:
            return super().get_variable_layout(variable)
        rows, dim = variable.shape
        m = self.plan.mesh[1]
        if rows % m == 0:
            axes, how = ("model", None), f"rows/{m}"
        elif dim % m == 0:
            axes, how = (None, "model"), f"columns/{m}"
        else:  # e.g. a dim-1 table (Linear's weights) of an odd row count: kept whole, and said so
            self.plan.tables[variable.path] = f"replicated ({rows} x {dim}: neither divides by {m})"
            return super().get_variable_layout(variable)
        self.plan.tables[variable.path] = how
        return keras.distribution.TensorLayout(axes, self.device_mesh)


def _tf_plan() -> Plan:
    import json

    import tensorflow as tf

    try:
        workers = len(json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {}).get("worker", []))
    except (ValueError, AttributeError):
        raise SpecError([("TF_CONFIG", "is not the JSON TensorFlow expects: {\"cluster\": {\"worker\": [\"host:port\", "
                                       "...]}, \"task\": {\"type\": \"worker\", \"index\": i}}")]) from None
    if workers > 1:  # one worker per host, each with its devices: all-reduce across hosts
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        n = strategy.num_replicas_in_sync
        return Plan("data", "tensorflow", n, (n, 1), strategy, processes=workers)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    strategy = tf.distribute.MirroredStrategy(devices)
    return Plan("data", "tensorflow", len(devices), (len(devices), 1), strategy)


def _sum_duplicate_rows(optimizer) -> None:
    """Make `optimizer` (and a SplitOptimizer's parts) sum a sparse gradient's slices per row before
    its update.

    Under a tf.distribute strategy the all-reduce of an IndexedSlices gradient is an all-gather: the
    replicas' slices are concatenated, so a row looked up on several replicas appears several times.
    Keras' TensorFlow optimizers then square the slices before summing them (Adam's second moment
    gets sum(g_i^2) instead of (sum g_i)^2), the error kzoo.blocks.backend.gather_rows fixes for one
    device (docs/architecture.md). Measured on 8 replicas: Adam drifted from one-device training from
    its second step; SGD, linear in the gradient, did not. Summing per row after the all-reduce makes
    the update that of one device with the global batch. The instance's `update_step` is wrapped (its
    class, config and saved form are unchanged)."""
    import tensorflow as tf

    for part in (getattr(optimizer, "embedding_optimizer", None), getattr(optimizer, "dense_optimizer", None)):
        if part is not None:
            _sum_duplicate_rows(part)
    if getattr(optimizer, "_kzoo_sums_rows", False):
        return
    update_step = optimizer.update_step

    def summed_update_step(gradient, variable, learning_rate):
        if isinstance(gradient, tf.IndexedSlices):
            rows, position = tf.unique(gradient.indices)
            values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
            gradient = tf.IndexedSlices(values, rows, gradient.dense_shape)
        return update_step(gradient, variable, learning_rate)

    optimizer.update_step = summed_update_step
    optimizer._kzoo_sums_rows = True


