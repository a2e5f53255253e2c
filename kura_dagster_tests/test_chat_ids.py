"""``load_chat_ids``: a checkpoint's chat ids without building its rows (the summaries check of a long backfill
compares two sets of ids; building 7 KB conversations as models held ~5 GB), from every format, the multi manager,
and damaged files."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kura_dagster.checkpoints import (
    HFDatasetCheckpointManager,
    JSONLCheckpointManager,
    MultiCheckpointManager,
    ParquetCheckpointManager,
)
from kura_dagster.checkpoints.columnar import load_chat_ids
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.types import Conversation, Message

MANAGERS = {"parquet": ParquetCheckpointManager, "hf": HFDatasetCheckpointManager, "jsonl": JSONLCheckpointManager}
TOKYO = timezone(timedelta(hours=9))
IDS = ["zeta", "alpha", "chat with spaces", "ünïcode-ид", "42"]  # stored order, not sorted


def conversations() -> list[Conversation]:
    at = datetime(2026, 3, 1, 9, 30, tzinfo=TOKYO)
    return [Conversation(chat_id=cid, created_at=at, metadata={"n": i},
                         messages=[Message(role="user", content=f"question {i} " + "x" * 5000, created_at=at),
                                   Message(role="assistant", content="answer", created_at=at)])
            for i, cid in enumerate(IDS)]


@pytest.mark.parametrize("fmt", MANAGERS)
def test_chat_ids_in_stored_order_from_every_format(fmt: str, tmp_path: Path) -> None:
    manager = MANAGERS[fmt](tmp_path)
    manager.save_checkpoint("conversations", conversations())
    assert load_chat_ids(manager, "conversations", Conversation) == IDS
    assert load_chat_ids(manager, "absent", Conversation) is None


def test_chat_ids_through_the_multi_manager_follow_its_load_strategy(tmp_path: Path) -> None:
    jsonl, parquet = JSONLCheckpointManager(tmp_path / "j"), ParquetCheckpointManager(tmp_path / "p")
    parquet.save_checkpoint("conversations", conversations()[:2])  # only the second backend holds it
    multi = MultiCheckpointManager([jsonl, parquet], load_strategy="first_found")
    assert load_chat_ids(multi, "conversations", Conversation) == ["zeta", "alpha"]


def test_a_jsonl_file_the_fast_path_cannot_read_is_loaded_as_rows_and_its_bad_line_named(tmp_path: Path) -> None:
    manager = JSONLCheckpointManager(tmp_path)
    manager.save_checkpoint("conversations", conversations())
    path = manager.get_checkpoint_path("conversations")
    lines = path.read_bytes().splitlines()
    lines[2] = lines[2].replace(b'"chat_id":', b'"chat_ix":', 1)  # a row without its chat id, line 3
    path.write_bytes(b"\n".join(lines) + b"\n")
    Path(f"{path}.meta.json").unlink()  # as Kura writes it: no sidecar, so the line itself is judged
    with pytest.raises(Exception, match=r"line 3") as err:
        load_chat_ids(manager, "conversations", Conversation)
    assert "conversations.jsonl" in str(err.value) and "chat_id" in str(err.value)


def test_a_jsonl_file_changed_after_it_was_saved_is_refused(tmp_path: Path) -> None:
    manager = JSONLCheckpointManager(tmp_path)
    manager.save_checkpoint("conversations", conversations())
    path = manager.get_checkpoint_path("conversations")
    path.write_bytes(path.read_bytes().replace(b'"zeta"', b'"beta"', 1))  # same length, other bytes
    with pytest.raises(CheckpointCorruptError) as err:  # the sidecar's checksum no longer matches
        load_chat_ids(manager, "conversations", Conversation)
    assert str(path) in str(err.value)
