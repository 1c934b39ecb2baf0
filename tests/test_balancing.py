"""Loss balancing (kzoo.balancing): each method against an independent NumPy computation, the train
steps on both backends, `kzoo.train` end to end with resumption, and the spec checks."""

import copy

import keras
import numpy as np
import pandas as pd
import pytest

import kzoo
from kzoo import balancing
from kzoo.errors import SpecError
from test_multitask import funnel_frame, funnel_spec

TASKS = ("a", "b")


# ------------------------------------------------------------------------------ a tiny linear model

def linear_model(optimizer, loss_weights=(1.0, 1.0), d=4, h=3, seed=0):
    """x (d) -> shared: W (d, h), no bias -> heads a, b: v_k (h, 1), no bias; MSE per task. Returns the
    compiled model and its NumPy weights {"W", "a", "b"}."""
    inputs = keras.Input((d,), name="x")
    hidden = keras.layers.Dense(h, use_bias=False, name="shared")(inputs)
    model = keras.Model(inputs, {t: keras.layers.Dense(1, use_bias=False, name=t)(hidden) for t in TASKS})
    rng = np.random.default_rng(seed)
    weights = {"W": rng.normal(0, 0.5, (d, h)), "a": rng.normal(0, 0.5, (h, 1)), "b": rng.normal(0, 0.5, (h, 1))}
    model.get_layer("shared").kernel.assign(weights["W"].astype("float32"))
    for t in TASKS:
        model.get_layer(t).kernel.assign(weights[t].astype("float32"))
    model.compile(optimizer=optimizer, loss={t: "mse" for t in TASKS}, loss_weights=dict(zip(TASKS, loss_weights)))
    return model, weights


def numpy_task_gradients(x, y, weights, loss_weights=(1.0, 1.0), sample_weight=None):
    """By hand: L_k = λ_k · Σ_i s_i (x_i W v_k − y_ki)² / n; ∇_{v_k} L_k = λ_k (2/n) (xW)ᵀ (s·e_k),
    ∇_W L_k = λ_k (2/n) xᵀ (s·e_k) v_kᵀ. Returns ({task: L_k}, {task: {"W": ..., task: ...}})."""
    n = len(x)
    hidden = x @ weights["W"]
    losses, grads = {}, {}
    for t, lam in zip(TASKS, loss_weights):
        s = np.ones((n, 1)) if sample_weight is None else sample_weight[t].reshape(-1, 1)
        e = hidden @ weights[t] - y[t]
        losses[t] = lam * float(np.sum(s * e ** 2)) / n
        grads[t] = {"W": lam * 2 / n * x.T @ (s * e) @ weights[t].T, t: lam * 2 / n * hidden.T @ (s * e)}
    return losses, grads


def batch(n=64, d=4, seed=1, scale=(1.0, 1.0)):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = {t: s * (x @ rng.normal(size=(d, 1)) + 0.3 * rng.normal(size=(n, 1))) for t, s in zip(TASKS, scale)}
    return x, y


def as32(tree):
    return keras.tree.map_structure(lambda v: np.asarray(v, "float32"), tree)


def weights_of(model) -> dict:
    inner = getattr(model, "inner", model)
    return {"W": np.asarray(inner.get_layer("shared").kernel), **{t: np.asarray(inner.get_layer(t).kernel)
                                                                   for t in TASKS}}


def wrap(model, method, **kwargs):
    wrapped = balancing.BalancedModel(model, list(TASKS), method, **kwargs)
    wrapped.compile_from_config(model.get_compile_config())
    return wrapped


