"""Training: compile a model from its spec's tasks and `train` section, and fit it into a run dir.

    compile(model, spec)                   losses, loss weights and metrics from the task objects
                                           (kzoo.tasks), the optimizer from kzoo.optim
    train(spec, data, out, ...)            prepare data -> build -> compile -> fit -> test metrics,
                                           written to a run dir (kzoo.rundir); a crashed run resumes

Everything else lives in its own module: data to tf.data in kzoo.pipeline, the run dir's files
in kzoo.rundir, metrics on held-out data in kzoo.evaluate, plots in kzoo.plots.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import keras

from kzoo.balancing import balance
from kzoo.evaluate import evaluate_frame
from kzoo.features import sequence_report
from kzoo.graph import build
from kzoo.optim import make_model_optimizer
from kzoo.pipeline import DEFAULT_BATCH, prepare
from kzoo.plots import plot_curves
from kzoo.rundir import RunDir
from kzoo.spec import load_spec
from kzoo.tasks import tasks_of

DEFAULTS = {"batch_size": DEFAULT_BATCH, "epochs": 1, "seed": 0}


def compile(model: keras.Model, spec) -> keras.Model:  # noqa: A001  (mirrors keras.Model.compile)
    """Compile a `kzoo.build` model as its spec says: each task's loss on its logit, its weight and
    metrics; the spec's optimizer (and `embedding_optimizer`, schedule). Returns the model."""
    spec = load_spec(spec)
    tasks = tasks_of(spec)
    metrics = {t.name: t.metrics() for t in tasks}
    # With row weights (sample weights, label masks, downsampling) the metrics are weighted too, so
    # a masked row counts in neither a task's loss nor its metrics.
    weighted = any(t.weighted for t in tasks)
    model.compile(optimizer=make_model_optimizer(model, spec.train),
                  loss={t.name: t.loss() for t in tasks},
                  loss_weights={t.name: t.weight for t in tasks},
                  metrics=None if weighted else metrics, weighted_metrics=metrics if weighted else None)
    return model


compile_model = compile


