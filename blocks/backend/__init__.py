"""Backend-specific code, one module per Keras backend, chosen once at import.

Blocks call these functions instead of testing `keras.backend.backend()` themselves:

    gather_rows(table, ids)   embedding lookup whose gradient optimizers apply correctly

`generic` holds the `keras.ops` version that is right on JAX and torch (dense gradients);
`tensorflow` overrides what TensorFlow needs done differently.
"""

from __future__ import annotations

import keras

if keras.backend.backend() == "tensorflow":
    from kzoo.blocks.backend.tensorflow import gather_rows  # noqa: F401
else:
    from kzoo.blocks.backend.generic import gather_rows  # noqa: F401

__all__ = ["gather_rows"]
