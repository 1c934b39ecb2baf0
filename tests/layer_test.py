"""One shared layer-test helper (after keras' `run_layer_test`, STYLE.md #4).

Checks a block: config round-trip through JSON by value (the spec *is* the config), the number
of losses one eager call adds, eager and symbolic calls in a functional model, a `.keras`
save/load giving the same numbers, one call under a mixed-precision policy, and one training
step that changes the trainable weights.

A block of several outputs (MMoE: {task: tensor}) is checked output by output; in the
functional model its outputs are flattened and concatenated into the one Dense head.
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np

MIXED_POLICY = "mixed_bfloat16"


def _json(value):
    """`value` as it comes back from a spec file: tuples become lists, keys strings."""
    return json.loads(json.dumps(value))


def _numpy(x):
    return keras.ops.convert_to_numpy(keras.ops.cast(x, "float32"))


def _symbolic_inputs(data):
    if isinstance(data, dict):
        return {k: keras.Input(shape=v.shape[1:], dtype=str(v.dtype), name=k) for k, v in data.items()}
    if isinstance(data, list):
        return [keras.Input(shape=v.shape[1:], dtype=str(v.dtype)) for v in data]
    return keras.Input(shape=data.shape[1:], dtype=str(data.dtype))


def _outputs(out) -> dict:
    """A layer's output(s) by name: a dict as it is, a single output as {None: output}."""
    return dict(out) if isinstance(out, dict) else {None: out}


def _expected_shapes(expected_output_shape, names) -> dict:
    """{output name: shape}: a dict of shapes as given, one shape for every output otherwise."""
    if isinstance(expected_output_shape, dict):
        return {k: tuple(v) for k, v in expected_output_shape.items()}
    return {k: tuple(expected_output_shape) for k in names}


def _check_shapes(cls, got: dict, expected: dict, batch: bool = True):
    assert set(got) == set(expected), (
        f"{cls.__name__} outputs {sorted(got, key=str)}, expected {sorted(expected, key=str)}")
    for k, v in got.items():
        shape = tuple(v.shape) if batch else tuple(v.shape[1:])
        want = expected[k] if batch else expected[k][1:]
        assert shape == want, (shape, want) if k is None else (k, shape, want)


def _batch_size(data) -> int:
    if isinstance(data, dict):
        return len(next(iter(data.values())))
    return len(data[0] if isinstance(data, list) else data)


def _check_config(cls, layer, init_kwargs):
    """The config survives JSON by value and rebuilds a layer whose own config is the same."""
    config = _json(layer.get_config())
    for key, value in init_kwargs.items():
        assert key in config, f"{cls.__name__}.get_config() lacks constructor argument {key!r}"
        assert config[key] == _json(value), (
            f"{cls.__name__}.get_config()[{key!r}] is {config[key]!r}, constructed with {value!r}")
    clone = cls.from_config(config)
    assert _json(clone.get_config()) == config, (
        f"{cls.__name__}: from_config(get_config()) has another config:\n"
        f"{_json(clone.get_config())}\n!=\n{config}")
    return config, clone


def _check_mixed_precision(cls, config, weights, input_data, eager: dict, expected: dict, expected_num_losses):
    """A layer built from the config under a mixed policy (float32 variables, low-precision
    compute) gives finite outputs of the right shape, close to the float32 ones."""
    previous = keras.config.dtype_policy()
    try:
        keras.config.set_dtype_policy(MIXED_POLICY)
        # Without its saved "dtype" the config takes the global policy, as a spec built under it would.
        mixed = cls.from_config({k: v for k, v in config.items() if k != "dtype"})
        assert mixed.compute_dtype == "bfloat16" and mixed.variable_dtype == "float32", (
            mixed.compute_dtype, mixed.variable_dtype)
        mixed(input_data)
        mixed.set_weights(weights)
        out = mixed(input_data)
        assert len(mixed.losses) == expected_num_losses, (len(mixed.losses), expected_num_losses)
        got = {k: _numpy(v) for k, v in _outputs(out).items()}
        _check_shapes(cls, got, expected)
        for k, value in got.items():
            assert np.all(np.isfinite(value)), f"{cls.__name__} under {MIXED_POLICY}: non-finite output {k}"
            # bfloat16 keeps 8 significant bits: a loose bound, but it catches a dropped term or a
            # variable created in the compute dtype.
            scale = 1.0 + float(np.max(np.abs(eager[k])))
            assert float(np.max(np.abs(value - eager[k]))) <= 0.1 * scale, (
                f"{cls.__name__} under {MIXED_POLICY} is far from float32 (output {k}): "
                f"max diff {np.max(np.abs(value - eager[k]))}")
    finally:
        keras.config.set_dtype_policy(previous)


