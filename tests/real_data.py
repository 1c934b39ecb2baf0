"""The real data slices under $KZOO_DATA_DIR (../shared/data): a test skips only where its file is absent."""

from pathlib import Path

import pytest

from kzoo import data as kdata


def real(relative: str) -> Path:
    """The path of `relative` under the data dir; skips the calling test when the file is absent."""
    path = kdata.data_dir() / relative
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path
