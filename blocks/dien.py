"""DIEN (Zhou et al., AAAI 2019): the interest extractor GRU with its auxiliary loss, attention to the
target, and the interest evolving AUGRU, a Keras RNN cell written in `keras.ops`.

Inputs and conventions are those of the other sequence blocks (blocks/sequence.py): [target (batch, d),
history (batch, L, d) right-padded, mask (batch, L)].
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import Block, check_positive_int, shape_list
from kzoo.blocks.registry import register_block
from kzoo.blocks.sequence import _check_number, _check_units, _sequence_shapes, _split, masked_softmax


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
