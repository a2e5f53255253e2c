"""``kura-dagster cache list|prune`` and the cache line of ``kura-dagster storage``."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from kura_dagster.checkpoints.summary_cache import IDENTITY_FILE, SummaryCache, cache_folders
from kura_dagster.cli import main
from kura_dagster.types import GeneratedSummary
from kura_dagster_tests.fake_openai import fake_conversations

OLD, NEW, KEPT, LIVE = "openai:old/summary-v1/temperature=0.2", "openai:new/summary-v1/temperature=0.2", \
    "openai:kept/summary-v1/temperature=0.2", "openai:live/summary-v1/temperature=0.2"


def filled(tmp_path) -> str:
    convs = fake_conversations(2)
    gen = [GeneratedSummary(summary=f"s{i}", request=f"r{i}") for i in range(2)]
    for identity in (OLD, NEW, KEPT):
        cache = SummaryCache(tmp_path)
        cache.put_summaries(identity, convs, gen)
        cache.commit()
    cache = SummaryCache(tmp_path)
    cache.put_embeddings("openai-embedding:e", ["a"], np.ones((1, 4), dtype=np.float32))
    cache.commit()
    live = SummaryCache(tmp_path)
    live.put_summaries(LIVE, convs, gen)  # journaled by this (running) process, not committed
    month_ago = time.time() - 31 * 86400
    for identity in (OLD, KEPT, LIVE, "openai-embedding:e"):
        kind = "embeddings" if identity.startswith("openai-embedding") else "summaries"
        ns = SummaryCache(tmp_path).namespace(kind, identity)
        marker = os.path.join(str(ns.directory), IDENTITY_FILE)
        with open(marker, "w") as fh:
            json.dump({"kind": kind, "identity": identity, "last_used": month_ago}, fh)
    return str(tmp_path)


def test_prune_lists_then_removes_setting_folders_not_used_lately(tmp_path, capsys) -> None:
    root = filled(tmp_path)
    assert main(["cache", "list", root, "--json"]) == 0
    listed = {f["identity"]: f for f in json.loads(capsys.readouterr().out)}
    assert set(listed) == {OLD, NEW, KEPT, LIVE, "openai-embedding:e"}
    assert listed[LIVE]["live_writers"] == 1 and listed[NEW]["bytes"] > 0

    assert main(["cache", "prune", root, "--older-than", "30d", "--keep", KEPT, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"| summaries | {OLD} |" in out and "would remove" in out and "2 of 5 setting folders to remove" in out
    assert len(cache_folders(root)) == 5  # a dry run removes nothing

    assert main(["cache", "prune", root, "--older-than", "30d", "--keep", KEPT]) == 0
    out = capsys.readouterr().out
    assert "2 of 5 setting folders removed" in out
    assert {f.identity for f in cache_folders(root)} == {NEW, KEPT, LIVE}  # in use, --keep, written right now
    convs = fake_conversations(2)
    assert SummaryCache(root).get_summaries(OLD, convs) == [None, None]
    assert SummaryCache(root).get_summaries(NEW, convs)[0].summary == "s0"
    assert main(["cache", "prune", root, "--older-than", "0"]) == 0  # age 0: all but the live one
    assert {f.identity for f in cache_folders(root)} == {LIVE}


def test_storage_reports_the_cache_size(tmp_path, capsys) -> None:
    from kura_dagster.checkpoints import JSONLCheckpointManager

    JSONLCheckpointManager(str(tmp_path)).save_checkpoint("conversations", fake_conversations(3))
    root = filled(tmp_path)
    total = sum(f.bytes for f in cache_folders(root))
    assert main(["storage", root]) == 0
    assert f"Answer cache (.kura-cache): {total:,} bytes in 5 setting folders" in capsys.readouterr().out
    assert main(["storage", root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"] == {"bytes": total, "folders": 5}


def test_a_cache_that_cannot_record_its_use_still_answers(tmp_path, caplog, monkeypatch) -> None:
    """E.g. a read-only shared cache: its answers are served; only the last-use hint for pruning is missing."""
    from kura_dagster.checkpoints import summary_cache

    convs = fake_conversations(1)
    cache = SummaryCache(tmp_path)
    cache.put_summaries(OLD, convs, [GeneratedSummary(summary="s", request="r")])
    cache.commit()
    real = summary_cache.storage.atomic_write_bytes

    def refuse_marker(path, data):
        if str(path).endswith(IDENTITY_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, data)

    monkeypatch.setattr(summary_cache.storage, "atomic_write_bytes", refuse_marker)
    assert SummaryCache(tmp_path).get_summaries(OLD, convs)[0].summary == "s"
    assert "cannot record the last use" in caplog.text
