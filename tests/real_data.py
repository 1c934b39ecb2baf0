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


def movielens_slice(folder: Path, users: int) -> Path:
    """MovieLens-100K cut to users 1..`users` (all their ratings), written to `folder` in the 100K
    layout (u.data, u.user, u.item), for `movielens:FOLDER`; skips when the data is absent."""
    source = real("movielens_100k/u.data").parent
    folder.mkdir(parents=True, exist_ok=True)
    lines = [ln for ln in (source / "u.data").read_text().splitlines() if int(ln.split("\t", 1)[0]) <= users]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    for name in ("u.user", "u.item"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


def amazon_slice(folder: Path, name: str = "Beauty", users: int = 300) -> Path:
    """The first `users` lines of an S3-Rec Amazon file (a user and their items a line) with its
    item->attributes map beside it, for `amazon:FILE`; skips when the data is absent."""
    source = real(f"amazon_s3rec_seq/{name}.txt")
    folder.mkdir(parents=True, exist_ok=True)
    lines = source.read_text().splitlines()[:users]
    (folder / source.name).write_text("\n".join(lines) + "\n")
    attributes = source.with_name(f"{name}_item2attributes.json")
    if attributes.is_file():
        (folder / attributes.name).write_bytes(attributes.read_bytes())
    return folder / source.name
