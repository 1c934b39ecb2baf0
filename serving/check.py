"""`kzoo serve-check EXPORT`: does this export serve what the run predicts? One command before deploying.

    from kzoo.serve_check import serve_check          # the rows and reference (reads the run)
    checks = serve_check("exports/dcn_v2")               # or a version dir, exports/dcn_v2/3
    print(table(checks)); exit(0 if passed(checks) else 1)

In a fresh process that imports TensorFlow and kzoo's serving clients only (no Keras model code,
no KERAS_BACKEND), it
  1. loads the SavedModel,
  2. replays every warmup record (PredictionLog -> serving_default) and compares each with the run's
     predictions recorded at export for those rows (assets.extra/kzoo_warmup.json),
  3. serves the version with the testing server (serving/testing_server.py, on 127.0.0.1) and sends
     real rows through RestClient (columnar and row formats) and GrpcClient,
and compares every answer with the reference to TOLERANCE. The rows and the reference are, by
default, what the export recorded (the first rows of the run's validation split and what
`kzoo predict RUN` gave for them); `run=` recomputes the reference with `kzoo.predict(run, rows)`
now, and `data=` takes the rows from other data (with `run=`).

A retrieval export (item_ids and scores out) records no reference: its answers are checked
against the SavedModel called directly in the same process, and the report says so.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TOLERANCE = 1e-5  # |served - reference| <= TOLERANCE * (1 + |reference|), per value
WARMUP_ROWS_FILE = "kzoo_warmup.json"  # written by kzoo.exporter: the warmup rows and the run's predictions
# Modules whose presence in the serving process would mean it depends on kzoo's model code.
MODEL_CODE = ("kzoo.graph", "kzoo.blocks", "kzoo.features", "kzoo.trainer", "kzoo.predict")


class CheckError(ValueError):
    """A serve-check request that cannot run (no export there, no reference to compare with)."""


def resolve_export(path) -> Path:
    """The version dir to check: EXPORT itself (BASE/V) or the latest version of a base."""
    from kzoo.serving.client import latest_version_dir

    path = Path(path).absolute()  # the checks run in a child process with another working dir
    if not path.exists():
        raise CheckError(f"{path}: no such export (expected BASE or BASE/VERSION with saved_model.pb)")
    if not (path / "saved_model.pb").is_file():
        try:
            path = latest_version_dir(path)
        except FileNotFoundError as err:
            raise CheckError(str(err)) from None
        if not (path / "saved_model.pb").is_file():
            raise CheckError(f"{path}: no saved_model.pb; not a complete export")
    if not (path / "assets.extra" / "kzoo.json").is_file():
        raise CheckError(f"{path}: no assets.extra/kzoo.json; not a kzoo export (export it with `kzoo export`)")
    return path


def run_checks(version: Path, case: dict, model_name: str = "kzoo") -> dict:
    """Run the checks of `case` (rows and reference, from kzoo.serve_check.reference: the only part
    that reads a run's model or data, so this module stays free of model code) in a fresh
    TensorFlow-only process; {"export", "source", "reference", "checks"}."""
    with tempfile.TemporaryDirectory(prefix="kzoo-serve-check-") as tmp:
        given, result = Path(tmp) / "case.json", Path(tmp) / "result.json"
        given.write_text(json.dumps({**case, "model_name": model_name}))
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        done = subprocess.run([sys.executable, "-c", _CHILD, str(version), str(given), str(result)],
                              capture_output=True, text=True, env=env, cwd=tmp)
        if done.returncode != 0 or not result.is_file():
            tail = "\n".join(line for line in done.stderr.splitlines()[-15:])
            checks = [{"name": "serving process", "ok": False, "detail": f"exited {done.returncode}:\n{tail}"}]
        else:
            checks = json.loads(result.read_text())
    return {"export": str(version), "source": case["source"], "reference": case["reference"], "checks": checks}


def passed(report: dict) -> bool:
    return all(c["ok"] for c in report["checks"])


def table(report: dict) -> str:
    checks = report["checks"]
    lines = [f"serve-check {report['export']}", f"  rows: {report['source']}",
             f"  reference: {report['reference']}; tolerance {TOLERANCE:g} (relative above 1)",
             f"  {'check':<30} {'result':<6} detail"]
    for c in checks:
        first, *rest = c["detail"].splitlines() or [""]
        lines.append(f"  {c['name']:<30} {'PASS' if c['ok'] else 'FAIL':<6} {first}")
        lines += [f"  {'':<37} {line}" for line in rest]
    good = sum(c["ok"] for c in checks)
    lines.append(f"serve-check: {'PASS' if good == len(checks) else 'FAIL'} ({good}/{len(checks)} checks passed)")
    return "\n".join(lines)


# ---------------------------------------------------------------- the serving process
# Run with `python -c`: importing kzoo.serving.* through the kzoo package would run kzoo/__init__
# (Keras and every block). Registering the package without running its __init__ keeps this
# process to TensorFlow, tensorflow-serving-api and the serving modules, as a deployment has.
_CHILD = """
import importlib.util, sys
sys.modules["kzoo"] = importlib.util.module_from_spec(importlib.util.find_spec("kzoo"))
from kzoo.serving import check
sys.exit(check._child(*sys.argv[1:]))
"""


def compare(got: dict, want: dict, rows: int | None = None) -> tuple[bool, str]:
    """Each output of `want` against `got` (first `rows` rows of want); (ok, words)."""
    worst, problems = 0.0, []
    for name, values in want.items():
        if name not in got:
            problems.append(f"output {name!r} missing (served: {sorted(got)})")
            continue
        ref = np.asarray(values[:rows] if rows else values)
        out = np.asarray(got[name]).reshape(ref.shape) if np.size(got[name]) == ref.size else None
        if out is None:
            problems.append(f"{name}: {np.size(got[name])} values, expected {ref.size}")
        elif ref.dtype.kind in "OUS":  # item ids
            same = np.array([str(a.decode() if isinstance(a, bytes) else a) for a in out.ravel()]) == ref.astype(str).ravel()
            if not same.all():
                problems.append(f"{name}: {int((~same).sum())} of {ref.size} differ")
        else:
            ref = ref.astype(np.float64)
            diff = np.abs(out.astype(np.float64) - ref)
            worst = max(worst, float(np.nanmax(diff)) if diff.size else 0.0)
            bad = ~(diff <= TOLERANCE * (1 + np.abs(ref)))
            if bad.any():
                i = int(np.flatnonzero(bad.ravel())[0])
                problems.append(f"{name}: {int(bad.sum())} of {ref.size} values off, e.g. row {i}: served "
                                f"{out.ravel()[i]:.7g}, reference {ref.ravel()[i]:.7g}")
    unchecked = sorted(set(got) - set(want))
    if unchecked and want:
        problems.append(f"served output(s) {unchecked} have no reference")
    if problems:
        return False, "; ".join(problems)
    return True, f"max |diff| {worst:.1e}"


def _child(version: str, case_file: str, result_file: str) -> int:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from kzoo.serving.client import GrpcClient, RestClient
    from kzoo.serving.testing_server import WARMUP_FILE, serve

    version = Path(version)
    case = json.loads(Path(case_file).read_text())
    checks = []

    def add(name, ok, detail):
        checks.append({"name": name, "ok": bool(ok), "detail": detail})
        Path(result_file).write_text(json.dumps(checks))  # what ran so far survives a crash

    try:
        fn = tf.saved_model.load(str(version)).signatures["serving_default"]
    except Exception as err:  # noqa: BLE001 (any load failure is the finding)
        add("load SavedModel", False, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}")
        return 0
    signature = fn.structured_input_signature[1]
    code = sorted(m for m in MODEL_CODE if m in sys.modules)
    add("load SavedModel (TF only)", not code, f"serving_default: {len(signature)} inputs -> "
        f"{', '.join(sorted(fn.structured_outputs))}" + (f"; model code imported: {code}" if code else
                                                         "; no kzoo model code imported"))

    def call(columns: dict) -> dict:  # a recorded null is a missing numeric, NaN
        feed = {k: tf.constant([math.nan if v is None else v for v in columns[k]], s.dtype)
                for k, s in signature.items()}
        return {k: v.numpy() for k, v in fn(**feed).items()}

    recorded_path = version / "assets.extra" / WARMUP_ROWS_FILE
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else {}
    warmup = version / "assets.extra" / WARMUP_FILE
    try:
        sizes, words, ok = [], [], True
        for i, record in enumerate(tf.data.TFRecordDataset(str(warmup))):
            request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            feed = {k: tf.constant(tf.make_ndarray(p)) for k, p in request.inputs.items()}
            got = {k: v.numpy() for k, v in fn(**feed).items()}
            size = len(next(iter(feed.values())))
            sizes.append(size)
            good, text = True, "ran"
            if recorded.get("inputs"):  # the record holds the recorded rows, and gives their predictions
                if not _same_rows(feed, recorded["inputs"], size):
                    good, text = False, f"record {i} is not the first {size} rows of {WARMUP_ROWS_FILE}"
                elif recorded.get("expected"):
                    good, text = compare(got, recorded["expected"], size)
            ok &= good
            words.append(f"batch {size}: {text}")
        if not sizes:
            ok, words = False, [f"{warmup} holds no records"]
        add("warmup replay", ok, f"{len(sizes)} record(s)" +
            ("" if recorded.get("expected") else " (no recorded predictions to compare with)") +
            "".join(f"\n{w}" for w in words))
    except (tf.errors.OpError, ValueError, TypeError, KeyError) as err:
        add("warmup replay", False, f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}")

    inputs, expected = case["inputs"], case["expected"]
    if not expected:  # retrieval: the SavedModel called directly is the reference
        expected = {k: v.tolist() for k, v in call(inputs).items()}
    n = len(next(iter(inputs.values())))
    name = case["model_name"]
    with tempfile.TemporaryDirectory(prefix="kzoo-serve-check-base-") as base:
        # Serve exactly this version (a copy outside a base may have any folder name).
        os.symlink(version.resolve(), Path(base) / (version.name if version.name.isdigit() else "1"))
        try:
            with serve(base, name) as server:
                rest = RestClient(server.rest_url, name, str(version))
                for label, columnar in (("REST predict (columnar)", True), ("REST predict (rows)", False)):
                    _checked(add, label, lambda: rest.predict(inputs, columnar=columnar), expected, n)
                with GrpcClient(server.grpc_target, name, str(version)) as grpc_client:
                    _checked(add, "gRPC Predict", lambda: grpc_client.predict(inputs), expected, n)
        except (OSError, RuntimeError) as err:  # the testing server refused the version (e.g. its warmup failed)
            add("testing server", False, str(err).splitlines()[0][:300])
    return 0


def _checked(add, label: str, send, expected: dict, n: int) -> None:
    from kzoo.serving.client import ServingError

    try:
        ok, text = compare(send(), expected)
    except ServingError as err:
        ok, text = False, str(err)[:300]
    add(label, ok, f"{n} rows, {text}")


def _same_rows(feed: dict, recorded: dict, size: int) -> bool:
    """The warmup record's tensors equal the first `size` recorded rows (a recorded null is a NaN)."""
    if set(feed) != set(recorded):
        return False
    for k, tensor in feed.items():
        got, want = tensor.numpy().tolist(), recorded[k][:size]
        if len(got) != len(want):
            return False
        for a, b in zip(got, want):
            if isinstance(a, bytes):
                a = a.decode()
            if not (a == b or (b is None and isinstance(a, float) and math.isnan(a))):
                return False
    return True
