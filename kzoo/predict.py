"""Predictions from a run dir (Keras model + preprocessing) or a SavedModel export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def predict(target, data) -> pd.DataFrame:
    target = Path(target)
    if (target / "saved_model.pb").is_file():
        return predict_saved_model(target, data)
    from kzoo.features import Preprocessor
    from kzoo.trainer import load_run, predict_frame, prepare_data

    spec, prep, model = load_run(target)
    spec, frame = prepare_data(spec, data)
    pre = Preprocessor(spec.features, prep["stats"], prep["used"])
    return pd.DataFrame(predict_frame(model, spec, pre, frame))


def predict_saved_model(path, data, batch_size: int = 4096) -> pd.DataFrame:
    """Call the export's serving_default with the data's raw columns, like a TF Serving client."""
    import tensorflow as tf

    from kzoo import data as kdata
    from serving.requests import columns

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    signature = fn.structured_input_signature[1]
    meta = json.loads((Path(path) / "assets.extra" / "kzoo.json").read_text())
    frame, dataset = kdata.load(data)
    frame = kdata.conform(frame, kdata.bundled_dataset(dataset) if dataset else meta["dataset"])
    cols = columns(frame, signature)
    outs: dict[str, list] = {}
    n = len(frame)
    for start in range(0, n, batch_size):
        batch = {k: tf.constant(v[start:start + batch_size]) for k, v in cols.items()}
        for k, v in fn(**batch).items():
            outs.setdefault(k, []).append(v.numpy())
    return pd.DataFrame({k: np.concatenate(v) for k, v in outs.items()})
