"""Export a run as a TF Serving SavedModel: BASE/VERSION/, raw features in, task outputs out.

Export runs on the TensorFlow backend from the run's `.keras` file (DESIGN.md): a run
trained on JAX or torch is exported by a TensorFlow-backend subprocess. The serving function
is the preprocessing stage (vocabulary lookups, hashing, normalisation) composed with the
model, so a client sends the raw columns. The version is written to a hidden temporary
folder and renamed into place at the end: TF Serving only loads numeric folders, and an
interrupted export leaves no half version behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from kzoo.errors import DataError
from kzoo.export_checks import WarmupFailed, guard_inputs, guard_outputs, replay_warmup
from kzoo.rundir import RunDir
from kzoo.serving.check import WARMUP_ROWS_FILE  # the warmup rows as JSON columns, and the run's predictions

WARMUP_FILE = "tf_serving_warmup_requests"
# One warmup request per batch size: a graph runs once per new input shape before it is fast, and
# these are the sizes a deployment sees most (one user; a small page; a ranking candidate batch).
WARMUP_BATCHES = (1, 8, 64)


# The child (`python -m kzoo.exporter`) exits with this status after printing a user's error as
# "<its class>: <message>" on its last stderr line; the parent raises it again (a DataError prints in one line).
USER_ERROR_STATUS = 3
_USER_ERRORS = {"WarmupFailed": WarmupFailed, "DataError": DataError, "FileExistsError": FileExistsError}


@dataclass
class Warmup:
    """Rows for the warmup requests: `frame` (raw, conformed) from the run's validation split, or None
    for neutral rows, `source` saying which, and `expected` the run's predictions for `frame` by output."""

    frame: object
    source: str
    expected: dict | None = None


def warmup_data(run: RunDir, spec) -> Warmup:
    """The first max(WARMUP_BATCHES) rows of the run's validation split, re-read from the data
    argument recorded in run.json; neutral rows (and the reason) when that data cannot be read now."""
    from kzoo.pipeline import load_for, split_frames

    data = run.run_info().get("data")
    if not data or data == "<DataFrame>":
        return Warmup(None, "neutral rows: the run records no re-readable data argument (trained on a DataFrame)")
    try:
        spec, frame = load_for(spec, data)
        frame = split_frames(spec, frame)[1]
    except (OSError, ValueError) as err:  # DataError and SpecError are ValueErrors
        return Warmup(None, f"neutral rows: the run's data {data!r} could not be read at export ({err})")
    if not len(frame):
        return Warmup(None, f"neutral rows: the validation split of {data!r} is empty")
    return Warmup(frame.iloc[:max(WARMUP_BATCHES)].reset_index(drop=True), f"validation split of {data}")


RESERVED = ".reserved-"  # BASE/.reserved-V/pid: version V is being written by process pid


def next_version(base: Path) -> int:
    """One above every version of BASE and every version another live export has reserved there."""
    from kzoo.serving.client import version_dirs  # one rule for what counts as a version, as TF Serving's

    taken = [int(p.name) for p in version_dirs(base)]
    taken += [int(p.name[len(RESERVED):]) for p in _reservations(base)]
    return max(taken, default=0) + 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reservations(base: Path) -> list[Path]:
    """BASE's live reservations; those of a killed export (its pid gone) are removed, with its
    half-written .tmp folders."""
    live = []
    for p in sorted(base.glob(RESERVED + "*")) if base.is_dir() else []:
        pid = (p / "pid").read_text().strip() if (p / "pid").is_file() else ""
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name[len(RESERVED):].isdigit():
            live.append(p)
    for tmp in base.glob(".tmp-*-*") if base.is_dir() else []:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
    return live


def reserve(bases: list[Path], version: int | None = None) -> int:
    """Claim one version number in every base: `mkdir BASE/.reserved-V` is atomic, so two exports
    racing to a base get different versions (TF Serving ignores the non-numeric folder). With
    `version` given, that number or a FileExistsError."""
    v = int(version) if version is not None else max(next_version(b) for b in bases)
    while True:
        made = []
        try:
            for b in bases:
                b.mkdir(parents=True, exist_ok=True)
                if (b / str(v)).exists():
                    raise FileExistsError(b / str(v))
                (b / f"{RESERVED}{v}").mkdir()
                made.append(b)
                (b / f"{RESERVED}{v}" / "pid").write_text(str(os.getpid()))
            return v
        except FileExistsError:
            for b in made:
                shutil.rmtree(b / f"{RESERVED}{v}", ignore_errors=True)
            if version is not None:
                raise FileExistsError(f"{bases[0] / str(v)} exists or another export is writing it; TF Serving "
                                      "versions are immutable: pick another --version") from None
            v = max(v + 1, max(next_version(b) for b in bases))