def run_layer_test(cls, init_kwargs: dict, input_data, expected_output_shape: tuple | dict, train: bool = True,
                   expected_num_losses: int = 0, mixed_precision: bool = True):
    """Returns the eager output (NumPy; a dict of them for a block of several outputs) for further
    numeric checks.

    `expected_output_shape`: the output's shape; for a block returning {name: tensor}, a dict
    {name: shape} (or one shape that every output has).
    `expected_num_losses`: how many losses (add_loss and weight regularisers) one eager call
    of the layer leaves in `layer.losses`.
    """
    # Keras' initialisers draw from the global seed: fix it, so a layer's weights (and so the
    # test's outcome) are the same in every process, whatever ran before in the worker.
    keras.utils.set_random_seed(0)
    layer = cls(**init_kwargs)
    out = layer(input_data)
    several = isinstance(out, dict)
    eager = {k: _numpy(v) for k, v in _outputs(out).items()}
    expected = _expected_shapes(expected_output_shape, eager)
    _check_shapes(cls, eager, expected)
    assert all(np.all(np.isfinite(v)) for v in eager.values())
    losses = layer.losses
    assert len(losses) == expected_num_losses, (
        f"{cls.__name__} added {len(losses)} losses in one call, expected {expected_num_losses}")
    for loss in losses:
        value = _numpy(loss)
        assert value.shape == () and np.isfinite(value), f"{cls.__name__}: a loss is not a finite scalar: {value}"
    # A second call replaces the losses of the first instead of piling them up.
    layer(input_data)
    assert len(layer.losses) == expected_num_losses, (len(layer.losses), expected_num_losses)

    config, clone = _check_config(cls, layer, init_kwargs)
    clone(input_data)
    clone.set_weights(layer.get_weights())
    cloned = _outputs(clone(input_data))
    for k in eager:
        np.testing.assert_allclose(_numpy(cloned[k]), eager[k], rtol=1e-5, atol=1e-6, err_msg=str(k))
    assert len(clone.losses) == expected_num_losses

    if mixed_precision:
        _check_mixed_precision(cls, config, layer.get_weights(), input_data, eager, expected, expected_num_losses)

    # Inside a functional model; saved and reloaded as .keras.
    inputs = _symbolic_inputs(input_data)
    fresh = cls.from_config(config)
    outs = _outputs(fresh(inputs))
    _check_shapes(cls, outs, expected, batch=False)
    flat = [keras.layers.Flatten()(o) if len(o.shape) > 2 else o for o in outs.values()]
    head = keras.layers.Dense(1)(flat[0] if len(flat) == 1 else keras.layers.Concatenate()(flat))
    model = keras.Model(inputs, head)
    before = model.predict(input_data, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(input_data, verbose=0), before, rtol=1e-5, atol=1e-6)

    if train:
        n = _batch_size(input_data)
        y = np.random.default_rng(0).normal(size=(n, 1)).astype("float32")
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        w0 = [np.array(w) for w in fresh.trainable_weights]
        assert w0, f"{cls.__name__} has no trainable weights"
        model.fit(input_data, y, epochs=1, batch_size=n, verbose=0)
        changed = [not np.allclose(a, np.array(b)) for a, b in zip(w0, fresh.trainable_weights)]
        assert any(changed), f"{cls.__name__}: one training step changed no weight"
    return eager if several else eager[None]


class Weights(dict):
    """A layer's weights by path below the layer ("expert_0/dense_0/kernel"), as float64, for NumPy
    references; records which were read, so `all_read()` fails when the reference skipped one."""

    def __init__(self, layer):
        super().__init__({w.path.split("/", 1)[1]: keras.ops.convert_to_numpy(w).astype("float64")
                          for w in layer.weights})
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def all_read(self):
        assert self.read == set(self), f"weights the NumPy version never used: {sorted(set(self) - self.read)}"


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype="float64")


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=tol, atol=tol)
