"""Loss balancing on TensorFlow (imported by kzoo.balancing on the TensorFlow backend only): the train
step, per-task gradients from one persistent GradientTape."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kzoo.balancing.core import (BalancedBase, gradnorm_weight_gradient, pcgrad_combine, renormalise,
                                 task_losses, task_names, uncertainty_total)


def _dense(gradient, variable):
    """A dense gradient: embedding lookups give IndexedSlices (summed here), unconnected variables None."""
    if gradient is None:
        return tf.zeros_like(variable)
    return tf.convert_to_tensor(gradient)


class BalancedModel(BalancedBase):
    __doc__ = BalancedBase.__doc__

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        k = len(self.tasks)
        variables = self.trainable_variables
        balance = self.balancing_variable
        extra_logs = {}
        with tf.GradientTape(persistent=self.method != "uncertainty") as tape:
            y_pred = self(x, training=True)
            losses, raw = self.ordered_losses(y, y_pred, sample_weight)
            # Slices taken under the tape, so that each task's loss is recorded on it.
            per_task = [losses[i] for i in range(k)]
            reg = ops.sum(ops.stack([ops.cast(ops.sum(v), "float32") for v in self.losses])) if self.losses \
                else ops.zeros(())
            if self.method == "uncertainty":
                objective = uncertainty_total(losses, self.log_variances) + reg
            elif self.method == "gradnorm":
                objective = ops.sum(tf.stop_gradient(self.task_weights) * losses) + reg
        if self.method == "pcgrad":
            grads_per_task = [[_dense(g, v) for g, v in zip(tape.gradient(per_task[i], variables), variables)]
                              for i in range(k)]
            grads, extra_logs["pcgrad_conflict"] = pcgrad_combine(grads_per_task, self.random_order())
            if self.losses:
                grads = [g + _dense(r, v) for g, r, v in zip(grads, tape.gradient(reg, variables), variables)]
        else:
            grads = tape.gradient(objective, variables)
        if self.method == "gradnorm":
            norms = ops.stack([ops.sqrt(sum(ops.sum(ops.square(_dense(g, v))) for g, v in
                                            zip(tape.gradient(per_task[i], self.shared_weights), self.shared_weights)))
                               for i in range(k)])
            initial = ops.where(self.initial_losses > 0, self.initial_losses, losses)
            at = [i for i, v in enumerate(variables) if v is balance][0]
            grads = list(grads)
            grads[at] = gradnorm_weight_gradient(self.task_weights, norms, losses, initial, self.alpha)
            self.initial_losses.assign(initial)
        del tape
        grads = [_dense(g, v) if g is None else g for g, v in zip(grads, variables)]
        self.optimizer.apply(grads, variables)
        if self.method == "gradnorm":
            self.task_weights.assign(renormalise(self.task_weights))
        self.update_loss_metrics(ops.sum(losses) + reg, raw, self.loss_trackers(), x)
        logs = self.compute_metrics(x, y, y_pred, sample_weight)
        return {**logs, **self.balancing_logs(ops.convert_to_tensor(balance) if balance is not None else None,
                                              extra_logs)}


def task_gradients(model: keras.Model, x, y, sample_weight=None, variables=None, *, training: bool = False) -> dict:
    """{task: [gradient of L_k per variable]} of a compiled kzoo model at one batch, as NumPy arrays.

    L_k is task k's compiled loss (sample weights applied) times its `loss_weight`; regularisation
    losses are left out. `variables` defaults to the model's trainable variables (for a BalancedModel,
    its inner model's). `training` runs the forward pass in training mode (dropout).
    """
    variables = list(variables if variables is not None else getattr(model, "inner", model).trainable_variables)
    x, y, sample_weight = keras.tree.map_structure(
        lambda v: None if v is None else ops.convert_to_tensor(v), (x, y, sample_weight))
    names = task_names(model, x, y, sample_weight)
    with tf.GradientTape(persistent=True) as tape:
        y_pred = model(x, training=training)
        losses = [loss for _, loss, _ in task_losses(model, y, y_pred, sample_weight)]
    out = {name: [np.asarray(_dense(g, v)) for g, v in zip(tape.gradient(loss, variables), variables)]
           for name, loss in zip(names, losses)}
    del tape
    return out
