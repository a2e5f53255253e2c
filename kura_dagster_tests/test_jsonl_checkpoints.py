"""Layer 2, JSONL: the seed's API, Kura's file layout, integrity and errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kura_dagster.checkpoints import (
    CheckpointCorruptError,
    CheckpointManager,
    InvalidCheckpointName,
    JSONLCheckpointManager,
)
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster


def _summaries(n: int = 5) -> list[ConversationSummary]:
    return [ConversationSummary(summary=f"summary {i}", chat_id=f"c{i}", metadata={"i": i, "ok": i % 2 == 0},
                                embedding=[float(i), 0.5], languages=["english"], assistant_errors=[])
            for i in range(n)]


def test_checkpoint_manager_is_the_jsonl_manager():
    assert CheckpointManager is JSONLCheckpointManager


def test_save_load_list_delete(tmp_path):
    mgr = JSONLCheckpointManager(tmp_path / "ck")
    data = _summaries()
    saved = mgr.save_checkpoint("summaries", data)
    assert saved.rows == 5 and saved.bytes == (tmp_path / "ck" / "summaries.jsonl").stat().st_size
    assert mgr.load_checkpoint("summaries", ConversationSummary) == data
    assert mgr.load_checkpoint("summaries.jsonl", ConversationSummary) == data  # Kura passes names with .jsonl too
    assert mgr.load_checkpoint("summaries") == data  # the model identity is recorded beside the file
    assert mgr.list_checkpoints() == ["summaries"]
    info = mgr.get_checkpoint_info("summaries")
    assert info["num_rows"] == 5 and info["size_bytes"] == saved.bytes and "chat_id" in info["features"]
    assert mgr.delete_checkpoint("summaries") is True
    assert mgr.delete_checkpoint("summaries") is False
    assert mgr.load_checkpoint("summaries", ConversationSummary) is None
    assert list((tmp_path / "ck").iterdir()) == [] or all(p.name.startswith(".") for p in (tmp_path / "ck").iterdir())


def test_file_is_exactly_what_kura_writes(tmp_path):
    mgr = JSONLCheckpointManager(tmp_path)
    data = _summaries(3)
    mgr.save_checkpoint("summaries", data)
    expected = "".join(s.model_dump_json() + "\n" for s in data)  # Kura's writer
    assert (tmp_path / "summaries.jsonl").read_text() == expected
    kura_reader = [ConversationSummary.model_validate_json(line) for line in open(tmp_path / "summaries.jsonl")]
    assert kura_reader == data


def test_disabled_manager_neither_saves_nor_loads(tmp_path):
    mgr = JSONLCheckpointManager(tmp_path, enabled=False)
    assert mgr.save_checkpoint("summaries", _summaries()) is None
    assert not (tmp_path / "summaries.jsonl").exists()
    JSONLCheckpointManager(tmp_path).save_checkpoint("summaries", _summaries())
    assert mgr.load_checkpoint("summaries", ConversationSummary) is None
    assert mgr.list_checkpoints() == [] and mgr.delete_checkpoint("summaries") is False


def test_reads_kura_files_without_sidecar(shared_data):
    mgr = JSONLCheckpointManager(shared_data)
    assert mgr.list_checkpoints() == ["clusters", "conversations", "dimensionality", "meta_clusters", "summaries"]
    assert len(mgr.load_checkpoint("summaries", ConversationSummary)) == 1000
    assert len(mgr.load_checkpoint("dimensionality", ProjectedCluster)) == 19
    with pytest.raises(LookupError, match="model_class"):
        mgr.load_checkpoint("clusters")  # Kura's files do not say what they hold


KURA_JSONL = Path(__file__).parent / "data" / "kura054" / "jsonl"  # written by Kura 0.5.4 (data/make_kura_jsonl.py)
KURA_STAGES = [("conversations", Conversation), ("summaries", ConversationSummary), ("clusters", Cluster),
               ("meta_clusters", Cluster), ("dimensionality", ProjectedCluster)]


def test_saving_what_kura_wrote_gives_kuras_bytes(tmp_path):
    """Load Kura's files (no sidecar) and save them again: the same bytes, file for file."""
    kura = JSONLCheckpointManager(KURA_JSONL)
    assert kura.list_checkpoints() == sorted(name for name, _ in KURA_STAGES)
    ours = JSONLCheckpointManager(tmp_path)
    for name, cls in KURA_STAGES:
        models = kura.load_checkpoint(name, cls)
        assert len(models) == len((KURA_JSONL / f"{name}.jsonl").read_bytes().splitlines())
        ours.save_checkpoint(name, models)
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (KURA_JSONL / f"{name}.jsonl").read_bytes(), name


