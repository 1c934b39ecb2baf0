"""Multi-task blocks: SharedBottom and MMoE, and the gates and base class PLE / CGC (kzoo.blocks.ple)
build on. Each returns {task: representation}.

A spec wires one output per task tower or head as "block.task", e.g. `"input": "mmoe.ctr"`;
the three share `output_names` (their `tasks`), so a spec swaps one for another by its type.
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import Block, check_fraction, check_positive_int, flat_width, flatten_2d
from kzoo.blocks.core import MLP
from kzoo.blocks.registry import register_block

ENTROPY_DIRECTIONS = ("balanced", "sparse")


def _check_tasks(tasks) -> list[str]:
    if tasks is None:
        raise ValueError('`tasks` is required: the list of output names, e.g. ["ctr", "cvr"]')
    if not isinstance(tasks, (list, tuple)) or not tasks:
        raise ValueError(f'`tasks` must be a non-empty list of output names, e.g. ["ctr", "cvr"], received {tasks!r}')
    for t in tasks:
        if not isinstance(t, str) or not t:
            raise ValueError(f"`tasks` must hold non-empty strings, received {tasks!r}")
    duplicates = sorted({t for t in tasks if list(tasks).count(t) > 1})
    if duplicates:
        raise ValueError(f"`tasks` names {duplicates} more than once, received {tasks!r}")
    return list(tasks)


def _check_units(name: str, units, allow_none: bool = False) -> None:
    if units is None and allow_none:
        return
    if not isinstance(units, (list, tuple)) or not units:
        hint = " (null for a linear gate)" if allow_none else ""
        raise ValueError(f"`{name}` must be a non-empty list of positive ints{hint}, received {units!r}")
    for u in units:
        if not isinstance(u, int) or isinstance(u, bool) or u <= 0:
            raise ValueError(f"`{name}` must be a list of positive ints, received {units!r}")


def _check_gating(task_embedding_dim, entropy_weight, entropy_direction, dropout) -> None:
    if not isinstance(task_embedding_dim, int) or isinstance(task_embedding_dim, bool) or task_embedding_dim < 0:
        raise ValueError(f"`task_embedding_dim` must be an integer >= 0, received {task_embedding_dim!r}")
    if not isinstance(entropy_weight, (int, float)) or isinstance(entropy_weight, bool) or entropy_weight < 0:
        raise ValueError(f"`entropy_weight` must be a number >= 0, received {entropy_weight!r}")
    if entropy_direction not in ENTROPY_DIRECTIONS:
        raise ValueError(f"`entropy_direction` must be 'balanced' or 'sparse', received {entropy_direction!r}")
    check_fraction("dropout", dropout)


def _mix(logits, experts):
    """sum_i softmax(logits)_i · experts[:, i]: (batch, n), (batch, n, units) -> (batch, units)."""
    return ops.sum(ops.expand_dims(ops.softmax(logits, axis=-1), -1) * experts, axis=1)


class Gate(keras.layers.Layer):
    """A gate's logits over `experts` experts: W x + b, through hidden ReLU layers `units` if given."""

    def __init__(self, experts: int, units: list | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hidden = MLP(units, name="hidden", dtype=self.dtype_policy) if units else None
        self.logits = keras.layers.Dense(experts, name="logits", dtype=self.dtype_policy)

    def _build_network(self, width: int) -> None:
        if self.hidden is not None:
            self.hidden.build((None, width))
            width = self.hidden.units[-1]
        self.logits.build((None, width))

    def build(self, input_shape):
        self._build_network(input_shape[-1])

    def _network(self, x):
        return self.logits(self.hidden(x) if self.hidden is not None else x)

    def call(self, x):
        return self._network(x)


class TaskConditionedGate(Gate):
    """ONE gate network G shared by `tasks` tasks, told apart by a learned task embedding:
    task k's logits are G([x_k; e_k]), e_k row k of the (tasks, task_embedding_dim) table
    `task_embeddings`; G is W z + b, through hidden ReLU layers `units` if given.

    Called on a list of `tasks` inputs (task k's input x_k, all of one width), it returns the
    list of their logits. Its parameters do not grow with the number of tasks, the table aside."""

    def __init__(self, experts: int, tasks: int, task_embedding_dim: int, units: list | None = None, **kwargs):
        super().__init__(experts, units, **kwargs)
        self.num_tasks = tasks
        self.task_embedding_dim = task_embedding_dim

    def build(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple)):
            input_shape = input_shape[0]  # one shape per task, all of one width
        self.task_embeddings = self.add_weight(name="task_embeddings",
                                               shape=(self.num_tasks, self.task_embedding_dim),
                                               initializer=keras.initializers.RandomNormal(stddev=0.05))
        self._build_network(input_shape[-1] + self.task_embedding_dim)

    def call(self, inputs):
        table = ops.cast(self.task_embeddings, inputs[0].dtype)
        return [self._network(ops.concatenate([x, ops.ones_like(x[:, :1]) * table[k]], axis=-1))
                for k, x in enumerate(inputs)]


