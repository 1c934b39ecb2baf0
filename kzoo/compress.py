"""Compressed copies of a trained run: `kzoo compress RUN --out RUN2 --method int8|prune|distill`.

    compress(run, out, method, ...)   writes a NEW run dir that `kzoo export`, `kzoo evaluate` and
                                      `kzoo.predict` read as they read any run, and returns its metrics

    int8      keras `model.quantize("int8")`: Dense/EinsumDense kernels int8 with a per-output-channel
              scale (activations quantized per row at call time), FeatureEmbedding tables int8 with a
              per-row scale (kzoo.blocks.core.FeatureEmbedding.quantize, as keras.layers.Embedding).
    prune     magnitude pruning: in every Dense kernel the `sparsity` fraction of smallest |w| is set
              to zero, then a short fine-tune on the training split keeps those zeros (a mask
              constraint the optimizer applies after every update).
    distill   RUN is the teacher: a student spec trains on the same data with keras.distillation's
              Distiller and BinaryLogitsKL, L = α·L_hard(y, z_S) + (1 − α)·KL(σ(z_T/T) ‖ σ(z_S/T)).

The new run holds the source run's spec.json (the student's for distill), preprocessing.json and
the compressed model.keras; run.json adds {"compressed": {"method", "source", options}}, and
metrics.json (test split, as `kzoo train` writes it) adds parameter memory and file size.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from kzoo.errors import DataError, SpecError
from kzoo.rundir import RunDir

METHODS = ("int8", "prune", "distill")
TEACHER_COLUMN = "__teacher_logit_{}"  # a precomputed teacher logit, fed to the Distiller as an input


def compress(run, out, method: str, *, sparsity: float = 0.5, epochs: int = 1, student=None, alpha: float = 0.5,
             temperature: float = 2.0, t_squared: bool = False, batch_size: int | None = None,
             overwrite: bool = False, verbose="auto") -> dict:
    """Compress finished run `run` into a new run dir `out`; returns the new run's metrics.json content.

    Args:
        method: "int8", "prune" or "distill".
        sparsity: float in [0, 1). prune: the fraction of each Dense kernel set to zero.
        epochs: int. prune: fine-tuning epochs (0: prune only); distill: the student's epochs.
        student: a spec (path, zoo name, dict). distill: the student, trained on the teacher run's data.
        alpha: float in [0, 1]. distill: weight of the hard-label loss.
        temperature: float > 0. distill: T of the soft targets.
        t_squared: bool. distill: multiply the KL term by T² (Hinton et al.; keras' LogitsDistillation
            does). Off by default: the loss is the formula above exactly.
    """
    if method not in METHODS:
        raise SpecError([("method", f"unknown compression method {method!r}; one of {', '.join(METHODS)}")])
    source = RunDir(run)
    source.check()
    if not source.finished:
        raise FileNotFoundError(f"{source.path} is not a finished run (no metrics.json, or an interrupted one)")
    target = RunDir(out)
    if target.path.resolve() == source.path.resolve():
        raise FileExistsError(f"--out {target.path} is the source run; compress writes a new run dir")
    if method == "prune" and not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise SpecError([("sparsity", f"must be a number in [0, 1), received {sparsity!r}")])
    if method == "distill":
        _check_distill_args(student, alpha, temperature)
    if not isinstance(epochs, int) or epochs < 0:
        raise SpecError([("epochs", f"must be a non-negative integer, received {epochs!r}")])
    if (source.path / "calibration.json").is_file():
        import warnings

        # The calibrator was fitted to the source model's scores, which compression changes.
        warnings.warn(f"{source.path} is calibrated; the compressed run is not: calibrate it again "
                      f"(`kzoo calibrate {target.path} --method ...`) before exporting it", UserWarning, stacklevel=2)
    info = source.run_info()
    if info.get("data") in (None, "<DataFrame>"):
        raise DataError(f"{source.path}/run.json does not name the data the run was trained on (trained "
                        "from a DataFrame?); compress needs it for the test metrics and any training")
    target.start(overwrite=overwrite)
    start = time.time()
    options = {"int8": {}, "prune": {"sparsity": sparsity, "epochs": epochs},
               "distill": {"student": str(student) if not isinstance(student, dict) else student.get("name"),
                           "alpha": alpha, "temperature": temperature, "t_squared": t_squared,
                           "epochs": epochs}}[method]
    if method == "int8":
        model, spec, extra = _int8(source, target)
    elif method == "prune":
        model, spec, extra = _prune(source, target, sparsity, epochs, batch_size, verbose)
    else:
        model, spec, extra = _distill(source, target, student, alpha, temperature, t_squared, epochs, batch_size,
                                      verbose)
    run_info = {**info, "backend": keras.backend.backend(),
                "compressed": {"method": method, "source": str(source.path), **options}}
    (target / "run.json").write_text(json.dumps(run_info, indent=2))
    return _finish(source, target, spec, model, {**extra, "seconds": round(time.time() - start, 2)})


def _check_distill_args(student, alpha, temperature) -> None:
    if student is None:
        raise SpecError([("student", "--method distill needs --student SPEC (a spec file or a zoo model's name)")])
    if not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise SpecError([("alpha", f"must be a number in [0, 1], received {alpha!r}")])
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise SpecError([("temperature", f"must be a positive number, received {temperature!r}")])


def _finish(source: RunDir, target: RunDir, spec, model, extra: dict) -> dict:
    """Save the model, copy what a run dir needs, and write test metrics as `kzoo train` does."""
    from kzoo.evaluate import evaluate_frame
    from kzoo.pipeline import load_for, split_frames

    model.save(target / "model.keras")
    test = split_frames(*load_for(spec, target.run_info()["data"]))[2]
    result = evaluate_frame(model, spec, target.preprocessor(), test)
    result.update(params=int(model.count_params()), param_bytes=param_bytes(model),
                  model_keras_bytes=(target / "model.keras").stat().st_size, **extra)
    target.write_metrics(result)
    return result


def param_bytes(model) -> int:
    """Bytes of all the model's variables (int8 tables and kernels count one byte per value)."""
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
                   for v in model.weights))


