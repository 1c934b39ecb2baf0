"""Row access for the row-sparse optimizers on TensorFlow (imported on the TensorFlow backend only).

The table's gradient is a tf.IndexedSlices (kzoo.blocks.backend.tensorflow.gather_rows). Rows are read
with ResourceGather and written with ResourceScatterUpdate on the variable itself, so no op reads or
writes the whole table: a dense read of a variable that has been scattered into copies all of it
(TensorFlow's copy-on-read mode for sparsely accessed variables).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def touched(gradient):
    """(distinct rows, their summed gradients) of an IndexedSlices; (None, gradient) for a dense one.

    A row-sparse table is read with a plain ResourceGather (kzoo.blocks.backend.gather_rows), whose
    gradient has one slice per occurrence of a row, and a table looked up by several calls in a batch (a
    categorical and a sequence feature sharing it) gets one slice list per call, concatenated by the
    tape: the slices are summed per row here, once."""
    if not isinstance(gradient, tf.IndexedSlices):
        return None, gradient
    rows, position = tf.unique(gradient.indices)
    return rows, tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])


def _resource(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def gather(variable, rows):
    """Rows `rows` of a (table-shaped) variable, read in place."""
    return tf.gather(_resource(variable), rows)


def scatter(variable, rows, values):
    """variable[rows] = values, in place."""
    _resource(variable).scatter_update(tf.IndexedSlices(tf.cast(values, variable.dtype), rows))
