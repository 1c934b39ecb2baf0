"""Test setup: a private KERAS_HOME, quiet TF logs, the data dir, and the backend in use."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="kzoo-keras-home-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KZOO_DATA_DIR", str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def backend():
    import keras

    return keras.backend.backend()


@pytest.fixture(scope="session")
def data_dir():
    return Path(os.environ["KZOO_DATA_DIR"])


def pytest_report_header(config):
    return f"kzoo: KERAS_BACKEND={os.environ.get('KERAS_BACKEND', '(keras default)')}"
