"""Summaries read on demand (``LazySummaryColumns``): an incremental taxonomy update over daily partitions asks for
a few rows' vectors, and only the partitions those rows are in are read. The values are the ones an eager read
gives; a checkpoint replaced between the chat-id read and the vector read is refused, naming the file."""

import numpy as np
import pytest

from kura_dagster.checkpoints import HFDatasetCheckpointManager, JSONLCheckpointManager, ParquetCheckpointManager
from kura_dagster.checkpoints.columnar import LazySummaryColumns, SummaryColumns, load_summary_columns
from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.types import ConversationSummary

MANAGERS = {"parquet": ParquetCheckpointManager, "hf": HFDatasetCheckpointManager, "jsonl": JSONLCheckpointManager}
DAYS = ["2026-06-01", "2026-06-02", "2026-06-03"]


def _day(day: str, n: int) -> list[ConversationSummary]:
    # each row's vector is (day number, row number, 1): the expected values are written out below
    d = DAYS.index(day) + 1
    return [ConversationSummary(chat_id=f"{day}/{i}", summary=f"summary {i} of {day}", request=f"request {i}",
                                metadata={"user": f"u{i % 2}"}, embedding=[float(d), float(i), 1.0])
            for i in range(n)]


@pytest.mark.parametrize("fmt", sorted(MANAGERS))
def test_rows_are_read_from_their_partitions_only(tmp_path, fmt) -> None:
    manager = MANAGERS[fmt](tmp_path)
    sizes = {"2026-06-01": 3, "2026-06-02": 2, "2026-06-03": 4}
    for day, n in sizes.items():
        manager.save_checkpoint(f"summaries_{day}", _day(day, n))
    parts = [LazySummaryColumns.of_checkpoint(manager, f"summaries_{day}", ConversationSummary) for day in DAYS]
    whole = SummaryColumns.concat(parts)
    assert isinstance(whole, LazySummaryColumns) and len(whole) == 9
    assert whole.chat_ids[:4] == ["2026-06-01/0", "2026-06-01/1", "2026-06-01/2", "2026-06-02/0"]
    assert not any(p.loaded for p in parts)
    # rows 7 and 5 are the third day's rows 2 and 0
    np.testing.assert_array_equal(whole.embedding_rows([7, 5]), [[3.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert [p.loaded for p in parts] == [False, False, True]
    assert whole.dim == 3
    # a few fields of a few rows (a naming sample) without any vector
    models = whole.models_for([3], fields=("summary", "request"))
    assert [(m.chat_id, m.summary, m.request) for m in models] == [("2026-06-02/0", "summary 0 of 2026-06-02",
                                                                    "request 0")]
    assert [p.loaded for p in parts] == [False, False, True]
    # the whole matrix when a stage needs it: the same as an eager read
    eager = SummaryColumns.concat([load_summary_columns(manager, f"summaries_{day}") for day in DAYS])
    np.testing.assert_array_equal(whole.embeddings, eager.embeddings)
    assert all(p.loaded for p in parts)
    np.testing.assert_array_equal(whole.embedding_rows([0, 8]), [[1.0, 0.0, 1.0], [3.0, 3.0, 1.0]])


def test_a_partition_replaced_between_the_two_reads_is_refused(tmp_path) -> None:
    manager = ParquetCheckpointManager(tmp_path)
    manager.save_checkpoint("summaries_2026-06-01", _day("2026-06-01", 3))
    lazy = LazySummaryColumns.of_checkpoint(manager, "summaries_2026-06-01", ConversationSummary)
    manager.save_checkpoint("summaries_2026-06-01", _day("2026-06-01", 2))  # rewritten meanwhile: one row fewer
    with pytest.raises(CheckpointCorruptError, match="summaries_2026-06-01.*run the step again"):
        lazy.embedding_rows([0])


def test_no_checkpoint_is_none(tmp_path) -> None:
    assert LazySummaryColumns.of_checkpoint(ParquetCheckpointManager(tmp_path), "summaries_x") is None
