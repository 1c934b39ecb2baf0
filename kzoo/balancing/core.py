"""Loss balancing, the backend-independent part: the maths of each method and the model wrapper's state.

    uncertainty_total(losses, log_variances)          Σ_k exp(-s_k)·L_k + s_k
    gradnorm_ratios / gradnorm_loss / gradnorm_weight_gradient / renormalise     GradNorm's pieces
    pcgrad_project(grads, order), pcgrad_combine(task_grads, order)              PCGrad's projection
    task_losses(model, y, y_pred, sample_weight)     each task's compiled loss (what Keras sums)
    BalancedBase                                     the wrapper's variables, call and logs; the
                                                     train step is backend code (kzoo.balancing.jax,
                                                     kzoo.balancing.tensorflow)

Every function here takes and returns `keras.ops` tensors (NumPy arrays work too), so the same code
runs inside the JAX and the TensorFlow train steps and is checked against NumPy in the tests.

Throughout, L_k is task k's loss as the compiled model sums it: the task's loss (its sample weights
applied, Keras' "sum over batch size" reduction) times its static `loss_weight`.
"""

from __future__ import annotations

import math

import keras
from keras import ops

METHODS = ("static", "uncertainty", "gradnorm", "pcgrad")

# ------------------------------------------------------------------------------------- uncertainty


def uncertainty_total(losses, log_variances):
    """Kendall, Gal & Cipolla (CVPR 2018), in the form used for every task type:

        total = Σ_k exp(-s_k)·L_k + s_k,     s_k = log σ_k² learned per task.

    The paper writes 1/(2σ²)·L + log σ for regression (= ½·(exp(-s)·L + s)) and 1/σ²·L + log σ for
    classification (= exp(-s)·L + ½·s). One form for all tasks keeps a task's weight independent of
    its type; its minimum over s_k is at s_k = log L_k, so exp(-s_k) settles at 1 / L_k (for MSE,
    1 / the noise variance, as in the paper's regression case).
    """
    losses = ops.convert_to_tensor(losses, "float32")
    s = ops.convert_to_tensor(log_variances, "float32")
    return ops.sum(ops.exp(-s) * losses + s)


# ---------------------------------------------------------------------------------------- GradNorm

_TINY = 1e-12


def gradnorm_ratios(losses, initial_losses):
    """r_k = (L_k(t) / L_k(0)) / mean_j (L_j(t) / L_j(0)): each task's relative inverse training rate."""
    losses = ops.convert_to_tensor(losses, "float32")
    loss_ratio = losses / ops.maximum(ops.convert_to_tensor(initial_losses, "float32"), _TINY)
    return loss_ratio / ops.maximum(ops.mean(loss_ratio), _TINY)


def gradnorm_targets(grad_norms, losses, initial_losses, alpha: float):
    """T_k = mean(G)·r_k^α, the gradient norm GradNorm wants for task k (a constant in its loss)."""
    return ops.mean(ops.convert_to_tensor(grad_norms, "float32")) * ops.power(
        gradnorm_ratios(losses, initial_losses), alpha)


def gradnorm_loss(task_weights, unit_grad_norms, losses, initial_losses, alpha: float):
    """L_grad = Σ_k |G_k − T_k| with G_k = ‖∇_W w_k·L_k‖ = w_k·‖∇_W L_k‖ (`unit_grad_norms` are the
    ‖∇_W L_k‖) and T_k = mean(G)·r_k^α held constant (Chen et al., ICML 2018, eq. 2)."""
    g = ops.convert_to_tensor(task_weights, "float32") * ops.convert_to_tensor(unit_grad_norms, "float32")
    return ops.sum(ops.abs(g - gradnorm_targets(g, losses, initial_losses, alpha)))


def gradnorm_weight_gradient(task_weights, unit_grad_norms, losses, initial_losses, alpha: float):
    """∂L_grad/∂w_k with the targets constant: sign(G_k − T_k)·‖∇_W L_k‖ (G_k = w_k·‖∇_W L_k‖, w_k > 0)."""
    n = ops.convert_to_tensor(unit_grad_norms, "float32")
    g = ops.convert_to_tensor(task_weights, "float32") * n
    return ops.sign(g - gradnorm_targets(g, losses, initial_losses, alpha)) * n


def renormalise(task_weights, floor: float = 1e-3):
    """w ← K·w / Σ w after every step, each w_k first floored at `floor` so that no task is switched
    off or turned negative by one large step."""
    w = ops.maximum(ops.convert_to_tensor(task_weights, "float32"), floor)
    return w * (w.shape[0] / ops.sum(w))


# ------------------------------------------------------------------------------------------ PCGrad


