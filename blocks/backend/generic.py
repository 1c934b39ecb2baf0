"""Backend code in plain `keras.ops`: right on JAX and torch, whose gradients are dense."""

from __future__ import annotations

from keras import ops


def gather_rows(table, ids):
    """Rows `ids` of `table`: `ops.take(table, ids, axis=0)`."""
    return ops.take(table, ids, axis=0)


def mark_row_sparse(variable) -> None:
    """Nothing to do here: on JAX kzoo.sparse's train step reads a batch's rows itself."""


PARTITIONS = False  # this backend cannot run a function on a data-dependent subset of rows


def run_by_domain(fn, tensors: list, domain, domains: int) -> dict:
    """{name: (batch, ...)}: row r gets `fn(d, tensors)[name][r]` for its domain d = `domain[r]`.
    Every domain's `fn` runs on the whole batch (static shapes, as JAX needs) and each row keeps its
    own domain's output, so the cost grows with the number of domains."""
    from keras import ops

    onehot = ops.one_hot(domain, domains, dtype=tensors[0].dtype)
    outs = [fn(d, tensors) for d in range(domains)]
    return {k: sum(o[k] * onehot[:, d:d + 1] for d, o in enumerate(outs)) for k in outs[0]}


def fill_normal(variable, stddev: float, seed: int) -> None:
    """variable <- N(0, stddev²) values (a large table's initialisation; see the JAX and TensorFlow versions,
    which fill it in place a block of rows at a time)."""
    import keras

    variable.assign(keras.random.normal(variable.shape, stddev=stddev, seed=seed, dtype=variable.dtype))


def fill_constant(variable, value: float) -> None:
    """variable <- value everywhere."""
    from keras import ops

    variable.assign(ops.full(variable.shape, value, dtype=variable.dtype))
