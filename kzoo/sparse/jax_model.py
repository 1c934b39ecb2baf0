"""The JAX train step of row-sparse embedding updates (imported on the JAX backend only).

Keras' JAX train step differentiates the loss with respect to every trainable variable, so a table's
gradient is a dense (rows, dim) array and its optimizer touches every row: the step time grows with
the table. `RowSparseModel.train_step` instead, per step and per FeatureEmbedding whose table a
row-sparse optimizer updates:

1. lists the ids the forward pass looks up (a first trace of the forward with the layer recording
   the ids it is asked for; ids depend on the inputs only, and XLA drops the rest of that trace);
2. takes their distinct rows U with a static size (jnp.unique(size=n, fill_value=rows)) and
   gathers R = table[U];
3. runs the forward and the loss with the layer reading its rows from R (FeatureEmbedding._rows'
   `_row_source`), differentiating with respect to R and the dense weights only;
4. hands the optimizer a RowGradient(U, dL/dR) for the table: the row-sparse optimizer gathers the
   slot rows, applies its rule and writes rows and slots back in place (donated state).

Metrics, losses, sample weights and regularisation losses go through Keras' own
`compute_loss_and_updates` and `_update_metrics_variables`, as in Keras' step.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import keras
from keras import ops

from kzoo.sparse.jax import RowGradient


class _Recorder:
    """A `_row_source` for the first trace: records the ids and returns zeros of the rows' shape."""

    def __init__(self, layer):
        self.layer, self.ids = layer, []

    def __call__(self, ids):
        ids = ops.convert_to_tensor(ids, "int32")
        self.ids.append(ids)
        return jnp.zeros(tuple(ids.shape) + (self.layer.dim,), self.layer.compute_dtype)


class _Reader:
    """A `_row_source` for the differentiated trace: the k-th lookup reads its rows from R at the positions
    jnp.unique gave the k-th recorded ids."""

    def __init__(self, layer, rows, positions: list):
        self.layer, self.rows, self.positions = layer, rows, list(positions)

    def __call__(self, ids):
        if not self.positions or tuple(self.positions[0].shape) != tuple(ids.shape):
            raise RuntimeError(f"layer '{self.layer.name}' looked up ids of shape {tuple(ids.shape)} that the first "
                               "pass did not record; the forward pass must look up the same ids every time")
        return jnp.take(self.rows, self.positions.pop(0), axis=0)


@contextlib.contextmanager
def _row_sources(sources: dict):
    for layer, source in sources.items():
        layer._row_source = source
    try:
        yield
    finally:
        for layer in sources:
            layer._row_source = None


class RowSparseModel(keras.Model):
    """A compiled kzoo model trained on JAX with row-sparse table updates; `call` is the wrapped model's.

    Made by `kzoo.sparse.row_sparse(model)`, which compiles it like `inner` with the *same* optimizer
    object, so the optimizer state (table slots included) is saved with `inner` (`model.keras`) and with
    this wrapper (BackupAndRestore). Fit this; save, evaluate and serve `.inner`.

    Args:
        inner: keras.Model. The compiled model.
        layers: list of FeatureEmbedding. The layers whose tables are updated row-sparse.
    """

    def __init__(self, inner: keras.Model, layers: list, **kwargs):
        kwargs.setdefault("name", f"{inner.name}_row_sparse")
        super().__init__(**kwargs)
        self.inner = inner
        self.sparse_layers = list(layers)
        self.built = True

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        where = {id(v): i for i, v in enumerate(self.trainable_variables)}
        tables = [where[id(layer.embeddings)] for layer in self.sparse_layers]

        # 1. The ids each layer looks up (only this trace's ids survive XLA's dead-code elimination).
        recorders = {layer: _Recorder(layer) for layer in self.sparse_layers}
        with _row_sources(recorders):
            self.stateless_call(trainable, non_trainable, x, training=True)

        # 2. Distinct rows U (padded with the row count) and R = table[U].
        touched, positions = [], []
        for layer, at in zip(self.sparse_layers, tables):
            ids = recorders[layer].ids
            flat = jnp.concatenate([jnp.reshape(i, (-1,)) for i in ids])
            size = min(int(flat.shape[0]), layer.total_rows)
            rows, inverse = jnp.unique(flat, size=size, fill_value=layer.total_rows, return_inverse=True)
            inverse = jnp.reshape(inverse, (-1,))
            starts = [0]
            for i in ids:
                starts.append(starts[-1] + int(i.size))
            positions.append([jnp.reshape(inverse[a:b], i.shape) for a, b, i in zip(starts, starts[1:], ids)])
            touched.append(rows)
        gathered = [trainable[at].at[rows].get(mode="fill", fill_value=0) for at, rows in zip(tables, touched)]
        dense_at = [i for i in range(len(trainable)) if i not in set(tables)]

        # 3. Loss, metrics' inputs and gradients with respect to R and the dense weights.
        def loss_fn(dense_values, row_values):
            values = list(trainable)
            for i, value in zip(dense_at, dense_values):
                values[i] = value
            readers = {layer: _Reader(layer, r, p) for layer, r, p in zip(self.sparse_layers, row_values, positions)}
            with _row_sources(readers):
                return self.compute_loss_and_updates(values, non_trainable, metrics_variables, x, y, sample_weight,
                                                     training=True, optimizer_variables=optimizer_variables)

        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        (_, aux), (dense_grads, row_grads) = grad_fn([trainable[i] for i in dense_at], gathered)
        unscaled_loss, y_pred, non_trainable, metrics_variables = aux

        # 4. One optimizer step: dense gradients for the dense weights, RowGradients for the tables.
        grads = [None] * len(trainable)
        for i, g in zip(dense_at, dense_grads):
            grads[i] = g
        for at, rows, g in zip(tables, touched, row_grads):
            grads[at] = RowGradient(rows, g)
        trainable, optimizer_variables = self.optimizer.stateless_apply(optimizer_variables, grads, trainable)
        logs, metrics_variables = self._update_metrics_variables(metrics_variables, unscaled_loss, x, y, y_pred,
                                                                 sample_weight)
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)