def pcgrad_project(grads, order):
    """Yu et al. (NeurIPS 2020), Algorithm 1. `grads` is (K, D): task k's gradient of the shared
    parameters, flattened. For each task i, the other tasks j are visited in `order` (a permutation of
    0..K-1; i itself is skipped) and, when g_i·g_j < 0, g_i ← g_i − (g_i·g_j / ‖g_j‖²)·g_j. The g_j are the
    original gradients, as in the paper. Returns the (K, D) projected gradients."""
    grads = ops.convert_to_tensor(grads, "float32")
    order = ops.convert_to_tensor(order, "int32")
    k = grads.shape[0]
    out = []
    for i in range(k):
        g = grads[i]
        for position in range(k):
            j = order[position]
            other = ops.take(grads, j, axis=0)
            dot = ops.sum(g * other)
            norm = ops.sum(other * other)
            conflict = ops.logical_and(dot < 0, ops.not_equal(j, i))
            g = g - ops.where(conflict, dot / ops.maximum(norm, 1e-30), 0.0) * other
        out.append(g)
    return ops.stack(out)


def conflict_rate(grads):
    """Fraction of task pairs whose (K, D) gradients point against each other (g_i·g_j < 0)."""
    grads = ops.convert_to_tensor(grads, "float32")
    k = grads.shape[0]
    dots = ops.matmul(grads, ops.transpose(grads))
    pairs = [ops.cast(dots[i, j] < 0, "float32") for i in range(k) for j in range(i + 1, k)]
    return ops.sum(ops.stack(pairs)) / len(pairs)


def shared_mask(task_grads):
    """Per variable, whether it is shared: its gradient is non-zero for two or more tasks.
    `task_grads` is [task][variable] dense gradients. Returns a list of scalar boolean tensors."""
    out = []
    for per_task in zip(*task_grads):
        touched = [ops.cast(ops.any(ops.not_equal(g, 0)), "int32") for g in per_task]
        out.append(ops.sum(ops.stack(touched)) >= 2)
    return out


def pcgrad_combine(task_grads, order):
    """The PCGrad update from per-task gradients `task_grads` ([task][variable], dense): the shared
    variables' gradients (`shared_mask`) are projected together as one vector (`pcgrad_project`) and
    summed over tasks; every other variable gets the plain sum, i.e. its own task's gradient. Returns
    (gradient per variable, conflict rate of the shared gradients)."""
    shared = shared_mask(task_grads)
    shapes = [tuple(g.shape) for g in task_grads[0]]
    sizes = [math.prod(shape) for shape in shapes]
    flat = ops.stack([ops.concatenate([ops.where(s, ops.reshape(g, (-1,)), 0.0) for g, s in zip(per_task, shared)])
                      for per_task in task_grads])
    projected = ops.sum(pcgrad_project(flat, order), axis=0)
    out, start = [], 0
    for v, (shape, size, s) in enumerate(zip(shapes, sizes, shared)):
        part = ops.reshape(projected[start:start + size], shape)
        start += size
        plain = ops.sum(ops.stack([per_task[v] for per_task in task_grads]), axis=0)
        out.append(ops.where(s, part, plain))
    return out, conflict_rate(flat)


# ------------------------------------------------------------------------------------ task losses


def _at(path, tree):
    for key in path:
        tree = tree[key]
    return tree


def task_losses(model: keras.Model, y, y_pred, sample_weight=None) -> list[tuple]:
    """[(task, L_k, unweighted loss)] of a compiled multi-output model, in its compiled order: the very
    losses `model.compile(loss=..., loss_weights=...)` sums, read from Keras' CompileLoss (its sample
    weights per task, its reduction, its loss weights)."""
    compiled = getattr(model, "_compile_loss", None)
    if compiled is None:
        raise ValueError("the model is not compiled with losses; compile it first (kzoo.compile(model, spec))")
    if not compiled.built:
        compiled.build(y, y_pred)
    out = []
    for path, loss_fn, loss_weight, name in compiled._flat_losses:
        weight = _at(path, sample_weight) if isinstance(sample_weight, dict) else sample_weight
        raw = ops.cast(loss_fn(_at(path, y), _at(path, y_pred), weight), "float32")
        out.append((name, raw if loss_weight is None else raw * loss_weight, raw))
    return out


def task_names(model: keras.Model, x, y, sample_weight=None) -> list[str]:
    """The compiled tasks' names in `task_losses` order (building Keras' CompileLoss on the batch if needed)."""
    compiled = getattr(model, "_compile_loss", None)
    if compiled is None or not compiled.built:
        task_losses(model, y, model(x, training=False), sample_weight)  # raises when not compiled
    return [f.name for f in model._compile_loss._flat_losses]


def batch_size_of(x):
    return ops.shape(next(v for v in keras.tree.flatten(x) if v is not None))[0]


# ------------------------------------------------------------------------------------- the wrapper


