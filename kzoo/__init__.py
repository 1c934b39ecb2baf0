"""kzoo: a Keras 3 recommender model zoo.

    kzoo.load_spec(path)                  -> Spec (checked; SpecError names JSON paths)
    kzoo.prepare(spec, data)              -> Prepared: raw data -> train/validation/test tf.data
                                             batches of preprocessed inputs, plus the statistics
    kzoo.build(spec, stats)               -> keras.Model: preprocessed inputs in, task logits out
    kzoo.compile(model, spec)             -> the model compiled with the spec's losses, metrics, optimizer
    kzoo.serving_model(spec, model)       -> the inference graph: served outputs (probabilities) by task
    kzoo.train(spec, data, out)           -> run dir with model.keras, metrics.json, history.csv, curves.png
    kzoo.evaluate(run, data)              -> held-out metrics of a run
    kzoo.predict(target, data)            -> DataFrame of predictions from a run dir or an export
    kzoo.export(run, base)                -> BASE/VERSION SavedModel for TF Serving
    kzoo.load_model(path)                 -> the trained keras.Model of a run dir or a .keras file

Importing kzoo registers every block with Keras, so `keras.models.load_model("run/model.keras")`
works after `import kzoo` alone. On the TensorFlow backend, TensorFlow is imported with its
start-up notices filtered (kzoo._quiet; KZOO_TF_LOGS=1 shows them).
"""

from __future__ import annotations

__version__ = "0.1.0"

from kzoo import _quiet

_quiet.import_keras()

from kzoo import blocks  # noqa: E402,F401  (registers every block for specs and Keras serialisation)
from kzoo import zoo_configs  # noqa: E402,F401
from kzoo import inttower, retrieval  # noqa: E402,F401  (register the retrieval and contrastive task types)
from kzoo import graph as _graph  # noqa: E402
from kzoo.errors import DataError, SpecError  # noqa: E402,F401
from kzoo.evaluate import evaluate  # noqa: E402,F401
from kzoo.exporter import export  # noqa: E402,F401
from kzoo.graph import serving_model as _serving_model  # noqa: E402
from kzoo.pipeline import Prepared, prepare  # noqa: E402,F401
from kzoo.predict import predict  # noqa: E402,F401
from kzoo.rundir import RunDir, RunExistsError  # noqa: E402,F401
from kzoo.spec import Spec, load_spec  # noqa: E402,F401
from kzoo.trainer import compile, train  # noqa: E402,F401,A004


def build(spec, stats: dict | None = None):
    """The training model of `spec`: a plain keras.Model you can compile and fit yourself.

    Its inputs are *preprocessed* features (one (batch, 1) tensor per feature: int32 ids for
    categoricals, normalised float32 for numerics), as `kzoo.prepare(spec, data)` makes them in
    tf.data; its outputs are one logit (or raw value) per task, which is what the spec's losses
    take (`kzoo.compile`). `kzoo.serving_model(spec, model)` gives the served outputs
    (probabilities for binary tasks).

    Args:
        spec: a Spec, a spec path, a JSON string or a dict.
        stats: vocabularies and statistics from the training split (`kzoo.prepare(...).stats`).
            Without them the vocabularies get placeholder sizes: enough to check shapes, not to train.
    """
    return _graph.build(load_spec(spec), stats)


def serving_model(spec, model, tasks: list[str] | None = None):
    """The inference graph of a trained `kzoo.build` model: the same layers without loss-only blocks
    and without what the served tasks do not reach, ending in each task's served output (a
    probability for binary tasks, the value for regression). Returns (keras.Model, features read).

    `tasks` defaults to the spec's `export.tasks`, else every task.
    """
    return _serving_model(load_spec(spec), model, tasks)


def load_model(path):
    """The trained keras.Model of a run dir (its model.keras) or of a `.keras` file (safe mode only)."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}: pass a run dir or a .keras file")
    from kzoo.rundir import load_keras_file

    return load_keras_file(path)
