"""One shared layer-test helper (after keras' `run_layer_test`, STYLE.md #4).

Checks a block: config round-trip (the spec *is* the config), eager and symbolic calls in a
functional model, a `.keras` save/load giving the same numbers, and one training step that
changes the trainable weights.
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np


def _call(layer, data):
    return layer(data)


def _symbolic_inputs(data):
    if isinstance(data, dict):
        return {k: keras.Input(shape=v.shape[1:], dtype=str(v.dtype), name=k) for k, v in data.items()}
    if isinstance(data, list):
        return [keras.Input(shape=v.shape[1:], dtype=str(v.dtype)) for v in data]
    return keras.Input(shape=data.shape[1:], dtype=str(data.dtype))


def run_layer_test(cls, init_kwargs: dict, input_data, expected_output_shape: tuple, train: bool = True):
    """Returns the eager output (NumPy) for further numeric checks."""
    layer = cls(**init_kwargs)
    eager = keras.ops.convert_to_numpy(_call(layer, input_data))
    assert eager.shape == tuple(expected_output_shape), (eager.shape, expected_output_shape)
    assert np.all(np.isfinite(eager))

    # Config survives JSON and rebuilds an equivalent layer (the spec is the config).
    config = json.loads(json.dumps(layer.get_config()))
    for key, value in init_kwargs.items():
        assert key in config, f"get_config() lacks constructor argument {key!r}"
    clone = cls.from_config(config)
    _call(clone, input_data)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(_call(clone, input_data)), eager, rtol=1e-5, atol=1e-6)

    # Inside a functional model; saved and reloaded as .keras.
    inputs = _symbolic_inputs(input_data)
    fresh = cls.from_config(config)
    out = fresh(inputs)
    assert tuple(out.shape[1:]) == tuple(expected_output_shape[1:]), (out.shape, expected_output_shape)
    head = keras.layers.Dense(1)(keras.layers.Flatten()(out) if len(out.shape) > 2 else out)
    model = keras.Model(inputs, head)
    before = model.predict(input_data, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.keras")
        model.save(path)
        reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(reloaded.predict(input_data, verbose=0), before, rtol=1e-5, atol=1e-6)

    if train:
        n = len(next(iter(input_data.values())) if isinstance(input_data, dict) else
                input_data[0] if isinstance(input_data, list) else input_data)
        y = np.random.default_rng(0).normal(size=(n, 1)).astype("float32")
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        w0 = [np.array(w) for w in fresh.trainable_weights]
        assert w0, f"{cls.__name__} has no trainable weights"
        model.fit(input_data, y, epochs=1, batch_size=n, verbose=0)
        changed = [not np.allclose(a, np.array(b)) for a, b in zip(w0, fresh.trainable_weights)]
        assert any(changed), f"{cls.__name__}: one training step changed no weight"
    return eager