class BalancedBase(keras.Model):
    """A kzoo model trained with a loss-balancing method; `call` is the wrapped model's.

    Holds the method's variables, which BackupAndRestore saves and restores with the model:

        uncertainty: `log_variances` (K,), trainable, init 0 (s_k)
        gradnorm:    `task_weights` (K,), trainable, init 1, updated by the GradNorm loss's gradient and
                     renormalised to sum to K after every step; `initial_losses` (K,), L_k(0), set at the
                     first step where a task's loss is positive
        pcgrad:      a SeedGenerator for the order in which the other tasks are visited, drawn per step

    The backend modules subclass it with the train step (per-task gradients).

    Args:
        inner: keras.Model. The plain model (dict outputs by task) that is trained, saved and served.
        tasks: list of str. The task (output) names, in the order of the balancing variables.
        method: str. "uncertainty", "gradnorm" or "pcgrad".
        alpha: float. GradNorm's asymmetry α. Defaults to `1.5`.
        shared: str. GradNorm: the layer (block) whose trainable weights are W. Required for gradnorm.
        seed: int. PCGrad's order seed. Defaults to `0`.
    """

    def __init__(self, inner: keras.Model, tasks, method: str, alpha: float = 1.5, shared: str | None = None,
                 seed: int = 0, **kwargs):
        kwargs.setdefault("name", f"{inner.name}_{method}")
        super().__init__(**kwargs)
        if method not in METHODS[1:]:
            raise ValueError(f"`method` must be one of {METHODS[1:]}, received {method!r}")
        tasks = list(tasks)
        if len(tasks) < 2:
            raise ValueError(f"loss balancing needs two or more tasks, received {tasks}")
        self.inner = inner
        self.tasks = tasks
        self.method = method
        self.alpha = float(alpha)
        self.shared = shared
        k = len(tasks)
        if method == "uncertainty":
            self.log_variances = self.add_weight(shape=(k,), initializer="zeros", name="log_variances")
        elif method == "gradnorm":
            if shared is None:
                raise ValueError("gradnorm needs `shared`: the layer whose weights W the gradient norms are taken at")
            weights = inner.get_layer(shared).trainable_weights
            if not weights:
                raise ValueError(f"layer '{shared}' has no trainable weights to take gradient norms at")
            self.shared_weights = weights
            self.task_weights = self.add_weight(shape=(k,), initializer="ones", name="task_weights")
            self.initial_losses = self.add_weight(shape=(k,), initializer="zeros", name="initial_losses",
                                                  trainable=False)
        else:
            self.order_seed = keras.random.SeedGenerator(seed, name="pcgrad_order")
        self.built = True

    def call(self, inputs, training=None):
        return self.inner(inputs, training=training)

    # A SeedGenerator's state is not a weight, so `save_weights` (BackupAndRestore) would drop it: it is
    # saved with the wrapper's own variables, and a resumed PCGrad run draws the orders it would have.
    def _own_state(self) -> list:
        own = self._trainable_variables + self._non_trainable_variables
        return own + ([self.order_seed.state] if self.method == "pcgrad" else [])

    def save_own_variables(self, store):
        for i, v in enumerate(self._own_state()):
            store[f"{i}"] = v

    def load_own_variables(self, store):
        own = self._own_state()
        if len(store.keys()) != len(own):
            raise ValueError(f"{self.name} expected {len(own)} variables, received {len(store.keys())}")
        for i, v in enumerate(own):
            v.assign(store[f"{i}"])

    # --------------------------------------------------------------------------- helpers for the steps
    @property
    def balancing_variable(self):
        """The trainable (K,) variable of the method (s or w), or None (pcgrad)."""
        return {"uncertainty": getattr(self, "log_variances", None),
                "gradnorm": getattr(self, "task_weights", None)}.get(self.method)

    def ordered_losses(self, y, y_pred, sample_weight):
        """(L (K,) in `self.tasks` order, the unweighted losses (K,))."""
        found = {name: rest for name, *rest in task_losses(self, y, y_pred, sample_weight)}
        missing = [t for t in self.tasks if t not in found]
        if missing:
            raise ValueError(f"tasks {missing} have no compiled loss; compiled: {sorted(found)}")
        rows = [found[t] for t in self.tasks]
        return ops.stack([r[0] for r in rows]), ops.stack([r[1] for r in rows])

    def loss_trackers(self) -> list:
        """Keras' `<task>_loss` Mean trackers in `self.tasks` order (None where Keras keeps none)."""
        compiled = self._compile_loss
        trackers = compiled.metrics if len(compiled.metrics) == len(compiled._flat_losses) else \
            [None] * len(compiled._flat_losses)
        by_name = {f.name: m for f, m in zip(compiled._flat_losses, trackers)}
        return [by_name.get(t) for t in self.tasks]

    def random_order(self):
        """A random permutation of the tasks (PCGrad's visiting order), from the model's seed generator."""
        return ops.cast(ops.argsort(keras.random.uniform((len(self.tasks),), seed=self.order_seed)), "int32")

    def update_loss_metrics(self, total, raw, trackers, x):
        """Keras' own loss logging: `loss` the compiled (static-weighted) total, `<task>_loss` unweighted."""
        n = batch_size_of(x)
        self._loss_tracker.update_state(total, sample_weight=n)
        for k, tracker in enumerate(trackers):
            if tracker is not None:
                tracker.update_state(raw[k], sample_weight=n)

    def balancing_logs(self, values, extra=None) -> dict:
        """{"s_<task>" | "w_<task>": value} for the method's variable values, plus `extra`."""
        out = {}
        if values is not None:
            prefix = "s" if self.method == "uncertainty" else "w"
            out = {f"{prefix}_{t}": values[k] for k, t in enumerate(self.tasks)}
        out.update(extra or {})
        return out