def numpy_pcgrad(grads, order):
    """PCGrad by the paper's Algorithm 1, in NumPy: each g_i against the original g_j, j in `order`."""
    out = []
    for i, g in enumerate(grads):
        g = g.astype("float64").copy()
        for j in order:
            if j != i and g @ grads[j] < 0:
                g = g - (g @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        out.append(g)
    return np.stack(out)


# ------------------------------------------------------------------------------------------ PCGrad

def test_pcgrad_projects_two_conflicting_gradients_onto_each_others_normal_plane():
    g = np.array([[1.0, 0.0], [-1.0, 1.0]])  # g1·g2 = -1: conflicting
    out = np.asarray(balancing.pcgrad_project(g, [0, 1]))
    # g1 - (-1/2)·g2 = (0.5, 0.5); g2 - (-1/1)·g1 = (0, 1): each now orthogonal to the other original.
    np.testing.assert_allclose(out, [[0.5, 0.5], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose([out[0] @ g[1], out[1] @ g[0]], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(out, numpy_pcgrad(g, [1, 0]), atol=1e-6)


def test_pcgrad_leaves_gradients_that_do_not_conflict_alone():
    g = np.array([[1.0, 2.0, 0.0], [0.5, -0.1, 3.0]])  # g1·g2 = 0.3 > 0
    np.testing.assert_allclose(np.asarray(balancing.pcgrad_project(g, [0, 1])), g, atol=1e-6)
    orthogonal = np.array([[1.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(np.asarray(balancing.pcgrad_project(orthogonal, [1, 0])), orthogonal, atol=1e-6)


def test_pcgrad_with_three_tasks_follows_the_given_order():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(3, 6))
    g[1] = -0.8 * g[0] + 0.3 * rng.normal(size=6)  # 0 and 1 conflict
    g[2] = -0.5 * g[0] - 0.5 * g[1] + 0.5 * rng.normal(size=6)
    results = {}
    for order in ([0, 1, 2], [2, 1, 0]):
        got = np.asarray(balancing.pcgrad_project(g.astype("float32"), order))
        np.testing.assert_allclose(got, numpy_pcgrad(g, order), rtol=1e-4, atol=1e-5)
        results[tuple(order)] = got
    # Sequential projections do not commute: the order matters once a gradient conflicts with two others.
    assert not np.allclose(results[(0, 1, 2)], results[(2, 1, 0)], atol=1e-3)


def test_pcgrad_combine_projects_only_variables_two_tasks_reach():
    rng = np.random.default_rng(4)
    first = rng.normal(size=(2, 3))
    shared = [first, -0.7 * first + 0.4 * rng.normal(size=(2, 3))]
    own_a, own_b = rng.normal(size=(3,)), rng.normal(size=(4, 1))
    task_grads = [[shared[0], own_a, np.zeros((4, 1))], [shared[1], np.zeros(3), own_b]]
    combined, rate = balancing.pcgrad_combine(as32(task_grads), [1, 0])
    flat = np.stack([s.reshape(-1) for s in shared])
    assert flat[0] @ flat[1] < 0
    # Only the first variable is shared: the projection's dot products and norms are over it alone.
    np.testing.assert_allclose(np.asarray(combined[0]), numpy_pcgrad(flat, [1, 0]).sum(0).reshape(2, 3), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(combined[1]), own_a, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(combined[2]), own_b, rtol=1e-6)
    assert float(rate) == 1.0


def test_a_pcgrad_train_step_is_sgd_on_the_projected_numpy_gradients():
    lr = 0.05
    model, weights = linear_model(keras.optimizers.SGD(lr))
    x, y = batch(scale=(3.0, -3.0))
    y["b"] = -y["a"] + 0.1 * y["b"]  # opposite targets: the shared kernel's gradients conflict
    _, grads = numpy_task_gradients(x, y, weights)
    g = np.stack([grads[t]["W"].reshape(-1) for t in TASKS])
    assert g[0] @ g[1] < 0
    expected = {"W": weights["W"] - lr * numpy_pcgrad(g, [0, 1]).sum(0).reshape(weights["W"].shape),
                **{t: weights[t] - lr * grads[t][t] for t in TASKS}}
    wrapped = wrap(model, "pcgrad")
    logs = wrapped.train_on_batch(*as32((x, y)), return_dict=True)
    for name, value in weights_of(wrapped).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert logs["pcgrad_conflict"] == 1.0


# ---------------------------------------------------------------------------------------- GradNorm

def numpy_gradnorm_steps(x, y, weights, lr, steps, alpha, loss_weights=(1.0, 1.0)):
    """GradNorm by hand with SGD: at each step the model takes −lr·Σ w_k ∇L_k; w takes −lr·∂L_grad/∂w with
    L_grad = Σ |w_k‖∇_W L_k‖ − mean(G)·r_k^α| (the target constant), then w ← 2·w / Σ w. G_k in closed
    form: ‖∇_W L_k‖ = λ_k (2/n) ‖xᵀ e_k‖ ‖v_k‖ (an outer product's norm)."""
    weights = {k: v.copy() for k, v in weights.items()}
    w = np.ones(2)
    initial = None
    history = []
    n = len(x)
    for _ in range(steps):
        losses, grads = numpy_task_gradients(x, y, weights, loss_weights)
        L = np.array([losses[t] for t in TASKS])
        norms = np.array([lam * 2 / n * np.linalg.norm(x.T @ (x @ weights["W"] @ weights[t] - y[t]))
                          * np.linalg.norm(weights[t]) for t, lam in zip(TASKS, loss_weights)])
        np.testing.assert_allclose(norms, [np.linalg.norm(grads[t]["W"]) for t in TASKS], rtol=1e-8)
        initial = L if initial is None else initial
        ratio = (L / initial) / np.mean(L / initial)
        G = w * norms
        target = np.mean(G) * ratio ** alpha
        grad_w = np.sign(G - target) * norms  # d/dw_k |w_k n_k − T_k|, T constant
        weights["W"] = weights["W"] - lr * sum(wk * grads[t]["W"] for wk, t in zip(w, TASKS))
        for wk, t in zip(w, TASKS):
            weights[t] = weights[t] - lr * wk * grads[t][t]
        w = np.maximum(w - lr * grad_w, 1e-3)
        w = 2 * w / w.sum()
        history.append(w.copy())
    return history, weights


def test_gradnorm_weights_follow_the_papers_update_for_two_steps():
    lr, alpha = 0.02, 1.5
    model, weights = linear_model(keras.optimizers.SGD(lr), loss_weights=(1.0, 0.5))
    x, y = batch(scale=(10.0, 1.0))  # task a's loss is ~100x task b's
    expected, final = numpy_gradnorm_steps(x, y, weights, lr, 2, alpha, loss_weights=(1.0, 0.5))
    assert expected[1][0] != pytest.approx(expected[0][0], abs=1e-4)  # step 2 moves w again (r_k ≠ 1 there)
    wrapped = wrap(model, "gradnorm", shared="shared", alpha=alpha)
    for step in range(2):
        logs = wrapped.train_on_batch(*as32((x, y)), return_dict=True)
        np.testing.assert_allclose([logs["w_a"], logs["w_b"]], expected[step], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(wrapped.task_weights), expected[1], rtol=1e-4)
    for name, value in weights_of(wrapped).items():
        np.testing.assert_allclose(value, final[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_gradnorm_lowers_the_weight_of_the_task_whose_loss_is_ten_times_larger():
    model, _ = linear_model(keras.optimizers.Adam(0.01), seed=5)
    x, y = batch(n=128, scale=(10.0, 1.0), seed=6)
    wrapped = wrap(model, "gradnorm", shared="shared")
    for _ in range(8):
        logs = wrapped.train_on_batch(*as32((x, y)), return_dict=True)
    assert logs["w_a"] < 1.0 < logs["w_b"], logs
    assert logs["w_a"] + logs["w_b"] == pytest.approx(2.0, rel=1e-5)


# ------------------------------------------------------------------------------------- uncertainty

def test_uncertainty_total_is_the_formula():
    s = np.array([0.3, -1.2, 2.0], "float32")
    losses = np.array([0.7, 3.1, 0.05], "float32")
    expected = np.sum(np.exp(-s) * losses + s)
    assert float(balancing.uncertainty_total(losses, s)) == pytest.approx(expected, rel=1e-6)


def test_uncertainty_weights_learn_the_planted_noise_ratio():
    rng = np.random.default_rng(7)
    n, d, sigma = 1024, 4, (0.5, 2.0)
    x = rng.normal(size=(n, d))
    y = {t: x @ rng.normal(size=(d, 1)) + s * rng.normal(size=(n, 1)) for t, s in zip(TASKS, sigma)}
    model, _ = linear_model(keras.optimizers.Adam(0.05), h=4, seed=8)
    wrapped = wrap(model, "uncertainty")
    keras.utils.set_random_seed(0)
    wrapped.fit(*as32((x, y)), batch_size=128, epochs=20, verbose=0, shuffle=False)
    s = np.asarray(wrapped.log_variances)
    # The minimum of exp(-s)·L + s is at s = log L; an MSE head settles at L ≈ σ²: exp(s_b − s_a) → 16.
    ratio = float(np.exp(s[1] - s[0]))
    assert 16 / 1.3 < ratio < 16 * 1.3, (s, ratio)
    np.testing.assert_allclose(np.exp(s), np.square(sigma), rtol=0.2)


@pytest.mark.parametrize("method", ["gradnorm", "pcgrad", "uncertainty"])
def test_saved_weights_carry_the_balancing_state(tmp_path, method):
    """What BackupAndRestore writes (save_weights) holds s / w and L_k(0) / PCGrad's order seed."""
    x, y = batch(scale=(5.0, 1.0))
    trained = wrap(linear_model(keras.optimizers.Adam(0.05))[0], method, shared="shared", seed=3)
    for _ in range(3):
        trained.train_on_batch(*as32((x, y)))
    trained.save_weights(tmp_path / "backup.weights.h5")
    fresh = wrap(linear_model(keras.optimizers.Adam(0.05), seed=1)[0], method, shared="shared", seed=3)
    fresh.optimizer.build(fresh.trainable_variables)
    fresh.load_weights(tmp_path / "backup.weights.h5")
    state = {"gradnorm": ["task_weights", "initial_losses"], "uncertainty": ["log_variances"]}.get(method, [])
    for name in state:
        assert not np.allclose(np.asarray(getattr(fresh, name)), 0.0 if name != "task_weights" else 1.0)
        np.testing.assert_array_equal(np.asarray(getattr(fresh, name)), np.asarray(getattr(trained, name)))
    if method == "pcgrad":
        np.testing.assert_array_equal(np.asarray(fresh.order_seed.state), np.asarray(trained.order_seed.state))
        assert np.asarray(trained.order_seed.state)[1] == 3  # one draw per step
    for a, b in zip(weights_of(fresh).values(), weights_of(trained).values()):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------- task gradients

def test_task_gradients_are_each_tasks_loss_gradient_by_hand():
    model, weights = linear_model(keras.optimizers.SGD(0.1), loss_weights=(2.0, 1.0))
    x, y = batch(n=32, seed=9)
    sample_weight = {"a": np.random.default_rng(10).uniform(0, 2, 32), "b": np.ones(32)}
    sample_weight["b"][:10] = 0.0
    got = balancing.task_gradients(model, *as32((x, y, sample_weight)))
    _, expected = numpy_task_gradients(x, y, weights, (2.0, 1.0), sample_weight)
    names = [v.path.split("/")[0] for v in model.trainable_variables]
    assert set(got) == set(TASKS)
    for t in TASKS:
        for name, g in zip(names, got[t]):
            want = expected[t]["W" if name == "shared" else name] if name in ("shared", t) else np.zeros_like(g)
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6, err_msg=f"{t}: {name}")
    # `variables` picks the parameters: here the shared kernel only.
    only = balancing.task_gradients(model, *as32((x, y)), variables=[model.get_layer("shared").kernel])
    _, plain = numpy_task_gradients(x, y, weights, (2.0, 1.0))
    np.testing.assert_allclose(only["b"][0], plain["b"]["W"], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------- end to end

def two_task_spec(balancing_cfg=None, epochs=1):
    spec = funnel_spec()
    spec["tasks"] = [spec["tasks"][0], {"name": "buy", "input": "t_purchase", "label": "purchase"}]
    spec["blocks"] = spec["blocks"][:4]
    spec["train"]["epochs"] = epochs
    if balancing_cfg is not None:
        spec["train"]["balancing"] = balancing_cfg
    return spec


@pytest.mark.parametrize("cfg, logged", [
    ({"type": "uncertainty"}, ["s_ctr", "s_buy"]),  # with an embedding optimizer: a SplitOptimizer
    ({"type": "pcgrad"}, ["pcgrad_conflict"]),
], ids=["uncertainty", "pcgrad"])
def test_each_balancing_trains_with_kzoo_train_and_saves_the_plain_model(tmp_path, cfg, logged):
    frame = funnel_frame(900)
    spec = two_task_spec(cfg)
    if cfg["type"] == "uncertainty":
        spec["train"]["embedding_optimizer"] = {"type": "adagrad", "learning_rate": 0.05}
    kzoo.train(spec, frame, tmp_path / "run", verbose=0)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert {"loss", "ctr_loss", "buy_loss", "val_loss", *logged} <= set(history.columns)
    assert np.isfinite(history[logged + ["loss"]].to_numpy()).all()
    assert set(logged) <= set(pd.read_json(tmp_path / "run" / "steps.jsonl", lines=True).columns)
    if cfg["type"] == "uncertainty":
        assert (history[logged] != 0).all(axis=None)  # the log-variances moved off their start
    else:
        assert history["pcgrad_conflict"].between(0, 1).all()
    model = kzoo.load_model(tmp_path / "run")
    assert type(model).__name__ == "Functional" and set(model.output) == {"ctr", "buy"}
    assert not any("log_variances" in v.path for v in model.weights)
    serving, used = kzoo.serving_model(kzoo.load_spec(tmp_path / "run" / "spec.json"), model)
    assert set(serving.output) == {"ctr", "buy"}


def test_static_balancing_trains_the_compiled_model_itself():
    spec = kzoo.load_spec(two_task_spec({"type": "static"}))
    model = kzoo.compile(kzoo.build(spec), spec)
    assert balancing.balance(model, spec) is model
    assert balancing.balance(model, kzoo.load_spec(two_task_spec())) is model
    wrapped = balancing.balance(model, kzoo.load_spec(two_task_spec({"type": "pcgrad"})))
    assert wrapped.inner is model and wrapped.compiled and wrapped.optimizer is not model.optimizer


def test_gradnorm_run_resumes_its_weights_after_a_crash_and_exports(tmp_path):
    spec = two_task_spec({"type": "gradnorm", "shared": "shared", "alpha": 1.0}, epochs=2)
    frame = funnel_frame(900)
    kzoo.train(spec, frame, tmp_path / "whole", verbose=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        kzoo.train(spec, frame, tmp_path / "crashed", verbose=0, fail_after_epoch=1)
    kzoo.train(spec, frame, tmp_path / "crashed", verbose=0)
    whole = pd.read_csv(tmp_path / "whole" / "history.csv")
    resumed = pd.read_csv(tmp_path / "crashed" / "history.csv")
    assert list(resumed["epoch"]) == [0, 1]
    # The task weights and L_k(0) came back from the backup: the second epoch continues them exactly.
    np.testing.assert_allclose(resumed[["w_ctr", "w_buy", "loss"]], whole[["w_ctr", "w_buy", "loss"]], rtol=1e-5)
    assert resumed["w_ctr"].iloc[1] != pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(resumed["w_ctr"] + resumed["w_buy"], 2.0, rtol=1e-5)
    version = kzoo.export(tmp_path / "crashed", tmp_path / "exports")
    served = kzoo.predict(version, frame.drop(columns=["click", "purchase", "review"]).iloc[:50])
    assert {"ctr", "buy"} <= set(served.columns) and not {"w_ctr", "review"} & set(served.columns)
    assert ((served[["ctr", "buy"]] > 0) & (served[["ctr", "buy"]] < 1)).all(axis=None)


# ----------------------------------------------------------------------------------------- specs

@pytest.mark.parametrize("cfg, path, message", [
    ({"type": "gradnorm"}, "train.balancing", "gradnorm needs 'shared'"),
    ({"type": "gradnorm", "shared": "sharde"}, "train.balancing.shared",
     "'sharde' is not a block (did you mean 'shared'?)"),
    ({"type": "pcgrad", "alpha": 2.0}, "train.balancing.alpha", "applies to gradnorm"),
    ({"type": "pcgard"}, "train.balancing.type", "did you mean 'pcgrad'"),
])
def test_bad_balancing_is_a_spec_error_with_its_path(cfg, path, message):
    with pytest.raises(SpecError) as e:
        kzoo.load_spec(two_task_spec(cfg))
    assert any(p == path and message in m for p, m in e.value.problems), e.value.problems


def test_gradnorm_at_a_block_without_weights_is_a_spec_error():
    spec = two_task_spec({"type": "gradnorm", "shared": "cat"})
    spec["blocks"].append({"name": "cat", "type": "Concat", "inputs": ["shared", "emb"]})
    spec["blocks"][2]["inputs"] = ["cat"]
    spec = kzoo.load_spec(spec)
    with pytest.raises(SpecError) as e:
        balancing.balance(kzoo.compile(kzoo.build(spec), spec), spec)
    assert e.value.problems[0][0] == "train.balancing.shared" and "no trainable weights" in e.value.problems[0][1]


def test_balancing_one_task_is_a_spec_error():
    spec = two_task_spec({"type": "uncertainty"})
    spec["tasks"] = spec["tasks"][:1]
    spec["blocks"] = spec["blocks"][:3]
    with pytest.raises(SpecError) as e:
        kzoo.load_spec(copy.deepcopy(spec))
    assert ("train.balancing.type", "'uncertainty' balances two or more tasks; this spec has one") in e.value.problems