def _copy_setup(source: RunDir, target: RunDir) -> None:
    for name in ("spec.json", "preprocessing.json"):
        shutil.copyfile(source / name, target / name)


# ---------------------------------------------------------------------------------------- int8
def quantize_int8(model) -> list[str]:
    """`model.quantize("int8")` in place; returns the paths of the layers it quantized."""
    if any(layer.quantization_mode for layer in model._flatten_layers()):
        raise SpecError([("method", "the run's model is already quantized")])
    # Only layers holding weights: a weightless layer that was never built (keras-rs' DotInteraction
    # in a reloaded DLRM) makes Keras raise instead of skipping it.
    with warnings.catch_warnings():  # Keras warns for each weighted layer it cannot quantize (norms)
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        model.quantize("int8", filters=lambda layer: bool(layer.weights))
    return [layer.path for layer in model._flatten_layers() if layer.quantization_mode == "int8"]


def _int8(source: RunDir, target: RunDir):
    _copy_setup(source, target)
    model = source.model()
    quantized = quantize_int8(model)
    return model, source.spec(), {"quantized_layers": quantized}


# ---------------------------------------------------------------------------------------- prune
class KernelMask(keras.constraints.Constraint):
    """w -> w · mask: applied by the optimizer after each update, so pruned weights stay zero."""

    def __init__(self, mask):
        self.mask = keras.ops.convert_to_tensor(mask)

    def __call__(self, w):
        return w * keras.ops.cast(self.mask, w.dtype)


def dense_kernels(model) -> list:
    """(layer path, kernel variable) of every Dense / EinsumDense layer, the head included."""
    return [(layer.path, layer._kernel) for layer in model._flatten_layers()
            if isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)) and layer.built]


def magnitude_mask(kernel: np.ndarray, sparsity: float) -> np.ndarray:
    """0/1 mask zeroing exactly round(sparsity · size) entries of smallest |w| (ties: first in C order)."""
    k = int(round(sparsity * kernel.size))
    order = np.argsort(np.abs(kernel), axis=None, kind="stable")
    mask = np.ones(kernel.size, dtype=kernel.dtype)
    mask[order[:k]] = 0
    return mask.reshape(kernel.shape)


def prune_model(model, sparsity: float) -> dict:
    """Zero the smallest weights of each Dense kernel and attach its mask as the kernel's constraint;
    returns {layer path: mask}."""
    masks = {}
    for path, kernel in dense_kernels(model):
        mask = magnitude_mask(keras.ops.convert_to_numpy(kernel), sparsity)
        kernel.assign(keras.ops.convert_to_numpy(kernel) * mask)
        kernel.constraint = KernelMask(mask)
        masks[path] = mask
    return masks


