"""Distillation blocks (Hint, SoftTarget) against NumPy: the loss they add, its weight, the
learned projection, and the gradient block on the teacher side.

The gradient checks train a tiny two-tower model for one SGD step on the added loss alone and
compare every weight with a NumPy step computed from the analytic gradient: the teacher tower
must not move (stop_gradient), the student tower must move by exactly -lr * dL/dW.
"""

import keras
import numpy as np
import pytest

from kzoo.blocks.distill import Hint, SoftTarget
from layer_test import run_layer_test  # tests/ is on sys.path (rootdir conftest, no __init__.py)

B = 4
TEACHER = np.random.default_rng(0).normal(size=(B, 2, 3)).astype("float32")  # flattens to width 6
STUDENT_SAME = np.random.default_rng(1).normal(size=(B, 6)).astype("float32")
STUDENT_NARROW = np.random.default_rng(2).normal(size=(B, 4)).astype("float32")  # needs the projection


def _np(x):
    return keras.ops.convert_to_numpy(x).astype("float64")


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(size=tuple(w.shape)).astype("float32") for w in layer.weights])


def _np_hint_loss(kind, weight, teacher, student, projection=None):
    """weight * mean((t - P s)^2) over all entries, or weight * mean_b(1 - cos(t_b, P s_b))."""
    t = teacher.reshape(len(teacher), -1).astype("float64")
    s = student.reshape(len(student), -1).astype("float64")
    if projection is not None:
        s = s @ projection
    if kind == "l2":
        return weight * np.mean((t - s) ** 2)
    cos = np.sum(t * s, axis=1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1))
    return weight * np.mean(1.0 - cos)


def _np_hint_grad(kind, weight, t, s):
    """dL/ds of the loss above (no projection) for (batch, width) arrays."""
    if kind == "l2":
        return -2.0 * weight * (t - s) / t.size
    t_norm, s_norm = np.linalg.norm(t, axis=1, keepdims=True), np.linalg.norm(s, axis=1, keepdims=True)
    cos = np.sum(t * s, axis=1, keepdims=True) / (t_norm * s_norm)
    return -weight / len(t) * (t / t_norm - cos * s / s_norm) / s_norm


# ------------------------------------------------------------------ contracts
@pytest.mark.parametrize("kind", ["l2", "cosine"])
@pytest.mark.parametrize("student", ["same", "narrow"])
def test_hint_contract(kind, student):
    s = STUDENT_SAME if student == "same" else STUDENT_NARROW
    out = run_layer_test(Hint, {"kind": kind, "weight": 0.5}, [TEACHER, s], s.shape,
                         train=student == "narrow",  # only the projection is trainable
                         expected_num_losses=1)
    np.testing.assert_array_equal(out, s)  # the student passes through unchanged


def test_soft_target_contract():
    t, s = TEACHER[:, 0], STUDENT_SAME[:, :3]
    out = run_layer_test(SoftTarget, {"weight": 2.0}, [t, s], (B, 3), train=False, expected_num_losses=1)
    np.testing.assert_array_equal(out, s)


# ------------------------------------------------------------------ loss values
@pytest.mark.parametrize("kind", ["l2", "cosine"])
@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_hint_loss_without_projection(kind, weight):
    layer = Hint(kind=kind, weight=weight)
    out = layer([TEACHER, STUDENT_SAME])
    assert layer.projection is None and not layer.weights
    np.testing.assert_array_equal(_np(out), STUDENT_SAME)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(_np(layer.losses[0]), _np_hint_loss(kind, weight, TEACHER, STUDENT_SAME), rtol=1e-5)


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_hint_loss_with_learned_projection(kind):
    layer = Hint(kind=kind, weight=0.7)
    layer([TEACHER, STUDENT_NARROW])
    assert tuple(layer.projection.kernel.shape) == (4, 6)  # student width -> teacher width, no bias
    assert len(layer.weights) == 1
    _randomize(layer, seed=3)
    out = layer([TEACHER, STUDENT_NARROW])
    np.testing.assert_array_equal(_np(out), STUDENT_NARROW)  # the projection only feeds the loss
    expected = _np_hint_loss(kind, 0.7, TEACHER, STUDENT_NARROW, _np(layer.projection.kernel))
    np.testing.assert_allclose(_np(layer.losses[0]), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["l2", "cosine"])
def test_hint_weight_scales_the_loss(kind):
    values = {}
    for weight in (0.0, 1.0, 2.5):
        layer = Hint(kind=kind, weight=weight)
        layer([TEACHER, STUDENT_SAME])
        values[weight] = float(_np(layer.losses[0]))
    assert values[0.0] == 0.0 and values[1.0] > 0.0
    np.testing.assert_allclose(values[2.5], 2.5 * values[1.0], rtol=1e-6)


def test_hint_cosine_is_finite_for_a_zero_student():
    zero = np.zeros_like(STUDENT_SAME)
    layer = Hint(kind="cosine")
    layer([TEACHER, zero])
    np.testing.assert_allclose(_np(layer.losses[0]), 1.0, rtol=1e-6)  # cos taken as 0


