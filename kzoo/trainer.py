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
from kzoo.checkpoint import StepCheckpoint
from kzoo.distribute import setup as distribution_plan
from kzoo.evaluate import evaluate_frame
from kzoo.features import sequence_report
from kzoo.graph import build
from kzoo.optim import make_model_optimizer
from kzoo.pipeline import DEFAULT_BATCH, prepare
from kzoo.plots import plot_curves
from kzoo.rundir import RunDir
from kzoo.sparse import huge_pages_hint, row_sparse
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


class LastingEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping over a training made of one `fit` per epoch: its patience and best value
    last across the fits (and, through `state`/`load_state`, across a resume), and the best weights
    are restored once, by `finish`, when training ends."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._begun = False

    def on_train_begin(self, logs=None):
        if not self._begun:
            super().on_train_begin(logs)
            self._begun = True

    def on_train_end(self, logs=None):
        pass

    def finish(self):
        super().on_train_end()

    def state(self) -> dict:
        best = None if self.best is None else float(self.best)
        return {"stopping": {"wait": self.wait, "best": best, "best_epoch": self.best_epoch}}

    def load_state(self, extras: dict) -> None:
        saved = extras.get("stopping")
        if saved:
            self.on_train_begin()
            self.wait, self.best_epoch = saved["wait"], saved["best_epoch"]
            if saved["best"] is not None:
                self.best = saved["best"]


class _Progress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, told the run's number of epochs (each `fit` runs one)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.total_epochs = epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total_epochs})


def _built(model, prepared):
    """`model`, called once on a batch if it is not built yet (a checkpoint loads into built models)."""
    if not model.built:
        x = next(iter(prepared.train_epoch(0)))[0]
        model(x)
    return model


def _trim_logs(out: Path, first_epoch: int, logged_step: int) -> None:
    """Drop what the killed process logged after its last checkpoint: history.csv rows of epochs it
    did not finish, steps.jsonl rows past the checkpoint's step."""
    import pandas as pd

    history, steps = out / "history.csv", out / "steps.jsonl"
    if history.is_file() and history.stat().st_size:
        frame = pd.read_csv(history)
        frame[frame["epoch"] < first_epoch].to_csv(history, index=False)
    if steps.is_file() and steps.stat().st_size:
        frame = pd.read_json(steps, lines=True)
        frame = frame[frame["step"] <= logged_step]
        steps.write_text("".join(json.dumps({k: v for k, v in row.items() if pd.notna(v)}) + "\n"
                                 for row in frame.to_dict("records")))