def sparsity_of(model) -> dict:
    """{layer path: fraction of exact zeros} of every Dense kernel."""
    return {path: float(np.mean(keras.ops.convert_to_numpy(k) == 0)) for path, k in dense_kernels(model)}


def _prepared_as_run(source: RunDir, spec, batch_size):
    """The source run's data, split and preprocessed again; the statistics must be the run's own."""
    from kzoo.pipeline import prepare

    prepared = prepare(spec, source.run_info()["data"], batch_size or source.run_info().get("batch_size"))
    if json.loads(json.dumps(prepared.stats)) != source.preprocessing()["stats"]:
        raise DataError(f"{source.run_info()['data']}: the data's training split no longer gives the statistics "
                        f"saved in {source.path}/preprocessing.json (the file changed since training?)")
    return prepared


def _fit(model, prepared, epochs: int, verbose) -> dict:
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    val = prepared.validation if len(prepared.frames["validation"]) else None
    history = model.fit(prepared.train, validation_data=val, epochs=epochs, verbose=verbose, shuffle=False)
    return {k: [float(x) for x in v] for k, v in history.history.items()}


def _prune(source: RunDir, target: RunDir, sparsity: float, epochs: int, batch_size, verbose):
    from kzoo.trainer import compile as compile_model

    _copy_setup(source, target)
    spec, model = source.spec(), source.model()
    masks = prune_model(model, sparsity)
    history = {}
    if epochs:
        prepared = _prepared_as_run(source, spec, batch_size)
        compile_model(model, prepared.spec)
        history = _fit(model, prepared, epochs, verbose)
    for _, kernel in dense_kernels(model):
        kernel.constraint = None  # training is over; the saved model carries no constraint
    achieved = sparsity_of(model)
    total = sum(m.size for m in masks.values())
    return model, spec, {"sparsity": {"target": sparsity, "per_kernel": achieved,
                                      "overall": sum(achieved[p] * masks[p].size for p in masks) / max(total, 1)},
                         "fine_tune": history}


# ---------------------------------------------------------------------------------------- distill
@keras.saving.register_keras_serializable(package="kzoo")
class BinaryLogitsKL(keras.distillation.DistillationLoss):
    """KL(σ(z_T/T) ‖ σ(z_S/T)) between Bernoulli distributions on (batch, tasks) logits: averaged over
    rows, summed over tasks (columns); times T² with `t_squared`.

    keras' LogitsDistillation takes a softmax over the last axis, which for one binary logit is the
    constant 1; with p = σ(a), q = σ(b), log σ(x) = −softplus(−x) and log(1 − σ(x)) = −softplus(x):
        KL = p·(softplus(−b) − softplus(−a)) + (1 − p)·(softplus(b) − softplus(a)).
    """

    def __init__(self, temperature: float = 2.0, t_squared: bool = False):
        self.temperature = float(temperature)
        self.t_squared = bool(t_squared)

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        ops = keras.ops
        a = ops.cast(teacher_outputs, "float32") / self.temperature
        b = ops.cast(student_outputs, "float32") / self.temperature
        p = ops.sigmoid(a)
        kl = p * (ops.softplus(-b) - ops.softplus(-a)) + (1 - p) * (ops.softplus(b) - ops.softplus(a))
        return ops.sum(ops.mean(kl, axis=0)) * (self.temperature ** 2 if self.t_squared else 1.0)

    def get_config(self):
        return {"temperature": self.temperature, "t_squared": self.t_squared}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _side_by_side(tensors: list, name: str):
    return tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(axis=1, name=name)(tensors)


