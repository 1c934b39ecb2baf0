"""MTMD (Yang et al., AdKDD 2025): Pinterest's multi-task multi-domain two-tower lightweight ranker.

    DomainIds         a feature block: a categorical feature with declared values (vocab.values)
                      -> the row's domain index (an undeclared value -> `fallback`)
    DomainBatchNorm   batch normalisation with statistics and scale per domain
    MTMDTower         one tower: per-domain BatchNorm on the continuous features, then the row's
                      Domain Expert (one per domain) giving one embedding per task
    DotScore          the score of two towers' embeddings for one task (the task's logit)

A Domain Expert (one per domain, for T tasks):

    fields --SE block (this domain's)--> x = [fields', continuous]          domain adaptation
    per task k: deep expert FFN(deep_units) over x                         (task-specific)
    one task-shared expert FFN(deep_units) over x                          (within the domain)
    one domain-shared expert FFN(deep_units) over x, shared by every domain expert of the tower
    per task k: routing FFN(routing_units + [3]) -> softmax weights of [deep_k, task-shared,
                domain-shared]; composed_k = Σ w·expert, LayerNorm, low-rank DCNv2 cross layers,
                Dense(task dim) projection, concatenated with the task's shallow expert
                FFN(shallow_units) over the shallow (key categorical) fields
    every FFN layer: Linear -> LayerNorm -> LeakyReLU(0.2)

Only the row's domain expert runs where the backend allows it: on TensorFlow (training and every
export) the rows are partitioned by domain (tf.dynamic_partition), each expert runs on its rows
and the outputs are stitched back, so a row costs one expert whatever the number of domains; on
JAX (static shapes) every expert runs on the batch and each row keeps its own (`execution`).
The SE reading of "domain adaptation" (a domain's own excitation of the shared embeddings) is
ours; the paper gives the module's role, not its equations.
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.backend import PARTITIONS, run_by_domain
from kzoo.blocks.backend.generic import run_by_domain as run_on_every_domain
from kzoo.blocks.base import Block, check_positive_int, flatten_2d
from kzoo.blocks.interaction import CrossNetV2
from kzoo.blocks.registry import register_block


@register_block()
class DomainIds(Block):
    """The domain index of each row from a categorical feature whose values are declared
    (`"vocab": {"values": [...]}` in the dataset): declared value i -> i, any other value (the
    lookup's OOV id 0) -> `fallback`, the domain whose expert serves an unknown domain.

    Reads one feature (`inputs: ["group:NAME"]` with a one-feature group). Output (batch, 1) int32.

    Args:
        fallback: int. Domain of an undeclared value at serving (training refuses such rows).
            Defaults to `0`.
    """

    feature_block = True

    def __init__(self, features: list | None = None, fallback: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.features = [dict(f) for f in (features or [])]
        if features is not None and (len(self.features) != 1 or self.features[0]["kind"] != "categorical"):
            raise ValueError(f"DomainIds reads one categorical feature, received {[f['name'] for f in self.features]}")
        if not isinstance(fallback, int) or fallback < 0:
            raise ValueError(f"`fallback` must be a domain index >= 0, received {fallback!r}")
        self.fallback = fallback
        self.domains = int(self.features[0]["vocab_size"]) - 1 if self.features else None
        if self.domains is not None and fallback >= self.domains:
            raise ValueError(f"`fallback` {fallback} is not one of the {self.domains} domains")

    def call(self, inputs):
        ids = ops.cast(ops.reshape(inputs[self.features[0]["name"]], (-1, 1)), "int32") - 1
        return ops.where(ids < 0, self.fallback, ids)

    def compute_output_shape(self, input_shape):
        return (None, 1)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor((None, 1), dtype="int32")

    def get_config(self):
        return {**super().get_config(), "features": self.features, "fallback": self.fallback}


@register_block()
class DomainBatchNorm(Block):
    """Batch normalisation with its own statistics, scale and offset per domain: a row is normalised
    by the batch statistics of the rows of its domain (training) or its domain's moving statistics.

    Inputs: [x (batch, n), domain (batch, 1) int]. Output (batch, n).

    Args:
        domains: int. Number of domains.
        momentum: float. Of the moving statistics. Defaults to `0.99`.
        epsilon: float. Defaults to `1e-3`.
    """

    arity = (2, 2)

    def __init__(self, domains: int, momentum: float = 0.99, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("domains", domains)
        self.domains, self.momentum, self.epsilon = domains, float(momentum), float(epsilon)

    def build(self, input_shape):
        n = int(input_shape[0][-1])
        shape = (self.domains, n)
        self.gamma = self.add_weight(name="gamma", shape=shape, initializer="ones")
        self.beta = self.add_weight(name="beta", shape=shape, initializer="zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=shape, initializer="zeros", trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=shape, initializer="ones",
                                               trainable=False)

    def call(self, inputs, training=None):
        x, domain = inputs
        x = ops.cast(x, "float32")
        onehot = ops.one_hot(ops.reshape(ops.cast(domain, "int32"), (-1,)), self.domains, dtype="float32")
        if training:
            count = ops.sum(onehot, axis=0)[:, None]                                    # (D, 1)
            mean = ops.matmul(ops.transpose(onehot), x) / ops.maximum(count, 1.0)       # (D, n)
            var = ops.matmul(ops.transpose(onehot), ops.square(x)) / ops.maximum(count, 1.0) - ops.square(mean)
            var = ops.maximum(var, 0.0)
            seen = count > 0
            m = self.momentum
            old_mean, old_var = (ops.convert_to_tensor(v) for v in (self.moving_mean, self.moving_variance))
            self.moving_mean.assign(ops.where(seen, m * old_mean + (1 - m) * mean, old_mean))
            self.moving_variance.assign(ops.where(seen, m * old_var + (1 - m) * var, old_var))
        else:
            mean, var = (ops.convert_to_tensor(v) for v in (self.moving_mean, self.moving_variance))
        scale = self.gamma * ops.rsqrt(var + self.epsilon)                              # (D, n)
        shift = self.beta - mean * scale
        return x * ops.matmul(onehot, scale) + ops.matmul(onehot, shift)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "domains": self.domains, "momentum": self.momentum, "epsilon": self.epsilon}


class FFN(keras.layers.Layer):
    """Linear -> LayerNorm -> LeakyReLU(0.2) per entry of `units` (MTMD's expert layers)."""

    def __init__(self, units: list, slope: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.units, self.slope = list(units), float(slope)
        self.dense = [keras.layers.Dense(u, name=f"dense_{i}") for i, u in enumerate(self.units)]
        self.norm = [keras.layers.LayerNormalization(name=f"ln_{i}") for i in range(len(self.units))]

    def build(self, input_shape):
        width = int(input_shape[-1])
        for dense, norm, u in zip(self.dense, self.norm, self.units):
            dense.build((None, width))
            norm.build((None, u))
            width = u

    def call(self, x):
        for dense, norm in zip(self.dense, self.norm):
            x = ops.leaky_relu(norm(dense(x)), negative_slope=self.slope)
        return x


class SEBlock(keras.layers.Layer):
    """Squeeze-and-excitation over fields: (batch, F, d) -> the fields scaled by
    sigmoid(W2 relu(W1 mean_d(E)))."""

    def __init__(self, reduction: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction

    def build(self, input_shape):
        fields = int(input_shape[1])
        self.squeeze = keras.layers.Dense(max(1, fields // self.reduction), activation="relu", name="squeeze")
        self.excite = keras.layers.Dense(fields, activation="sigmoid", name="excite")
        self.squeeze.build((None, fields))
        self.excite.build((None, max(1, fields // self.reduction)))

    def call(self, x):
        return x * ops.expand_dims(self.excite(self.squeeze(ops.mean(x, axis=-1))), -1)


class DomainExpert(keras.layers.Layer):
    """One domain's expert: {task: embedding} from (fields, continuous, shallow fields). See the module
    docstring; `call`'s `shared` is the tower's domain-shared expert (one layer for every domain,
    owned by the tower, so its weights exist once)."""

    def __init__(self, tasks: dict, deep_units: list, shallow_units: list, routing_units: list, cross_layers: int,
                 low_rank: int, adaptation: bool, routing: bool, cross: bool, **kwargs):
        super().__init__(**kwargs)
        self.tasks = dict(tasks)
        self.adaptation, self.routing, self.cross = adaptation, routing, cross
        self.se = SEBlock(name="se") if adaptation else None
        self.deep = {k: FFN(deep_units, name=f"deep_{k}") for k in self.tasks}
        self.task_shared = FFN(deep_units, name="task_shared")
        self.shallow = {k: FFN(shallow_units, name=f"shallow_{k}") for k in self.tasks}
        self.router = {k: FFN(routing_units, name=f"router_{k}") for k in self.tasks} if routing else {}
        self.gate = {k: keras.layers.Dense(3, name=f"gate_{k}") for k in self.tasks} if routing else {}
        self.norm = {k: keras.layers.LayerNormalization(name=f"ln_{k}") for k in self.tasks}
        self.crosses = {k: CrossNetV2(layers=cross_layers, low_rank=low_rank, name=f"cross_{k}")
                        for k in self.tasks} if cross else {}
        self.project = {k: keras.layers.Dense(dim, name=f"project_{k}") for k, dim in self.tasks.items()}

    def build(self, input_shape):
        fields, dense, shallow = input_shape
        width = int(fields[1]) * int(fields[2]) + int(dense[-1])
        if self.se is not None:
            self.se.build(fields)
        last = self.task_shared.units[-1]
        self.task_shared.build((None, width))
        for k in self.tasks:
            self.deep[k].build((None, width))
            self.shallow[k].build((None, int(shallow[1]) * int(shallow[2])))
            if self.routing:
                self.router[k].build((None, width))
                self.gate[k].build((None, self.router[k].units[-1]))
            self.norm[k].build((None, last))
            if self.cross:
                self.crosses[k].build((None, last))
            self.project[k].build((None, last))

    def call(self, inputs, shared=None):
        fields, dense, shallow = inputs
        if self.se is not None:
            fields = self.se(fields)
        x = ops.concatenate([flatten_2d(fields), ops.cast(dense, fields.dtype)], axis=-1)
        common = [self.task_shared(x), shared(x)]
        s = flatten_2d(shallow)
        out = {}
        for k in self.tasks:
            experts = ops.stack([self.deep[k](x)] + common, axis=1)                   # (b, 3, w)
            if self.routing:
                w = ops.softmax(self.gate[k](self.router[k](x)), axis=-1)
            else:
                w = ops.ones((ops.shape(x)[0], 3), dtype=x.dtype) / 3.0
            z = self.norm[k](ops.sum(experts * ops.expand_dims(w, -1), axis=1))
            if self.cross:
                z = self.crosses[k](z)
            out[k] = ops.concatenate([self.project[k](z), self.shallow[k](s)], axis=-1)
        return out


@register_block()
class MTMDTower(Block):
    """One MTMD tower: N Domain Experts (see the module docstring), a row served by its domain's.

    Inputs: [fields (batch, F, d) field embeddings, continuous (batch, n), shallow fields
    (batch, Fs, d) of a few key categorical features, domain (batch, 1) int from DomainIds].
    Outputs: one per task, wired as "tower.TASK": (batch, task dim + shallow_units[-1]).

    Args:
        domains: int. Number of domain experts (the DomainIds feature's declared values).
        tasks: dict. Task name -> embedding size of its projection (paper: ctr 128, gctr 32, octr 32).
        deep_units: list of int. Each deep / task-shared / domain-shared expert. Defaults to
            `[512, 256, 128, 128]`.
        shallow_units: list of int. Each shallow expert. Defaults to `[128, 64]`.
        routing_units: list of int. The routing FFN before its softmax over the 3 experts.
            Defaults to `[128, 64]`.
        cross_layers: int. Low-rank DCNv2 layers over each task's composed expert. Defaults to `1`.
        low_rank: int. Their rank. Defaults to `32`.
        domain_norm: bool. Per-domain BatchNorm of the continuous features (False: one shared
            BatchNorm). Defaults to `True`.
        adaptation: bool. The domain's SE block over the field embeddings. Defaults to `True`.
        routing: bool. The routing layer (False: the three experts averaged). Defaults to `True`.
        cross: bool. The DCNv2 layers. Defaults to `True`.
        execution: str. `"auto"` (TensorFlow: only each row's expert runs; other backends: every
            expert runs and each row keeps its own), `"partition"` or `"dense"`. Defaults to `"auto"`.
    """

    arity = (4, 4)

    def __init__(self, domains: int, tasks: dict, deep_units: list | None = None, shallow_units: list | None = None,
                 routing_units: list | None = None, cross_layers: int = 1, low_rank: int = 32,
                 domain_norm: bool = True, adaptation: bool = True, routing: bool = True, cross: bool = True,
                 execution: str = "auto", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("domains", domains)
        if not isinstance(tasks, dict) or not tasks:
            raise ValueError(f"`tasks` must map each task name to its embedding size, received {tasks!r}")
        for k, dim in tasks.items():
            check_positive_int(f"tasks.{k}", dim)
        deep_units = list(deep_units or [512, 256, 128, 128])
        shallow_units = list(shallow_units or [128, 64])
        routing_units = list(routing_units or [128, 64])
        for name, units in (("deep_units", deep_units), ("shallow_units", shallow_units),
                            ("routing_units", routing_units)):
            for u in units:
                check_positive_int(f"{name}[i]", u)
        if execution not in ("auto", "partition", "dense"):
            raise ValueError(f"`execution` must be 'auto', 'partition' or 'dense', received {execution!r}")
        self.domains, self.tasks = domains, dict(tasks)
        self.deep_units, self.shallow_units, self.routing_units = deep_units, shallow_units, routing_units
        self.cross_layers, self.low_rank = cross_layers, low_rank
        self.domain_norm, self.adaptation, self.routing, self.cross = domain_norm, adaptation, routing, cross
        self.execution = execution
        # momentum 0.9, not Keras' 0.99: each domain's statistics move only on its own rows' batches.
        self.bn = DomainBatchNorm(domains if domain_norm else 1, momentum=0.9, name="domain_bn")
        self.shared = FFN(deep_units, name="domain_shared")
        self.experts = [DomainExpert(self.tasks, deep_units, shallow_units, routing_units, cross_layers, low_rank,
                                     adaptation, routing, cross, name=f"domain_{d}")
                        for d in range(domains)]

    @classmethod
    def output_names(cls, args: dict) -> list[str] | None:
        return list(args.get("tasks", {})) or None

    def build(self, input_shape):
        fields, dense, shallow, _ = input_shape
        self.bn.build([tuple(dense), (None, 1)])
        width = int(fields[1]) * int(fields[2]) + int(dense[-1])
        self.shared.build((None, width))
        for e in self.experts:
            e.build([tuple(fields), tuple(dense), tuple(shallow)])

    def _partition(self) -> bool:
        return self.execution == "partition" or (self.execution == "auto" and PARTITIONS)

    def call(self, inputs, training=None):
        fields, dense, shallow, domain = inputs
        domain = ops.reshape(ops.cast(domain, "int32"), (-1,))
        norm_domain = domain if self.domain_norm else ops.zeros_like(domain)
        dense = self.bn([dense, ops.expand_dims(norm_domain, -1)], training=training)
        if self.execution == "partition" and not PARTITIONS:
            raise ValueError("execution 'partition' needs the TensorFlow backend; use 'auto' or 'dense'")
        run = run_by_domain if self._partition() else run_on_every_domain

        def expert(d, parts):
            return self.experts[d](parts, shared=self.shared)

        return run(expert, [fields, dense, shallow], domain, self.domains)

    def compute_output_spec(self, inputs, training=None):
        batch = inputs[0].shape[0]
        return {k: keras.KerasTensor((batch, dim + self.shallow_units[-1]), dtype=self.compute_dtype)
                for k, dim in self.tasks.items()}

    def get_config(self):
        return {**super().get_config(), "domains": self.domains, "tasks": self.tasks, "deep_units": self.deep_units,
                "shallow_units": self.shallow_units, "routing_units": self.routing_units,
                "cross_layers": self.cross_layers, "low_rank": self.low_rank, "domain_norm": self.domain_norm,
                "adaptation": self.adaptation, "routing": self.routing, "cross": self.cross,
                "execution": self.execution}


@register_block()
class DotScore(Block):
    """The dot product of two (batch, d) embeddings as a two-tower task's logit, (batch, 1):

        logit = exp(s) · <a, b> + c      (s starts at -log(d)/2, c at 0; both learned)

    The learned scale keeps a d-wide dot product from saturating the sigmoid at the start, and the
    offset carries the base rate, which a dot product of two towers cannot (both are shared by
    every pair, so the towers stay pairwise).

    Args:
        learn_scale: bool. Learn s and c; False: the raw dot product. Defaults to `True`.
    """

    arity = (2, 2)

    def __init__(self, learn_scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.learn_scale = bool(learn_scale)

    def build(self, input_shape):
        a, b = input_shape
        if a[-1] != b[-1]:
            raise ValueError(f"DotScore needs embeddings of one size, received {a[-1]} and {b[-1]}")
        if self.learn_scale:
            import math

            self.log_scale = self.add_weight(name="log_scale", shape=(),
                                             initializer=keras.initializers.Constant(-0.5 * math.log(int(a[-1]))))
            self.offset = self.add_weight(name="offset", shape=(), initializer="zeros")

    def call(self, inputs):
        a, b = inputs
        dot = ops.sum(flatten_2d(a) * flatten_2d(b), axis=-1, keepdims=True)
        return ops.exp(self.log_scale) * dot + self.offset if self.learn_scale else dot

    def get_config(self):
        return {**super().get_config(), "learn_scale": self.learn_scale}

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)
