"""Optimizers and learning-rate schedules from a spec's `train` section."""

from __future__ import annotations

import keras
from keras import ops

from kzoo import sparse


@keras.saving.register_keras_serializable(package="kzoo")
class WarmupExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(t) = base · t/warmup for t < warmup, then base · rate^((t − warmup)/decay_steps)."""

    def __init__(self, base: float, warmup_steps: int = 0, decay_steps: int = 1000, decay_rate: float = 1.0):
        self.base = float(base)
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        ramp = self.base * ops.minimum((step + 1.0) / warm, 1.0)
        decay = ops.power(self.decay_rate, ops.maximum(step - self.warmup_steps, 0.0) / self.decay_steps)
        return ramp * decay if self.warmup_steps else self.base * decay

    def get_config(self):
        return {"base": self.base, "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps,
                "decay_rate": self.decay_rate}


_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adagrad": keras.optimizers.Adagrad,
    "sgd": keras.optimizers.SGD,
    "adamw": keras.optimizers.AdamW,
    "rmsprop": keras.optimizers.RMSprop,
}


def make_optimizer(cfg: dict | None, schedule: dict | None = None,
                   kinds: dict | None = None) -> keras.optimizers.Optimizer:
    cfg = dict(cfg or {"type": "adam"})
    kind = cfg.pop("type")
    lr = cfg.pop("learning_rate", 0.001)
    if schedule:
        lr = WarmupExponentialDecay(lr, **schedule)
    return (kinds or _OPTIMIZERS)[kind](learning_rate=lr, **cfg)


@keras.saving.register_keras_serializable(package="kzoo")
class SplitOptimizer(keras.optimizers.Optimizer):
    """One optimizer for embedding tables, another for the dense weights.

    The common CTR recipe (e.g. Adagrad for the sparse tables, Adam for the MLPs). Keras 3 has
    no MultiOptimizer, so this wrapper partitions the variables at build time by path and
    hands each part to its optimizer. Its `variables` include both sub-optimizers' state, so
    the JAX trainer's stateless apply and the step checkpoints carry all of it.

    Args:
        embedding_optimizer: keras Optimizer for variables whose path is in `embedding_paths`.
        dense_optimizer: keras Optimizer for every other variable.
        embedding_paths: list of str. Variable paths of the embedding tables.
    """

    def __init__(self, embedding_optimizer, dense_optimizer, embedding_paths=(), name="split_optimizer", **kwargs):
        kwargs.pop("learning_rate", None)
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        if isinstance(embedding_optimizer, dict):
            embedding_optimizer = keras.optimizers.deserialize(embedding_optimizer)
        if isinstance(dense_optimizer, dict):
            dense_optimizer = keras.optimizers.deserialize(dense_optimizer)
        self.embedding_optimizer = embedding_optimizer
        self.dense_optimizer = dense_optimizer
        self.embedding_paths = list(embedding_paths)

    def _is_embedding(self, variable) -> bool:
        return variable.path in self.embedding_paths

    def build(self, variables):
        super().build(variables)
        self.embedding_optimizer.build([v for v in variables if self._is_embedding(v)])
        self.dense_optimizer.build([v for v in variables if not self._is_embedding(v)])

    @property
    def variables(self):
        return self._variables[:] + self.embedding_optimizer.variables + self.dense_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        elif not self.built:
            self.build(list(trainable_variables))
        parts = {True: ([], []), False: ([], [])}
        for g, v in zip(grads, trainable_variables):
            if g is not None:
                parts[self._is_embedding(v)][0].append(g)
                parts[self._is_embedding(v)][1].append(v)
        if parts[True][0]:
            self.embedding_optimizer.apply(*parts[True])
        if parts[False][0]:
            self.dense_optimizer.apply(*parts[False])
        self._iterations.assign_add(1)

    def get_config(self):
        config = super().get_config()
        config.update(embedding_optimizer=keras.optimizers.serialize(self.embedding_optimizer),
                      dense_optimizer=keras.optimizers.serialize(self.dense_optimizer),
                      embedding_paths=self.embedding_paths)
        return config


def embedding_variable_paths(model: keras.Model) -> list[str]:
    """Paths of the embedding tables of every block in `model` that holds tables."""
    return [v.path for layer in model._flatten_layers() if getattr(layer, "holds_tables", False)
            for v in layer.table_variables()]


def make_model_optimizer(model: keras.Model, train_cfg: dict) -> keras.optimizers.Optimizer:
    """The spec's optimizer; a SplitOptimizer when `embedding_optimizer` is set (a row-sparse optimizer
    for the tables when its type is one of kzoo.sparse.ROW_SPARSE)."""
    dense = make_optimizer(train_cfg.get("optimizer"), train_cfg.get("schedule"))
    if not train_cfg.get("embedding_optimizer"):
        return dense
    cfg = train_cfg["embedding_optimizer"]
    row_sparse = cfg["type"] in sparse.ROW_SPARSE  # only the rows a batch touches are read and written
    tables = make_optimizer(cfg, train_cfg.get("schedule"), sparse.OPTIMIZERS if row_sparse else None)
    return SplitOptimizer(tables, dense, embedding_variable_paths(model))
