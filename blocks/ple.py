"""PLE (Progressive Layered Extraction) and CGC, its one-level form: task-specific and shared
experts per level (Tang et al., RecSys 2020). The gates and the multi-task base are in
kzoo.blocks.multitask; like MMoE these return {task: representation}.
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.base import check_positive_int, flat_width, flatten_2d
from kzoo.blocks.multitask import (Gate, MultiTaskBlock, _check_gating, _check_tasks, _check_units, _mix,
                                   _task_gates, _task_logits)
from kzoo.blocks.registry import register_block


class ExtractionLevel(keras.layers.Layer):
    """One PLE level (a CGC): `task_experts` experts per task, `shared_experts` shared ones, a
    gate per task over its own experts then the shared ones (with `task_embedding_dim` > 0 one
    task-conditioned network "task_gate" for every task, else "task_gate_k" for task k) and, with
    `shared_gate`, a gate over every expert (task 0's, task 1's, ..., then the shared ones)
    giving the next shared input."""

    def __init__(self, block: "PLE", shared_gate: bool, **kwargs):
        super().__init__(**kwargs)
        n_tasks, own, shared = len(block.tasks), block.task_experts, block.shared_experts
        self.own_count = own
        self.task_expert_layers = [e for k in range(n_tasks) for e in block._experts(f"task_{k}_expert", own)]
        self.shared_expert_layers = block._experts("shared_expert", shared)
        # Every task gate mixes own + shared experts, so with task_embedding_dim > 0 one network serves them all.
        self.task_gate, self.task_gates = _task_gates(block, own + shared, "task_gate_{}")
        self.shared_gate = (Gate(n_tasks * own + shared, block.gate_units, name="shared_gate",
                                 dtype=block.dtype_policy) if shared_gate else None)

    def build(self, input_shape):
        for layer in (self.task_expert_layers + self.shared_expert_layers + self.task_gates
                      + [self.task_gate, self.shared_gate]):
            if layer is not None:
                layer.build(input_shape)

    def task_logits(self, task_inputs: list) -> list:
        """Task k's gate logits over its own experts then the shared ones, from task_inputs[k]."""
        return _task_logits(self.task_gate, self.task_gates, task_inputs)

    def own_experts(self, k: int) -> list:
        return self.task_expert_layers[k * self.own_count:(k + 1) * self.own_count]


