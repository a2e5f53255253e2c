"""Reading less twice: an unpartitioned asset over many partitions logs one line for the whole load (each log line
is a write to the instance's event log), and a taxonomy state that this process saved or loaded is handed back
without reading it again, unless its files changed (then it is read and verified as before)."""

import logging
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from kura_dagster.checkpoints.artifacts import ArtifactCorruptError, FittedState, load_state, save_state
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.io_managers.multi import Backend, MultiIOManager
from kura_dagster.types import ConversationSummary

ROOT = Path(__file__).resolve().parent.parent
DAYS = dg.StaticPartitionsDefinition(["2026-05-01", "2026-05-02", "2026-05-03"])
ROWS = {"2026-05-01": 2, "2026-05-02": 3, "2026-05-03": 4}


@dg.asset(partitions_def=DAYS)
def daily(context: dg.AssetExecutionContext) -> list[ConversationSummary]:
    day = context.partition_key
    return [ConversationSummary(chat_id=f"{day}-{i}", summary=f"s{i}", metadata={}) for i in range(ROWS[day])]


@dg.asset(ins={"daily": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())})
def total(daily: dict[str, list[ConversationSummary]]) -> list[ConversationSummary]:
    return [s for day in sorted(daily) for s in daily[day]]


@pytest.fixture
def instance(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the project's own instance
    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        with dg.DagsterInstance.get() as inst:
            yield inst
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def _loaded_lines(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [r.user_message for r in instance.all_logs(run_id)
            if r.level == logging.INFO and r.user_message.startswith("Loaded ")]


@pytest.mark.parametrize("kind", ["jsonl", "multi"])
def test_a_load_of_many_partitions_logs_one_line(tmp_path: Path, instance: dg.DagsterInstance, kind: str) -> None:
    io = JSONLIOManager(base_dir=str(tmp_path / "ckpt")) if kind == "jsonl" else \
        MultiIOManager(backends=[Backend(format="jsonl", base_dir=str(tmp_path / "a")),
                                 Backend(format="jsonl", base_dir=str(tmp_path / "b"))])
    for day in DAYS.get_partition_keys():
        assert dg.materialize([daily], partition_key=day, resources={"io_manager": io}, instance=instance).success
    result = dg.materialize([daily, total], selection=[total], resources={"io_manager": io}, instance=instance)
    assert result.success
    assert [s.chat_id for s in result.output_for_node("total")] == [
        "2026-05-01-0", "2026-05-01-1", "2026-05-02-0", "2026-05-02-1", "2026-05-02-2",
        "2026-05-03-0", "2026-05-03-1", "2026-05-03-2", "2026-05-03-3"]
    lines = _loaded_lines(instance, result.run_id)
    assert len(lines) == 1, lines
    assert lines[0].startswith("Loaded 9 rows of daily from 3 partition(s) (2026-05-01 … 2026-05-03)")
    if kind == "multi":
        assert "served by backend 'jsonl'" in lines[0]


def _state(value: float) -> FittedState:
    return FittedState(kind="test-kind", params={"ids": ["a", "b"], "value": value},
                       arrays={"centroids": np.array([[value, 1.0], [0.0, 2.0]], dtype=np.float32)})


def test_a_state_saved_in_this_process_is_handed_back_read_only(tmp_path: Path) -> None:
    saved = save_state(tmp_path, "taxonomy-base", _state(0.5))
    loaded = load_state(tmp_path, "taxonomy-base")
    assert loaded is not None and loaded.version == saved.version
    assert loaded.params == {"ids": ["a", "b"], "value": 0.5}
    np.testing.assert_array_equal(loaded.arrays["centroids"], [[0.5, 1.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="read-only"):
        loaded.arrays["centroids"][0, 0] = 9.0  # a caller changing it in place fails instead of changing the next load
    # another writer's new version is read (the pointer changed)
    other = save_state(tmp_path, "taxonomy-base", _state(0.25))
    assert load_state(tmp_path, "taxonomy-base").params["value"] == 0.25 and other.version != saved.version


def test_a_state_damaged_after_it_was_saved_is_still_refused(tmp_path: Path) -> None:
    saved = save_state(tmp_path, "taxonomy-base", _state(0.5))
    params = tmp_path / ".kura-artifacts" / "taxonomy-base" / saved.version / "params.json"
    assert params.exists()
    time.sleep(0.01)  # a later modification time, whatever the file system's resolution
    text = params.read_text().replace('"value": 0.5', '"value": 0.7')
    params.write_text(text)
    with pytest.raises(ArtifactCorruptError, match="checksum mismatch"):
        load_state(tmp_path, "taxonomy-base")


SEEN: dict[str, list] = {}


@dg.asset
def made() -> list[ConversationSummary]:
    SEEN["made"] = [ConversationSummary(chat_id=f"c{i}", summary=f"s{i}", metadata={}) for i in range(3)]
    return SEEN["made"]


@dg.asset
def read_back(made: list[ConversationSummary]) -> list[ConversationSummary]:
    SEEN["read_back"] = made
    return made[:1]


def test_rows_saved_in_this_process_are_handed_to_the_next_step_while_the_file_is_unchanged(tmp_path) -> None:
    from kura_dagster.io_managers import ParquetIOManager
    from kura_dagster.io_managers.base import _remember_saved, _saved_here

    io = ParquetIOManager(base_dir=str(tmp_path / "ckpt"))
    assert dg.materialize([made, read_back], resources={"io_manager": io}).success
    assert SEEN["read_back"] is not SEEN["made"] and all(a is b for a, b in zip(SEEN["read_back"], SEEN["made"]))
    # a file changed after the save is read again (and verified), not handed back
    from upath import UPath

    path = UPath(str(tmp_path / "x.parquet"))
    path.write_bytes(b"first")
    rows = SEEN["made"]
    _remember_saved(path, rows)
    assert _saved_here(path, ConversationSummary) == rows
    assert _saved_here(path, ConversationSummary) is not rows
    assert _saved_here(path, dict) is None  # another model: read from the file
    time.sleep(0.01)
    path.write_bytes(b"second")
    assert _saved_here(path, ConversationSummary) is None
