"""Damaged checkpoints are detected on load, for every format that exists: a truncated file, a flipped byte,
an emptied file, an HF dataset directory missing a data file, a damaged integrity record. The error names
the file (and the line, for JSONL), and no partial data is ever returned — not by ``load_checkpoint``, not by
streaming (``iter_checkpoint``), not by ``filter_checkpoint``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kura_dagster.checkpoints import CheckpointCorruptError, JSONLCheckpointManager
from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.registry import manager_class
from kura_dagster.types import ConversationSummary
from kura_dagster_tests._crash_writer import make_versions
from kura_dagster_tests._formats import format_params

ROWS = 120


def _saved(fmt: str, directory: Path) -> tuple[BaseCheckpointManager, Path]:
    manager = manager_class(fmt)(directory)
    manager.save_checkpoint("summaries", make_versions(ROWS)["A"])
    path = Path(str(manager.get_checkpoint_path("summaries")))
    return manager, path


def _data_file(path: Path) -> Path:
    """The file holding the rows: the checkpoint itself, or the biggest data file of a dataset directory."""
    if path.is_file():
        return path
    data = [p for p in path.iterdir() if p.is_file() and p.suffix not in (".json",)]
    assert data, f"no data file in {path}"
    return max(data, key=lambda p: p.stat().st_size)


def _truncate(f: Path) -> None:
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2 + 3])


def _flip(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # the smallest change: one bit
    f.write_bytes(bytes(raw))


def _empty(f: Path) -> None:
    f.write_bytes(b"")


DAMAGE: dict[str, Callable[[Path], None]] = {"truncated": _truncate, "flipped_bit": _flip, "emptied": _empty}


def _assert_refused(manager: BaseCheckpointManager, named: Path) -> CheckpointCorruptError:
    """Every way of reading refuses, naming ``named``, and nothing is handed out before the refusal."""
    with pytest.raises(CheckpointCorruptError) as info:
        manager.load_checkpoint("summaries", ConversationSummary)
    assert named.name in str(info.value), str(info.value)
    received = []
    with pytest.raises(CheckpointCorruptError):
        for row in manager.iter_checkpoint("summaries", ConversationSummary, batch_size=10):
            received.append(row)
    assert received == [], f"{len(received)} rows were handed out before the damage was reported"
    with pytest.raises(CheckpointCorruptError):
        manager.filter_checkpoint("summaries", lambda row: True, ConversationSummary)
    return info.value


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("fmt", format_params())
def test_damaged_data_file_is_refused(fmt: str, damage: str, tmp_path: Path) -> None:
    manager, path = _saved(fmt, tmp_path)
    data_file = _data_file(path)
    DAMAGE[damage](data_file)
    error = _assert_refused(manager, data_file)
    if fmt == "jsonl":
        assert error.line is not None and f"line {error.line}" in str(error)


@pytest.mark.parametrize("fmt", format_params())
def test_missing_data_file_is_refused(fmt: str, tmp_path: Path) -> None:
    manager, path = _saved(fmt, tmp_path)
    if path.is_file():
        pytest.skip(f"{fmt} keeps a checkpoint in one file: a missing file is an absent checkpoint")
    data_file = _data_file(path)
    data_file.unlink()
    _assert_refused(manager, data_file)


@pytest.mark.parametrize("fmt", format_params())
def test_damaged_integrity_record_is_refused(fmt: str, tmp_path: Path) -> None:
    manager, path = _saved(fmt, tmp_path)
    if fmt == "jsonl":
        record = JSONLCheckpointManager.sidecar_path(manager.get_checkpoint_path("summaries"))
        record = Path(str(record))
    elif path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.name.startswith("kura_dagster"))
        assert candidates, f"no kura_dagster integrity manifest in {sorted(p.name for p in path.iterdir())}"
        record = candidates[0]
    else:
        pytest.skip(f"{fmt} keeps its integrity record inside the data file (covered by the data-file damage)")
    record.write_bytes(record.read_bytes()[:-9])
    _assert_refused(manager, record)


def test_jsonl_one_valid_but_changed_character_is_refused_naming_its_lines(tmp_path: Path) -> None:
    """A change that keeps every line valid JSON is caught by the checksum and narrowed to a block of lines."""
    manager = JSONLCheckpointManager(tmp_path)
    manager.save_checkpoint("summaries", make_versions(600)["A"])
    path = tmp_path / "summaries.jsonl"
    path.write_bytes(path.read_bytes().replace(b"version A, summary 300:", b"version A, summary 299:", 1))
    error = _assert_refused(manager, path)
    assert "checksum mismatch in lines 257–512" in str(error) and error.line == 257


def test_jsonl_cut_at_a_line_boundary_names_the_first_missing_line(tmp_path: Path) -> None:
    manager, path = _saved("jsonl", tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:40]))
    error = _assert_refused(manager, path)
    assert error.line == 41 and f"{ROWS - 40} of the {ROWS} saved rows are missing" in str(error)


def test_kura_written_jsonl_cut_mid_line_names_the_line(shared_data: Path, tmp_path: Path) -> None:
    """A file Kura wrote has no sidecar: a cut is still found, by line, and nothing is returned."""
    target = tmp_path / "summaries.jsonl"
    shutil.copyfile(shared_data / "summaries.jsonl", target)
    lines = target.read_bytes().splitlines(keepends=True)
    target.write_bytes(b"".join(lines[:300]) + lines[300][: len(lines[300]) // 2])
    manager = JSONLCheckpointManager(tmp_path)
    error = _assert_refused(manager, target)
    assert error.line == 301 and "line 301" in str(error)


def test_kura_written_jsonl_that_is_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "summaries.jsonl").write_bytes(b"")
    _assert_refused(JSONLCheckpointManager(tmp_path), tmp_path / "summaries.jsonl")


@pytest.mark.parametrize("fmt", format_params())
def test_an_intact_checkpoint_still_loads(fmt: str, tmp_path: Path) -> None:
    """The control for the tests above: without damage the same checkpoint loads completely."""
    manager, _ = _saved(fmt, tmp_path)
    assert manager.load_checkpoint("summaries", ConversationSummary) == make_versions(ROWS)["A"]
    assert list(manager.iter_checkpoint("summaries", ConversationSummary, batch_size=10)) == make_versions(ROWS)["A"]