def _task_gates(block, experts: int, per_task_name: str):
    """(shared task-conditioned gate or None, per-task gates or []) for `block`'s tasks: one
    TaskConditionedGate "task_gate" when `task_embedding_dim` > 0, else one Gate per task
    named per_task_name.format(k) (layer names cannot hold every task name, e.g. one with a "/")."""
    n = len(block.tasks)
    if block.task_embedding_dim:
        return TaskConditionedGate(experts, n, block.task_embedding_dim, block.gate_units, name="task_gate",
                                   dtype=block.dtype_policy), []
    return None, [Gate(experts, block.gate_units, name=per_task_name.format(k), dtype=block.dtype_policy)
                  for k in range(n)]


def _task_logits(task_gate, per_task_gates: list, task_inputs: list) -> list:
    """Every task's gate logits, task k's from its input task_inputs[k]: by the one
    task-conditioned `task_gate` if there is one, else by task k's own gate."""
    if task_gate is not None:
        return task_gate(list(task_inputs))
    return [gate(x) for gate, x in zip(per_task_gates, task_inputs)]


class MultiTaskBlock(Block):
    """Base of the multi-task blocks: one output per name in `tasks`, the gate-entropy penalty."""

    @classmethod
    def output_names(cls, args: dict) -> list[str]:
        return _check_tasks(args.get("tasks") if isinstance(args, dict) else None)

    def _experts(self, name: str, count: int) -> list:
        return [MLP(self.expert_units, dropout=self.dropout, name=f"{name}_{i}", dtype=self.dtype_policy)
                for i in range(count)]

    def _stack(self, experts: list, x, training=None):
        """(batch, len(experts), units); dropout also after each expert's last layer."""
        out = ops.stack([e(x, training=training) for e in experts], axis=1)
        return self.expert_dropout(out, training=training) if self.expert_dropout is not None else out

    def _add_entropy_loss(self, logits: list) -> None:
        """∓ entropy_weight · mean over the batch and the gates of H(g) = -sum_i g_i log g_i."""
        if not self.entropy_weight:
            return
        entropies = []
        for z in logits:
            z = ops.cast(z, "float32")  # log of bfloat16 probabilities would be coarse
            entropies.append(ops.mean(-ops.sum(ops.softmax(z, axis=-1) * ops.log_softmax(z, axis=-1), axis=-1)))
        sign = -1.0 if self.entropy_direction == "balanced" else 1.0
        self.add_loss(sign * self.entropy_weight * ops.mean(ops.stack(entropies)))

    def compute_output_shape(self, input_shape):
        return {t: (input_shape[0], self.width) for t in self.tasks}


