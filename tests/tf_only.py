"""Serve an export from a fresh process that imports TensorFlow only (no kzoo, no Keras backend)."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, json
    import pandas as pd, tensorflow as tf
    frame = pd.read_parquet(sys.argv[1])
    results = []
    for version in sys.argv[3:]:
        fn = tf.saved_model.load(version).signatures["serving_default"]
        inputs = fn.structured_input_signature[1]
        feed = {name: tf.constant(frame[name].astype(str).tolist() if spec.dtype == tf.string
                                  else frame[name].to_numpy(), spec.dtype) for name, spec in inputs.items()}
        out = fn(**feed)
        results.append({"dtypes": {k: v.dtype.name for k, v in inputs.items()},
                        "outputs": {k: v.numpy().tolist() for k, v in out.items()},
                        "kzoo_imported": "kzoo" in sys.modules})
    json.dump(results, open(sys.argv[2], "w"),
              default=lambda b: b.decode())  # string outputs (item ids) come back as bytes
""")


def serve_fresh(version_dir, frame, tmp_path) -> dict:
    """Feed `frame`'s raw columns to `serving_default` in a new TensorFlow-only process."""
    return serve_fresh_many([version_dir], frame, tmp_path)[0]


def serve_fresh_many(version_dirs, frame, tmp_path) -> list[dict]:
    """`serve_fresh` for several exports in one new process (one TensorFlow start-up), in order."""
    raw, out, script = tmp_path / "raw.parquet", tmp_path / "served.json", tmp_path / "serve.py"
    frame.to_parquet(raw)
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, str(script), str(raw), str(out), *map(str, version_dirs)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert len(results) == len(version_dirs) and not any(r["kzoo_imported"] for r in results)
    return results