def _die_with_parent() -> None:
    """In the TensorFlow-backend child: a killed `kzoo export` takes its child with it (Linux), so no
    orphan publishes a version after its parent is gone."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def release(bases: list[Path], version: int) -> None:
    for b in bases:
        shutil.rmtree(b / f"{RESERVED}{version}", ignore_errors=True)


def export(run, base, version: int | None = None, _reserved: bool = False) -> Path:
    """Write RUN's model to BASE/VERSION (next free version by default); returns that path.

    Safe to run several at once on one base (each gets its own version) and to kill at any point
    (no numeric folder appears until the version is complete; the next export cleans up)."""
    import keras

    run, base = Path(run), Path(base)
    bases = [base]
    spec = RunDir(run).spec()
    if any(t.get("type") == "retrieval" for t in spec.tasks) or spec.raw.get("export", {}).get("towers"):
        from kzoo.retrieval_export import tower_base

        bases += [tower_base(base, "query"), tower_base(base, "item")]  # one version number for all three
    if _reserved:  # the parent process (a JAX or torch run) reserved it
        return _export_tf(run, base, int(version))
    version = reserve(bases, version)
    try:
        if keras.backend.backend() != "tensorflow":
            # The .keras file is backend-agnostic; TensorFlow builds a plain-TF serving graph.
            env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
            cmd = [sys.executable, "-m", "kzoo.exporter", str(run), str(base), str(version)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=_die_with_parent)
            kind, _, last = (done.stderr.strip().splitlines() or [""])[-1].partition(": ")
            if done.returncode == USER_ERROR_STATUS and kind in _USER_ERRORS:
                raise _USER_ERRORS[kind](last)
            if done.returncode != 0:
                raise RuntimeError(f"export in a TensorFlow-backend process failed:\n{done.stderr[-4000:]}")
            return base / str(version)
        return _export_tf(run, base, version)
    finally:
        release(bases, version)


def _export_tf(run: Path, base: Path, version: int) -> Path:
    import keras
    import tensorflow as tf

    from kzoo.calibration import calibrated, load as load_calibration
    from kzoo.graph import export_tasks, serving_model

    run = RunDir(run)
    spec, model = run.spec(), run.model()
    retrieval = [t for t in run.tasks(spec) if t.kind == "retrieval"]
    warmup = warmup_data(run, spec)
    if retrieval:
        from kzoo.retrieval_export import export_retrieval

        return export_retrieval(run, base, version, retrieval[0], partial(write_version, warmup=warmup))
    tasks = export_tasks(spec)
    served, used = serving_model(spec, model, tasks)
    calibration = load_calibration(run.path)
    served = calibrated(served, calibration)  # RUN/calibration.json: calibrated tasks end in their calibrator
    pre = run.preprocessor(used)
    if warmup.frame is not None:  # what `kzoo predict RUN` gives for the warmup rows; serve-check compares
        from kzoo.predict import predict_frame

        warmup.expected = predict_frame(model, spec, run.preprocessor(), warmup.frame, serving=served)

    archive = keras.export.ExportArchive()
    archive.track(served)
    for layer in pre.layers.values():
        archive.track(layer)

    def serve(raw):
        raw = guard_inputs(raw)
        out = served(pre(raw), training=False)
        return guard_outputs({name: tf.reshape(value, [-1]) for name, value in out.items()})

    endpoint = archive.add_endpoint(name="serving_default", fn=serve, input_signature=[pre.signature()])
    towers = spec.raw.get("export", {}).get("towers")
    if towers:  # written before the model, which is renamed into place last
        _export_towers(run, spec, model, towers, base, version, Warmup(warmup.frame, warmup.source))
    return write_version(archive, base, version, pre, {
        "spec": spec.name, "tasks": tasks, "outputs": sorted(served.output_names), "dataset": spec.dataset,
        "params": {"served": served.count_params(), "trained": model.count_params()},
        **({"calibration": {"method": calibration["method"],
                            "tasks": [t for t in sorted(calibration["tasks"]) if t in tasks]}} if calibration else {})},
        warmup=warmup, endpoint=endpoint)


def _export_towers(run, spec, model, towers: dict, base: Path, version: int, warmup: Warmup | None = None) -> None:
    """`export.towers`: each tower's block as its own SavedModel, BASE_query/V and BASE_item/V, its
    raw columns in and its output out (`<side>_embedding`, or `<side>_<output>` per output of a
    block with several, e.g. an MTMD tower's per-task embeddings)."""
    from kzoo.retrieval import block_model
    from kzoo.retrieval_export import tower_archive, tower_base, tower_serve

    from kzoo.blocks.registry import get_block

    blocks = {b["name"]: b for b in spec.blocks}
    for side, ref in towers.items():
        tower = block_model(spec, model, ref)
        pre = run.preprocessor(list(tower.input))
        archive = tower_archive(tower, pre)
        b = blocks[ref]
        names = [f"{side}_{o}" for o in get_block(b["type"]).output_names(b.get("args", {})) or []] or \
            [f"{side}_embedding"]
        endpoint = archive.add_endpoint(name="serving_default", fn=tower_serve(tower, pre, names),
                                        input_signature=[pre.signature()])
        write_version(archive, tower_base(base, side), version, pre,
                      {"spec": spec.name, "tower": side, "block": ref, "outputs": names}, warmup=warmup,
                      endpoint=endpoint)


def write_version(archive, base: Path, version: int, pre, meta: dict, extra=None, warmup: Warmup | None = None,
                  endpoint=None) -> Path:
    """Write `archive` as BASE/VERSION: into a hidden temporary folder, with the warmup requests
    (from `warmup`'s rows, else neutral rows), assets.extra/kzoo.json (`meta` plus the input dtypes
    and what the warmup holds) and whatever `extra(folder)` writes into assets.extra (its returned
    dict joins kzoo.json); the warmup is replayed (on `endpoint`, the archive's serving function,
    else on the SavedModel loaded back) and the folder renamed into place only if every request
    succeeds with finite scores, so a failure at any step leaves no version TF Serving would load."""
    base.mkdir(parents=True, exist_ok=True)
    final = base / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; TF Serving versions are immutable: pick another --version")
    tmp = base / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive.write_out(str(tmp), verbose=False)
        meta = {**meta, "inputs": {name: spec.dtype.name for name, spec in pre.signature().items()},
                "warmup": write_warmup(tmp, pre, warmup)}
        if extra is not None:
            meta.update(extra(tmp / "assets.extra"))
        (tmp / "assets.extra" / "kzoo.json").write_text(json.dumps(meta, indent=2))
        replay_warmup(tmp, final, endpoint)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_warmup(export_dir: Path, pre, warmup: Warmup | None = None) -> dict:
    """assets.extra/tf_serving_warmup_requests: PredictRequests TF Serving replays at load time, one per
    batch size in WARMUP_BATCHES (the first B rows; capped at the rows there are). With real rows,
    assets.extra/kzoo_warmup.json keeps them as columns plus the run's predictions for them, so
    `kzoo serve-check` can test the export without the run or its data. Returns kzoo.json's "warmup"."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from kzoo.serving.requests import columns, grpc_request, json_values, placeholder_rows

    signature = pre.signature()
    extra = export_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    if warmup is None or warmup.frame is None:
        cols = placeholder_rows(signature, 4)
        info = {"source": warmup.source if warmup else "neutral rows (0 for numbers, \"\" for strings)"}
    else:
        cols = columns(warmup.frame, signature)
        info = {"source": warmup.source, "file": WARMUP_ROWS_FILE, "expected": warmup.expected is not None}
    n = len(next(iter(cols.values())))
    info["batch_sizes"] = sorted({min(b, n) for b in WARMUP_BATCHES}) if "file" in info else [n]
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
        for size in info["batch_sizes"]:
            request = grpc_request({k: v[:size] for k, v in cols.items()}, signature)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    if "file" in info:
        (extra / WARMUP_ROWS_FILE).write_text(json.dumps({
            "source": warmup.source, "batch_sizes": info["batch_sizes"],
            "inputs": {k: json_values(v) for k, v in cols.items()},
            "expected": {k: json_values(v) for k, v in (warmup.expected or {}).items()}}))
    return info


def _main(argv: list[str]) -> int:
    """`python -m kzoo.exporter RUN BASE VERSION`: the TensorFlow-backend half of `export` for runs
    trained on another backend (the parent process sets KERAS_BACKEND=tensorflow)."""
    from kzoo import _quiet

    _quiet.import_tensorflow()
    run, base, version = argv
    try:
        print(export(run, base, int(version), _reserved=True))
    except (DataError, FileExistsError) as err:
        kind = next(k for k, cls in _USER_ERRORS.items() if isinstance(err, cls))  # one line, for the parent
        print(f"{kind}: {' '.join(str(err).split())}", file=sys.stderr)
        return USER_ERROR_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