@register_block()
class SharedBottom(MultiTaskBlock):
    """Shared-bottom multi-task: one MLP whose output is every task's input.

        h = MLP(x),   out_k = h   for every task k

    The baseline the gated blocks improve on; it returns the same {task: tensor} outputs as
    MMoE, so a spec swaps one for the other by changing the block's type. Dropout follows every
    layer, the last included (as MMoE's experts). Inputs of rank > 2 are flattened.

    Args:
        tasks: list of str. Output names, e.g. `["ctr", "cvr"]`; a spec reads "block.ctr".
        units: list of int. Widths of the shared MLP's layers.
        activation: str. Keras activation of every layer. Defaults to `"relu"`.
        dropout: float. Dropout rate after each layer. Defaults to `0.0`.

    Example:
    ```python
    SharedBottom(tasks=["ctr", "cvr"], units=[16, 8])(np.ones((2, 4, 3)))["cvr"].shape  # (2, 8)
    ```

    Reference: R. Caruana. "Multitask Learning." Machine Learning 28, 1997.
    """

    def __init__(self, tasks: list, units: list, activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.tasks = _check_tasks(tasks)
        _check_units("units", units)
        try:
            keras.activations.get(activation)
        except (ValueError, TypeError):
            raise ValueError(f"`activation` must be a Keras activation name, received {activation!r}") from None
        check_fraction("dropout", dropout)
        self.units = list(units)
        self.activation = activation
        self.dropout = float(dropout)
        self.width = self.units[-1]
        self.bottom = MLP(self.units, activation=activation, dropout=self.dropout, name="bottom",
                          dtype=self.dtype_policy)
        self.expert_dropout = keras.layers.Dropout(self.dropout, name="dropout") if self.dropout else None

    def build(self, input_shape):
        self.bottom.build((None, flat_width(input_shape)))

    def call(self, inputs, training=None):
        h = self.bottom(flatten_2d(inputs), training=training)
        if self.expert_dropout is not None:
            h = self.expert_dropout(h, training=training)
        return {t: h for t in self.tasks}

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "units": self.units, "activation": self.activation,
                "dropout": self.dropout}


