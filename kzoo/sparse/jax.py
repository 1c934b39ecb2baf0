"""Row access for the row-sparse optimizers on JAX (imported on the JAX backend only).

JAX's gradient of a table is a dense table-sized array; kzoo.sparse.jax_model's train step instead
differentiates with respect to the rows a batch touches and hands the optimizer a `RowGradient`. Rows
are padded to a static count with an out-of-range index (the table's row count): reads there give
zeros and writes there are dropped, so the padding never lands in the table.
"""

from __future__ import annotations


class RowGradient:
    """The gradient of a table at its distinct touched rows: `rows` (n,) int32, ascending, padded with
    the table's row count; `values` (n, dim), one summed gradient per row (zeros at the padding)."""

    def __init__(self, rows, values):
        self.rows, self.values = rows, values


def touched(gradient):
    """(rows, summed gradients) of a RowGradient; (None, gradient) for a dense one."""
    if isinstance(gradient, RowGradient):
        return gradient.rows, gradient.values
    return None, gradient


def gather(variable, rows):
    """Rows `rows` of a variable's current value (zeros at out-of-range padding)."""
    return variable.value.at[rows].get(mode="fill", fill_value=0)


def scatter(variable, rows, values):
    """variable[rows] = values; out-of-range rows dropped. Inside the jitted, state-donating train step
    XLA updates the table's buffer in place."""
    variable.assign(variable.value.at[rows].set(values.astype(variable.dtype), mode="drop"))
