"""The run directory: what `kzoo train` writes, and how every other command reads it back.

    spec.json            the spec with its dataset schema resolved inline
    preprocessing.json   {"used": [features], "stats": vocabularies and normalisation statistics
                         of the training split}
    run.json             data argument, backend, seed, epochs, batch size, split sizes
    model.keras          the trained model (backend-agnostic; task logits out)
    metrics.json         {"<task>": {...}, "examples": N, "seconds": T, ...} on the test split
    history.csv          per-epoch training and validation metrics
    steps.jsonl          running training metrics every few steps, validation at epoch ends
    curves.png           the training curves (from steps.jsonl)
    backup/              step-level checkpoints while training (kzoo.checkpoint); removed once training ends

A run is *finished* once metrics.json is written and backup/ is gone; a run with backup/ was
interrupted and the same `kzoo train` command resumes it.
"""

from __future__ import annotations

import json
from pathlib import Path

NEEDED = ("spec.json", "preprocessing.json", "model.keras")
# Written by a finished run; cleared before a new (not resumed) run starts.
OUTPUTS = ("history.csv", "steps.jsonl", "metrics.json", "model.keras", "curves.png")


def load_keras_file(path):
    """A `.keras` file in Keras' safe mode only: a file that would run Python code when loaded (a
    Lambda layer's function) is refused with a DataError, never loaded."""
    import keras

    from kzoo.errors import DataError

    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as e:
        if "safe_mode" not in str(e):
            raise
        raise DataError(f"{path}: this model file holds Python code (a Lambda layer's function), which kzoo never "
                        "loads; build the model from a spec or replace the Lambda with a registered layer") from None


class RunExistsError(FileExistsError):
    """`kzoo train` aimed at a finished run without `--overwrite`."""


class RunDir:
    """Paths and readers of one run directory."""

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    @property
    def interrupted(self) -> bool:
        return self.backup.exists()

    @property
    def finished(self) -> bool:
        return (self.path / "metrics.json").is_file() and not self.interrupted

    # ------------------------------------------------------------------ writing
    def start(self, overwrite: bool = False) -> bool:
        """Get the folder ready for training; returns True when an interrupted run resumes.

        A finished run is not silently retrained: RunExistsError unless `overwrite`.
        """
        if self.finished and not overwrite:
            raise RunExistsError(f"{self.path} holds a finished run (metrics.json); pass --overwrite "
                                 "(overwrite=True) to train it again, or --out another folder")
        resuming = self.interrupted
        self.path.mkdir(parents=True, exist_ok=True)
        if not resuming:
            for name in OUTPUTS:
                (self.path / name).unlink(missing_ok=True)
        return resuming

    def write_setup(self, spec, used: list[str], stats: dict, run_info: dict) -> None:
        (self.path / "spec.json").write_text(spec.to_json())
        (self.path / "preprocessing.json").write_text(json.dumps({"used": used, "stats": stats}))
        (self.path / "run.json").write_text(json.dumps(run_info, indent=2))

    def write_metrics(self, result: dict, name: str = "metrics.json") -> Path:
        path = self.path / name
        path.write_text(json.dumps(result, indent=2))
        return path

    # ------------------------------------------------------------------ reading
    def check(self) -> None:
        for name in NEEDED:
            if not (self.path / name).is_file():
                raise FileNotFoundError(f"{self.path} is not a finished kzoo run: {name} is missing "
                                        "(train it with `kzoo train SPEC --out RUN`)")

    def spec(self):
        from kzoo.spec import load_spec

        self.check()
        return load_spec(self.path / "spec.json")

    def preprocessing(self) -> dict:
        self.check()
        return json.loads((self.path / "preprocessing.json").read_text())

    def run_info(self) -> dict:
        path = self.path / "run.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())

    def model(self):
        """The trained Keras model (task logits out)."""
        from kzoo import blocks  # noqa: F401  (registers the block classes for deserialisation)

        self.check()
        return load_keras_file(self.path / "model.keras")

    def tasks(self, spec=None) -> list:
        """The spec's Task objects with what training saved for them (a retrieval task's corpus)."""
        from kzoo.tasks import tasks_of

        out = tasks_of(spec or self.spec())
        for t in out:
            t.load(self.path)
        return out

    def preprocessor(self, used: list[str] | None = None):
        """The raw -> model-input stage with this run's training statistics."""
        from kzoo.features import Preprocessor

        prep = self.preprocessing()
        return Preprocessor(self.spec().features, prep["stats"], used or prep["used"])


def load_run(run) -> tuple:
    """(spec, preprocessing.json content, trained model) of a finished run."""
    run = RunDir(run)
    return run.spec(), run.preprocessing(), run.model()
