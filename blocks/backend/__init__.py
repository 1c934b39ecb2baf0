"""Backend-specific code, one module per Keras backend, chosen once at import.

Blocks call these functions instead of testing `keras.backend.backend()` themselves:

    gather_rows(table, ids)   embedding lookup whose gradient optimizers apply correctly
    mark_row_sparse(variable) the table is updated by a row-sparse optimizer (kzoo.sparse): read it
                              in place, rows only
    fill_normal(variable, stddev, seed), fill_constant(variable, value)
                              a large table's (or slot's) initialisation, in place, by blocks of rows
    run_by_domain(fn, tensors, domain, domains)   each row through its domain's function only
                              where the backend can partition a batch (PARTITIONS)

`generic` holds the `keras.ops` version that is right on JAX and torch (dense gradients);
`tensorflow` and `jax` override what those backends need done differently.
"""

from __future__ import annotations

import keras

if keras.backend.backend() == "tensorflow":
    from kzoo.blocks.backend.tensorflow import (PARTITIONS, fill_constant, fill_normal,  # noqa: F401
                                                gather_rows, mark_row_sparse, run_by_domain)
elif keras.backend.backend() == "jax":
    from kzoo.blocks.backend.jax import (PARTITIONS, fill_constant, fill_normal,  # noqa: F401
                                         gather_rows, mark_row_sparse, run_by_domain)
else:
    from kzoo.blocks.backend.generic import (PARTITIONS, fill_constant, fill_normal,  # noqa: F401
                                             gather_rows, mark_row_sparse, run_by_domain)

__all__ = ["PARTITIONS", "fill_constant", "fill_normal", "gather_rows", "mark_row_sparse", "run_by_domain"]
