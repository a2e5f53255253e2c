"""Errors raised by the checkpoint layer. Each one names the file, and the line or row where it can."""

from __future__ import annotations


class CheckpointError(Exception):
    """Base class for checkpoint errors."""


class InvalidCheckpointName(CheckpointError, ValueError):
    """A checkpoint, asset or partition name that would escape the checkpoint directory."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint that exists but cannot be read completely and correctly.

    Partial data is never returned: the whole load fails with this error instead.
    """

    def __init__(self, path: object, problem: str, *, line: int | None = None, row: int | None = None):
        self.path = str(path)
        self.problem = problem
        self.line = line
        self.row = row
        where = f" line {line}" if line is not None else f" row {row}" if row is not None else ""
        super().__init__(f"{self.path}{where}: {problem}")


class CheckpointSaveError(CheckpointError):
    """Saving failed; the previous checkpoint (if any) is still in place."""
