"""User-behaviour sequence blocks: SequencePooling, DIN, BST (DIEN and its AUGRU cell: blocks/dien.py).

Every block reads a behaviour history as `history` (batch, L, d), right-padded (valid
positions first), with `mask` (batch, L) of 1.0 (valid) / 0.0 (padding); DIN, DIEN and BST
also read the candidate item `target` (batch, d). Inputs come in the order
[target, history, mask] ([history, mask] for SequencePooling). Padded positions never reach
an output, and an empty history (all padding) gives finite outputs.
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.activations import Dice
from kzoo.blocks.core import masked_pool
from kzoo.blocks.base import Block, as_list, check_fraction, check_positive_int, shape_list
from kzoo.blocks.registry import register_block

POOLING_MODES = ("mean", "sum", "max")
BST_POOLINGS = ("flatten", "target", "mean")


# ------------------------------------------------------------------ shared helpers
def _check_units(name: str, units, allow_empty: bool = False) -> list:
    if not isinstance(units, (list, tuple)) or (not units and not allow_empty):
        raise ValueError(f"`{name}` must be a {'' if allow_empty else 'non-empty '}list of positive ints, "
                         f"received {units!r}")
    for u in units:
        if not isinstance(u, int) or isinstance(u, bool) or u <= 0:
            raise ValueError(f"`{name}` must be a list of positive ints, received {units!r}")
    return list(units)


def _check_activation(activation, allow_dice: bool = False) -> None:
    if allow_dice and activation == "dice":
        return
    try:
        if not isinstance(activation, str):
            raise TypeError
        keras.activations.get(activation)
    except (ValueError, TypeError):
        dice = "'dice' or " if allow_dice else ""
        raise ValueError(f"`activation` must be {dice}a Keras activation name, received {activation!r}") from None


def _check_number(name: str, value, low: float = 0.0) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}` must be a number >= {low}, received {value!r}")
    return float(value)


def _sequence_shapes(block, input_shape, names: list[str]) -> dict:
    """{input name: shape}, after checking the count, ranks and agreeing sizes of the inputs."""
    shapes = shape_list(input_shape)
    lo, hi = block.arity
    if not lo <= len(shapes) <= hi:
        raise ValueError(f"{type(block).__name__} takes the inputs [{', '.join(names[:hi])}]"
                         f"{' (the last optional)' if lo < hi else ''}, received {len(shapes)}: {shapes}")
    got = dict(zip(names, shapes))
    ranks = {"target": 2, "history": 3, "mask": 2, "context": 3}
    for name, shape in got.items():
        if len(shape) != ranks[name]:
            raise ValueError(f"{type(block).__name__}: `{name}` must have rank {ranks[name]}, received shape {shape}")
    length, dim = got["history"][1], got["history"][2]
    if length is None or dim is None:
        raise ValueError(f"{type(block).__name__}: `history` needs a static length and width, received shape "
                         f"{got['history']}")
    if got["mask"][1] != length:
        raise ValueError(f"{type(block).__name__}: `mask` {got['mask']} must have the history's length {length} "
                         f"(history {got['history']})")
    if "target" in got and got["target"][1] != dim:
        raise ValueError(f"{type(block).__name__}: `target` {got['target']} and `history` {got['history']} "
                         "must have one embedding width; embed them in one table or project one")
    if "context" in got and got["context"][1] != length:
        raise ValueError(f"{type(block).__name__}: `context` {got['context']} must have the history's length "
                         f"{length}")
    return got


def masked_softmax(scores, mask):
    """softmax of (batch, L) `scores` over the positions where `mask` > 0; padding gets 0, and a
    row without a valid position all zeros (not NaN)."""
    valid = ops.greater(mask, 0)
    # The row's max over valid positions; padded scores are replaced by the row's minimum, which
    # never wins, so no large constant is needed (it would overflow float16).
    floor = ops.min(scores, axis=-1, keepdims=True)
    top = ops.max(ops.where(valid, scores, floor), axis=-1, keepdims=True)
    zeros = ops.zeros_like(scores)
    e = ops.where(valid, ops.exp(ops.where(valid, scores - top, zeros)), zeros)
    total = ops.sum(e, axis=-1, keepdims=True)
    return e / ops.where(ops.greater(total, 0), total, ops.ones_like(total))


def _split(block, inputs, names):
    xs = as_list(inputs)
    return dict(zip(names, [ops.cast(x, block.compute_dtype) for x in xs]))


# ------------------------------------------------------------------ SequencePooling
@register_block()
class SequencePooling(Block):
    """Pools a behaviour history over its valid positions: output (batch, d).

        mean: sum_i m_i h_i / sum_i m_i     sum: sum_i m_i h_i     max: max_{i: m_i = 1} h_i

    (the pooling of YouTube DNN and of DIN's base model). Mean and max of an empty history are zeros.

    Args:
        mode: str. `"mean"`, `"sum"` or `"max"`. Defaults to `"mean"`.

    Example:
    ```python
    SequencePooling("max")([np.ones((2, 5, 4)), np.ones((2, 5))]).shape  # (2, 4)
    ```

    Inputs: [history (batch, L, d), mask (batch, L)].
    """

    arity = (2, 2)

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in POOLING_MODES:
            raise ValueError(f"`mode` must be one of {list(POOLING_MODES)}, received {mode!r}")
        self.mode = mode

    def build(self, input_shape):
        _sequence_shapes(self, input_shape, ["history", "mask"])

    def call(self, inputs):
        x = _split(self, inputs, ["history", "mask"])
        history, mask = x["history"], ops.expand_dims(x["mask"], -1)
        if self.mode == "max":
            valid = ops.greater(mask, 0)
            # Padded values become the row's minimum, which never exceeds a valid one.
            filled = ops.where(valid, history, ops.min(history, axis=1, keepdims=True))
            return ops.where(ops.any(valid, axis=1), ops.max(filled, axis=1), ops.zeros_like(history[:, 0]))
        return masked_pool(history, x["mask"], self.mode)

    def compute_output_shape(self, input_shape):
        history = shape_list(input_shape)[0]
        return (history[0], history[2])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


# ------------------------------------------------------------------ DIN
@register_block()
class DIN(Block):
    """Deep Interest Network's local activation unit: the history pooled by its relevance to the target.

    For each history item h_i and the target t,

        score_i = MLP([h_i, t, h_i - t, h_i ⊙ t])       (hidden Dense -> activation, then a linear Dense(1))
        w_i = score_i · m_i                              (softmax=False: not normalised, as in the paper)
        w = softmax over the valid positions of score   (softmax=True; padding 0, an empty history all 0)
        out = sum_i w_i h_i,                             shape (batch, d)

    `attention(target, history, mask)` returns the (batch, L) weights w.

    Args:
        units: list of int. Hidden layers of the activation unit. Defaults to `(80, 40)`.
        activation: str. `"dice"` (the paper's Dice, batch statistics over valid positions) or a
            Keras activation name. Defaults to `"dice"`.
        softmax: bool. Normalise the weights by a softmax over valid positions. Defaults to `False`.

    Example:
    ```python
    din = DIN(units=[8, 4])
    din([np.ones((2, 4)), np.ones((2, 5, 4)), np.ones((2, 5))]).shape  # (2, 4)
    ```

    Inputs: [target (batch, d), history (batch, L, d), mask (batch, L)].

    Reference: G. Zhou et al. "Deep Interest Network for Click-Through Rate Prediction."
    KDD 2018. https://doi.org/10.1145/3219819.3219823
    """

    arity = (3, 3)

    def __init__(self, units: list = (80, 40), activation: str = "dice", softmax: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.units = _check_units("units", units, allow_empty=True)
        _check_activation(activation, allow_dice=True)
        if not isinstance(softmax, bool):
            raise ValueError(f"`softmax` must be true or false, received {softmax!r}")
        self.activation = activation
        self.softmax = softmax
        policy = self.dtype_policy
        self.hidden = [keras.layers.Dense(u, name=f"dense_{i}", dtype=policy) for i, u in enumerate(self.units)]
        self.hidden_activations = [
            Dice(name=f"dice_{i}", dtype=policy) if activation == "dice"
            else keras.layers.Activation(activation, name=f"activation_{i}", dtype=policy)
            for i in range(len(self.units))]
        self.score = keras.layers.Dense(1, name="score", dtype=policy)

    def build(self, input_shape):
        shapes = _sequence_shapes(self, input_shape, ["target", "history", "mask"])
        _, length, dim = shapes["history"]
        shape = (None, length, 4 * dim)
        for dense, act in zip(self.hidden, self.hidden_activations):
            dense.build(shape)
            shape = (None, length, dense.units)
            act.build(shape)
        self.score.build(shape)

    def _attention(self, target, history, mask, training=None):
        # The first layer on [h, t, h - t, h ⊙ t] without building that (batch, L, 4d) input: with its
        # kernel cut in four row blocks W_h, W_t, W_d, W_p,
        #     [h, t, h - t, h ⊙ t] W = h (W_h + W_d) + (h ⊙ t) W_p + t (W_t - W_d)
        # and the t term is computed once per row, not once per position: half the first layer's
        # multiply-adds (the layer that dominates), the same function and the same weights.
        first = self.hidden[0] if self.hidden else self.score
        d = history.shape[-1]
        kernel = ops.cast(first.kernel, history.dtype)
        w_h, w_t, w_d, w_p = kernel[:d], kernel[d:2 * d], kernel[2 * d:3 * d], kernel[3 * d:]
        x = (ops.matmul(history, w_h + w_d) + ops.matmul(history * ops.expand_dims(target, 1), w_p)
             + ops.expand_dims(ops.matmul(target, w_t - w_d) + ops.cast(first.bias, history.dtype), 1))
        for i, act in enumerate(self.hidden_activations):
            if i > 0:
                x = self.hidden[i](x)
            x = act(x, training=training, mask=mask) if isinstance(act, Dice) else act(x)
        scores = ops.squeeze(self.score(x) if self.hidden else x, -1)
        return masked_softmax(scores, mask) if self.softmax else scores * mask

    def attention(self, target, history, mask, training=False):
        """(batch, L) weights w of the history items for this target."""
        x = [ops.cast(ops.convert_to_tensor(v), self.compute_dtype) for v in (target, history, mask)]
        if not self.built:
            self.build([tuple(v.shape) for v in x])
        return self._attention(*x, training=training)

    def call(self, inputs, training=None):
        x = _split(self, inputs, ["target", "history", "mask"])
        w = self._attention(x["target"], x["history"], x["mask"], training=training)
        return ops.sum(ops.expand_dims(w, -1) * x["history"], axis=1)

    def compute_output_shape(self, input_shape):
        history = shape_list(input_shape)[1]
        return (history[0], history[2])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation, "softmax": self.softmax}


# ------------------------------------------------------------------ BST
@register_block()
class BST(Block):
    """Behavior Sequence Transformer: Transformer layers over the history followed by the target.

        S = [h_1, ..., h_L, t] + P  (+ [W_c c_1 + b_c, ..., W_c c_L + b_c, 0] with a `context` input)
        S = LayerNorm(S + Dropout(MultiHeadAttention(S, S)))      (keys: the valid positions and t)
        S = LayerNorm(S + Dropout(W_2 LeakyReLU(W_1 S + b_1) + b_2))   repeated `layers` times

    P is a learned (L+1, d) positional embedding; `context` (batch, L, c), e.g. embeddings of the
    time gap to the target, stands for the paper's position feature. Output by `pooling`:
    `"flatten"` the L+1 outputs concatenated, (batch, (L+1)·d), padded positions zeroed (the
    paper's concatenation); `"target"` the target position's output (batch, d); `"mean"` the mean
    over the valid positions and the target (batch, d).

    Args:
        num_heads: int. Attention heads; each has key size d // num_heads (d if that is 0).
            Defaults to `2`.
        layers: int. Number of Transformer layers. Defaults to `1`.
        ff_units: int or None. Hidden width of the feed-forward network; None for 4·d. Defaults to None.
        dropout: float. Dropout rate after the attention and the feed-forward network. Defaults to `0.0`.
        leaky_alpha: float. Negative slope of the feed-forward LeakyReLU. Defaults to `0.2`.
        pooling: str. `"flatten"`, `"target"` or `"mean"`. Defaults to `"flatten"`.

    Example:
    ```python
    bst = BST(num_heads=2, pooling="target")
    bst([np.ones((2, 4)), np.ones((2, 5, 4)), np.ones((2, 5))]).shape  # (2, 4)
    ```

    Inputs: [target (batch, d), history (batch, L, d), mask (batch, L)] and optionally
    context (batch, L, c).

    Reference: Q. Chen, H. Zhao, W. Li, P. Huang, W. Ou. "Behavior Sequence Transformer for
    E-commerce Recommendation in Alibaba." DLP-KDD 2019. https://arxiv.org/abs/1905.06874
    """

    arity = (3, 4)

    def __init__(self, num_heads: int = 2, layers: int = 1, ff_units: int | None = None, dropout: float = 0.0,
                 leaky_alpha: float = 0.2, pooling: str = "flatten", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("num_heads", num_heads)
        check_positive_int("layers", layers)
        check_positive_int("ff_units", ff_units, allow_none=True)
        check_fraction("dropout", dropout)
        if pooling not in BST_POOLINGS:
            raise ValueError(f"`pooling` must be one of {list(BST_POOLINGS)}, received {pooling!r}")
        self.num_heads = num_heads
        self.num_layers = layers
        self.ff_units = ff_units
        self.dropout = float(dropout)
        self.leaky_alpha = _check_number("leaky_alpha", leaky_alpha)
        self.pooling = pooling

    def build(self, input_shape):
        shapes = _sequence_shapes(self, input_shape, ["target", "history", "mask", "context"])
        _, length, dim = shapes["history"]
        seq = (None, length + 1, dim)
        policy = self.dtype_policy
        self.position_embedding = self.add_weight(name="position_embedding", shape=(length + 1, dim),
                                                  initializer=keras.initializers.RandomNormal(stddev=0.05))
        self.context = None
        if "context" in shapes:
            self.context = keras.layers.Dense(dim, name="context", dtype=policy)
            self.context.build(shapes["context"])
        self.transformer = []
        for i in range(self.num_layers):
            layer = {
                "attention": keras.layers.MultiHeadAttention(self.num_heads, dim // self.num_heads or dim,
                                                             name=f"attention_{i}", dtype=policy),
                "attention_norm": keras.layers.LayerNormalization(name=f"attention_norm_{i}", dtype=policy),
                "ffn_hidden": keras.layers.Dense(self.ff_units or 4 * dim, name=f"ffn_hidden_{i}", dtype=policy),
                "ffn_activation": keras.layers.LeakyReLU(self.leaky_alpha, name=f"ffn_activation_{i}", dtype=policy),
                "ffn_output": keras.layers.Dense(dim, name=f"ffn_output_{i}", dtype=policy),
                "ffn_norm": keras.layers.LayerNormalization(name=f"ffn_norm_{i}", dtype=policy),
                "dropout": keras.layers.Dropout(self.dropout, name=f"dropout_{i}", dtype=policy),
            }
            layer["attention"].build(seq, seq)
            layer["attention_norm"].build(seq)
            layer["ffn_hidden"].build(seq)
            layer["ffn_output"].build((None, length + 1, self.ff_units or 4 * dim))
            layer["ffn_norm"].build(seq)
            self.transformer.append(layer)

    def call(self, inputs, training=None):
        x = _split(self, inputs, ["target", "history", "mask", "context"])
        history, mask = x["history"], x["mask"]
        if self.context is not None:
            history = history + self.context(x["context"])
        s = ops.concatenate([history, ops.expand_dims(x["target"], 1)], axis=1)
        s = s + ops.cast(self.position_embedding, s.dtype)
        keys = ops.concatenate([mask, ops.ones_like(mask[:, :1])], axis=1)  # the target is always valid
        length = s.shape[1]
        attention_mask = ops.greater(ops.expand_dims(keys, 1) * ops.ones_like(s[:, :, :1]), 0)  # (batch, L+1, L+1)
        for layer in self.transformer:
            attended = layer["attention"](s, s, attention_mask=attention_mask, training=training)
            s = layer["attention_norm"](s + layer["dropout"](attended, training=training))
            ffn = layer["ffn_output"](layer["ffn_activation"](layer["ffn_hidden"](s)))
            s = layer["ffn_norm"](s + layer["dropout"](ffn, training=training))
        if self.pooling == "target":
            return s[:, -1]
        keys = ops.expand_dims(keys, -1)
        if self.pooling == "mean":
            return ops.sum(s * keys, axis=1) / ops.sum(keys, axis=1)
        return ops.reshape(s * keys, (-1, length * s.shape[2]))

    def compute_output_shape(self, input_shape):
        _, length, dim = shape_list(input_shape)[1]
        return (None, (length + 1) * dim if self.pooling == "flatten" else dim)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "layers": self.num_layers,
                "ff_units": self.ff_units, "dropout": self.dropout, "leaky_alpha": self.leaky_alpha,
                "pooling": self.pooling}