def test_filter_checkpoint_only_builds_matching_rows(tmp_path):
    mgr = JSONLCheckpointManager(tmp_path)
    mgr.save_checkpoint("summaries", _summaries(10))
    kept = mgr.filter_checkpoint("summaries", lambda row: row["metadata"]["i"] >= 7, ConversationSummary)
    assert [s.chat_id for s in kept] == ["c7", "c8", "c9"]


def test_empty_checkpoint_is_saved_and_loads_empty(tmp_path):
    mgr = JSONLCheckpointManager(tmp_path)
    mgr.save_checkpoint("clusters", [], model_class=Cluster)
    assert mgr.load_checkpoint("clusters", Cluster) == []


def test_bad_line_is_named(tmp_path):
    path = tmp_path / "summaries.jsonl"
    good = _summaries(3)
    lines = [s.model_dump_json() for s in good]
    lines[1] = lines[1].replace('"chat_id":"c1",', "")  # a missing field on line 2
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CheckpointCorruptError, match=r"summaries\.jsonl line 2: .*chat_id"):
        JSONLCheckpointManager(tmp_path).load_checkpoint("summaries", ConversationSummary)
    path.write_text(lines[0] + "\n" + lines[2][:40] + "\n")  # a truncated line 2
    with pytest.raises(CheckpointCorruptError, match=r"line 2"):
        JSONLCheckpointManager(tmp_path).load_checkpoint("summaries", ConversationSummary)


def test_checksum_detects_changed_file_and_sidecar_can_be_removed_to_accept_it(tmp_path):
    mgr = JSONLCheckpointManager(tmp_path)
    mgr.save_checkpoint("summaries", _summaries(4))
    path = tmp_path / "summaries.jsonl"
    text = path.read_text().replace("summary 2", "summary X")
    path.write_text(text)
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
        mgr.load_checkpoint("summaries", ConversationSummary)
    (tmp_path / "summaries.jsonl.meta.json").unlink()
    assert mgr.load_checkpoint("summaries", ConversationSummary)[2].summary == "summary X"


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/../../b", "nul\x00byte", "", "a\\b"])
def test_names_cannot_escape_the_directory(tmp_path, name):
    mgr = JSONLCheckpointManager(tmp_path / "ck")
    with pytest.raises(InvalidCheckpointName):
        mgr.save_checkpoint(name, _summaries(1))
    assert not any(p for p in tmp_path.rglob("*.jsonl"))


def test_memory_filesystem(tmp_path):
    mgr = JSONLCheckpointManager("memory://kura-tests/jsonl")
    data = _summaries(2)
    mgr.save_checkpoint("summaries", data)
    assert mgr.load_checkpoint("summaries", ConversationSummary) == data
    assert mgr.list_checkpoints() == ["summaries"]
    assert json.loads(mgr.sidecar_path(mgr.get_checkpoint_path("summaries")).read_text())["versions"][0]["rows"] == 2
    assert mgr.delete_checkpoint("summaries")