@register_block()
class PLE(MultiTaskBlock):
    """Progressive Layered Extraction: `levels` stacked CGC levels of task and shared experts.

    At level l, task k has `task_experts` experts of its own, E_k, and all tasks share
    `shared_experts` experts, S (each an MLP with ReLU layers `expert_units`). With x_k the
    task-k input and x_s the shared input (both the block's input at level 1):

        y_k = sum_i g_k,i(x_k) · [E_k(x_k); S(x_s)]_i                  g_k over E_k then S
        y_s = sum_i g_s,i(x_s) · [E_1(x_1); ...; E_K(x_K); S(x_s)]_i   (every level but the last)

    and level l+1 reads x_k = y_k, x_s = y_s. The outputs are the last level's y_k, shape
    (batch, expert_units[-1]). Gates are as in MMoE: softmax(W x + b), through ReLU layers
    `gate_units` if given. With `task_embedding_dim` > 0 the task gates are task-conditioned:
    every task gate of a level mixes the same number of experts (`task_experts` +
    `shared_experts`), so one gate network G_l per level serves every task,

        g_k(x_k) = softmax(G_l([x_k; e_k]))        e_k: row k of level l's learned table

    and task k still mixes its own experts E_k and the shared S with those weights. G_l's
    parameters are shared across the tasks (their number does not grow with the tasks, the
    table aside); the embedding is what conditions it. With `task_embedding_dim` 0 each task
    has its own gate. The shared gate g_s has no task and stays a gate of its own.
    Inputs of rank > 2 are flattened.

    The entropy loss (see MMoE) averages over the batch and every gate of every level, shared
    gates included. `gates(x)` gives the last level's task gates, {task: (batch, task_experts
    + shared_experts)}, columns in the order task experts then shared experts;
    `expert_outputs(x)` the experts those gates mix, {task: (batch, task_experts +
    shared_experts, units)}.

    Args:
        tasks: list of str. Output names, e.g. `["ctr", "cvr"]`; a spec reads "block.ctr".
        shared_experts: int. Shared experts per level.
        task_experts: int. Experts of each task per level.
        expert_units: list of int. Widths of each expert's layers.
        levels: int. Number of extraction levels. Defaults to `2`.
        gate_units: list of int or None. As in MMoE. Defaults to None.
        task_embedding_dim: int. As in MMoE. Defaults to `0`.
        entropy_weight: float. As in MMoE. Defaults to `0.0`.
        entropy_direction: str. As in MMoE. Defaults to `"balanced"`.
        dropout: float. As in MMoE. Defaults to `0.0`.

    Example:
    ```python
    PLE(tasks=["ctr", "cvr"], shared_experts=2, task_experts=1, expert_units=[8])(np.ones((2, 6)))["ctr"].shape
    # (2, 8)
    ```

    Reference: H. Tang, J. Liu, M. Zhao, X. Gong. "Progressive Layered Extraction (PLE): A Novel
    Multi-Task Learning (MTL) Model for Personalized Recommendations." RecSys 2020.
    https://doi.org/10.1145/3383313.3412236
    """

    def __init__(self, tasks: list, shared_experts: int, task_experts: int, expert_units: list, levels: int = 2,
                 gate_units: list | None = None, task_embedding_dim: int = 0, entropy_weight: float = 0.0,
                 entropy_direction: str = "balanced", dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.tasks = _check_tasks(tasks)
        check_positive_int("shared_experts", shared_experts)
        check_positive_int("task_experts", task_experts)
        _check_units("expert_units", expert_units)
        check_positive_int("levels", levels)
        _check_units("gate_units", gate_units, allow_none=True)
        _check_gating(task_embedding_dim, entropy_weight, entropy_direction, dropout)
        self.shared_experts = shared_experts
        self.task_experts = task_experts
        self.expert_units = list(expert_units)
        self.levels = levels
        self.gate_units = list(gate_units) if gate_units is not None else None
        self.task_embedding_dim = task_embedding_dim
        self.entropy_weight = float(entropy_weight)
        self.entropy_direction = entropy_direction
        self.dropout = float(dropout)
        self.width = self.expert_units[-1]
        self.extraction = [ExtractionLevel(self, shared_gate=l < levels - 1, name=f"level_{l}",
                                           dtype=self.dtype_policy) for l in range(levels)]
        self.expert_dropout = keras.layers.Dropout(self.dropout, name="dropout") if self.dropout else None

    def build(self, input_shape):
        shape = (None, flat_width(input_shape))
        for level in self.extraction:
            level.build(shape)
            shape = (None, self.width)

    def _level(self, level, task_inputs, shared_input, training=None):
        """One level: (task outputs, shared output or None, the gates' logits)."""
        shared = self._stack(level.shared_expert_layers, shared_input, training)
        own = [self._stack(level.own_experts(k), x, training) for k, x in enumerate(task_inputs)]
        logits = level.task_logits(task_inputs)
        outputs = [_mix(z, ops.concatenate([e, shared], axis=1)) for z, e in zip(logits, own)]
        shared_output = None
        if level.shared_gate is not None:
            logits.append(level.shared_gate(shared_input))
            shared_output = _mix(logits[-1], ops.concatenate(own + [shared], axis=1))
        return outputs, shared_output, logits

    def _last_level_inputs(self, x, training=None):
        """The block's input through every level but the last: (task inputs, shared input, logits)."""
        x = flatten_2d(x)
        task_inputs, shared_input, logits = [x] * len(self.tasks), x, []
        for level in self.extraction[:-1]:
            task_inputs, shared_input, level_logits = self._level(level, task_inputs, shared_input, training)
            logits += level_logits
        return task_inputs, shared_input, logits

    def call(self, inputs, training=None):
        task_inputs, shared_input, logits = self._last_level_inputs(inputs, training)
        outputs, _, last_logits = self._level(self.extraction[-1], task_inputs, shared_input, training)
        self._add_entropy_loss(logits + last_logits)
        return dict(zip(self.tasks, outputs))

    def _input(self, x):
        x = ops.convert_to_tensor(x)
        if not self.built:
            self.build(tuple(x.shape))
        return self._last_level_inputs(ops.cast(x, self.compute_dtype), training=False)

    def gates(self, x) -> dict:
        """{task: (batch, task_experts + shared_experts)}: the last level's task gates for the
        block's input `x`; columns are the task's own experts, then the shared ones."""
        task_inputs, _, _ = self._input(x)
        logits = self.extraction[-1].task_logits(task_inputs)
        return {t: ops.softmax(z, axis=-1) for t, z in zip(self.tasks, logits)}

    def expert_outputs(self, x) -> dict:
        """{task: (batch, task_experts + shared_experts, units)}: what the last level's task-k gate mixes."""
        task_inputs, shared_input, _ = self._input(x)
        last = self.extraction[-1]
        shared = self._stack(last.shared_expert_layers, shared_input, training=False)
        return {t: ops.concatenate([self._stack(last.own_experts(k), xk, training=False), shared], axis=1)
                for k, (t, xk) in enumerate(zip(self.tasks, task_inputs))}

    def get_config(self):
        return {**super().get_config(), "tasks": self.tasks, "shared_experts": self.shared_experts,
                "task_experts": self.task_experts, "expert_units": self.expert_units, "levels": self.levels,
                "gate_units": self.gate_units, "task_embedding_dim": self.task_embedding_dim,
                "entropy_weight": self.entropy_weight, "entropy_direction": self.entropy_direction,
                "dropout": self.dropout}


@register_block()
class CGC(PLE):
    """Customized Gate Control: one PLE level, task experts and shared experts, no shared gate.

        y_k = sum_i g_k,i(x) · [E_k(x); S(x)]_i,   g_k over task k's experts then the shared ones

    PLE with `levels` fixed at 1 (see PLE for the gates, the entropy loss, `gates(x)` and
    `expert_outputs(x)`); its config has no `levels`.

    Args:
        tasks: list of str. Output names, e.g. `["ctr", "cvr"]`; a spec reads "block.ctr".
        shared_experts: int. Number of shared experts.
        task_experts: int. Experts of each task.
        expert_units: list of int. Widths of each expert's layers.
        gate_units: list of int or None. As in MMoE. Defaults to None.
        task_embedding_dim: int. As in MMoE. Defaults to `0`.
        entropy_weight: float. As in MMoE. Defaults to `0.0`.
        entropy_direction: str. As in MMoE. Defaults to `"balanced"`.
        dropout: float. As in MMoE. Defaults to `0.0`.

    Example:
    ```python
    CGC(tasks=["ctr", "cvr"], shared_experts=1, task_experts=1, expert_units=[8])(np.ones((2, 6)))["cvr"].shape
    # (2, 8)
    ```

    Reference: H. Tang, J. Liu, M. Zhao, X. Gong. "Progressive Layered Extraction (PLE)." RecSys 2020, §4.2.
    https://doi.org/10.1145/3383313.3412236
    """

    def __init__(self, tasks: list, shared_experts: int, task_experts: int, expert_units: list,
                 gate_units: list | None = None, task_embedding_dim: int = 0, entropy_weight: float = 0.0,
                 entropy_direction: str = "balanced", dropout: float = 0.0, **kwargs):
        super().__init__(tasks, shared_experts, task_experts, expert_units, levels=1, gate_units=gate_units,
                         task_embedding_dim=task_embedding_dim, entropy_weight=entropy_weight,
                         entropy_direction=entropy_direction, dropout=dropout, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["levels"]
        return config
