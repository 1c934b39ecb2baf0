"""The zoo: one JSON spec per model, shipped with the package as `kzoo.zoo_configs`.

    names()      -> the zoo model names, sorted (`kzoo list`)
    path(name)   -> the spec file of a zoo model (`kzoo train dcn_v2` resolves through it)
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def path(name: str) -> Path | None:
    """The spec of zoo model `name`, or None when the zoo has no such model."""
    candidate = FOLDER / f"{name}.json"
    return candidate if candidate.is_file() else None
