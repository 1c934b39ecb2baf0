"""Loss balancing for multi-task training: the spec's `train.balancing`.

    {"type": "static"}                                   the tasks' `loss_weight` (the default)
    {"type": "uncertainty"}                              learned log-variances s_k: Σ exp(-s_k)·L_k + s_k
    {"type": "gradnorm", "alpha": 1.5, "shared": BLOCK}  learned task weights w_k, GradNorm's update
    {"type": "pcgrad"}                                   conflicting per-task gradients projected apart

    balance(model, spec)        a compiled kzoo model wrapped for the spec's balancing (the model itself
                                when static); `model.inner` is the plain model to save and serve
    BalancedModel               the wrapper (a keras.Model with a backend-specific train step)
    task_gradients(model, x, y, sample_weight=None, variables=None)
                                {task: [gradient per variable]} of a compiled model at one batch
    shared_mask(task_grads)     which variables two or more tasks' gradients reach

The maths is backend-independent (kzoo.balancing.core); the train steps, which need per-task gradients,
are one module per backend chosen here at import (kzoo.balancing.jax, kzoo.balancing.tensorflow).
docs/multitask.md, "Loss balancing", describes the methods and what they log.
"""

from __future__ import annotations

import keras

from kzoo.balancing.core import (METHODS, conflict_rate, gradnorm_loss, gradnorm_ratios, gradnorm_targets,  # noqa: F401
                                 gradnorm_weight_gradient, pcgrad_combine, pcgrad_project, renormalise, shared_mask,
                                 task_losses, uncertainty_total)
from kzoo.errors import SpecError
from kzoo.spec import load_spec

if keras.backend.backend() == "jax":
    from kzoo.balancing.jax import BalancedModel, task_gradients
elif keras.backend.backend() == "tensorflow":
    from kzoo.balancing.tensorflow import BalancedModel, task_gradients
else:
    BalancedModel = task_gradients = None  # balancing needs per-task gradients: JAX or TensorFlow


def balance(model: keras.Model, spec) -> keras.Model:
    """`model` (a compiled `kzoo.build` model) trained as the spec's `train.balancing` says: itself for
    static weighting, else a BalancedModel around it, compiled the same way (losses, loss weights,
    metrics; a new optimizer of the same configuration). Fit the returned model; save `.inner`."""
    spec = load_spec(spec)
    cfg = spec.train.get("balancing", {"type": "static"})
    if cfg["type"] == "static":
        return model
    if BalancedModel is None:
        raise NotImplementedError(f"loss balancing '{cfg['type']}' needs the JAX or TensorFlow backend, "
                                  f"not {keras.backend.backend()}")
    if not model.compiled:
        raise ValueError("balance() takes a compiled model: kzoo.compile(model, spec) first")
    if cfg["type"] == "gradnorm" and not model.get_layer(cfg["shared"]).trainable_weights:
        raise SpecError([("train.balancing.shared", f"block '{cfg['shared']}' has no trainable weights to take "
                                                    "the tasks' gradient norms at; name a block with weights")],
                        spec.source)
    wrapped = BalancedModel(model, [t["name"] for t in spec.tasks], cfg["type"], alpha=cfg.get("alpha", 1.5),
                            shared=cfg.get("shared"), seed=int(spec.train.get("seed", 0)))
    wrapped.compile_from_config(model.get_compile_config())
    return wrapped
