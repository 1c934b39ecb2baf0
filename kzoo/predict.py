"""Predictions from a run dir (Keras model + preprocessing) or a SavedModel export.

    predict(target, data, keep=None)   target: a run dir, an export version dir (BASE/V) or an
                                       export base (BASE: its latest version, as TF Serving picks)
    predict_frame(model, spec, pre, frame)   served outputs of a trained model on a conformed frame

Data without the label column(s) predicts fine, and label columns that are there are not read (a
missing or odd label does not stop a prediction); `keep` passes key columns of the raw data (e.g.
user_id, ad_id) through to the output, first. Data with no rows (a header only) gives no rows, with
the output columns. Bad values are refused as in training: docs/reliability.md lists each case.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from kzoo.errors import DataError


def predict_frame(model, spec, pre, frame, batch_size: int = 4096, tasks: list[str] | None = None,
                  serving=None, calibration: dict | None = None) -> dict[str, np.ndarray]:
    """{task: served output} (probabilities, values) of a trained model on a conformed frame.

    Goes through the serving graph (kzoo.graph.serving_model), the one the export serves.
    `tasks` defaults to every task of the spec; `serving` reuses a serving model already made;
    `calibration` (a run's calibration.json, kzoo.calibration) ends calibrated tasks in their calibrator.
    """
    from kzoo.graph import serving_model
    from kzoo.pipeline import make_dataset

    if serving is None:
        serving, _ = serving_model(spec, model, tasks or [t["name"] for t in spec.tasks])
    if calibration:
        from kzoo.calibration import calibrated

        serving = calibrated(serving, calibration)
    if not len(frame):  # no rows: no batch to run, the outputs' columns all the same
        return {name: np.zeros(0, np.float32) for name in serving.output_names}
    used = list(serving.input.keys()) if isinstance(serving.input, dict) else [serving.input.name]
    ds = make_dataset(frame, spec, pre, batch_size, with_labels=False).map(lambda x: {n: x[n] for n in used})
    out = serving.predict(ds, verbose=0)
    return {k: np.asarray(v).reshape(-1) for k, v in out.items()}


def resolve_target(target) -> tuple[str, Path]:
    """("run", dir) or ("export", version dir) for a run dir, an export version or an export base."""
    target = Path(target)
    if (target / "saved_model.pb").is_file():
        return "export", target
    if (target / "model.keras").is_file() or (target / "spec.json").is_file():
        return "run", target
    from kzoo.serving.client import version_dirs

    if version_dirs(target):
        from kzoo.serving.client import latest_version_dir

        return "export", latest_version_dir(target)
    raise FileNotFoundError(f"{target} is neither a run dir (model.keras), an export version "
                            "(saved_model.pb) nor an export base holding numeric version folders")


def predict(target, data, keep: list[str] | None = None) -> pd.DataFrame:
    """Predictions of a run or an export on `data` (labels not needed); `keep` columns first."""
    kind, path = resolve_target(target)
    if kind == "export":
        raw, frame = predict_saved_model(path, data)
    else:
        from kzoo import data as kdata
        from kzoo.pipeline import on_dataset
        from kzoo.rundir import RunDir

        run = RunDir(path)
        raw, dataset = kdata.load(data)
        spec = on_dataset(run.spec(), dataset)
        frame = kdata.conform(_without_labels(raw, spec.dataset), spec.dataset, require_label=False)
        from kzoo.calibration import load as load_calibration

        frame = pd.DataFrame(predict_frame(run.model(), spec, run.preprocessor(), frame,
                                           calibration=load_calibration(run.path)))
    return _with_keys(raw, frame, keep or [])


def _without_labels(raw: pd.DataFrame, dataset: dict) -> pd.DataFrame:
    """`raw` less the dataset's label columns: a prediction does not read them."""
    labels = dataset.get("label") or []
    labels = [labels] if isinstance(labels, str) else list(labels)
    return raw.drop(columns=[c for c in labels if c in raw.columns])


def _with_keys(raw: pd.DataFrame, predictions: pd.DataFrame, keep: list[str]) -> pd.DataFrame:
    missing = [k for k in keep if k not in raw.columns]
    if missing:
        import difflib

        hints = [f"{k!r}" + (f" (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(k, map(str, raw.columns),
                                                                                              n=1)) else "")
                 for k in missing]
        raise DataError(f"--keep: column{'s' if len(missing) > 1 else ''} {', '.join(hints)} not in the data")
    keys = raw[keep].reset_index(drop=True)
    clash = [k for k in keep if k in predictions.columns]
    if clash:
        raise DataError(f"--keep: {clash} would overwrite the prediction column(s) of the same name")
    return pd.concat([keys, predictions.reset_index(drop=True)], axis=1)


def predict_saved_model(path, data, batch_size: int = 4096) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Call the export's serving_default with the data's raw columns, like a TF Serving client.
    Returns (raw frame, predictions)."""
    import tensorflow as tf

    from kzoo import data as kdata
    from kzoo.serving.requests import columns

    meta = json.loads((Path(path) / "assets.extra" / "kzoo.json").read_text())
    raw, dataset = kdata.load(data)  # bad data is refused before the SavedModel is loaded
    dataset = kdata.bundled_dataset(dataset) if dataset else meta["dataset"]
    frame = kdata.conform(_without_labels(raw, dataset), dataset, require_label=False)
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    signature = fn.structured_input_signature[1]
    cols = columns(frame, signature)
    outs: dict[str, list] = {name: [np.zeros(0, spec.dtype.as_numpy_dtype)]
                             for name, spec in fn.structured_outputs.items()}  # what no rows give
    n = len(frame)
    for start in range(0, n, batch_size):
        batch = {k: tf.constant(v[start:start + batch_size]) for k, v in cols.items()}
        for k, v in fn(**batch).items():
            outs.setdefault(k, []).append(v.numpy())
    return raw, pd.DataFrame({k: np.concatenate(v) for k, v in outs.items()})
