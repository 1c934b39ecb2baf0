"""Loss balancing on JAX (imported by kzoo.balancing on the JAX backend only): the train step, per-task
gradients with one forward pass and one VJP per task, in Keras' stateless style."""

from __future__ import annotations

import jax
import keras
import numpy as np
from keras import ops

from kzoo.balancing.core import (BalancedBase, gradnorm_weight_gradient, pcgrad_combine, renormalise,
                                 task_losses, task_names, uncertainty_total)


def _index(variables, wanted) -> list[int]:
    ids = {id(v): i for i, v in enumerate(variables)}
    missing = [v.path for v in wanted if id(v) not in ids]
    if missing:
        raise ValueError(f"variables {missing} are not trainable variables of the model")
    return [ids[id(v)] for v in wanted]


def _scoped(variables, values, fn):
    """Run `fn()` with `variables` read as `values`; returns (result, the variables' new values)."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
        out = fn()
    new = [scope.get_current_value(v) for v in variables]
    return out, [value if n is None else n for n, value in zip(new, values)]


class BalancedModel(BalancedBase):
    __doc__ = BalancedBase.__doc__

    def _forward(self, trainable, non_trainable, x, y, sample_weight):
        """(L (K,), regularisation), (unweighted losses, y_pred, new non-trainable values)."""
        y_pred, non_trainable, extra = self.stateless_call(trainable, non_trainable, x, return_losses=True,
                                                           training=True)
        losses, raw = self.ordered_losses(y, y_pred, sample_weight)
        reg = ops.sum(ops.stack([ops.cast(ops.sum(v), "float32") for v in extra])) if extra else ops.zeros(())
        return (losses, reg), (raw, y_pred, non_trainable)

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        k = len(self.tasks)
        balance = self.balancing_variable
        at = _index(self.trainable_variables, [balance])[0] if balance is not None else None
        extra_logs = {}

        def forward(values):
            return self._forward(values, non_trainable, x, y, sample_weight)

        if self.method == "uncertainty":
            def objective(values):
                (losses, reg), aux = forward(values)
                return uncertainty_total(losses, values[at]) + reg, ((losses, reg), aux)

            (_, ((losses, reg), (raw, y_pred, non_trainable))), grads = jax.value_and_grad(
                objective, has_aux=True)(trainable)
        else:
            (losses, reg), vjp, (raw, y_pred, non_trainable) = jax.vjp(forward, trainable, has_aux=True)
            one_hot = np.eye(k, dtype="float32")

            def grad_of(task_cotangent, reg_cotangent):
                """The gradient of Σ_k c_k·L_k + c·reg for all trainable variables (one VJP)."""
                return list(vjp((ops.convert_to_tensor(task_cotangent, "float32"),
                                 ops.convert_to_tensor(reg_cotangent, "float32")))[0])

            if self.method == "gradnorm":
                w = trainable[at]
                grads = grad_of(w, 1.0)  # Σ w_k·L_k + reg, w held constant
                shared = _index(self.trainable_variables, self.shared_weights)
                norms = []
                for i in range(k):
                    g = grad_of(one_hot[i], 0.0)
                    norms.append(ops.sqrt(sum(ops.sum(ops.square(g[j])) for j in shared)))
                initial_at = _index(self.non_trainable_variables, [self.initial_losses])[0]
                initial = ops.where(non_trainable[initial_at] > 0, non_trainable[initial_at], losses)
                grads[at] = gradnorm_weight_gradient(w, ops.stack(norms), losses, initial, self.alpha)
                non_trainable = list(non_trainable)
                non_trainable[initial_at] = initial
            else:  # pcgrad
                per_task = [grad_of(one_hot[i], 0.0) for i in range(k)]
                order, non_trainable = _scoped(self.non_trainable_variables, non_trainable, self.random_order)
                grads, extra_logs["pcgrad_conflict"] = pcgrad_combine(per_task, order)
                grads = [g + r for g, r in zip(grads, grad_of(np.zeros(k), 1.0))]

        trainable, optimizer_variables = self.optimizer.stateless_apply(optimizer_variables, grads, trainable)
        trainable = list(trainable)
        if self.method == "gradnorm":
            trainable[at] = renormalise(trainable[at])

        def metrics():
            self.update_loss_metrics(ops.sum(losses) + reg, raw, self.loss_trackers(), x)
            return self.compute_metrics(x, y, y_pred, sample_weight)

        logs, metrics_variables = _scoped(self.metrics_variables, metrics_variables, metrics)
        logs = {**logs, **self.balancing_logs(trainable[at] if at is not None else None, extra_logs)}
        return logs, (trainable, list(non_trainable), optimizer_variables, metrics_variables)


def task_gradients(model: keras.Model, x, y, sample_weight=None, variables=None, *, training: bool = False) -> dict:
    """{task: [gradient of L_k per variable]} of a compiled kzoo model at one batch, as NumPy arrays.

    L_k is task k's compiled loss (sample weights applied) times its `loss_weight`; regularisation
    losses are left out. `variables` defaults to the model's trainable variables (for a BalancedModel,
    its inner model's). `training` runs the forward pass in training mode (dropout).
    """
    variables = list(variables if variables is not None else getattr(model, "inner", model).trainable_variables)
    trainable = model.trainable_variables
    where = _index(trainable, variables)
    x, y, sample_weight = keras.tree.map_structure(
        lambda v: None if v is None else ops.convert_to_tensor(v), (x, y, sample_weight))
    current = [v.value for v in trainable]
    non_trainable = [v.value for v in model.non_trainable_variables]
    names = task_names(model, x, y, sample_weight)

    def losses(values):
        full = list(current)
        for i, value in zip(where, values):
            full[i] = value
        y_pred, _ = model.stateless_call(full, non_trainable, x, training=training)
        return ops.stack([loss for _, loss, _ in task_losses(model, y, y_pred, sample_weight)])

    jacobian = jax.jacrev(losses)([current[i] for i in where])
    return {name: [np.asarray(j[k]) for j in jacobian] for k, name in enumerate(names)}
