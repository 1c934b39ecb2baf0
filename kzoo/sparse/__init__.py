"""Row-sparse embedding updates: the optimizer reads and writes only the table rows a batch touches.

A spec turns them on with `train.embedding_optimizer` of a row-sparse type (kzoo.sparse.config):

    {"type": "adagrad" | "sgd" | "lazy_adam" | "ftrl", "learning_rate": ..., <the type's keys>}

    OPTIMIZERS                   {type: its row-sparse Keras optimizer}; kzoo.optim makes the one a
                                 spec names and puts it in a SplitOptimizer for the tables
    row_sparse(model)            a compiled model made ready to fit: on JAX a RowSparseModel around it
                                 (kzoo.sparse.jax_model), whose train step differentiates with respect to
                                 the touched rows only; the model itself on TensorFlow (its gradients of
                                 tables are already row lists) or without a row-sparse optimizer
    SparseSGD, SparseAdagrad, LazyAdam, SparseFtrl    the optimizers (kzoo.sparse.optimizers)

docs/scaling.md, "Sparse embedding updates", has the rules, the measured step times and the caveats.
"""

from __future__ import annotations

import keras

from kzoo.sparse.config import ROW_SPARSE, embedding_optimizer_problems  # noqa: F401
from kzoo.sparse.optimizers import (OPTIMIZERS, LazyAdam, RowSparseOptimizer, SparseAdagrad,  # noqa: F401
                                    SparseFtrl, SparseSGD)

__all__ = ["LazyAdam", "OPTIMIZERS", "ROW_SPARSE", "RowSparseOptimizer", "SparseAdagrad", "SparseFtrl", "SparseSGD",
           "embedding_optimizer_problems", "huge_pages_hint", "row_sparse", "sparse_layers"]


def sparse_layers(model: keras.Model) -> list:
    """The FeatureEmbedding layers of `model` whose table its (Split)optimizer updates row-sparse."""
    from kzoo.blocks.core import FeatureEmbedding

    opt = model.optimizer
    if not isinstance(getattr(opt, "embedding_optimizer", None), RowSparseOptimizer):
        return []
    paths = set(opt.embedding_paths)
    return [layer for layer in model._flatten_layers() if isinstance(layer, FeatureEmbedding)
            and any(v.path in paths for v in layer.table_variables())]


def row_sparse(model: keras.Model) -> keras.Model:
    """`model` (compiled by kzoo.compile) ready to fit with row-sparse table updates: on JAX a
    RowSparseModel sharing its optimizer (fit it; save `.inner`), else `model` itself."""
    if keras.backend.backend() != "jax" or not model.compiled or hasattr(model, "inner"):
        return model  # (a loss-balancing wrapper owns its train step; its dense gradients suit adagrad and sgd)
    layers = sparse_layers(model)
    if not layers:
        return model
    from kzoo.sparse.jax_model import RowSparseModel

    wrapped = RowSparseModel(model, layers)
    config = keras.saving.deserialize_keras_object(model.get_compile_config())  # fresh losses and metrics
    config["optimizer"] = model.optimizer  # one optimizer: its table slots are saved with `model` too
    wrapped.compile(**config)
    return wrapped


HUGE_PAGES_HINT_BYTES = 2 ** 28  # 256 MiB of row-sparse tables


def huge_pages_hint(model: keras.Model, thp_file="/sys/kernel/mm/transparent_hugepage/enabled") -> str | None:
    """A one-line hint when the row-sparse tables are large, this Linux gives transparent huge pages only
    to memory that asks for them ("[madvise]") and GLIBC_TUNABLES does not ask (glibc.malloc.hugetlb=1):
    random row reads then miss the TLB on 4 KiB pages, and on TensorFlow a 10⁷-row step took 1.08-1.29x
    the 10⁵-row one here without the setting and 0.97-1.13x with it (docs/scaling.md). None otherwise."""
    import math
    import os

    inner = getattr(model, "inner", model)
    size = sum(math.prod(v.shape) * 4 for layer in sparse_layers(inner) for v in layer.table_variables())
    if size < HUGE_PAGES_HINT_BYTES or "hugetlb=1" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    try:
        with open(thp_file) as f:
            if "[madvise]" not in f.read():
                return None
    except OSError:
        return None
    return (f"kzoo: the row-sparse tables hold {size / 2 ** 30:.1f} GiB and this machine gives huge pages only on "
            "request: start the process with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for faster row reads "
            "(docs/scaling.md, 'Huge pages')")
