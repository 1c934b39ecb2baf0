"""Row-sparse optimizers for embedding tables: only the rows a batch touches are read and written.

Each optimizer is one update rule written once in `keras.ops` over the touched rows,

    (rows (n, dim), their summed gradients (n, dim), their slot rows, step t, learning rate)
        -> (new rows, new slot rows),

and the base class does the rest per backend: it takes the touched rows and their gradients (summed
once per row) from the gradient the trainer hands over, gathers the rows of the table and of each
slot, applies the rule and scatters the results back (kzoo.sparse.tensorflow / kzoo.sparse.jax).

    SparseSGD       w -= lr·g
    SparseAdagrad   a += g²; w -= lr·g / sqrt(a + ε)                 (Keras Adagrad; exactly dense Adagrad)
    LazyAdam        Keras Adam's moments and bias correction (global step t), for the touched rows only
    SparseFtrl      Keras Ftrl (FTRL-proximal, McMahan et al. 2013) for the touched rows only

A row the batch did not touch has a zero gradient, so SGD and Adagrad leave it (and its accumulator)
unchanged either way: the sparse update *is* the dense one. Adam and FTRL would move such a row
(Adam by its moments, FTRL by re-solving its closed form); the lazy versions do not, as TensorFlow's
LazyAdam and its sparse FTRL kernel. Given a dense gradient (a trainer that cannot say which rows a
batch touched), SGD and Adagrad update every row exactly as their dense versions; LazyAdam and FTRL
refuse, since for them the rows touched change the result.
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.blocks.backend import fill_constant, mark_row_sparse

if keras.backend.backend() == "tensorflow":
    from kzoo.sparse.tensorflow import gather, scatter, touched
elif keras.backend.backend() == "jax":
    from kzoo.sparse.jax import gather, scatter, touched
else:  # pragma: no cover - torch: no row-sparse path
    gather = scatter = touched = None


class RowSparseOptimizer(keras.optimizers.Optimizer):
    """Base of the row-sparse optimizers: slots per table and the gather / rule / scatter step.

    Subclasses set `slots` ((name, initial value) per slot, each a table-shaped variable), `exact_dense`
    (whether a dense gradient may be applied to every row with the same result) and `rule`.
    """

    slots: tuple[tuple[str, str], ...] = ()  # (slot name, attribute holding its initial value or "zeros")
    exact_dense = True

    def __init__(self, learning_rate=0.001, name=None, **kwargs):
        if gather is None:
            raise NotImplementedError(f"row-sparse embedding optimizers need the JAX or TensorFlow backend, "
                                      f"not {keras.backend.backend()}")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        for v in var_list:
            mark_row_sparse(v)  # TensorFlow then reads these tables in place, rows only
        self._slots = []
        for slot, init in self.slots:
            variables = [self.add_variable_from_reference(v, name=slot, initializer="zeros") for v in var_list]
            if init != "zeros":  # in place: Keras' Constant initializer holds a second slot-sized array
                for variable in variables:
                    fill_constant(variable, getattr(self, init))
            self._slots.append(variables)

    def rule(self, rows, grad, slots: list, step, lr):
        """(new rows, [new slot rows]) for the touched `rows` and their summed gradients `grad`."""
        raise NotImplementedError

    def slots_of(self, variable) -> dict:
        """{slot name: slot variable} of one table variable."""
        index = self._get_variable_index(variable)
        return {name: s[index] for (name, _), s in zip(self.slots, self._slots)}

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        slots = [s[index] for s in self._slots]
        rows, grad = touched(gradient)
        if rows is None:  # a dense gradient: every row counts as touched
            if not self.exact_dense:
                raise ValueError(
                    f"{type(self).__name__} received a dense gradient for table '{variable.name}', which does not "
                    "say which rows the batch touched. On JAX train through kzoo.train, or wrap the compiled model "
                    "with kzoo.sparse.row_sparse(model) before fit; loss balancing cannot drive it (use 'adagrad').")
            new, new_slots = self.rule(ops.convert_to_tensor(variable), ops.cast(grad, dtype),
                                       [ops.convert_to_tensor(s) for s in slots], step, lr)
            self.assign(variable, new)
            for s, value in zip(slots, new_slots):
                self.assign(s, value)
            return
        new, new_slots = self.rule(gather(variable, rows), ops.cast(grad, dtype), [gather(s, rows) for s in slots],
                                   step, lr)
        scatter(variable, rows, new)
        for s, value in zip(slots, new_slots):
            scatter(s, rows, value)


@keras.saving.register_keras_serializable(package="kzoo")
class SparseSGD(RowSparseOptimizer):
    """Row-sparse SGD: w_i -= lr·g_i for the touched rows i (g_i summed over the batch's lookups).

    Args:
        learning_rate: float or schedule. Defaults to `0.01`.
    """

    def __init__(self, learning_rate=0.01, name="sparse_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def rule(self, rows, grad, slots, step, lr):
        return rows - lr * grad, []


@keras.saving.register_keras_serializable(package="kzoo")
class SparseAdagrad(RowSparseOptimizer):
    """Row-sparse Adagrad, Keras' formula: a_i += g_i²; w_i -= lr·g_i / sqrt(a_i + ε), touched rows i only
    (the same numbers as dense Adagrad: an untouched row's g is 0).

    Args:
        learning_rate: float or schedule. Defaults to `0.001`.
        initial_accumulator_value: float. a at the start. Defaults to `0.1`.
        epsilon: float. Defaults to `1e-7`.
    """

    slots = (("accumulator", "initial_accumulator_value"),)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, name="sparse_adagrad",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)

    def rule(self, rows, grad, slots, step, lr):
        acc = slots[0] + ops.square(grad)
        return rows - lr * grad / ops.sqrt(acc + self.epsilon), [acc]

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kzoo")
class LazyAdam(RowSparseOptimizer):
    """Adam whose moments move for the touched rows only (TensorFlow Addons' LazyAdam), Keras' formula:

        m_i += (g_i − m_i)(1 − β1);  v_i += (g_i² − v_i)(1 − β2)
        w_i -= lr·sqrt(1 − β2^t)/(1 − β1^t) · m_i / (sqrt(v_i) + ε)

    with t the optimizer's step (the same for every row). A row touched at every step follows dense Adam.

    Args:
        learning_rate: float or schedule. Defaults to `0.001`.
        beta_1, beta_2, epsilon: floats. Defaults to `0.9`, `0.999`, `1e-7` (Keras Adam's).
    """

    slots = (("momentum", "zeros"), ("velocity", "zeros"))
    exact_dense = False

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="lazy_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def rule(self, rows, grad, slots, step, lr):
        m, v = slots
        m = m + (grad - m) * (1 - self.beta_1)
        v = v + (ops.square(grad) - v) * (1 - self.beta_2)
        alpha = lr * ops.sqrt(1 - ops.power(self.beta_2, step)) / (1 - ops.power(self.beta_1, step))
        return rows - m * alpha / (ops.sqrt(v) + self.epsilon), [m, v]

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kzoo")
class SparseFtrl(RowSparseOptimizer):
    """FTRL-proximal for the touched rows only, Keras Ftrl's formula (p = learning_rate_power):

        n' = n + g²;  z += g − (n'^(−p) − n^(−p))/lr · w
        w = (clip(z, −l1, l1) − z) / (n'^(−p)/lr + 2·l2);  n = n'

    An untouched row keeps its weight (dense FTRL would re-solve it from z and n, e.g. zero a row never
    trained yet).

    Args:
        learning_rate: float or schedule. Defaults to `0.001`.
        initial_accumulator_value: float. n at the start. Defaults to `0.1`.
        learning_rate_power: float, <= 0. Defaults to `-0.5`.
        l1_regularization_strength, l2_regularization_strength: floats >= 0. Defaults to `0.0`.
    """

    slots = (("accumulator", "initial_accumulator_value"), ("linear", "zeros"))
    exact_dense = False

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, learning_rate_power=-0.5,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0, name="sparse_ftrl", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if learning_rate_power > 0:
            raise ValueError(f"`learning_rate_power` must be <= 0, received {learning_rate_power!r}")
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.learning_rate_power = float(learning_rate_power)
        self.l1_regularization_strength = float(l1_regularization_strength)
        self.l2_regularization_strength = float(l2_regularization_strength)

    def rule(self, rows, grad, slots, step, lr):
        n, z = slots
        power = -self.learning_rate_power
        n_new = n + ops.square(grad)
        z = z + grad - (ops.power(n_new, power) - ops.power(n, power)) / lr * rows
        quadratic = ops.power(n_new, power) / lr + 2 * self.l2_regularization_strength
        l1 = self.l1_regularization_strength
        return (ops.clip(z, -l1, l1) - z) / quadratic, [n_new, z]

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "learning_rate_power": self.learning_rate_power,
                "l1_regularization_strength": self.l1_regularization_strength,
                "l2_regularization_strength": self.l2_regularization_strength}


OPTIMIZERS = {"sgd": SparseSGD, "adagrad": SparseAdagrad, "lazy_adam": LazyAdam, "ftrl": SparseFtrl}
