"""Import TensorFlow (and Keras) without TensorFlow's start-up noise on the terminal.

TensorFlow's C++ side prints 6-9 lines at import and device start-up (absl's pre-init notice,
oneDNN, "Could not find cuda drivers", "failed call to cuInit", CPU instruction notes) no matter
what TF_CPP_MIN_LOG_LEVEL says, straight to file descriptor 2. While TensorFlow is imported
and its devices listed, fd 2 goes to a temporary file; afterwards every line that is not one
of those known notices is written back to stderr, so a real error still shows. Set
KZOO_TF_LOGS=1 to see everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called",
    r"oneDNN custom operations are on",
    r"cudart_stub\.cc", r"Could not find cuda drivers",
    r"failed call to cuInit", r"cuda_platform\.cc", r"cuda_executor\.cc", r"cuda_diagnostics\.cc",
    r"cpu_feature_guard\.cc", r"This TensorFlow binary is optimized to use available CPU instructions",
    r"To enable the following instructions", r"rebuild TensorFlow with the appropriate compiler flags",
    r"Unable to register cu(DNN|FFT|BLAS) factory", r"computation placer already registered",
    r"TF-TRT Warning",
]))


@contextlib.contextmanager
def filtered_stderr():
    """Send fd 2 to a temporary file for the block, then replay its lines that are not NOISE."""
    if os.environ.get("KZOO_TF_LOGS"):
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (e.g. captured by a notebook)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(True) if not NOISE.search(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow():
    """`import tensorflow`, its devices started, with the start-up notices filtered out."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device start-up prints its notices now, not at the first op
    return tf


def import_keras():
    """`import keras`; on the TensorFlow backend TensorFlow comes in quietly first."""
    if "keras" not in sys.modules and _backend() == "tensorflow":
        import_tensorflow()
    import keras

    return keras


def _backend() -> str:
    """The backend Keras will pick: KERAS_BACKEND, else keras.json's, else tensorflow."""
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        import json

        with open(os.path.join(home, "keras.json")) as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"