def test_checkpoint_layer_works_without_importing_dagster(tmp_path):
    """Layer 2 is usable in a notebook: saving and loading in every format never imports Dagster."""
    import subprocess
    import sys

    code = f"""
import sys
from kura_dagster.checkpoints import registry
from kura_dagster.types import ConversationSummary
rows = [ConversationSummary(summary="s", chat_id="c", metadata={{"ok": True}})]
for fmt in registry.FORMATS:
    mgr = registry.build_manager(fmt, {str(tmp_path)!r} + "/" + fmt)
    mgr.save_checkpoint("summaries", rows)
    assert mgr.load_checkpoint("summaries", ConversationSummary) == rows, fmt
leaked = sorted(m for m in sys.modules if m == "dagster" or m.startswith("dagster."))
print("LEAKED", leaked)
sys.exit(1 if leaked else 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("block", [1, 7, 64, 1 << 20])
def test_streamed_lines_are_the_lines_of_the_whole_file(block):
    """Reading in blocks (how a load avoids holding the whole file) finds exactly the lines and line numbers that
    splitting the whole file does: blank lines, lines longer than a block and a last line without a newline."""
    import io

    data = b'{"a":1}\n\n{"b":"' + b"x" * 150 + b'"}\n  \n{"c":3}\n{"d":4}'
    whole = [pair for lines, numbers in JSONLCheckpointManager._chunks(data) for pair in zip(lines, numbers)]
    streamed = [pair for lines, numbers in JSONLCheckpointManager._stream_chunks(io.BytesIO(data), block=block)
                for pair in zip(lines, numbers)]
    assert streamed == whole
    assert [n for _, n in whole] == [1, 3, 5, 6]


def test_load_streams_the_file_instead_of_reading_it_whole(tmp_path, monkeypatch):
    """A healthy load reads the file in blocks while hashing it (peak = the models plus one block), and damage
    found that way is still reported with the lines, exactly as a whole-file check reports it."""
    from kura_dagster.checkpoints import jsonl

    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 512)  # many blocks, lines cut across them
    mgr = JSONLCheckpointManager(tmp_path)
    data = _summaries(300)
    mgr.save_checkpoint("summaries", data)
    whole_reads = []
    original = JSONLCheckpointManager._verified_bytes
    monkeypatch.setattr(JSONLCheckpointManager, "_verified_bytes",
                        lambda self, path: whole_reads.append(path) or original(self, path))
    assert mgr.load_checkpoint("summaries", ConversationSummary) == data
    assert list(mgr.iter_checkpoint("summaries", ConversationSummary)) == data
    assert len(mgr.filter_checkpoint("summaries", lambda row: row["chat_id"].endswith("7"))) == 30
    assert whole_reads == []  # nothing needed the whole file at once

    path = tmp_path / "summaries.jsonl"
    path.write_bytes(path.read_bytes().replace(b"summary 280", b"summary 281", 1))  # still valid JSON
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch in lines 257–300") as info:
        mgr.load_checkpoint("summaries", ConversationSummary)
    assert info.value.line == 257 and whole_reads  # the diagnosis reads the whole (damaged) file


def test_a_kura_file_cut_mid_line_is_refused_before_streaming_any_row(tmp_path, monkeypatch):
    from kura_dagster.checkpoints import jsonl

    monkeypatch.setattr(jsonl, "CHUNK_BYTES", 256)
    path = tmp_path / "summaries.jsonl"
    text = "".join(s.model_dump_json() + "\n" for s in _summaries(50))  # as Kura writes it: no sidecar
    path.write_text(text[: len(text) - 20])
    got = []
    with pytest.raises(CheckpointCorruptError, match="cut short") as info:
        for row in JSONLCheckpointManager(tmp_path).iter_checkpoint("summaries", ConversationSummary):
            got.append(row)
    assert got == [] and info.value.line == 50
    path.write_text(text[:-1])  # a whole last line without its line ending is fine (Kura reads it too)
    assert len(list(JSONLCheckpointManager(tmp_path).iter_checkpoint("summaries", ConversationSummary))) == 50


def _as_older_sidecar(tmp_path, *, sha256_blocks: bool) -> None:
    """Rewrite the sidecar of ``summaries.jsonl`` as versions before this one wrote it: the file's SHA-256 under
    ``"sha256"`` (not ``"checksum"``), and, before that, SHA-256 block digests without a ``block_hash`` key."""
    import hashlib

    path, sidecar = tmp_path / "summaries.jsonl", tmp_path / "summaries.jsonl.meta.json"
    raw = path.read_bytes()
    meta = json.loads(sidecar.read_text())
    version = meta["versions"][0]
    assert version.pop("checksum").startswith("xxh3_128:")
    version["sha256"] = hashlib.sha256(raw).hexdigest()
    if sha256_blocks:
        lines = raw.splitlines(keepends=True)
        version["blocks"] = [hashlib.sha256(b"".join(lines[i:i + 256])).hexdigest()[:16]
                             for i in range(0, len(lines), 256)]
        del version["block_hash"]
    sidecar.write_text(json.dumps(meta))


def test_sidecars_with_sha256_block_digests_still_narrow_damage_down(tmp_path):
    """Sidecars written before block digests were XXH3 (no ``block_hash`` key, SHA-256 prefixes) still load and
    still name the changed lines."""
    mgr = JSONLCheckpointManager(tmp_path)
    data = _summaries(600)
    mgr.save_checkpoint("summaries", data)
    path = tmp_path / "summaries.jsonl"
    version = json.loads((tmp_path / "summaries.jsonl.meta.json").read_text())["versions"][0]
    assert version["block_hash"] == "xxh3_64" and len(version["blocks"]) == 3
    _as_older_sidecar(tmp_path, sha256_blocks=True)
    assert mgr.load_checkpoint("summaries", ConversationSummary) == data
    path.write_bytes(path.read_bytes().replace(b"summary 300", b"summary 301", 1))
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch in lines 257–512"):
        mgr.load_checkpoint("summaries", ConversationSummary)


def test_sidecars_with_a_sha256_checksum_still_load_and_refuse_damage(tmp_path):
    """A sidecar written before the checksum was XXH3-128 (``"sha256"``) still verifies the file, by SHA-256, in every
    read path; damage is still refused naming its lines; the next save replaces it with an XXH3-128 one."""
    mgr = JSONLCheckpointManager(tmp_path)
    data = _summaries(600)
    mgr.save_checkpoint("summaries", data)
    _as_older_sidecar(tmp_path, sha256_blocks=False)
    assert mgr.load_checkpoint("summaries", ConversationSummary) == data
    assert list(mgr.iter_checkpoint("summaries", ConversationSummary)) == data
    assert mgr.get_checkpoint_info("summaries")["checksum"].startswith("sha256:")
    path = tmp_path / "summaries.jsonl"
    good = path.read_bytes()
    path.write_bytes(good.replace(b"summary 300", b"summary 301", 1))
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch in lines 257–512"):
        mgr.load_checkpoint("summaries", ConversationSummary)
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch in lines 257–512"):
        list(mgr.iter_checkpoint("summaries", ConversationSummary))
    path.write_bytes(good)
    saved = mgr.save_checkpoint("summaries", data[:10])  # accepted the old version while replacing it
    versions = json.loads((tmp_path / "summaries.jsonl.meta.json").read_text())["versions"]
    assert [v["checksum"] for v in versions] == [saved.checksum] and saved.checksum.startswith("xxh3_128:")
    assert mgr.load_checkpoint("summaries", ConversationSummary) == data[:10]


@pytest.mark.parametrize("dim", [2, 3000])
def test_one_checksum_of_the_file_and_block_digests_of_its_lines(tmp_path, dim):
    """The recorded checksum is the XXH3-128 of the file's bytes (anyone can recompute it), and each block digest the
    XXH3-64 of 256 lines, as written in one pass: also when long lines (embeddings) go out a few at a time."""
    import xxhash

    mgr = JSONLCheckpointManager(tmp_path)
    data = [s.model_copy(update={"embedding": [i / 7] * dim}) for i, s in enumerate(_summaries(600))]
    saved = mgr.save_checkpoint("summaries", data)
    raw = (tmp_path / "summaries.jsonl").read_bytes()
    assert raw == "".join(s.model_dump_json() + "\n" for s in data).encode()
    version = json.loads((tmp_path / "summaries.jsonl.meta.json").read_text())["versions"][0]
    assert saved.checksum == version["checksum"] == "xxh3_128:" + xxhash.xxh3_128_hexdigest(raw)
    lines = raw.splitlines(keepends=True)
    assert version["blocks"] == [xxhash.xxh3_64_hexdigest(b"".join(lines[i:i + 256])) for i in range(0, 600, 256)]
    assert version["bytes"] == len(raw) == saved.bytes and version["rows"] == 600


def test_a_load_pauses_the_garbage_collector_and_restores_it(tmp_path, monkeypatch):
    """Loads run without the cyclic collector (see jsonl's docstring), which comes back as it was: on after a load,
    after a refused load, and still off for a caller that had turned it off."""
    import gc

    from kura_dagster.checkpoints import jsonl

    mgr = JSONLCheckpointManager(tmp_path)
    mgr.save_checkpoint("summaries", _summaries(20))
    seen = []
    original = jsonl.JSONLCheckpointManager._parse_chunks

    def spy(self, path, chunks, model):
        seen.append(gc.isenabled())
        yield from original(self, path, chunks, model)

    monkeypatch.setattr(jsonl.JSONLCheckpointManager, "_parse_chunks", spy)
    assert gc.isenabled()
    assert len(mgr.load_checkpoint("summaries", ConversationSummary)) == 20
    assert seen == [False] and gc.isenabled()
    (tmp_path / "summaries.jsonl").write_bytes(b'{"summary": 1}\n')
    with pytest.raises(CheckpointCorruptError):
        mgr.load_checkpoint("summaries", ConversationSummary)
    assert gc.isenabled()
    gc.disable()
    try:
        mgr.save_checkpoint("summaries", _summaries(3))
        mgr.load_checkpoint("summaries", ConversationSummary)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_lines_are_validated_in_batches_and_errors_still_name_the_line(tmp_path, monkeypatch):
    """Many lines per pydantic-core call (one JSON array per batch), yet a bad line deep in a batch is named, for
    a file without a sidecar and for one whose sidecar the damage contradicts, whatever the block and batch sizes."""
    from kura_dagster.checkpoints import jsonl

    data = _summaries(1000)
    text = "".join(s.model_dump_json() + "\n" for s in data)
    batches = [numbers for _, numbers in JSONLCheckpointManager._chunks(text.encode())]
    assert [n for numbers in batches for n in numbers] == list(range(1, 1001))
    assert 1 < len(batches) <= 10  # ~140 lines of ~230 bytes per 32 kB batch
    calls = []
    original = jsonl.list_adapter

    def counting(model):
        adapter = original(model)

        class Counted:
            def validate_json(self, raw):
                calls.append(raw)
                return adapter.validate_json(raw)
        return Counted()

    monkeypatch.setattr(jsonl, "list_adapter", counting)
    for chunk_bytes, batch_bytes in ((1 << 20, 128 << 10), (700, 3000), (64, 1)):
        monkeypatch.setattr(jsonl, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(jsonl, "BATCH_BYTES", batch_bytes)
        calls.clear()
        (tmp_path / "summaries.jsonl").write_text(text)
        assert JSONLCheckpointManager(tmp_path).load_checkpoint("summaries", ConversationSummary) == data
        if batch_bytes > 1000:
            assert len(calls) < 1000 / 2  # many lines per call
        bad = text.replace('"chat_id":"c737",', "")  # line 738 loses a required field
        (tmp_path / "summaries.jsonl").write_text(bad)
        with pytest.raises(CheckpointCorruptError, match=r"line 738: .*chat_id"):
            JSONLCheckpointManager(tmp_path).load_checkpoint("summaries", ConversationSummary)
        cut = text.replace('"chat_id":"c737"', '"chat_id":"c737', 1)  # line 738 is no longer valid JSON
        (tmp_path / "summaries.jsonl").write_text(cut)
        with pytest.raises(CheckpointCorruptError, match=r"line 738"):
            JSONLCheckpointManager(tmp_path).load_checkpoint("summaries", ConversationSummary)
        mgr = JSONLCheckpointManager(tmp_path / "with-sidecar")
        mgr.save_checkpoint("summaries", data)
        (tmp_path / "with-sidecar" / "summaries.jsonl").write_text(cut)
        with pytest.raises(CheckpointCorruptError, match=r"line 738"):
            mgr.load_checkpoint("summaries", ConversationSummary)


def test_lines_that_start_with_whitespace_are_read_as_kura_reads_them(tmp_path):
    """The fast path (every line starts with "{") and the careful one (blank lines skipped, indented lines kept) give
    the same models."""
    data = _summaries(4)
    lines = [s.model_dump_json() for s in data]
    (tmp_path / "summaries.jsonl").write_text(f"{lines[0]}\n  {lines[1]}\n\n \t\n{lines[2]}\r\n{lines[3]}")
    assert JSONLCheckpointManager(tmp_path).load_checkpoint("summaries", ConversationSummary) == data


def test_early_writeback_leaves_the_same_file(tmp_path, monkeypatch):
    """Asking the kernel to start writing every few kB while saving (instead of only fsyncing at the end) changes
    nothing in what is saved, locally or on a filesystem without file descriptors."""
    from kura_dagster.checkpoints import jsonl

    data = _summaries(600)
    monkeypatch.setattr(jsonl, "WRITEBACK_BYTES", 1024)
    calls = []
    real = jsonl._sync_file_range()
    if real is not None:
        monkeypatch.setattr(jsonl, "_sync_file_range", lambda: lambda *a: calls.append(a[1:3]) or real(*a))
    for location in (tmp_path, "memory://kura-tests/writeback"):
        mgr = JSONLCheckpointManager(location)
        mgr.save_checkpoint("summaries", data)
        raw = mgr.get_checkpoint_path("summaries").read_bytes()
        assert raw == "".join(s.model_dump_json() + "\n" for s in data).encode()
        assert mgr.load_checkpoint("summaries", ConversationSummary) == data
    if real is not None:  # Linux: consecutive ranges from the start, each at least WRITEBACK_BYTES
        assert calls and calls[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(calls, calls[1:]))
        assert all(n >= 1024 for _, n in calls)


def test_a_write_that_fails_on_the_writer_thread_fails_the_save_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """Lines are written on a second thread while the next ones are serialized; a write error there (a full disk)
    is raised by the save, the previous checkpoint stays loadable, and no thread or temporary file is left."""
    import errno
    import threading

    from kura_dagster.checkpoints import jsonl, storage

    mgr = JSONLCheckpointManager(tmp_path)
    old = _summaries(300)
    mgr.save_checkpoint("summaries", old)
    real = storage.atomic_write_file

    class FullDisk:
        def __init__(self, fh):
            self._fh, self._written = fh, 0

        def write(self, data):
            self._written += len(data)
            if self._written > 20_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self._fh.write(data)

        def __getattr__(self, name):
            return getattr(self._fh, name)

    def failing(path, write):
        return real(path, (lambda fh: write(FullDisk(fh))) if path.name.endswith(".jsonl") else write)

    monkeypatch.setattr(storage, "atomic_write_file", failing)
    monkeypatch.setattr(jsonl, "WRITE_BYTES", 4096)  # many small writes, so the error comes mid-save
    with pytest.raises(OSError, match="No space left"):
        mgr.save_checkpoint("summaries", _summaries(3000))
    monkeypatch.undo()
    assert mgr.load_checkpoint("summaries", ConversationSummary) == old
    assert not [t for t in threading.enumerate() if t.name == "kura-jsonl-writer"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".summaries.jsonl.lock")) == [
        "summaries.jsonl", "summaries.jsonl.meta.json"]
