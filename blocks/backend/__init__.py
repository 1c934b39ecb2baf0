"""Backend-specific code, one module per Keras backend, chosen once at import.

Blocks call these functions instead of testing `keras.backend.backend()` themselves:

    gather_rows(table, ids)   embedding lookup whose gradient optimizers apply correctly
    run_by_domain(fn, tensors, domain, domains)   each row through its domain's function only
                              where the backend can partition a batch (PARTITIONS)

`generic` holds the `keras.ops` version that is right on JAX and torch (dense gradients);
`tensorflow` overrides what TensorFlow needs done differently.
"""

from __future__ import annotations

import keras

if keras.backend.backend() == "tensorflow":
    from kzoo.blocks.backend.tensorflow import PARTITIONS, gather_rows, run_by_domain  # noqa: F401
else:
    from kzoo.blocks.backend.generic import PARTITIONS, gather_rows, run_by_domain  # noqa: F401

__all__ = ["PARTITIONS", "gather_rows", "run_by_domain"]
