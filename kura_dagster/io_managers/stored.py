"""The value an asset returns to say "my checkpoint is already what I would write": nothing to save.

:func:`kura_dagster.orchestration.reuse.reuse_stored_output` returns it when a stage's inputs and settings are
those of its last materialization and its checkpoint is still the one that materialization wrote. It holds the
stored rows (so code that reads the step's value, e.g. ``dg.materialize(...).output_for_node``, gets them as
before); the checkpoint IO managers write nothing (no serialisation, no fsync) after checking that the
checkpoint is still in that state (:meth:`~kura_dagster.io_managers.base.CheckpointIOManager.stored_state`): a
checkpoint that changed in between is an error, never a silent mix of old and new. The reuse helper hands it
only to the IO managers of this package, which know it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

STORED_STATE_KEY = "kura/stored_state"
"""Output metadata: a short hash of what the checkpoint holds after the save (rows, bytes, checksum of every copy)
and of how the IO manager stores it. The next run compares it with the checkpoint as it is then."""


class StoredOutput(list):
    """The rows of a reused output, with "keep the checkpoint as it is" for the IO manager."""

    def __init__(self, rows: Iterable[Any], state: str, run_id: str) -> None:
        super().__init__(rows)
        self.state = state
        """:data:`STORED_STATE_KEY` of the checkpoint being kept (checked again before the step ends)."""
        self.run_id = run_id
        """The run that computed and wrote it."""

    def __repr__(self) -> str:
        return f"StoredOutput({len(self)} rows, state={self.state!r}, run_id={self.run_id!r})"
