"""The two errors a user's own mistake raises; the CLI prints them without a traceback.

    SpecError   a spec problem, with the JSON path of each (`blocks[2].inputs[0]: ...`)
    DataError   a data problem, naming the column, the row or the path
    TrainingDiverged  a non-finite loss, naming the epoch and step (a DataError: the CLI prints it)
"""

from __future__ import annotations


class SpecError(ValueError):
    """One or more problems in a spec, each `(json_path, message)`."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        super().__init__(str(self))

    def __str__(self):
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(f"{prefix}{path}: {msg}" for path, msg in self.problems)


class DataError(ValueError):
    """The data does not match what was asked of it; the message names the column, row or path."""


class TrainingDiverged(DataError):
    """The training loss became NaN or infinite; the message names the epoch and step."""