def test_hint_identical_inputs_give_zero_loss():
    for kind in ("l2", "cosine"):
        layer = Hint(kind=kind)
        layer([TEACHER, TEACHER])
        np.testing.assert_allclose(_np(layer.losses[0]), 0.0, atol=1e-6)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_soft_target_loss(weight):
    t = np.random.default_rng(4).normal(size=(B, 3)).astype("float32")
    s = np.random.default_rng(5).normal(size=(B, 3)).astype("float32")
    layer = SoftTarget(weight=weight)
    out = layer([t, s])
    np.testing.assert_array_equal(_np(out), s)
    assert len(layer.losses) == 1
    np.testing.assert_allclose(_np(layer.losses[0]), weight * np.mean((t.astype("float64") - s) ** 2), rtol=1e-5)


@pytest.mark.parametrize("t_shape,s_shape", [((B, 1), (B,)), ((B, 2, 3), (B, 6)), ((B, 1, 3), (B, 3))])
def test_soft_target_compares_logits_of_one_width_in_any_shape(t_shape, s_shape):
    """Shapes of one flat width (as `build` accepts) are compared element by element, never broadcast
    against each other: (B, 1) - (B,) would silently give a (B, B) matrix."""
    rng = np.random.default_rng(6)
    t = rng.normal(size=t_shape).astype("float32")
    s = rng.normal(size=s_shape).astype("float32")
    layer = SoftTarget(weight=0.5)
    out = layer([t, s])
    np.testing.assert_array_equal(_np(out), s)
    expected = 0.5 * np.mean((t.reshape(B, -1).astype("float64") - s.reshape(B, -1)) ** 2)
    np.testing.assert_allclose(_np(layer.losses[0]), expected, rtol=1e-5)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="kind"):
        Hint(kind="kl")
    for cls in (Hint, SoftTarget):
        with pytest.raises(ValueError, match="weight"):
            cls(weight=-1.0)
    with pytest.raises(ValueError, match="one width"):
        SoftTarget()([np.zeros((2, 3), "float32"), np.zeros((2, 4), "float32")])


# ------------------------------------------------------------------ gradients
def _two_towers(block, teacher_width, student_width, seed):
    """x -> teacher Dense, x -> student Dense, block([teacher, student]); every weight random."""
    x = keras.Input((3,))
    teacher = keras.layers.Dense(teacher_width, name="teacher")
    student = keras.layers.Dense(student_width, name="student")
    model = keras.Model(x, block([teacher(x), student(x)]))
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(size=tuple(w.shape)).astype("float32") for w in model.weights])
    return model, teacher, student


def _step(model, x, lr):
    """One SGD step on the block's added loss alone (no compiled loss); returns the loss."""
    model.compile(optimizer=keras.optimizers.SGD(lr))
    return float(model.train_on_batch(x))


X = np.random.default_rng(9).normal(size=(B, 3)).astype("float32")
LR = 0.5


# TensorFlow reports the teacher's missing gradients (the point of stop_gradient) as a warning.
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("block", ["hint_l2", "hint_cosine", "soft_target"])
def test_teacher_gets_no_gradient_and_student_the_numpy_one(block):
    weight = 0.8
    layer = SoftTarget(weight=weight) if block == "soft_target" else Hint(kind=block[5:], weight=weight)
    kind = "cosine" if block == "hint_cosine" else "l2"
    model, teacher, student = _two_towers(layer, 5, 5, seed=1)
    tk, tb, sk, sb = (_np(v) for v in (teacher.kernel, teacher.bias, student.kernel, student.bias))
    x = X.astype("float64")
    t, s = x @ tk + tb, x @ sk + sb
    loss = _step(model, X, LR)
    np.testing.assert_allclose(loss, _np_hint_loss(kind, weight, t, s), rtol=1e-5)
    # The teacher tower is exactly where it was: no gradient crossed the stop_gradient.
    np.testing.assert_array_equal(_np(teacher.kernel), tk)
    np.testing.assert_array_equal(_np(teacher.bias), tb)
    # The student tower took the step of the analytic gradient dL/ds through s = x W + b.
    g = _np_hint_grad(kind, weight, t, s)
    assert np.abs(g).max() > 1e-3
    np.testing.assert_allclose(_np(student.kernel), sk - LR * x.T @ g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np(student.bias), sb - LR * g.sum(axis=0), rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_hint_projection_and_student_get_the_numpy_gradient():
    weight = 1.5
    layer = Hint(kind="l2", weight=weight)
    model, teacher, student = _two_towers(layer, 6, 4, seed=2)
    tk, tb, sk, sb = (_np(v) for v in (teacher.kernel, teacher.bias, student.kernel, student.bias))
    p = _np(layer.projection.kernel)
    x = X.astype("float64")
    t, s = x @ tk + tb, x @ sk + sb
    loss = _step(model, X, LR)
    np.testing.assert_allclose(loss, _np_hint_loss("l2", weight, t, s, p), rtol=1e-5)
    np.testing.assert_array_equal(_np(teacher.kernel), tk)
    np.testing.assert_array_equal(_np(teacher.bias), tb)
    g_proj = -2.0 * weight * (t - s @ p) / t.size  # dL/d(P s)
    g_s = g_proj @ p.T
    np.testing.assert_allclose(_np(layer.projection.kernel), p - LR * s.T @ g_proj, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np(student.kernel), sk - LR * x.T @ g_s, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(_np(student.bias), sb - LR * g_s.sum(axis=0), rtol=1e-4, atol=1e-6)