class _FailAfterEpoch(keras.callbacks.Callback):
    """Test hook: raise after epoch N (1-based), as a crash would, to exercise resumption."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise RuntimeError(f"simulated crash after epoch {self.epoch}")


def _build_before_fit(model, batches) -> None:
    """On TensorFlow, create the optimizer's and the compiled metrics' variables before the first fit.

    Keras' TensorFlow trainer (without a distribution strategy) defers them to the first trace of the
    train step, and a tf.function that creates variables while tracing is traced a second time: every
    run paid its (largest) trace twice, 36 of MTMD's 56 s of training at test size. Keras' own
    `_symbolic_build` (what it runs under a strategy, and always on JAX) builds them from the shapes of
    `batches`' elements (no batch is read), so the train step is traced once. Does nothing once the
    optimizer is built (a later epoch, or a run resumed from its checkpoint)."""
    if keras.backend.backend() != "tensorflow" or getattr(model, "_distribute_strategy", None) is not None:
        return
    if model.optimizer is not None and model.optimizer.built:
        return
    model._symbolic_build(data_batch=batches.element_spec)


def train(spec, data="synthetic", out=None, *, epochs=None, batch_size=None, seed=None,
          verbose="auto", overwrite: bool = False, fail_after_epoch: int | None = None,
          distribute: str | None = None, mesh=None, virtual_devices: int | None = None, callbacks=()) -> dict:
    """Train `spec` on `data` into run dir `out` (default runs/<spec name>); returns metrics.json's content.

    `distribute` ("data" or "model"), `mesh` and `virtual_devices`: training on several devices
    (kzoo.distribute); `batch_size` is then the global batch.

    Re-running on an interrupted run resumes it from its last checkpoint (kzoo.checkpoint: every
    `train.checkpoint_every` batches and at epoch ends), skipping the batches already done, so it ends
    where an uninterrupted run does; on a finished run it raises RunExistsError unless `overwrite`.
    `callbacks`: more Keras callbacks for `fit` (each epoch is one `fit` call, so their
    `on_train_begin`/`on_train_end` run once per epoch).
    """
    extra_callbacks = list(callbacks)
    spec = load_spec(spec)
    cfg = {**DEFAULTS, **spec.train}
    epochs = int(epochs or cfg["epochs"])
    batch_size = int(batch_size or cfg["batch_size"])
    seed = int(cfg["seed"] if seed is None else seed)
    # before anything runs on a device, and before the seed (which resets what the plan's shape-only build drew)
    plan = distribution_plan(distribute, spec, batch_size=batch_size, mesh=mesh, virtual_devices=virtual_devices)
    run = RunDir(out or Path("runs") / spec.name)
    out = run.path
    resuming = run.start(overwrite=overwrite)
    if not resuming:  # a calibration fitted to an earlier model of this run dir must not outlive it
        (out / "calibration.json").unlink(missing_ok=True)

    start = time.time()
    keras.utils.set_random_seed(seed)
    prepared = prepare(spec, data, batch_size)
    spec, stats, pre = prepared.spec, prepared.stats, prepared.preprocessor
    train_df, val_df, test_df = (prepared.frames.get(k) for k in ("train", "validation", "test"))
    rows = prepared.rows
    run.write_setup(spec, spec.used_features(), stats, {
        "data": str(data) if not hasattr(data, "columns") else "<DataFrame>", "backend": keras.backend.backend(),
        "seed": seed, "epochs": epochs, "batch_size": batch_size, "rows": rows, "distribute": plan.describe(),
        **getattr(prepared, "info", {})})  # streamed data: files, split, rows evaluated (kzoo.streaming)
    print(f"kzoo: {spec.name} on {rows['train']} train / {rows['validation']} validation / {rows['test']} test rows "
          f"[{keras.backend.backend()}] -> {out}" + (" (resuming from backup)" if resuming else ""), file=sys.stderr)

    val_ds = prepared.validation if rows["validation"] else None
    # wrapped when `train.balancing` is not static; replicated or sharded as `plan` says
    model = plan.build(lambda: balance(compile(build(spec, stats), spec), spec))
    plan.announce()
    model = row_sparse(model)  # on JAX, wrapped for row-sparse table updates (kzoo.sparse)
    hint = huge_pages_hint(model)
    if hint:
        print(hint, file=sys.stderr)

    steps = max(1, math.ceil(rows["train"] / batch_size))
    optimizer = spec.train.get("optimizer")
    logger = StepLogger(out / "steps.jsonl", every=max(1, steps // 20), append=True)
    stop = spec.train.get("early_stopping")
    stopper = None
    if stop is not None and val_ds is not None:
        stopper = LastingEarlyStopping(monitor=stop.get("monitor", "val_loss"), patience=stop.get("patience", 1),
                                       mode=stop.get("mode", "auto"), restore_best_weights=True)
    # Default: a quarter of an epoch, between 100 and 1,000 batches (a checkpoint costs 0.1-1 s: saving
    # every few batches of a short epoch cost a 20-step MTMD run 10 of its 56 s; its epoch ends suffice).
    every = spec.train.get("checkpoint_every", min(max(100, steps // 4), 1000)) or steps + 1
    checkpoint = StepCheckpoint(run.backup, every, extras=lambda: {
        "logger_step": logger.step, **(stopper.state() if stopper else {})})
    first_epoch, skip = 0, 0
    restored = checkpoint.restore(_built(model, prepared)) if resuming else None
    if restored:
        first_epoch, skip, extras = restored
        logger.step = extras.get("logger_step", 0)
        if stopper:
            stopper.load_state(extras)
        _trim_logs(out, first_epoch, logger.step)
        print(f"kzoo: resuming at epoch {first_epoch + 1}, batch {skip + 1} of {steps}", file=sys.stderr)
    else:  # a fresh run, or one killed before its first checkpoint: start over
        for name in ("history.csv", "steps.jsonl"):
            (out / name).unlink(missing_ok=True)
    callbacks = [keras.callbacks.CSVLogger(str(out / "history.csv"), append=True), logger,
                 StopOnNonFiniteLoss(optimizer.get("learning_rate") if isinstance(optimizer, dict) else None)]
    callbacks += [stopper] if stopper else []
    callbacks += extra_callbacks
    callbacks.append(checkpoint)  # last: what it saves includes the other callbacks' state after the batch
    callbacks += [_FailAfterEpoch(fail_after_epoch)] if fail_after_epoch else []
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    if verbose:
        callbacks.append(_Progress(epochs))
    fit_start = time.time()
    epochs_run = 0
    for epoch in range(first_epoch, epochs):  # one fit per epoch: a resumed epoch skips its done batches
        batches = prepared.train_epoch(epoch)
        _build_before_fit(model, batches)
        done, skip = skip, 0
        if done:
            batches = batches.skip(done)
        checkpoint.start_epoch(epoch, done)
        with plan.scope():
            model.fit(plan.batches(batches), validation_data=plan.batches(val_ds), initial_epoch=epoch,
                      epochs=epoch + 1, callbacks=callbacks, verbose=verbose, shuffle=False)
        epochs_run += 1
        if model.stop_training:
            break
    if stopper:
        stopper.finish()
    fit_seconds = time.time() - fit_start

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
        result["sequences"] = {"test": lists}
        if train_df is not None:
            result["sequences"]["train"] = sequence_report(used, stats, train_df)
    result["fit_seconds"] = round(fit_seconds, 2)
    result["train_examples_per_s"] = round(rows["train"] * epochs_run / fit_seconds, 1) if epochs_run else None
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
