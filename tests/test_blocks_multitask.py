"""Multi-task blocks (SharedBottom, MMoE, PLE, CGC) against NumPy versions of the papers' formulas.

Every weight (biases and the task-embedding table included) gets a random value before a numeric
check. NumPy reads each weight by its path — expert_i is expert i, gate_k serves tasks[k]; with
task_embedding_dim > 0 one gate network task_gate serves every task, task k through row k of
task_gate/task_embeddings — recomputes the block in float64 with loops over tasks and experts, and
checks every weight took part. Outputs are compared task by task, so a swapped task or expert order fails.
"""

import keras
import numpy as np
import pytest

import kzoo
from kzoo import data as kdata
from kzoo.blocks import block_types
from kzoo.blocks.multitask import MMoE, SharedBottom
from kzoo.blocks.ple import CGC, PLE
from kzoo.errors import SpecError
from layer_test import Weights as _Weights, close as _close, run_layer_test, to_numpy as _np  # tests/ is on sys.path

B, F, D = 4, 3, 2  # batch, fields, embedding size: the blocks flatten (B, F, D) to width 6
X = np.random.default_rng(0).normal(size=(B, F, D)).astype("float32")


def _randomize(layer, seed=1):
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(scale=0.6, size=tuple(w.shape)).astype("float32") for w in layer.weights])



def _np_mlp(x, w, prefix, layers):
    """ReLU(x W_j + b_j) for every layer j (kzoo's MLP keeps the activation on the last layer)."""
    for j in range(layers):
        x = np.maximum(x @ w[f"{prefix}/dense_{j}/kernel"] + w[f"{prefix}/dense_{j}/bias"], 0.0)
    return x


def _np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_gate(x, w, prefix, gate_units, e=None):
    """softmax(W x + b), or softmax(W [x; e] + b) given a task embedding e, through ReLU layers
    `gate_units` if any."""
    if e is not None:
        x = np.concatenate([x, np.tile(e, (len(x), 1))], axis=1)
    if gate_units:
        x = _np_mlp(x, w, f"{prefix}/hidden", len(gate_units))
    return _np_softmax(x @ w[f"{prefix}/logits/kernel"] + w[f"{prefix}/logits/bias"])


def _np_task_gate(x, w, k, n_tasks, own_prefix, shared_prefix, gate_units, task_embedding_dim):
    """Task k's gate: its own gate `own_prefix` (task_embedding_dim 0), else the ONE network
    `shared_prefix` every task shares, reading [x; e_k], e_k row k of its task-embedding table."""
    if not task_embedding_dim:
        return _np_gate(x, w, own_prefix, gate_units)
    table = w[f"{shared_prefix}/task_embeddings"]
    assert table.shape == (n_tasks, task_embedding_dim)
    return _np_gate(x, w, shared_prefix, gate_units, table[k])


def _np_entropy(g):
    return -np.sum(g * np.log(g), axis=-1)


def _np_mmoe(x, w, tasks, experts, expert_layers, gate_units=None, task_embedding_dim=0):
    """out_k = sum_i g_k,i(x) f_i(x); returns (outputs, gates, expert outputs (batch, experts, units))."""
    x = x.reshape(len(x), -1).astype("float64")
    f = [_np_mlp(x, w, f"expert_{i}", expert_layers) for i in range(experts)]
    outputs, gates = {}, {}
    for k, task in enumerate(tasks):
        g = _np_task_gate(x, w, k, len(tasks), f"gate_{k}", "task_gate", gate_units, task_embedding_dim)
        gates[task] = g
        outputs[task] = sum(g[:, i:i + 1] * f[i] for i in range(experts))
    return outputs, gates, np.stack(f, axis=1)


