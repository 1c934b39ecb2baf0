"""JAX-only code (imported by kzoo.blocks.backend on the JAX backend only): what differs from the
generic `keras.ops` versions, which it re-exports otherwise."""

from __future__ import annotations

from functools import partial

import jax

from kzoo.blocks.backend.generic import PARTITIONS, gather_rows, mark_row_sparse, run_by_domain  # noqa: F401

FILL_ROWS = 1 << 20  # rows drawn per block by fill_normal


@partial(jax.jit, static_argnums=(3, 4), donate_argnums=(0,))
def _fill_block(table, key, start, rows, stddev):
    block = jax.random.normal(key, (rows, table.shape[1]), table.dtype) * stddev
    return jax.lax.dynamic_update_slice(table, block, (start, 0))


def fill_normal(variable, stddev: float, seed: int) -> None:
    """variable <- N(0, stddev²) values, drawn FILL_ROWS rows at a time into the variable's own (donated)
    buffer. Keras' RandomNormal draws the whole table in one go and holds 3-4 table-sized temporaries
    (measured: a peak of 4.05x the table's bytes at 3e7 x 16), which a 1e8-row table cannot afford."""
    table = variable.value
    n = table.shape[0]
    rows = min(FILL_ROWS, n)
    key = jax.random.key(seed)
    for i, start in enumerate(range(0, n, rows)):
        # The last block is clamped to end at row n (it redraws a few rows of the previous one).
        table = _fill_block(table, jax.random.fold_in(key, i), min(start, n - rows), rows, float(stddev))
    variable.assign(table)


@partial(jax.jit, static_argnums=(1,), donate_argnums=(0,))
def _full(table, value):
    # Written as a function of `table` (finite: a fresh zeros slot) so that jit keeps the donated argument
    # and reuses its buffer; `full_like` alone made a second array (measured).
    return table * 0 + value


def fill_constant(variable, value: float) -> None:
    """variable <- value everywhere, in its own (donated) buffer (an optimizer slot of a large table)."""
    variable.assign(_full(variable.value, float(value)))