@register_block()
class MMoE(MultiTaskBlock):
    """Multi-gate Mixture-of-Experts: shared experts, one softmax gate per task.

    With experts f_1..f_n (each an MLP with ReLU layers `expert_units`) and, per task k, a gate

        g_k(x) = softmax(W_k x + b_k)                   (linear gate, `gate_units` null)
        g_k(x) = softmax(W_k MLP_k(x) + b_k)            (ReLU hidden layers `gate_units`)
        g_k(x) = softmax(G([x; e_k]))                   (task-conditioned, `task_embedding_dim` > 0)

    task k's output is  out_k = sum_i g_k,i(x) · f_i(x),  shape (batch, expert_units[-1]).
    Task-conditioned gating replaces the per-task gates by ONE gate network G shared by every
    task, G(z) = W z + b (or W MLP(z) + b with `gate_units`), which tells the tasks apart by
    e_k, row k of a learned (tasks, `task_embedding_dim`) table. The gate's parameters are
    shared across tasks (their number does not grow with the tasks, the table aside) and the
    embedding is what conditions it: tasks with equal embeddings get equal gates. (A task
    embedding fed to a gate of the task's own would add nothing: W_k [x; e_k] = W_k,x x +
    W_k,e e_k, a learned bias.) With `task_embedding_dim` 0 each task has its own gate, as above.
    Inputs of rank > 2 are flattened.

    With `entropy_weight` w > 0 the block adds a loss on the gates' entropy
    H(g) = -sum_i g_i log g_i, averaged over the batch and the tasks:
    `"balanced"` adds -w · mean H (rewards using the experts evenly; counters the collapse of
    every gate onto one expert), `"sparse"` adds +w · mean H (rewards gates that pick few experts).

    `gates(x)` gives {task: (batch, experts)} gate weights, `expert_outputs(x)` the experts'
    outputs (batch, experts, units), for an input `x` of the block.

    Args:
        tasks: list of str. Output names, one gate each, e.g. `["ctr", "cvr"]`; a spec reads "block.ctr".
        experts: int. Number of shared experts.
        expert_units: list of int. Widths of each expert's layers.
        gate_units: list of int or None. Hidden ReLU layers of each gate (of the shared gate
            network G when task-conditioned); None for a linear gate. Defaults to None.
        task_embedding_dim: int. Size of the task embeddings e_k of the one shared,
            task-conditioned gate network; 0 for one gate per task. Defaults to `0`.
        entropy_weight: float. Weight w of the gate-entropy loss; 0 for none. Defaults to `0.0`.
        entropy_direction: str. `"balanced"` (-w · mean entropy) or `"sparse"` (+w · mean
            entropy). Defaults to `"balanced"`.
        dropout: float. Dropout rate after each expert layer, the last included. Defaults to `0.0`.

    Example:
    ```python
    mmoe = MMoE(tasks=["ctr", "cvr"], experts=4, expert_units=[16])
    mmoe(np.ones((2, 4, 3)))["ctr"].shape  # (2, 16)
    mmoe.gates(np.ones((2, 4, 3)))["cvr"].shape  # (2, 4)
    ```

    Reference: J. Ma, Z. Zhao, X. Yi, J. Chen, L. Hong, E. H. Chi. "Modeling Task Relationships
    in Multi-task Learning with Multi-gate Mixture-of-Experts." KDD 2018.
    https://doi.org/10.1145/3219819.3220007
    """

    def __init__(self, tasks: list, experts: int, expert_units: list, gate_units: list | None = None,
                 task_embedding_dim: int = 0, entropy_weight: float = 0.0, entropy_direction: str = "balanced",
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.tasks = _check_tasks(tasks)
        check_positive_int("experts", experts)
        _check_units("expert_units", expert_units)
        _check_units("gate_units", gate_units, allow_none=True)
        _check_gating(task_embedding_dim, entropy_weight, entropy_direction, dropout)
        self.num_experts = experts
        self.expert_units = list(expert_units)
        self.gate_units = list(gate_units) if gate_units is not None else None
        self.task_embedding_dim = task_embedding_dim
        self.entropy_weight = float(entropy_weight)
        self.entropy_direction = entropy_direction
        self.dropout = float(dropout)
        self.width = self.expert_units[-1]
        self.experts = self._experts("expert", experts)
        # One gate network "task_gate" shared by the tasks (task_embedding_dim > 0), else gate_k for tasks[k].
        self.task_gate, self.task_gates = _task_gates(self, experts, "gate_{}")
        self.expert_dropout = keras.layers.Dropout(self.dropout, name="dropout") if self.dropout else None

    def build(self, input_shape):
        shape = (None, flat_width(input_shape))
        for layer in self.experts + self.task_gates + [self.task_gate]:
            if layer is not None:
                layer.build(shape)

    def call(self, inputs, training=None):
        x = flatten_2d(inputs)
        experts = self._stack(self.experts, x, training)
        logits = _task_logits(self.task_gate, self.task_gates, [x] * len(self.tasks))
        self._add_entropy_loss(logits)
        return {t: _mix(z, experts) for t, z in zip(self.tasks, logits)}

    def _input(self, x):
        x = ops.convert_to_tensor(x)
        if not self.built:
            self.build(tuple(x.shape))
        return flatten_2d(ops.cast(x, self.compute_dtype))

    def gates(self, x) -> dict:
        """{task: (batch, experts) softmax gate weights} for the block's input `x`."""
        logits = _task_logits(self.task_gate, self.task_gates, [self._input(x)] * len(self.tasks))
        return {t: ops.softmax(z, axis=-1) for t, z in zip(self.tasks, logits)}

    def expert_outputs(self, x):
        """(batch, experts, expert_units[-1]): every expert's output for the block's input `x`."""
        return self._stack(self.experts, self._input(x), training=False)

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "experts": self.num_experts,
                "expert_units": self.expert_units, "gate_units": self.gate_units,
                "task_embedding_dim": self.task_embedding_dim, "entropy_weight": self.entropy_weight,
                "entropy_direction": self.entropy_direction, "dropout": self.dropout}
