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
from pathlib import Path

from kzoo.rundir import RunDir

WARMUP_FILE = "tf_serving_warmup_requests"


def next_version(base: Path) -> int:
    from kzoo.serving.client import version_dirs  # one rule for what counts as a version, as TF Serving's

    return max((int(p.name) for p in version_dirs(base)), default=0) + 1


def export(run, base, version: int | None = None) -> Path:
    """Write RUN's model to BASE/VERSION (next free version by default); returns that path."""
    import keras

    run, base = Path(run), Path(base)
    bases = [base]
    spec = RunDir(run).spec()
    if any(t.get("type") == "retrieval" for t in spec.tasks) or spec.raw.get("export", {}).get("towers"):
        from kzoo.retrieval_export import tower_base

        bases += [tower_base(base, "query"), tower_base(base, "item")]  # one version number for all three
    version = int(version) if version is not None else max(next_version(b) for b in bases)
    final = base / str(version)
    for b in bases:
        if (b / str(version)).exists():
            raise FileExistsError(f"{b / str(version)} exists; TF Serving versions are immutable: pick another --version")
    if keras.backend.backend() != "tensorflow":
        # The .keras file is backend-agnostic; TensorFlow builds a plain-TF serving graph.
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        cmd = [sys.executable, "-m", "kzoo.exporter", str(run), str(base), str(version)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"export in a TensorFlow-backend process failed:\n{done.stderr[-4000:]}")
        return final
    return _export_tf(run, base, version)


def _export_tf(run: Path, base: Path, version: int) -> Path:
    import keras
    import tensorflow as tf

    from kzoo.graph import export_tasks, serving_model

    run = RunDir(run)
    spec, model = run.spec(), run.model()
    retrieval = [t for t in run.tasks(spec) if t.kind == "retrieval"]
    if retrieval:
        from kzoo.retrieval_export import export_retrieval

        return export_retrieval(run, base, version, retrieval[0], write_version)
    tasks = export_tasks(spec)
    served, used = serving_model(spec, model, tasks)
    pre = run.preprocessor(used)

    archive = keras.export.ExportArchive()
    archive.track(served)
    for layer in pre.layers.values():
        archive.track(layer)

    def serve(raw):
        out = served(pre(raw), training=False)
        return {name: tf.reshape(value, [-1]) for name, value in out.items()}

    archive.add_endpoint(name="serving_default", fn=serve, input_signature=[pre.signature()])
    towers = spec.raw.get("export", {}).get("towers")
    if towers:  # written before the model, which is renamed into place last
        _export_towers(run, spec, model, towers, base, version)
    return write_version(archive, base, version, pre, {
        "spec": spec.name, "tasks": tasks, "outputs": sorted(served.output_names), "dataset": spec.dataset,
        "params": {"served": served.count_params(), "trained": model.count_params()}})


def _export_towers(run, spec, model, towers: dict, base: Path, version: int) -> None:
    """`export.towers`: each tower's block as its own SavedModel, BASE_query/V and BASE_item/V, its
    raw columns in and its output out (`<side>_embedding`, or `<side>_<output>` per output of a
    block with several, e.g. an MTMD tower's per-task embeddings)."""
    import keras

    from kzoo.retrieval import block_model
    from kzoo.retrieval_export import tower_base

    from kzoo.blocks.registry import get_block

    blocks = {b["name"]: b for b in spec.blocks}
    for side, ref in towers.items():
        tower = block_model(spec, model, ref)
        pre = run.preprocessor(list(tower.input))
        archive = keras.export.ExportArchive()
        archive.track(tower)
        for layer in pre.layers.values():
            archive.track(layer)
        b = blocks[ref]
        names = [f"{side}_{o}" for o in get_block(b["type"]).output_names(b.get("args", {})) or []] or \
            [f"{side}_embedding"]
        archive.add_endpoint(name="serving_default", fn=_tower_serve(tower, pre, names),
                             input_signature=[pre.signature()])
        write_version(archive, tower_base(base, side), version, pre,
                      {"spec": spec.name, "tower": side, "block": ref, "outputs": names})


def _tower_serve(tower, pre, names: list):
    def serve(raw):
        out = tower(pre(raw), training=False)
        if isinstance(out, dict):  # a block of several outputs, in its declared order
            out = [out[n.split("_", 1)[1]] for n in names]
        return dict(zip(names, out if isinstance(out, (list, tuple)) else [out]))

    return serve


def write_version(archive, base: Path, version: int, pre, meta: dict, extra=None) -> Path:
    """Write `archive` as BASE/VERSION: into a hidden temporary folder, with the warmup requests,
    assets.extra/kzoo.json (`meta` plus the input dtypes) and whatever `extra(folder)` writes into
    assets.extra (its returned dict joins kzoo.json), then renamed into place, so a failure at any
    step leaves no version TF Serving would load."""
    base.mkdir(parents=True, exist_ok=True)
    final = base / str(version)
    if final.exists():
        raise FileExistsError(f"{final} exists; TF Serving versions are immutable: pick another --version")
    tmp = base / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        archive.write_out(str(tmp), verbose=False)
        write_warmup(tmp, pre)
        meta = {**meta, "inputs": {name: spec.dtype.name for name, spec in pre.signature().items()}}
        if extra is not None:
            meta.update(extra(tmp / "assets.extra"))
        (tmp / "assets.extra" / "kzoo.json").write_text(json.dumps(meta, indent=2))
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_warmup(export_dir: Path, pre, rows: int = 4) -> None:
    """assets.extra/tf_serving_warmup_requests: PredictRequests TF Serving replays at load time."""
    import tensorflow as tf

    from kzoo.serving.requests import grpc_request, placeholder_rows

    request = grpc_request(placeholder_rows(pre.signature(), rows), pre.signature())
    from tensorflow_serving.apis import prediction_log_pb2

    extra = export_dir / "assets.extra"
    extra.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(extra / WARMUP_FILE)) as writer:
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())


def _main(argv: list[str]) -> int:
    """`python -m kzoo.exporter RUN BASE VERSION`: the TensorFlow-backend half of `export` for runs
    trained on another backend (the parent process sets KERAS_BACKEND=tensorflow)."""
    from kzoo import _quiet

    _quiet.import_tensorflow()
    run, base, version = argv
    print(export(run, base, int(version)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