def make_distiller(student, tasks: list, alpha: float, temperature: float, t_squared: bool = False, losses=None):
    """A keras.distillation.Distiller whose teacher is the precomputed logit column of each task.

    The Distiller asks teacher and student for the same inputs, so both take the student's inputs
    plus one `__teacher_logit_<task>` column: the teacher returns those columns, the student wrapper
    ignores them. Outputs and labels are (batch, len(tasks)) tensors, one column per task: the
    Distiller maps its loss over the label structure with keras.tree, and a dict of losses, which
    Keras tracks as a TrackedDict, does not match a plain dict of labels.
    `losses`: {task: hard loss on logits}, default binary cross-entropy.
    Returns (distiller, the hard loss to compile it with).
    """
    inputs = {name: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=name) for name, t in student.input.items()}
    inputs.update({TEACHER_COLUMN.format(t): keras.Input(shape=(1,), name=TEACHER_COLUMN.format(t)) for t in tasks})
    out = student({k: inputs[k] for k in student.input})
    wrapped = keras.Model(inputs, _side_by_side([out[t] for t in tasks], "student_logits"), name="student")
    teacher = keras.Model(inputs, _side_by_side([keras.layers.Identity()(inputs[TEACHER_COLUMN.format(t)])
                                                 for t in tasks], "teacher_logits"), name="teacher")
    distiller = keras.distillation.Distiller(teacher, wrapped, BinaryLogitsKL(temperature, t_squared),
                                             student_loss_weight=float(alpha))
    losses = losses or {t: keras.losses.BinaryCrossentropy(from_logits=True) for t in tasks}

    def hard_loss(y_true, y_pred):
        return sum(losses[t](y_true[:, i:i + 1], y_pred[:, i:i + 1]) for i, t in enumerate(tasks))

    return distiller, hard_loss


def _teacher_logits(source: RunDir, model, frame, batch_size: int) -> dict:
    """{task: (n, 1) logits} of the teacher run's model on raw `frame`, through its own preprocessing."""
    from kzoo.pipeline import make_dataset

    spec = source.spec()
    ds = make_dataset(frame, spec, source.preprocessor(), batch_size, with_labels=False)
    out = model.predict(ds.map(lambda x: {n: x[n] for n in model.input}), verbose=0)
    return {k: np.asarray(v, "float32").reshape(-1, 1) for k, v in out.items()}


def _distill(source: RunDir, target: RunDir, student, alpha, temperature, t_squared, epochs, batch_size, verbose):
    import tensorflow as tf

    from kzoo.features import raw_arrays
    from kzoo.graph import build
    from kzoo.optim import make_model_optimizer
    from kzoo.pipeline import labels_of, prepare
    from kzoo.spec import load_spec
    from kzoo.tasks import tasks_of

    teacher_spec = source.spec()
    data = source.run_info()["data"]
    student_spec = load_spec(student)
    prepared = prepare(student_spec, data, batch_size or source.run_info().get("batch_size"))
    spec = prepared.spec
    if spec.dataset.get("name") != teacher_spec.dataset.get("name"):
        raise DataError(f"the teacher {source.path} was trained on the '{teacher_spec.dataset.get('name')}' dataset "
                        f"and the student spec {spec.name} is on '{spec.dataset.get('name')}'; distill a student "
                        "written for the teacher's dataset")
    tasks = tasks_of(spec)
    teacher_tasks = {t["name"]: t.get("type") for t in teacher_spec.tasks}
    for i, t in enumerate(tasks):
        if t.kind != "binary" or teacher_tasks.get(t.name) != "binary" or t.weighted:
            raise SpecError([(f"tasks[{i}]", f"distill needs unweighted binary tasks of the same name in teacher and "
                                             f"student; the student has '{t.name}' ({t.kind}), the teacher's tasks "
                                             f"are {teacher_tasks}")], spec.source)
    names = [t.name for t in tasks]
    teacher = source.model()
    model = build(spec, prepared.stats)
    distiller, hard_loss = make_distiller(model, names, alpha, temperature, t_squared,
                                       {t.name: t.loss() for t in tasks})
    distiller.compile(optimizer=make_model_optimizer(model, spec.train), loss=hard_loss)
    pre = prepared.preprocessor

    def dataset(part):
        frame = prepared.frames[part]
        logits = _teacher_logits(source, teacher, frame, prepared.batch_size)
        x = raw_arrays(frame, pre.raw)
        labels = labels_of(frame, spec, tasks)[0]
        labels = np.concatenate([labels[t] for t in names], axis=1)  # (n, tasks), as make_distiller's outputs
        ds = tf.data.Dataset.from_tensor_slices((x, {TEACHER_COLUMN.format(t): logits[t] for t in names}, labels))
        return ds.batch(prepared.batch_size).map(lambda a, z, y: ({**pre(a), **z}, y)).cache().prefetch(2)

    train, val = dataset("train"), (dataset("validation") if len(prepared.frames["validation"]) else None)
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    history = distiller.fit(train, validation_data=val, epochs=epochs or 1, verbose=verbose, shuffle=False)
    target.write_setup(spec, spec.used_features(), prepared.stats, {})
    return model, spec, {"teacher": {"run": str(source.path), "params": int(teacher.count_params())},
                         "fine_tune": {k: [float(x) for x in v] for k, v in history.history.items()}}
