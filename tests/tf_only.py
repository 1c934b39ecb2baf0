"""Serve an export from a fresh process that imports TensorFlow only (no kzoo, no Keras backend)."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, json
    import pandas as pd, tensorflow as tf
    fn = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    frame = pd.read_parquet(sys.argv[2])
    inputs = fn.structured_input_signature[1]
    feed = {name: tf.constant(frame[name].astype(str).tolist() if spec.dtype == tf.string else frame[name].to_numpy(),
                              spec.dtype) for name, spec in inputs.items()}
    out = fn(**feed)
    json.dump({"dtypes": {k: v.dtype.name for k, v in inputs.items()},
               "outputs": {k: v.numpy().tolist() for k, v in out.items()},
               "kzoo_imported": "kzoo" in sys.modules}, open(sys.argv[3], "w"),
              default=lambda b: b.decode())  # string outputs (item ids) come back as bytes
""")


def serve_fresh(version_dir, frame, tmp_path) -> dict:
    """Feed `frame`'s raw columns to `serving_default` in a new TensorFlow-only process."""
    raw, out, script = tmp_path / "raw.parquet", tmp_path / "served.json", tmp_path / "serve.py"
    frame.to_parquet(raw)
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, str(script), str(version_dir), str(raw), str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not result["kzoo_imported"]
    return result
