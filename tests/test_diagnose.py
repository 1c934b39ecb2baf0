"""`kzoo diagnose`: planted dead experts and collapsed gates are flagged; a healthy model is not."""

import json

import numpy as np
import pytest

import kzoo
from kzoo import data as kdata
from kzoo.diagnose import diagnose, gate_flags, gradient_flags

# One worker runs this module: its module-scoped fixture trains and exports once (tests/run_all.sh
# runs pytest-xdist with --dist loadgroup), not once per worker.
pytestmark = pytest.mark.xdist_group("diagnose")


def two_task_mmoe(experts=4):
    dataset = kdata.bundled_dataset("criteo")
    return {
        "name": "mmoe_small",
        "features": dataset,
        "groups": {"all": ["I1", "I2", "C1", "C2", "C3"]},
        "blocks": [
            {"name": "emb", "type": "FeatureEmbedding", "inputs": ["group:all"], "args": {"dim": 4}},
            {"name": "mmoe", "type": "MMoE", "inputs": ["emb"],
             "args": {"tasks": ["a", "b"], "experts": experts, "expert_units": [8]}},
        ],
        # Both tasks read the same label: their gradients agree, so only the planted gates differ.
        "tasks": [{"name": "a", "input": "mmoe.a"}, {"name": "b", "input": "mmoe.b"}],
        "train": {"optimizer": {"type": "adam", "learning_rate": 0.003}, "batch_size": 200, "epochs": 1},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("diag") / "run"
    kzoo.train(two_task_mmoe(), "synthetic:1000", run, verbose=0)
    return run


def plant(run, biases: dict):
    """Gates that ignore the input (zero kernel) with the given logit biases per task, and one head
    for both tasks (they read one label), saved back."""
    model = kzoo.load_model(run)
    model.get_layer("b_logit").set_weights(model.get_layer("a_logit").get_weights())
    block = model.get_layer("mmoe")
    for k, task in enumerate(block.tasks):
        gate = block.task_gates[k].logits
        kernel, _ = gate.get_weights()
        gate.set_weights([np.zeros_like(kernel), np.asarray(biases[task], "float32")])
    model.save(run / "model.keras")


def test_planted_dead_expert_and_collapsed_gate_are_flagged(trained):
    plant(trained, {"a": [-30.0, 12.0, 0.0, 0.0], "b": [-30.0, 0.0, 0.5, 0.5]})
    report = diagnose(trained, rows=400)
    gates = report["gates"][0]["tasks"]
    np.testing.assert_allclose(sum(gates["a"]["mean"]), 1.0, rtol=1e-5)
    assert gates["a"]["mean"][0] < 1e-9 and gates["a"]["top"] > 0.99
    flags = "\n".join(report["flags"])
    assert "dead expert: mmoe expert 0" in flags, flags
    assert "collapsed gate: mmoe task a" in flags and "task b" not in flags.split("collapsed gate")[-1], flags
    assert (trained / "diagnose.png").is_file()
    assert json.loads((trained / "diagnose.json").read_text())["flags"] == report["flags"]


def test_a_healthy_model_raises_no_flag(trained):
    # Each task prefers two experts, every expert is used, no gate is uniform or collapsed.
    plant(trained, {"a": [1.2, 1.0, -0.5, -0.8], "b": [-0.8, -0.4, 1.1, 1.3]})
    report = diagnose(trained, rows=400)
    assert report["flags"] == [], report["flags"]
    grads = report["gradients"]
    assert grads["shared_variables"] and all(n > 0 for n in grads["norms"].values())
    assert grads["cosine"]["a|b"] > 0  # the same label: the tasks agree


def test_flag_rules_on_planted_reports():
    uniform = [{"block": "g", "type": "MMoE", "tasks": {
        "x": {"mean": [0.25] * 4, "entropy": 0.99, "top": 0.27}, "y": {"mean": [0.25] * 4, "entropy": 0.98, "top": 0.3}}}]
    assert [f.split(":")[0] for f in gate_flags(uniform)] == ["uniform gates"]
    starved = {"norms": {"x": 1.0, "y": 0.9, "z": 0.05}, "cosine": {"x|y": 0.5, "x|z": -0.2, "y|z": 0.1}}
    flags = gradient_flags(starved)
    assert any(f.startswith("starved task: z") for f in flags) and any(f.startswith("conflict: x and z") for f in flags)
    assert not any("starved task: x" in f or "starved task: y" in f for f in flags)
