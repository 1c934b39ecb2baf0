"""What an export checks before and while it serves: the request guards inside the serving graph,
and the warmup replay that decides whether a written version is published.

    guard_inputs(raw)      in the graph: +-inf, a non-vector input, inputs of different lengths ->
                           INVALID_ARGUMENT naming the input (and the row)
    guard_outputs(out)     in the graph: a non-finite served score fails the request, never a silent NaN
    replay_warmup(folder, final, endpoint)   replay the written warmup requests with TF Serving's checks
                           on the written serving function; WarmupFailed (not published) if one fails
                           or scores non-finite

TensorFlow only (the exporting process, or the SavedModel's own graph).
"""

from __future__ import annotations

from pathlib import Path

from kzoo.errors import DataError


class WarmupFailed(DataError):
    """The just-written version failed its own warmup (a request refused, or a non-finite score): it is
    not published. A DataError, so the CLI prints it in one line."""


def guard_inputs(raw: dict) -> dict:
    """In the serving graph, before the preprocessing: refuse (INVALID_ARGUMENT, naming the input) what
    would otherwise give a silent saturated score or an op error deep in the model: ±inf in a float
    input (training refuses it too; NaN is the missing value), an input that is not one value per row,
    inputs of different lengths. TF Serving checks the dtypes but not the shapes. The inputs come back
    behind the checks, so no op of the model runs (and fails first, less clearly) before they pass.
    Three assertions for all the inputs, the failing input's name picked in the graph. (Names are not
    quoted: TensorFlow escapes quotes in an assertion's message.)"""
    import tensorflow as tf

    names = sorted(raw)
    first = tf.stack([tf.shape(raw[n], out_type=tf.int64)[0] for n in names])
    sizes = tf.stack([tf.size(raw[n], out_type=tf.int64) for n in names])
    not_vector = tf.not_equal(sizes, first)
    checks = [tf.debugging.Assert(tf.reduce_all(tf.logical_not(not_vector)), [
                  "input", _first(names, not_vector), ": one value per row expected (a vector; a sequence is one "
                  "string of its items joined by its separator), got", _first(sizes, not_vector), "values for",
                  _first(first, not_vector), "rows"]),
              tf.debugging.Assert(tf.reduce_all(tf.equal(first, first[0])), [
                  f"inputs have different numbers of rows: {names[0]} has", tf.cast(first[0], tf.int32), "and",
                  _first(names, tf.not_equal(first, first[0])), _first(first, tf.not_equal(first, first[0]))])]
    floats = [n for n in names if raw[n].dtype.is_floating]
    if floats:
        big = tf.constant(2**62, tf.int64)
        rows = tf.stack([tf.reduce_min(tf.where(tf.math.is_inf(raw[n]), tf.range(tf.size(raw[n], out_type=tf.int64)),
                                                big)) for n in floats])
        # reduce_min of an empty input is the int64 maximum: >= big, so an empty batch passes
        checks.append(tf.debugging.Assert(tf.reduce_all(rows >= big), [
            "input", _first(floats, rows < big), ": +-inf at row index", _first(rows, rows < big),
            "(0-based); send NaN for a missing value (training refuses inf as well)"]))
    with tf.control_dependencies(checks):
        return {name: tf.identity(x) for name, x in raw.items()}


def _first(values, where):
    """The first of `values` (a list of names or a tensor) where `where` holds, as a string or int32 tensor
    for a message: with only those in its data, tf.debugging.Assert is one op, not a cond around one
    (which cost more: docs/benchmarks.md, Export checks)."""
    import tensorflow as tf

    index = tf.argmax(tf.cast(where, tf.int32))  # 0 when none holds: the message is not shown then
    if isinstance(values, list):
        return tf.gather(tf.constant(values), index)
    return tf.cast(tf.minimum(tf.gather(values, index), 2**31 - 1), tf.int32)


def guard_outputs(out: dict) -> dict:
    """No silent NaN: a non-finite served score (a value beyond float32 in the model, damaged weights)
    fails the request naming the output and the row, rather than reaching a bidder."""
    import tensorflow as tf

    checks = []
    for name, value in out.items():
        if value.dtype.is_floating:
            bad = tf.logical_not(tf.math.is_finite(value))
            checks.append(tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [
                f"output {name} is not finite at row index", tf.cast(tf.where(bad)[:1, 0], tf.int32),
                "(0-based): an input value far outside the training data, or damaged weights"]))
    with tf.control_dependencies(checks):
        return {name: tf.identity(value) for name, value in out.items()}


def replay_warmup(folder: Path, final: Path, endpoint=None) -> int:
    """Replay the warmup requests written to `folder` (assets.extra/tf_serving_warmup_requests) with TF
    Serving's checks against the written SignatureDef (kzoo.serving.testing_server), and raise
    WarmupFailed, so that `final` is never published, if one is refused or answers a non-finite score.
    Returns the number of requests.

    `endpoint` (the traced serving function the archive has just written, called with the inputs as
    one dict) runs them in memory; without it the SavedModel is loaded from `folder` as TF Serving
    loads a version (4-6x the cost of the replay in memory: docs/benchmarks.md, Export checks)."""
    import numpy as np
    import tensorflow as tf

    from kzoo.serving.testing_server import LoadedModel

    functions = None if endpoint is None else {"serving_default": lambda **inputs: endpoint(inputs)}
    try:
        loaded = LoadedModel(folder.parent, "kzoo", path=folder, functions=functions)
    except RuntimeError as err:
        raise WarmupFailed(f"{final} not published: its warmup request failed on the written SavedModel "
                           f"({' '.join(str(err).split())})") from None
    for i, response in enumerate(loaded.warmup_responses):
        for name, proto in sorted(response.outputs.items()):
            values = tf.make_ndarray(proto)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise WarmupFailed(f"{final} not published: warmup request {i + 1} gives non-finite {name!r} "
                                   f"at row index {int(np.flatnonzero(~np.isfinite(values.reshape(-1)))[0])}")
    return loaded.warmup_replayed
