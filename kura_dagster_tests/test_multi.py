"""Layer 2, MultiCheckpointManager: Kura's semantics, then every strategy in every degraded condition.

Children are real managers of mixed formats (JSONL, Parquet, HF datasets). The degraded conditions are real too:
a copy that is absent, a child that is disabled, a copy whose bytes were damaged on disk, and a child whose
directory cannot be created (its path runs through a regular file), so every save to it fails.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from kura_dagster.checkpoints import CheckpointCorruptError, JSONLCheckpointManager
from kura_dagster.checkpoints.multi import (
    MultiCheckpointManager,
    MultiSaveError,
    MultiSaveResult,
    NoReadableCopyError,
)
from kura_dagster.checkpoints.registry import build_manager
from kura_dagster.types import Cluster, ConversationSummary
from kura_dagster_tests._formats import available_formats

FORMATS = available_formats()
# Pairs (primary, secondary) covering every format in both roles: same-format and mixed-format redundancy.
PAIRS = [p for p in [("jsonl", "jsonl"), ("jsonl", "parquet"), ("parquet", "hf"), ("hf", "jsonl")]
         if set(p) <= set(FORMATS)]
PAIR_IDS = [f"{a}+{b}" for a, b in PAIRS]


def summaries(n: int = 5) -> list[ConversationSummary]:
    # Embeddings exactly representable in float32, so every format returns them unchanged.
    return [ConversationSummary(chat_id=f"c{i}", summary=f"summary {i}", metadata={"turns": i, "ok": i % 2 == 0},
                                languages=["english"], embedding=[0.5 * i, -0.25, 1.0]) for i in range(n)]


def clusters() -> list[Cluster]:
    return [Cluster(id=f"k{i}", name=f"n{i}", description="d", slug="a_b_c", chat_ids=["c0"], parent_id=None)
            for i in range(2)]


def dumps(models):
    return [m.model_dump() for m in models]


def child(fmt: str, directory: Path, **opts):
    return build_manager(fmt, directory, **opts)


def broken_child(fmt: str, tmp_path: Path):
    """A child whose every save fails: its directory would have to be created inside a regular file."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where a directory should be")
    return build_manager(fmt, blocker / "checkpoints")


