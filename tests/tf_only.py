"""Serve an export from a separate process that imports TensorFlow only (no kzoo, no Keras backend).

One such process per test worker, started at the first call and kept for the next ones (TensorFlow's
~5 s start-up once, not per test). It never holds a model between requests: every call loads each
SavedModel from disk anew, as TF Serving loads a version, and none of the training or exporting
process's memory is there to help.
"""

import atexit
import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, json, traceback
    import pandas as pd, tensorflow as tf

    def serve(raw, out, versions):
        frame = pd.read_parquet(raw)
        results = []
        for version in versions:
            fn = tf.saved_model.load(version).signatures["serving_default"]
            inputs = fn.structured_input_signature[1]
            feed = {name: tf.constant(frame[name].astype(str).tolist() if spec.dtype == tf.string
                                      else frame[name].to_numpy(), spec.dtype) for name, spec in inputs.items()}
            outputs = fn(**feed)
            results.append({"dtypes": {k: v.dtype.name for k, v in inputs.items()},
                            "outputs": {k: v.numpy().tolist() for k, v in outputs.items()},
                            "kzoo_imported": "kzoo" in sys.modules})
            del fn, outputs
        json.dump(results, open(out, "w"), default=lambda b: b.decode())  # string outputs come back as bytes

    for line in sys.stdin:  # one request per line: [raw.parquet, out.json, version, ...]
        raw, out, *versions = json.loads(line)
        try:
            serve(raw, out, versions)
            print(json.dumps({"ok": True}), flush=True)
        except Exception:
            print(json.dumps({"ok": False, "error": traceback.format_exc()[-3000:]}), flush=True)
""")

_server = None


def _process(tmp_path):
    """This worker's TensorFlow-only process, started when there is none (or it has exited)."""
    global _server
    if _server is None or _server.poll() is not None:
        script = tmp_path / "tf_only_server.py"
        script.write_text(SCRIPT)
        env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
        _server = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=open(script.with_suffix(".log"), "w"), text=True, env=env, cwd=tmp_path)
        atexit.register(_server.kill)
    return _server


def serve_fresh(version_dir, frame, tmp_path) -> dict:
    """Feed `frame`'s raw columns to `serving_default` in the TensorFlow-only process."""
    return serve_fresh_many([version_dir], frame, tmp_path)[0]


def serve_fresh_many(version_dirs, frame, tmp_path) -> list[dict]:
    """`serve_fresh` for several exports, in order."""
    raw, out = tmp_path / "raw.parquet", tmp_path / "served.json"
    frame.to_parquet(raw)
    server = _process(tmp_path)
    server.stdin.write(json.dumps([str(raw), str(out), *map(str, version_dirs)]) + "\n")
    server.stdin.flush()
    reply = server.stdout.readline()
    assert reply, f"the TensorFlow-only process exited (code {server.poll()}; its stderr is in {server.args[1].replace('.py', '.log')})"
    reply = json.loads(reply)
    assert reply["ok"], reply["error"]
    results = json.loads(out.read_text())
    assert len(results) == len(version_dirs) and not any(r["kzoo_imported"] for r in results)
    return results
