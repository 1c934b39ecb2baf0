"""User-behaviour sequence blocks: SequencePooling, DIN, DIEN (with its AUGRU cell), BST.

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


# ------------------------------------------------------------------ DIEN
@keras.saving.register_keras_serializable(package="kzoo")
class AUGRUCell(keras.layers.Layer):
    """GRU with attentional update gate (DIEN's interest evolving layer), for `keras.layers.RNN`.

    The input at step t is [x_t, a_t]: the last column is the attention score a_t of the step.

        r = sigmoid(W_r x + U_r h + b_r)          u = sigmoid(W_u x + U_u h + b_u)
        u' = a_t · u                               h~ = tanh(W_h x + r ⊙ (U_h h) + b_h)
        h_new = (1 - u') ⊙ h + u' ⊙ h~

    `kernel` (width, 3·units), `recurrent_kernel` (units, 3·units) and `bias` (3·units,) hold
    the r, u, h parts in that order.

    Args:
        units: int. Size of the state.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        check_positive_int("units", units)
        self.units = units
        self.state_size = units
        self.output_size = units

    def build(self, input_shape):
        width = input_shape[-1] - 1  # the last column is the attention score
        self.kernel = self.add_weight(name="kernel", shape=(width, 3 * self.units), initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(self.units, 3 * self.units),
                                                initializer="orthogonal")
        self.bias = self.add_weight(name="bias", shape=(3 * self.units,), initializer="zeros")

    def call(self, inputs, states, training=None):
        h = states[0] if isinstance(states, (list, tuple)) else states
        u = self.units
        x, a = inputs[:, :-1], inputs[:, -1:]
        xw = ops.matmul(x, self.kernel) + self.bias
        hu = ops.matmul(h, self.recurrent_kernel)
        r = ops.sigmoid(xw[:, :u] + hu[:, :u])
        update = a * ops.sigmoid(xw[:, u:2 * u] + hu[:, u:2 * u])
        candidate = ops.tanh(xw[:, 2 * u:] + r * hu[:, 2 * u:])
        h_new = (1.0 - update) * h + update * candidate
        return h_new, [h_new]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@register_block()
class DIEN(Block):
    """Deep Interest Evolution Network: a GRU over the history, then an attention-gated GRU (AUGRU).

    Interest extractor: h_t = GRU(e_t) over the valid history items e_t (H = `gru_units` or d).
    Auxiliary loss (added with `add_loss`, times `aux_weight`): h_t should tell the next item
    e_{t+1} from a negative e'_{t+1},

        L_aux = mean over valid pairs of [-log σ(z(h_t, e_{t+1})) - log(1 - σ(z(h_t, e'_{t+1})))],

    z an MLP with sigmoid hidden layers `aux_units` and a linear Dense(1). The negative is the
    item at t+1 of ANOTHER row of the batch (the history rolled by one row, as the paper samples
    negatives from the item pool); a pair counts where t, t+1 and the negative's t+1 are all valid
    (with L = 1 there is none, and no loss is added).
    Attention over the valid positions (padding 0): a_t = softmax_t(h_t W t), W (H, d) bilinear as
    in the paper; with `attention_units` a_t = softmax_t(MLP([h_t, q, h_t - q, h_t ⊙ q])), q = W_q t,
    the sigmoid-MLP of the authors' code. Interest evolution: AUGRU (AUGRUCell) over [h_t, a_t];
    the output is its state after the last valid step, (batch, H) (zeros for an empty history).

    Args:
        gru_units: int or None. State size H of both GRUs; None for the embedding width d.
            Defaults to None.
        attention_units: list of int or None. Hidden sigmoid layers of an MLP attention; None
            for the paper's bilinear h_t W t. Defaults to None.
        aux_weight: float. Weight of the auxiliary loss; 0 for none. Defaults to `1.0`.
        aux_units: list of int. Hidden sigmoid layers of the auxiliary network. Defaults to `(100, 50)`.

    Example:
    ```python
    dien = DIEN(gru_units=6, aux_units=[8])
    dien([np.ones((2, 4)), np.ones((2, 5, 4)), np.ones((2, 5))]).shape  # (2, 6)
    ```

    Inputs: [target (batch, d), history (batch, L, d), mask (batch, L)].

    Reference: G. Zhou et al. "Deep Interest Evolution Network for Click-Through Rate
    Prediction." AAAI 2019. https://arxiv.org/abs/1809.03672
    """

    arity = (3, 3)

    def __init__(self, gru_units: int | None = None, attention_units: list | None = None, aux_weight: float = 1.0,
                 aux_units: list = (100, 50), **kwargs):
        super().__init__(**kwargs)
        check_positive_int("gru_units", gru_units, allow_none=True)
        self.gru_units = gru_units
        self.attention_units = (None if attention_units is None
                                else _check_units("attention_units", attention_units, allow_empty=True))
        self.aux_weight = _check_number("aux_weight", aux_weight)
        self.aux_units = _check_units("aux_units", aux_units, allow_empty=True)
        policy = self.dtype_policy
        self.aux_net = [keras.layers.Dense(u, activation="sigmoid", name=f"aux_dense_{i}", dtype=policy)
                        for i, u in enumerate(self.aux_units)]
        self.aux_net.append(keras.layers.Dense(1, name="aux_logit", dtype=policy))
        self.attention_net = None
        if self.attention_units is not None:
            self.attention_net = [keras.layers.Dense(u, activation="sigmoid", name=f"attention_dense_{i}", dtype=policy)
                                  for i, u in enumerate(self.attention_units)]
            self.attention_net.append(keras.layers.Dense(1, name="attention_score", dtype=policy))

    def build(self, input_shape):
        shapes = _sequence_shapes(self, input_shape, ["target", "history", "mask"])
        _, length, dim = shapes["history"]
        units = self.gru_units or dim
        policy = self.dtype_policy
        self.gru = keras.layers.GRU(units, return_sequences=True, name="gru", dtype=policy)
        self.gru.build((None, length, dim))
        if self.attention_net is None:
            self.attention_kernel = self.add_weight(name="attention_kernel", shape=(units, dim),
                                                    initializer="glorot_uniform")
            self.attention_query = None
        else:
            self.attention_query = keras.layers.Dense(units, name="attention_query", dtype=policy)
            self.attention_query.build((None, dim))
            shape = (None, length, 4 * units)
            for dense in self.attention_net:
                dense.build(shape)
                shape = (None, length, dense.units)
        self.augru = keras.layers.RNN(AUGRUCell(units, name="augru_cell", dtype=policy), name="augru", dtype=policy)
        self.augru.build((None, length, units + 1))
        shape = (None, max(length - 1, 1), units + dim)
        for dense in self.aux_net:
            dense.build(shape)
            shape = (None, shape[1], dense.units)

    def _scores(self, states, target):
        """(batch, L) attention logits of the GRU states for the target."""
        if self.attention_query is None:
            wt = ops.matmul(target, ops.transpose(ops.cast(self.attention_kernel, target.dtype)))  # W t: (batch, H)
            return ops.sum(states * ops.expand_dims(wt, 1), axis=-1)
        q = ops.expand_dims(self.attention_query(target), 1) * ops.ones_like(states[..., :1])
        x = ops.concatenate([states, q, states - q, states * q], axis=-1)
        for dense in self.attention_net:
            x = dense(x)
        return ops.squeeze(x, -1)

    def _aux_logits(self, states, items):
        x = ops.concatenate([states, items], axis=-1)
        for dense in self.aux_net:
            x = dense(x)
        return ops.cast(ops.squeeze(x, -1), "float32")

    def _aux_loss(self, states, history, mask):
        """Mean BCE of (h_t, e_{t+1}) as positive and (h_t, e'_{t+1}) as negative over valid pairs."""
        negatives = ops.roll(history, 1, axis=0)
        mask = ops.cast(mask, "float32")
        pairs = mask[:, :-1] * mask[:, 1:] * ops.roll(mask, 1, axis=0)[:, 1:]
        positive = self._aux_logits(states[:, :-1], history[:, 1:])
        negative = self._aux_logits(states[:, :-1], negatives[:, 1:])
        bce = ops.softplus(-positive) + ops.softplus(negative)  # -log σ(z+) - log(1 - σ(z-))
        return ops.sum(bce * pairs) / ops.maximum(ops.sum(pairs), 1.0)

    def call(self, inputs, training=None):
        x = _split(self, inputs, ["target", "history", "mask"])
        target, history, mask = x["target"], x["history"], x["mask"]
        length = history.shape[1]
        # cuDNN's GRU (TF on a GPU) rejects zero-length sequences, so the extractor always runs the
        # first step; an empty history's state there gets no attention, no aux pair, no AUGRU step.
        first = ops.convert_to_tensor([1.0] + [0.0] * (length - 1), dtype=mask.dtype)
        states = self.gru(history, mask=ops.greater(ops.maximum(mask, first), 0), training=training)
        if self.aux_weight and length >= 2:
            self.add_loss(self.aux_weight * self._aux_loss(states, history, mask))
        a = masked_softmax(self._scores(states, target), mask)
        evolving = ops.concatenate([states, ops.expand_dims(a, -1)], axis=-1)
        return self.augru(evolving, mask=ops.greater(mask, 0), training=training)

    def compute_output_shape(self, input_shape):
        history = shape_list(input_shape)[1]
        return (history[0], self.gru_units or history[2])

    def get_config(self):
        return {**super().get_config(), "gru_units": self.gru_units, "attention_units": self.attention_units,
                "aux_weight": self.aux_weight, "aux_units": self.aux_units}


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