def corrupt(mgr, name: str) -> Path:
    """Damage the bytes of a saved copy in place (half of the data file is lost), return the damaged file."""
    path = Path(str(mgr.get_checkpoint_path(name)))
    if path.is_dir():
        path = max((p for p in path.rglob("*.arrow")), key=lambda p: p.stat().st_size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture(params=PAIRS, ids=PAIR_IDS)
def pair(request, tmp_path):
    a, b = request.param
    return child(a, tmp_path / "primary"), child(b, tmp_path / "secondary")


# --- construction, Kura's API ------------------------------------------------------------------------------------
def test_construction_errors_name_the_valid_options(tmp_path):
    with pytest.raises(ValueError, match="At least one checkpoint manager"):
        MultiCheckpointManager([])
    jsonl = JSONLCheckpointManager(tmp_path)
    with pytest.raises(ValueError, match="all_enabled, primary_only"):
        MultiCheckpointManager([jsonl], save_strategy="everywhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="first_found, priority"):
        MultiCheckpointManager([jsonl], load_strategy="fastest")  # type: ignore[arg-type]
    # Kura's tests change the strategy after construction: the call then refuses it.
    multi = MultiCheckpointManager([jsonl])
    multi.save_strategy = "invalid_strategy"
    with pytest.raises(ValueError, match="Unknown save strategy"):
        multi.save_checkpoint("x", summaries(1))
    multi.save_strategy, multi.load_strategy = "all_enabled", "invalid_strategy"
    with pytest.raises(ValueError, match="Unknown load strategy"):
        multi.load_checkpoint("x", ConversationSummary)


def test_enabled_if_any_child_is(tmp_path):
    a, b = JSONLCheckpointManager(tmp_path / "a", enabled=False), JSONLCheckpointManager(tmp_path / "b", enabled=False)
    multi = MultiCheckpointManager([a, b])
    assert not multi.enabled
    assert multi.save_checkpoint("summaries", summaries()) is None
    assert multi.load_checkpoint("summaries", ConversationSummary) is None
    assert multi.list_checkpoints() == [] and multi.delete_checkpoint("summaries") is False
    b.enabled = True
    assert multi.enabled
    assert multi.save_checkpoint("summaries", summaries()).saved.keys() == {"jsonl_2"}


def test_names_with_any_childs_extension_name_the_same_checkpoint(tmp_path):
    multi = MultiCheckpointManager([child(f, tmp_path / f) for f in FORMATS])
    multi.save_checkpoint("summaries.jsonl", summaries(2))
    for spelling in ("summaries", "summaries.jsonl", "summaries.parquet" if "parquet" in FORMATS else "summaries"):
        assert dumps(multi.load_checkpoint(spelling, ConversationSummary)) == dumps(summaries(2))
    assert multi.list_checkpoints() == ["summaries"]


def test_save_all_enabled_writes_every_format_and_reports_bytes(pair):
    multi = MultiCheckpointManager(list(pair))
    result = multi.save_checkpoint("summaries", summaries())
    assert isinstance(result, MultiSaveResult) and result.ok and not result.failed
    assert list(result.saved) == multi.labels
    for label, mgr in zip(multi.labels, pair):
        assert dumps(mgr.load_checkpoint("summaries", ConversationSummary)) == dumps(summaries())
        assert result.saved[label].bytes == mgr.get_file_size("summaries") > 0
    assert result.bytes == sum(m.get_file_size("summaries") for m in pair) == multi.get_file_size("summaries")
    assert result.rows == 5


def test_list_union_delete_everywhere_and_stats(tmp_path, pair):
    a, b = pair
    a.save_checkpoint("summaries", summaries())
    b.save_checkpoint("clusters", clusters())
    b.save_checkpoint("summaries", summaries())
    disabled = JSONLCheckpointManager(tmp_path / "off", enabled=False)
    multi = MultiCheckpointManager([a, b, disabled], save_strategy="primary_only", load_strategy="priority")
    assert multi.list_checkpoints() == ["clusters", "summaries"]
    stats = multi.get_stats()
    assert {k: stats[k] for k in ("num_managers", "enabled_managers", "save_strategy", "load_strategy")} == {
        "num_managers": 3, "enabled_managers": 2, "save_strategy": "primary_only", "load_strategy": "priority"}
    assert [(m["type"], m["checkpoint_dir"], m["enabled"], m["checkpoint_count"]) for m in stats["managers"]] == [
        (type(a).__name__, str(a.checkpoint_dir), True, 1),
        (type(b).__name__, str(b.checkpoint_dir), True, 2),
        ("JSONLCheckpointManager", str(disabled.checkpoint_dir), False, 0),
    ]
    assert multi.delete_checkpoint("summaries") is True
    assert not a.has_checkpoint("summaries") and not b.has_checkpoint("summaries")
    assert multi.list_checkpoints() == ["clusters"]
    assert multi.delete_checkpoint("summaries") is False


# --- save strategies, degraded -----------------------------------------------------------------------------------
def test_all_enabled_skips_a_disabled_child(tmp_path, pair):
    a, b = pair
    off = child(FORMATS[-1], tmp_path / "off", enabled=False)
    result = MultiCheckpointManager([a, off, b]).save_checkpoint("summaries", summaries())
    assert len(result.saved) == 2 and list(result.skipped.values()) == ["disabled"]
    assert not Path(str(off.checkpoint_dir)).exists()
    assert a.has_checkpoint("summaries") and b.has_checkpoint("summaries")


def test_all_enabled_a_failing_child_costs_nothing_in_the_others(tmp_path, pair, caplog):
    a, b = pair
    broken = broken_child(a.format_name, tmp_path)
    multi = MultiCheckpointManager([broken, a, b], labels=["broken", "first", "second"])
    with caplog.at_level(logging.ERROR, logger="kura_dagster.checkpoints.multi"):
        result = multi.save_checkpoint("summaries", summaries())
    assert list(result.saved) == ["first", "second"]
    assert list(result.failed) == ["broken"]
    failure = result.failed["broken"]
    assert "not-a-directory" in failure.path and failure.error.split(":")[0] in (
        "NotADirectoryError", "FileExistsError", "OSError")
    assert "broken" in caplog.text and "not-a-directory" in caplog.text
    assert result.primary.path == str(a.get_checkpoint_path("summaries"))
    for mgr in (a, b):
        assert dumps(mgr.load_checkpoint("summaries", ConversationSummary)) == dumps(summaries())
    # ... and loading falls through the broken child to the good copies.
    assert dumps(multi.load_checkpoint("summaries", ConversationSummary)) == dumps(summaries())


def test_all_enabled_raises_only_when_no_child_saved(tmp_path):
    kids = [broken_child(fmt, tmp_path) for fmt in FORMATS]
    multi = MultiCheckpointManager(kids)
    with pytest.raises(MultiSaveError, match="not saved by any backend") as info:
        multi.save_checkpoint("summaries", summaries())
    assert list(info.value.result.failed) == multi.labels
    for label in multi.labels:
        assert label in str(info.value)


def test_primary_only_saves_to_the_first_enabled_child(tmp_path, pair):
    a, b = pair
    result = MultiCheckpointManager([a, b], save_strategy="primary_only").save_checkpoint("summaries", summaries())
    assert list(result.saved) == [MultiCheckpointManager([a, b]).labels[0]]
    assert list(result.skipped.values()) == ["primary_only"]
    assert a.has_checkpoint("summaries") and not b.has_checkpoint("summaries")
    # The first child disabled: the next enabled one is the primary.
    a.enabled = False
    MultiCheckpointManager([a, b], save_strategy="primary_only").save_checkpoint("clusters", clusters())
    a.enabled = True
    assert b.has_checkpoint("clusters") and not a.has_checkpoint("clusters")


def test_primary_only_a_failing_primary_raises_and_writes_nothing_else(tmp_path, pair):
    a, b = pair
    multi = MultiCheckpointManager([broken_child(a.format_name, tmp_path), b], save_strategy="primary_only")
    with pytest.raises(MultiSaveError) as info:
        multi.save_checkpoint("summaries", summaries())
    assert info.value.result.skipped == {multi.labels[1]: "primary_only"}
    assert not b.has_checkpoint("summaries")


# --- load strategies, degraded ----------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["first_found", "priority"])
def test_load_when_every_child_has_it_uses_the_first(pair, strategy):
    a, b = pair
    a.save_checkpoint("summaries", summaries(2))
    b.save_checkpoint("summaries", summaries(3))
    loaded = MultiCheckpointManager([a, b], load_strategy=strategy).load_with_source("summaries", ConversationSummary)
    assert dumps(loaded.data) == dumps(summaries(2)) and loaded.path == str(a.get_checkpoint_path("summaries"))


def test_first_found_child_missing_the_checkpoint(pair):
    a, b = pair
    b.save_checkpoint("summaries", summaries())
    multi = MultiCheckpointManager([a, b], load_strategy="first_found")
    loaded = multi.load_with_source("summaries", ConversationSummary)
    assert dumps(loaded.data) == dumps(summaries())
    assert loaded.label == multi.labels[1] and loaded.missing == [multi.labels[0]] and not loaded.skipped
    assert multi.has_checkpoint("summaries")
    assert multi.load_checkpoint("clusters", Cluster) is None  # missing everywhere: None, as in Kura


def test_priority_child_missing_the_checkpoint_returns_none(pair):
    a, b = pair
    b.save_checkpoint("summaries", summaries())
    multi = MultiCheckpointManager([a, b], load_strategy="priority")
    assert multi.load_checkpoint("summaries", ConversationSummary) is None
    assert not multi.has_checkpoint("summaries")
    assert multi.iter_checkpoint("summaries", ConversationSummary) is None


@pytest.mark.parametrize("strategy", ["first_found", "priority"])
def test_disabled_child_is_skipped_even_if_it_has_the_checkpoint(pair, strategy):
    a, b = pair
    a.save_checkpoint("summaries", summaries(1))
    b.save_checkpoint("summaries", summaries(4))
    a.enabled = False
    multi = MultiCheckpointManager([a, b], load_strategy=strategy)
    assert dumps(multi.load_checkpoint("summaries", ConversationSummary)) == dumps(summaries(4))


def test_first_found_skips_a_corrupt_copy_with_a_warning_naming_the_file(pair, caplog):
    a, b = pair
    for mgr in pair:
        mgr.save_checkpoint("summaries", summaries())
    damaged = corrupt(a, "summaries")
    with pytest.raises(CheckpointCorruptError):
        a.load_checkpoint("summaries", ConversationSummary)  # the damage is real
    multi = MultiCheckpointManager([a, b])
    with caplog.at_level(logging.WARNING, logger="kura_dagster.checkpoints.multi"):
        loaded = multi.load_with_source("summaries", ConversationSummary)
    assert dumps(loaded.data) == dumps(summaries()) and loaded.label == multi.labels[1]
    assert [f.label for f in loaded.skipped] == [multi.labels[0]]
    assert str(a.get_checkpoint_path("summaries")) in caplog.text
    assert damaged.name in caplog.text or damaged.parent.name in caplog.text


def test_priority_raises_a_clear_error_for_a_corrupt_primary(pair):
    a, b = pair
    for mgr in pair:
        mgr.save_checkpoint("summaries", summaries())
    corrupt(a, "summaries")
    multi = MultiCheckpointManager([a, b], load_strategy="priority")
    with pytest.raises(CheckpointCorruptError, match="load_strategy='priority' does not fall back") as info:
        multi.load_checkpoint("summaries", ConversationSummary)
    assert str(a.checkpoint_dir) in str(info.value)


def test_first_found_every_copy_corrupt_raises_naming_each_file(pair):
    a, b = pair
    for mgr in pair:
        mgr.save_checkpoint("summaries", summaries())
        corrupt(mgr, "summaries")
    with pytest.raises(NoReadableCopyError) as info:
        MultiCheckpointManager([a, b]).load_checkpoint("summaries", ConversationSummary)
    assert len(info.value.failures) == 2
    for mgr in pair:
        assert str(mgr.get_checkpoint_path("summaries")) in str(info.value)


def test_first_found_corrupt_copy_and_a_missing_one_is_an_error_not_none(pair):
    """Returning None would make the caller recompute and overwrite the only evidence of the damage."""
    a, b = pair
    a.save_checkpoint("summaries", summaries())
    corrupt(a, "summaries")
    with pytest.raises(NoReadableCopyError):
        MultiCheckpointManager([a, b]).load_checkpoint("summaries", ConversationSummary)


def test_first_found_a_child_that_cannot_read_at_all_is_skipped(tmp_path, pair):
    a, b = pair
    b.save_checkpoint("summaries", summaries())
    broken = broken_child(a.format_name, tmp_path)
    loaded = MultiCheckpointManager([broken, b]).load_with_source("summaries", ConversationSummary)
    assert dumps(loaded.data) == dumps(summaries())


def test_info_filter_and_iter_follow_the_load_strategy(pair):
    a, b = pair
    b.save_checkpoint("summaries", summaries())
    multi = MultiCheckpointManager([a, b])
    info = multi.get_checkpoint_info("summaries")
    assert info["num_rows"] == 5 and list(info["copies"]) == [multi.labels[1]]
    kept = multi.filter_checkpoint("summaries", lambda row: row["chat_id"] in ("c1", "c3"), ConversationSummary)
    assert [s.chat_id for s in kept] == ["c1", "c3"]
    assert [s.chat_id for s in multi.iter_checkpoint("summaries", ConversationSummary)] == [f"c{i}" for i in range(5)]


def test_a_multi_manager_nests(tmp_path):
    inner = MultiCheckpointManager([JSONLCheckpointManager(tmp_path / "x"), JSONLCheckpointManager(tmp_path / "y")])
    outer = MultiCheckpointManager([JSONLCheckpointManager(tmp_path / "z"), inner], labels=["z", "inner"])
    result = outer.save_checkpoint("summaries", summaries(2))
    assert list(result.saved) == ["z", "inner"]
    assert result.saved["inner"].saved.keys() == {"jsonl", "jsonl_2"}
    assert sorted(p.name for p in tmp_path.rglob("*.jsonl")) == ["summaries.jsonl"] * 3
    os.remove(tmp_path / "z" / "summaries.jsonl")
    assert dumps(outer.load_checkpoint("summaries", ConversationSummary)) == dumps(summaries(2))


@pytest.mark.parametrize("strategy", ["all_enabled", "primary_only"])
def test_saving_over_a_corrupt_copy_replaces_it(pair, strategy):
    a, b = pair
    for mgr in pair:
        mgr.save_checkpoint("summaries", summaries(2))
    corrupt(a, "summaries")
    result = MultiCheckpointManager([a, b], save_strategy=strategy).save_checkpoint("summaries", summaries(3))
    assert not result.failed
    assert dumps(a.load_checkpoint("summaries", ConversationSummary)) == dumps(summaries(3))
    expected_b = summaries(3) if strategy == "all_enabled" else summaries(2)
    assert dumps(b.load_checkpoint("summaries", ConversationSummary)) == dumps(expected_b)


def test_priority_a_primary_that_cannot_be_reached_has_nothing(tmp_path, pair):
    """A primary whose directory cannot exist holds no checkpoint: priority returns None, it does not fall back."""
    a, b = pair
    b.save_checkpoint("summaries", summaries())
    multi = MultiCheckpointManager([broken_child(a.format_name, tmp_path), b], load_strategy="priority")
    assert multi.load_checkpoint("summaries", ConversationSummary) is None