def _np_ple(x, w, tasks, levels, shared_experts, task_experts, expert_layers, gate_units=None,
            task_embedding_dim=0):
    """Returns (outputs, the last level's task gates, what those gates mix, every gate of every level)."""
    x = x.reshape(len(x), -1).astype("float64")
    task_in, shared_in, every_gate = [x] * len(tasks), x, []
    for level in range(levels):
        p = f"level_{level}"
        shared = [_np_mlp(shared_in, w, f"{p}/shared_expert_{j}", expert_layers) for j in range(shared_experts)]
        own = [[_np_mlp(task_in[k], w, f"{p}/task_{k}_expert_{j}", expert_layers) for j in range(task_experts)]
               for k in range(len(tasks))]
        task_out, gates, mixed = [], {}, {}
        for k, task in enumerate(tasks):
            g = _np_task_gate(task_in[k], w, k, len(tasks), f"{p}/task_gate_{k}", f"{p}/task_gate", gate_units,
                              task_embedding_dim)
            candidates = own[k] + shared  # task k's own experts first, then the shared ones
            task_out.append(sum(g[:, i:i + 1] * candidates[i] for i in range(len(candidates))))
            gates[task], mixed[task] = g, np.stack(candidates, axis=1)
            every_gate.append(g)
        if level < levels - 1:
            g = _np_gate(shared_in, w, f"{p}/shared_gate", gate_units)  # no task: never task-conditioned
            candidates = [e for k in range(len(tasks)) for e in own[k]] + shared
            shared_in = sum(g[:, i:i + 1] * candidates[i] for i in range(len(candidates)))
            every_gate.append(g)
        task_in = task_out
    return dict(zip(tasks, task_in)), gates, mixed, every_gate


# ------------------------------------------------------------------ registry and outputs
def test_blocks_are_registered_with_one_output_per_task():
    types = block_types()
    for cls in (SharedBottom, MMoE, PLE, CGC):
        assert types[cls.__name__] is cls and cls.__doc__
        assert cls.output_names({"tasks": ["ctr", "cvr"], "units": [4]}) == ["ctr", "cvr"]
    assert "levels" not in CGC(tasks=["a"], shared_experts=1, task_experts=1, expert_units=[2]).get_config()


@pytest.mark.parametrize("args,match", [
    ({}, "`tasks` is required"),
    ({"tasks": []}, "non-empty list"),
    ({"tasks": "ctr"}, "non-empty list"),
    ({"tasks": ["ctr", 3]}, "strings"),
    ({"tasks": ["ctr", "cvr", "ctr"]}, r"\['ctr'\] more than once"),
])
def test_output_names_reject_missing_empty_or_duplicate_tasks(args, match):
    for cls in (SharedBottom, MMoE, PLE, CGC):
        with pytest.raises(ValueError, match=match):
            cls.output_names(args)


# ------------------------------------------------------------------ MMoE
@pytest.mark.parametrize("gate_units,task_embedding_dim", [(None, 0), ([5], 0), (None, 3), ([5, 4], 2)],
                         ids=["linear", "gate_mlp", "task_embedding", "gate_mlp_task_embedding"])
def test_mmoe_matches_numpy(gate_units, task_embedding_dim):
    tasks = ["ctr", "cvr", "stay"]
    layer = MMoE(tasks=tasks, experts=3, expert_units=[5, 4], gate_units=gate_units,
                 task_embedding_dim=task_embedding_dim)
    layer(X)
    _randomize(layer)
    w = _Weights(layer)
    outputs, gates, experts = _np_mmoe(X, w, tasks, 3, 2, gate_units, task_embedding_dim)
    w.all_read()
    got = layer(X)
    assert list(got) == tasks
    for task in tasks:
        _close(got[task], outputs[task])
    got_gates = layer.gates(X)
    assert list(got_gates) == tasks
    for task in tasks:
        _close(got_gates[task], gates[task])
    _close(layer.expert_outputs(X), experts)
    # The tasks differ (no output is another's copy) and every gate mixes several experts.
    assert not np.allclose(outputs["ctr"], outputs["cvr"])
    assert all(np.ptp(g, axis=1).max() < 0.999 for g in gates.values())