class StepLogger(keras.callbacks.Callback):
    """Running training metrics every `every` batches (and validation at epoch ends) into a JSON-lines
    file, for curves within an epoch."""

    def __init__(self, path: Path, every: int = 10, append: bool = False):
        super().__init__()
        self.path, self.every = Path(path), every
        self.step = 0
        if append and self.path.is_file():
            import pandas as pd

            self.step = int(pd.read_json(self.path, lines=True)["step"].max())
        elif self.path.exists():
            self.path.unlink()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.every == 0 and logs:
            self._write({"step": self.step, **{k: float(v) for k, v in logs.items()}})

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            self._write({"step": self.step, **{k: float(v) for k, v in logs.items()}})

    def _write(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise TrainingDiverged at the first batch whose loss is NaN or infinite, naming the epoch and
    step (Keras' TerminateOnNaN only stops quietly, leaving a run that looks finished). The last
    finished epoch's backup stays, so a re-run after a fix resumes from it."""

    def __init__(self, learning_rate=None):
        super().__init__()
        self.epoch, self.learning_rate = 0, learning_rate

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            from kzoo.errors import TrainingDiverged

            rate = f" (learning rate {self.learning_rate})" if self.learning_rate is not None else ""
            raise TrainingDiverged(
                f"training diverged: the loss is {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}; "
                f"lower train.optimizer.learning_rate{rate}, or look for extreme values in the data "
                "(numeric features are normalised with statistics of the training split)")


class _FailAfterEpoch(keras.callbacks.Callback):
    """Test hook: raise after epoch N (1-based), as a crash would, to exercise resumption."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise RuntimeError(f"simulated crash after epoch {self.epoch}")


def train(spec, data="synthetic", out=None, *, epochs=None, batch_size=None, seed=None,
          verbose="auto", overwrite: bool = False, fail_after_epoch: int | None = None) -> dict:
    """Train `spec` on `data` into run dir `out` (default runs/<spec name>); returns metrics.json's content.

    Re-running on an interrupted run resumes it from its last finished epoch; on a finished run it
    raises RunExistsError unless `overwrite`.
    """
    spec = load_spec(spec)
    cfg = {**DEFAULTS, **spec.train}
    epochs = int(epochs or cfg["epochs"])
    batch_size = int(batch_size or cfg["batch_size"])
    seed = int(cfg["seed"] if seed is None else seed)
    run = RunDir(out or Path("runs") / spec.name)
    out = run.path
    resuming = run.start(overwrite=overwrite)
    if not resuming:  # a calibration fitted to an earlier model of this run dir must not outlive it
        (out / "calibration.json").unlink(missing_ok=True)

    start = time.time()
    keras.utils.set_random_seed(seed)
    prepared = prepare(spec, data, batch_size)
    spec, stats, pre = prepared.spec, prepared.stats, prepared.preprocessor
    train_df, val_df, test_df = (prepared.frames[k] for k in ("train", "validation", "test"))
    run.write_setup(spec, spec.used_features(), stats, {
        "data": str(data) if not hasattr(data, "columns") else "<DataFrame>", "backend": keras.backend.backend(),
        "seed": seed, "epochs": epochs, "batch_size": batch_size, "rows": {"train": len(train_df),
        "validation": len(val_df), "test": len(test_df)}})
    print(f"kzoo: {spec.name} on {len(train_df)} train / {len(val_df)} validation / {len(test_df)} test rows "
          f"[{keras.backend.backend()}] -> {out}" + (" (resuming from backup)" if resuming else ""), file=sys.stderr)

    train_ds = prepared.train
    val_ds = prepared.validation if len(val_df) else None
    model = balance(compile(build(spec, stats), spec), spec)  # wrapped when `train.balancing` is not static

    optimizer = spec.train.get("optimizer")
    callbacks = [keras.callbacks.BackupAndRestore(str(run.backup)),
                 keras.callbacks.CSVLogger(str(out / "history.csv"), append=resuming),
                 StepLogger(out / "steps.jsonl", every=max(1, len(train_df) // batch_size // 20), append=resuming),
                 StopOnNonFiniteLoss(optimizer.get("learning_rate") if isinstance(optimizer, dict) else None)]
    stop = spec.train.get("early_stopping")
    if stop is not None and val_ds is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=stop.get("monitor", "val_loss"), patience=stop.get("patience", 1),
            mode=stop.get("mode", "auto"), restore_best_weights=True))
    if fail_after_epoch:
        callbacks.append(_FailAfterEpoch(fail_after_epoch))
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    fit_start = time.time()
    history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=verbose,
                        shuffle=False)
    fit_seconds = time.time() - fit_start
    epochs_run = len(history.epoch)

    model = getattr(model, "inner", model)  # a balanced run saves, evaluates and serves its plain model
    model.save(out / "model.keras")
    for task in prepared.tasks:
        task.save(out)
    result = evaluate_frame(model, spec, pre, test_df, batch_size, prepared.tasks, reliability_dir=out)
    result["seconds"] = round(time.time() - start, 2)
    result["params"] = int(model.count_params())
    # Wall time of this process's fit() (first-step compilation included; validation included).
    used = [f for f in spec.features if f["name"] in spec.used_features()]
    lists = sequence_report(used, stats, test_df)
    if lists:  # items cut by max_len, empty histories, items the vocabulary never saw (OOV)
        result["sequences"] = {"train": sequence_report(used, stats, train_df), "test": lists}
    result["fit_seconds"] = round(fit_seconds, 2)
    result["train_examples_per_s"] = round(len(train_df) * epochs_run / fit_seconds, 1) if epochs_run else None
    run.write_metrics(result)
    plot_curves(out / "steps.jsonl", out / "curves.png", spec.name)
    shutil.rmtree(run.backup, ignore_errors=True)
    if spec.raw.get("calibration"):  # fitted on the validation split; metrics.json then reports calibrated scores
        from kzoo.calibration import calibrate

        calibration = spec.raw["calibration"]
        calibrate(run, calibration["method"], calibration.get("tasks"), frames=(val_df, test_df), spec=spec,
                  model=model, pre=pre)
        result = run.metrics()
    return result
