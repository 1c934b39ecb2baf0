"""Shared helpers for blocks: input flattening and argument checks."""

from __future__ import annotations

import keras
from keras import ops


def flatten_2d(x):
    """(B, ...) -> (B, prod(...)); a (B, d) tensor passes through."""
    if len(x.shape) == 2:
        return x
    size = 1
    for d in x.shape[1:]:
        size *= d
    return ops.reshape(x, (-1, size))


def flat_width(shape) -> int:
    """Width of a (batch, ...) shape once flattened to (batch, n)."""
    width = 1
    for d in shape[1:]:
        width *= d
    return width


def shape_list(input_shape) -> list:
    """A list of shapes, whether Keras passed one shape or one per input. (A reloaded model's
    build config gives a single shape as a JSON list, so `isinstance(shape, list)` cannot tell.)"""
    if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
        return [tuple(s) for s in input_shape]
    return [tuple(input_shape)]


def as_list(inputs) -> list:
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"`{name}` must be a positive integer, received {value!r}")


def check_fraction(name: str, value) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1), received {value!r}")


class Block(keras.layers.Layer):
    """Base of every kzoo block.

    `arity` is (min, max) number of inputs the spec may wire in (max None = any);
    `feature_block` marks blocks that read a feature group (`group:NAME`) and receive
    the feature descriptions from the graph builder as their `features` argument.
    `loss_only` marks blocks that return their last input unchanged and only add a loss
    (distillation); the serving graph leaves them out.
    `holds_tables` marks blocks whose weights are embedding tables: `train.embedding_l2` is
    their default `l2`, and `table_variables()` lists the variables `train.embedding_optimizer`
    updates.
    """

    arity: tuple[int, int | None] = (1, 1)
    feature_block: bool = False
    loss_only: bool = False  # adds a training loss; skipped (student input passed on) when exported
    holds_tables: bool = False

    def __init__(self, **kwargs):
        # `quantized` is not a spec argument: a quantized model's config carries it (get_config) so
        # that a reload converts the same sublayers again (load_own_variables).
        quantized = dict(kwargs.pop("quantized", None) or {})
        super().__init__(**kwargs)
        self._quantized_config = quantized

    def get_config(self):
        # Keras serialises a layer's own dtype policy, but the sublayers a block makes in __init__
        # (an MLP's Dense layers) are rebuilt from the block's arguments, in float32. After
        # `model.quantize`, record which of them (by position in _flatten_layers order) are quantized.
        config = super().get_config()
        quantized = {str(i): layer.dtype_policy.name for i, layer in enumerate(self._flatten_layers(include_self=False))
                     if layer.quantization_mode is not None}
        if quantized:
            config["quantized"] = quantized
        return config

    def load_own_variables(self, store):
        # Keras loads a layer's own variables before its sublayers': quantize the recorded sublayers
        # first (setting a built layer's policy to "int8_from_float32" calls its `quantize`), so
        # their stored int8 values and scales load into int8 variables.
        if self._quantized_config:
            sublayers = list(self._flatten_layers(include_self=False))
            for index, policy in self._quantized_config.items():
                if int(index) >= len(sublayers):
                    raise ValueError(f"block '{self.name}': the saved model quantized sublayer {index}, but the block "
                                     f"has {len(sublayers)} sublayers")
                layer = sublayers[int(index)]
                if layer.quantization_mode is None:
                    layer.dtype_policy = policy
        super().load_own_variables(store)

    @classmethod
    def output_names(cls, args: dict) -> list[str] | None:
        """Names of the outputs for these spec `args`, when the block has several (then `call`
        returns {name: tensor} and a spec wires one as "block.name"); None for one output."""
        return None

    def table_variables(self) -> list:
        """This block's own embedding-table variables (sublayers list theirs)."""
        return []