@pytest.mark.parametrize("make,experts", [
    (lambda: MMoE(tasks=["a", "b"], experts=3, expert_units=[4], gate_units=[3], task_embedding_dim=2), 3),
    (lambda: PLE(tasks=["a", "b"], shared_experts=2, task_experts=3, expert_units=[4], levels=2), 5),
    (lambda: CGC(tasks=["a", "b"], shared_experts=1, task_experts=2, expert_units=[4]), 3),
], ids=["MMoE", "PLE", "CGC"])
def test_gates_are_distributions_over_the_experts(make, experts):
    layer = make()
    layer.gates(X)  # on a layer never called: gates() builds it
    _randomize(layer, seed=4)
    gates = {t: _np(g) for t, g in layer.gates(X * 3).items()}
    assert list(gates) == ["a", "b"]
    for g in gates.values():
        assert g.shape == (B, experts)
        assert np.all(g >= 0)
        np.testing.assert_allclose(g.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")  # one expert: g = 1, as meant
def test_mmoe_with_one_expert_is_shared_bottom():
    mmoe = MMoE(tasks=["a", "b"], experts=1, expert_units=[5, 3], gate_units=[4], task_embedding_dim=2)
    bottom = SharedBottom(tasks=["a", "b"], units=[5, 3])
    mmoe(X), bottom(X)
    _randomize(mmoe, seed=2)
    w = _Weights(mmoe)
    bottom.set_weights([w[f"expert_0/dense_{j}/{v}"] for j in range(2) for v in ("kernel", "bias")])
    expected = _np_mlp(X.reshape(B, -1).astype("float64"), w, "expert_0", 2)
    for name, out in (("MMoE", mmoe(X)), ("SharedBottom", bottom(X))):
        assert list(out) == ["a", "b"], name
        for task in ("a", "b"):
            _close(out[task], expected)
    for g in mmoe.gates(X).values():
        _close(g, np.ones((B, 1)))


@pytest.mark.parametrize("direction,sign", [("balanced", -1.0), ("sparse", 1.0)])
def test_entropy_loss_is_the_weighted_mean_gate_entropy(direction, sign):
    layer = MMoE(tasks=["a", "b", "c"], experts=4, expert_units=[3], entropy_weight=0.3, entropy_direction=direction)
    layer(X)
    _randomize(layer, seed=5)
    layer(X)
    _, gates, _ = _np_mmoe(X, _Weights(layer), ["a", "b", "c"], 4, 1)
    entropy = np.mean([_np_entropy(g) for g in gates.values()])  # over the batch and the tasks
    assert 0.0 < entropy < np.log(4)
    (loss,) = layer.losses
    np.testing.assert_allclose(_np(loss), sign * 0.3 * entropy, rtol=1e-5)
    assert np.sign(_np(loss)) == sign


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # the experts: the entropy does not read them
@pytest.mark.parametrize("direction", ["balanced", "sparse"])
def test_one_step_on_the_entropy_loss_moves_the_gate_entropy(direction):
    layer = MMoE(tasks=["a", "b"], experts=4, expert_units=[3], gate_units=[4], entropy_weight=1.0,
                 entropy_direction=direction)
    inputs = keras.Input((F, D))
    model = keras.Model(inputs, layer(inputs))
    _randomize(layer, seed=6)

    def mean_entropy():
        return np.mean([_np_entropy(_np(g)) for g in layer.gates(X).values()])

    before = mean_entropy()
    model.compile(optimizer=keras.optimizers.SGD(0.05))  # no task loss: the entropy term alone
    model.fit(X, epochs=1, batch_size=B, verbose=0)
    after = mean_entropy()
    if direction == "sparse":
        assert after < before - 1e-4, (before, after)
    else:
        assert after > before + 1e-4, (before, after)


# ------------------------------------------------------------------ PLE / CGC
@pytest.mark.parametrize("levels,gate_units,task_embedding_dim,expert_units", [
    (2, None, 0, [4]),
    (2, [3], 2, [5, 4]),
    (3, None, 2, [4]),
    (1, [3], 0, [4]),
], ids=["levels2", "levels2_gate_mlp_task_embedding", "levels3", "levels1"])
def test_ple_matches_numpy(levels, gate_units, task_embedding_dim, expert_units):
    tasks = ["ctr", "cvr", "stay"]
    layer = PLE(tasks=tasks, shared_experts=2, task_experts=3, expert_units=expert_units, levels=levels,
                gate_units=gate_units, task_embedding_dim=task_embedding_dim, entropy_weight=0.2,
                entropy_direction="sparse")
    layer(X)
    _randomize(layer, seed=7)
    w = _Weights(layer)
    outputs, gates, mixed, every_gate = _np_ple(X, w, tasks, levels, 2, 3, len(expert_units), gate_units,
                                                task_embedding_dim)
    w.all_read()
    got = layer(X)
    assert list(got) == tasks
    for task in tasks:
        _close(got[task], outputs[task])
    # One entropy loss over every gate of every level: K task gates per level, a shared gate on all but the last.
    assert len(every_gate) == levels * len(tasks) + levels - 1
    (loss,) = layer.losses
    np.testing.assert_allclose(_np(loss), 0.2 * np.mean([_np_entropy(g) for g in every_gate]), rtol=1e-5)
    got_gates, got_mixed = layer.gates(X), layer.expert_outputs(X)
    for task in tasks:
        _close(got_gates[task], gates[task])
        _close(got_mixed[task], mixed[task])
    assert not np.allclose(outputs["ctr"], outputs["cvr"])


def test_cgc_is_ple_of_one_level():
    args = dict(tasks=["a", "b"], shared_experts=2, task_experts=1, expert_units=[4], gate_units=[3],
                task_embedding_dim=2)
    cgc, ple = CGC(**args), PLE(levels=1, **args)
    cgc(X), ple(X)
    _randomize(cgc, seed=8)
    assert [w.path.split("/", 1)[1] for w in cgc.weights] == [w.path.split("/", 1)[1] for w in ple.weights]
    ple.set_weights(cgc.get_weights())
    w = _Weights(cgc)
    outputs, _, _, _ = _np_ple(X, w, ["a", "b"], 1, 2, 1, 1, [3], 2)
    w.all_read()
    got_cgc, got_ple = cgc(X), ple(X)
    for task in ("a", "b"):
        _close(got_cgc[task], outputs[task])
        _close(got_ple[task], outputs[task])


# ------------------------------------------------------------------ task-conditioned gating
def _task_gate_weights(layer) -> dict:
    """{path below the layer: weight} of the task gates: gate_k / task_gate_k (one per task) or the
    one shared task_gate, every level's; not PLE's shared gate."""
    out = {}
    for w in layer.weights:
        path = w.path.split("/", 1)[1]
        parts = path.split("/")
        if any(p == "task_gate" or p.startswith(("gate_", "task_gate_")) for p in parts[:-1]):
            out[path] = w
    return out


GATED = {
    "MMoE": lambda tasks, dim: MMoE(tasks=tasks, experts=3, expert_units=[4], gate_units=[4],
                                    task_embedding_dim=dim),
    "PLE": lambda tasks, dim: PLE(tasks=tasks, shared_experts=2, task_experts=1, expert_units=[4], levels=2,
                                  gate_units=[4], task_embedding_dim=dim),
    "CGC": lambda tasks, dim: CGC(tasks=tasks, shared_experts=1, task_experts=2, expert_units=[4],
                                  task_embedding_dim=dim),
}


@pytest.mark.parametrize("case", sorted(GATED))
def test_task_conditioned_gate_is_one_network_whatever_the_number_of_tasks(case):
    levels = 2 if case == "PLE" else 1
    conditioned, per_task = {}, {}
    for n in (1, 2, 5):
        tasks = [f"t{i}" for i in range(n)]
        layer = GATED[case](tasks, 3)
        layer(X)
        gate = _task_gate_weights(layer)
        tables = {p: w for p, w in gate.items() if p.endswith("/task_embeddings")}
        assert [tuple(w.shape) for w in tables.values()] == [(n, 3)] * levels, sorted(gate)
        assert all(p.split("/")[-2] == "task_gate" for p in tables)  # task_gate/task_embeddings
        conditioned[n] = sum(int(np.prod(w.shape)) for p, w in gate.items() if p not in tables)
        plain = GATED[case](tasks, 0)
        plain(X)
        per_task[n] = sum(int(np.prod(w.shape)) for w in _task_gate_weights(plain).values())
    # One network: as many parameters for 1, 2 or 5 tasks, the table aside ...
    assert conditioned[1] == conditioned[2] == conditioned[5] > 0, conditioned
    # ... those of ONE task's own gate plus its first layer's kernel rows for e (3 inputs more per level:
    # x 4 hidden units, or x 3 experts for CGC's linear gate), where per-task gates grow with the tasks.
    assert per_task[5] == 5 * per_task[1], per_task
    assert conditioned[1] == per_task[1] + levels * 3 * {"MMoE": 4, "PLE": 4, "CGC": 3}[case]
    if case == "MMoE":  # hidden (6 + 3) x 4 + 4, logits 4 x 3 + 3
        assert conditioned[1] == (6 + 3) * 4 + 4 + 4 * 3 + 3


def _set_task_embeddings(layer, rows):
    """Every task_gate/task_embeddings table of the layer (one per level) to `rows`."""
    tables = [w for w in layer.weights if w.path.endswith("task_gate/task_embeddings")]
    assert tables
    for w in tables:
        w.assign(np.asarray(rows, dtype="float32"))


@pytest.mark.parametrize("case", sorted(GATED))
def test_tasks_with_equal_embeddings_get_equal_gates(case):
    tasks = ["a", "b", "c"]
    layer = GATED[case](tasks, 2)
    layer(X)
    _randomize(layer, seed=9)
    _set_task_embeddings(layer, [[0.9, -1.2], [-1.1, 0.7], [0.9, -1.2]])  # a and c alike, b apart
    if case == "PLE":  # a level's task gate, on one input for every task (x_k differ past level 1)
        for level, width in zip(layer.extraction, (F * D, 4)):  # level 1 reads the block's input, level 2 y_k
            z = np.random.default_rng(3).normal(size=(B, width)).astype("float32")
            gates = dict(zip(tasks, (_np_softmax(_np(g)) for g in level.task_gate([z, z, z]))))
            np.testing.assert_allclose(gates["a"], gates["c"], rtol=1e-6, atol=1e-6)
            assert np.abs(gates["a"] - gates["b"]).max() > 1e-2
    gates = {t: _np(g) for t, g in layer.gates(X).items()}
    if case != "PLE":  # the task inputs are all the block's input
        np.testing.assert_allclose(gates["a"], gates["c"], rtol=1e-6, atol=1e-6)
    assert np.abs(gates["a"] - gates["b"]).max() > 1e-2
    out = {t: _np(v) for t, v in layer(X).items()}
    assert not np.allclose(out["a"], out["b"])
    if case == "MMoE":  # one set of experts: equal gates, equal outputs
        np.testing.assert_allclose(out["a"], out["c"], rtol=1e-5, atol=1e-6)
    else:  # equal weights, but each task mixes its OWN experts (and the shared ones)
        assert not np.allclose(out["a"], out["c"])


# ------------------------------------------------------------------ the shared layer test
CONTRACT = {
    "SharedBottom": (SharedBottom, {"tasks": ["ctr", "cvr"], "units": [5, 3], "activation": "tanh", "dropout": 0.1}),
    "MMoE": (MMoE, {"tasks": ["ctr", "cvr"], "experts": 3, "expert_units": [5, 3]}),
    "MMoE_entropy": (MMoE, {"tasks": ["ctr", "cvr"], "experts": 3, "expert_units": [3], "gate_units": [4],
                            "task_embedding_dim": 2, "entropy_weight": 0.1, "entropy_direction": "sparse",
                            "dropout": 0.2}),
    "PLE": (PLE, {"tasks": ["ctr", "cvr"], "shared_experts": 2, "task_experts": 1, "expert_units": [3],
                  "levels": 2, "gate_units": [4], "task_embedding_dim": 2, "entropy_weight": 0.05,
                  "dropout": 0.1}),
    "CGC": (CGC, {"tasks": ["ctr", "cvr"], "shared_experts": 1, "task_experts": 2, "expert_units": [3]}),
}


@pytest.mark.parametrize("case", sorted(CONTRACT))
def test_layer_contract(case):
    cls, kwargs = CONTRACT[case]
    width = (kwargs.get("units") or kwargs["expert_units"])[-1]
    losses = 1 if kwargs.get("entropy_weight") else 0
    out = run_layer_test(cls, kwargs, X, {"ctr": (B, width), "cvr": (B, width)}, expected_num_losses=losses)
    assert list(out) == ["ctr", "cvr"]


# ------------------------------------------------------------------ bad arguments
MMOE = {"tasks": ["a", "b"], "experts": 2, "expert_units": [4]}
PLE_ARGS = {"tasks": ["a", "b"], "shared_experts": 1, "task_experts": 1, "expert_units": [4]}
BOTTOM = {"tasks": ["a", "b"], "units": [4]}


@pytest.mark.parametrize("cls,base,bad,name", [
    (MMoE, MMOE, {"tasks": []}, "tasks"),
    (MMoE, MMOE, {"tasks": ["a", "a"]}, "tasks"),
    (MMoE, MMOE, {"tasks": "ab"}, "tasks"),
    (MMoE, MMOE, {"experts": 0}, "experts"),
    (MMoE, MMOE, {"experts": 2.0}, "experts"),
    (MMoE, MMOE, {"expert_units": []}, "expert_units"),
    (MMoE, MMOE, {"expert_units": [4, 0]}, "expert_units"),
    (MMoE, MMOE, {"expert_units": 4}, "expert_units"),
    (MMoE, MMOE, {"gate_units": []}, "gate_units"),
    (MMoE, MMOE, {"gate_units": [3, -1]}, "gate_units"),
    (MMoE, MMOE, {"task_embedding_dim": -1}, "task_embedding_dim"),
    (MMoE, MMOE, {"task_embedding_dim": 2.5}, "task_embedding_dim"),
    (MMoE, MMOE, {"entropy_weight": -0.1}, "entropy_weight"),
    (MMoE, MMOE, {"entropy_weight": "high"}, "entropy_weight"),
    (MMoE, MMOE, {"entropy_direction": "even"}, "entropy_direction"),
    (MMoE, MMOE, {"dropout": 1.0}, "dropout"),
    (PLE, PLE_ARGS, {"shared_experts": 0}, "shared_experts"),
    (PLE, PLE_ARGS, {"task_experts": -1}, "task_experts"),
    (PLE, PLE_ARGS, {"levels": 0}, "levels"),
    (PLE, PLE_ARGS, {"expert_units": [0]}, "expert_units"),
    (PLE, PLE_ARGS, {"entropy_direction": "dense"}, "entropy_direction"),
    (PLE, PLE_ARGS, {"tasks": ["a", "b", "a"]}, "tasks"),
    (CGC, PLE_ARGS, {"task_experts": 0}, "task_experts"),
    (CGC, PLE_ARGS, {"gate_units": "4"}, "gate_units"),
    (SharedBottom, BOTTOM, {"units": []}, "units"),
    (SharedBottom, BOTTOM, {"activation": "nope"}, "activation"),
    (SharedBottom, BOTTOM, {"dropout": -0.5}, "dropout"),
    (SharedBottom, BOTTOM, {"tasks": ["a", ""]}, "tasks"),
])
def test_bad_arguments_are_rejected(cls, base, bad, name):
    with pytest.raises(ValueError, match=f"`{name}`") as err:
        cls(**{**base, **bad})
    assert "received" in str(err.value)


def test_cgc_takes_no_levels():
    with pytest.raises((TypeError, ValueError), match="levels"):
        CGC(levels=2, **PLE_ARGS)


# ------------------------------------------------------------------ in a spec
BLOCKS = {
    "MMoE": {"experts": 2, "expert_units": [4]},
    "PLE": {"shared_experts": 1, "task_experts": 1, "expert_units": [4]},
    "CGC": {"shared_experts": 1, "task_experts": 1, "expert_units": [4]},
    "SharedBottom": {"units": [4]},
}


def _spec(block_type="MMoE", task_inputs=("mmoe.a", "mmoe.b"), tower_input=None):
    blocks = [
        {"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
        {"name": "mmoe", "type": block_type, "inputs": ["emb"], "args": {"tasks": ["a", "b"], **BLOCKS[block_type]}},
    ]
    if tower_input is not None:
        blocks.append({"name": "tower", "type": "MLP", "inputs": [tower_input], "args": {"units": [2]}})
        task_inputs = (task_inputs[0], "tower")
    return {
        "name": "multitask",
        "features": kdata.bundled_dataset("criteo"),
        "groups": {"all": ["I1", "C1", "C2"]},
        "blocks": blocks,
        "tasks": [{"name": name, "type": "binary", "input": ref, "label": "label"}
                  for name, ref in zip(("a", "b"), task_inputs)],
    }


@pytest.mark.parametrize("block_type", sorted(BLOCKS))
def test_spec_wires_one_task_per_output(block_type):
    model = kzoo.build(_spec(block_type))
    assert len(model.outputs) == 2
    assert model.get_layer("mmoe").__class__.__name__ == block_type
    inputs = {t.name: np.ones((2, *t.shape[1:]), dtype=t.dtype) for t in model.inputs}
    out = model.predict(inputs, verbose=0)
    assert sorted(out) == ["a", "b"] and all(v.shape == (2, 1) for v in out.values())


@pytest.mark.parametrize("case,path,words", [
    ("task", "tasks[1].input", ["no output 'c'", "['a', 'b']"]),
    ("block", "blocks[2].inputs[0]", ["no output 'c'", "['a', 'b']"]),
    ("typo", "tasks[1].input", ["no output 'aa'", "did you mean 'a'", "['a', 'b']"]),
    ("bare", "tasks[1].input", ["several outputs", "'mmoe.a', 'mmoe.b'"]),
    ("bare block", "blocks[2].inputs[0]", ["several outputs", "'mmoe.a', 'mmoe.b'"]),
])
def test_spec_names_a_wrong_output_with_the_choices(case, path, words):
    spec = {"task": lambda: _spec(task_inputs=("mmoe.a", "mmoe.c")),
            "block": lambda: _spec(tower_input="mmoe.c"),
            "typo": lambda: _spec(task_inputs=("mmoe.a", "mmoe.aa")),
            "bare": lambda: _spec(task_inputs=("mmoe.a", "mmoe")),
            "bare block": lambda: _spec(tower_input="mmoe")}[case]()
    with pytest.raises(SpecError) as err:
        kzoo.load_spec(spec)
    problems = dict(err.value.problems)
    assert path in problems, err.value.problems
    for word in words:
        assert word in problems[path], problems[path]
