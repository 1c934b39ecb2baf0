"""TensorFlow-only code (imported by kzoo.blocks.backend on the TensorFlow backend only)."""

from __future__ import annotations

import tensorflow as tf


def gather_rows(table, ids):
    """`tf.gather(table, ids)` whose gradient has one slice per distinct row.

    TensorFlow's gather gradient is an IndexedSlices with one slice per *occurrence* of a row.
    Keras 3's TensorFlow optimizers apply element-wise ops to those slices before they are
    summed, so Adam's second moment gets sum(g_i^2) instead of (sum g_i)^2 for a row looked up
    several times in a batch (Adagrad and RMSprop likewise), and its first step on a frequent
    row reaches sqrt(count) x the learning rate (measured: 6.4x on a Criteo batch; JAX, whose
    gradients are dense, takes the correct step). Summing the slices per row first (the
    deduplication TensorFlow's own sparse optimizers do) makes both backends run the same Adam.
    `tf.unique` has no XLA kernel, so a model using it trains with `jit_compile=False` on
    TensorFlow (what Keras picks there by default).

    A table updated by a row-sparse optimizer (kzoo.sparse, which marks it with `mark_row_sparse`)
    is instead read with ResourceGather on the variable itself, rows only: its gradient is then one
    slice per occurrence, which that optimizer sums per row. Reading such a table whole would copy
    all of it at every step (TensorFlow switches a variable that is scattered into to
    copy-on-read), and tf.custom_gradient reads every variable it sees whole.
    """
    ids = tf.convert_to_tensor(ids)
    if getattr(table, ROW_SPARSE_MARK, False) and isinstance(table.value, tf.Variable):
        return tf.gather(table.value, ids)

    @tf.custom_gradient
    def gather(params):
        def grad(upstream):
            flat_ids = tf.reshape(ids, [-1])
            rows, position = tf.unique(flat_ids)
            values = tf.math.unsorted_segment_sum(tf.reshape(upstream, [-1, tf.shape(params)[1]]), position,
                                                  tf.shape(rows)[0])
            return tf.IndexedSlices(values, rows, tf.shape(params))

        return tf.gather(params, ids), grad

    return gather(tf.convert_to_tensor(table))


ROW_SPARSE_MARK = "_kzoo_row_sparse"


def mark_row_sparse(variable) -> None:
    """Mark a table variable as updated by a row-sparse optimizer: gather_rows reads it in place."""
    setattr(variable, ROW_SPARSE_MARK, True)


FILL_ROWS = 1 << 20  # rows written per block by fill_normal / fill_constant


def _fill(variable, block) -> None:
    """variable[rows] = block(i, rows) for blocks of FILL_ROWS rows, in place (ResourceScatterUpdate;
    a strided-slice assign copied the whole table once, measured at 3e7 x 16)."""
    value = variable.value
    n = value.shape[0]
    for i, start in enumerate(range(0, n, FILL_ROWS)):
        rows = tf.range(start, min(start + FILL_ROWS, n))
        value.scatter_update(tf.IndexedSlices(block(i, tf.size(rows)), rows))


def fill_normal(variable, stddev: float, seed: int) -> None:
    """variable <- N(0, stddev²) values, a block of rows at a time. Keras' RandomNormal draws the whole
    table in one go with 2 table-sized temporaries (measured: 3x the table's bytes resident after a
    3e7 x 16 table's build)."""
    dim, dtype = variable.shape[1], variable.value.dtype
    _fill(variable, lambda i, rows: tf.random.stateless_normal((rows, dim), seed=[seed, i], dtype=dtype) * stddev)


def fill_constant(variable, value: float) -> None:
    """variable <- value everywhere, a block of rows at a time (an optimizer slot of a large table)."""
    dim, dtype = variable.shape[1], variable.value.dtype
    _fill(variable, lambda i, rows: tf.fill((rows, dim), tf.constant(value, dtype)))


PARTITIONS = True


def run_by_domain(fn, tensors: list, domain, domains: int) -> dict:
    """{name: (batch, ...)}: row r gets `fn(d, rows of domain d)[name]` for its domain d. The batch
    is partitioned by domain (tf.dynamic_partition), each domain's `fn` runs on its own rows only
    and the outputs are stitched back in row order, so a row costs one domain's `fn`."""
    rows = tf.range(tf.shape(domain)[0])
    parts = [tf.dynamic_partition(t, domain, domains) for t in tensors]
    where = tf.dynamic_partition(rows, domain, domains)
    outs = [fn(d, [p[d] for p in parts]) for d in range(domains)]
    return {k: tf.dynamic_stitch(where, [o[k] for o in outs]) for k in outs[0]}
