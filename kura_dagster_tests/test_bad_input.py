"""Bad records in the conversations input (``KURA_CONVERSATIONS``) are never dropped without a word.

Malformed JSON, missing and extra fields, an unknown role, an empty conversation, bytes that are not UTF-8,
a duplicate ``chat_id`` and a huge message: by default the run fails with an error listing the first problems
with their line numbers; with ``KURA_ON_BAD_RECORD=skip`` they are skipped, written to a quarantine file beside
the checkpoints, counted in the asset metadata and logged as a warning — directly, through Dagster, and through
the environment-configured Definitions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration.assets import conversations
from kura_dagster.definitions import build_definitions
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.pipeline.inputs import DEFAULT_MAX_MESSAGE_CHARS, ConversationInputError, read_conversations
from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource
from kura_dagster.types import Conversation


def _conv(chat_id: str, *, role: str = "user", content: str = "hello", **extra) -> dict:
    return {
        "chat_id": chat_id,
        "created_at": "2025-01-01T00:00:00",
        "messages": [
            {"created_at": "2025-01-01T00:00:00", "role": role, "content": content},
            {"created_at": "2025-01-01T00:00:01", "role": "assistant", "content": "hi"},
        ],
        "metadata": {"source": "test"},
        **extra,
    }


def _line(record: dict) -> bytes:
    return json.dumps(record).encode()


missing_field = _conv("missing")
del missing_field["created_at"]

# line number → (raw line, words the reason must contain); None marks a good record.
LINES: list[tuple[bytes, str | None]] = [
    (_line(_conv("good-1")), None),                                                        # 1
    (b'{"chat_id": "broken", "created_at": "2025-01-01T00:00:00", "messages": [', "invalid JSON"),  # 2
    (_line(missing_field), "missing field 'created_at'"),                                   # 3
    (_line(_conv("extra", colour="blue")), "unexpected field 'colour'"),                    # 4
    (_line(_conv("role", role="system")), "unknown role 'system'"),                         # 5
    (_line({**_conv("empty"), "messages": []}), "no messages"),                             # 6
    (_line(_conv("latin1"))[:-30] + b"\xff\xfe" + _line(_conv("latin1"))[-28:], "not UTF-8"),  # 7
    (_line(_conv("good-1")), "duplicate chat_id 'good-1'"),                                 # 8
    (_line(_conv("huge", content="x" * (DEFAULT_MAX_MESSAGE_CHARS + 1))), "characters, more than the limit"),  # 9
    (b"", None),                                                                            # 10: blank, ignored
    (_line(_conv("good-2")), None),                                                         # 11
]
BAD = {n: reason for n, (_, reason) in enumerate(LINES, start=1) if reason}
GOOD_IDS = ["good-1", "good-2"]


@pytest.fixture
def bad_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "input" / "conversations.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"\n".join(raw for raw, _ in LINES) + b"\n")
    return path


def test_default_fails_listing_every_problem_with_its_line(bad_jsonl: Path) -> None:
    with pytest.raises(ConversationInputError) as info:
        read_conversations(bad_jsonl)
    text = str(info.value)
    assert text.startswith(f"{len(BAD)} bad record(s) in {bad_jsonl}")
    for number, reason in BAD.items():
        line = next(t for t in text.splitlines() if f"{bad_jsonl} line {number}:" in t)
        assert reason in line, (reason, line)
    assert "KURA_ON_BAD_RECORD=skip" in text
    assert "line 1:" not in text and "line 11:" not in text


def test_only_the_first_problems_are_listed_and_the_rest_counted(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(["{oops"] * 25) + "\n")
    text = str(pytest.raises(ConversationInputError, read_conversations, path).value)
    assert "25 bad record(s)" in text and "line 10:" in text and "line 11:" not in text and "… and 15 more" in text


def test_skip_returns_the_good_and_accounts_for_every_bad_record(bad_jsonl: Path) -> None:
    result = read_conversations(bad_jsonl, on_bad_record="skip")
    assert [c.chat_id for c in result.conversations] == GOOD_IDS
    assert {b.location: b.reason for b in result.bad_records}.keys() == {f"line {n}" for n in BAD}
    for bad in result.bad_records:
        assert BAD[int(bad.location.split()[1])] in bad.reason
    non_blank = sum(1 for raw, _ in LINES if raw.strip())
    assert len(result.conversations) + len(result.bad_records) == non_blank  # nothing dropped without a word
    # The quarantined record is whole (the huge one too), non-UTF-8 bytes are kept visibly.
    huge = next(b for b in result.bad_records if b.location == "line 9")
    assert len(huge.raw) > DEFAULT_MAX_MESSAGE_CHARS and huge.chat_id == "huge"
    assert "\\xff\\xfe" in next(b for b in result.bad_records if b.location == "line 7").raw


def test_json_dump_records_are_numbered(tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    path.write_text(json.dumps([_conv("a"), _conv("b", role="robot"), _conv("a")]))
    text = str(pytest.raises(ConversationInputError, read_conversations, path).value)
    assert f"{path} record 2: unknown role 'robot'" in text and f"{path} record 3: duplicate chat_id 'a'" in text
    # A dump that is not UTF-8 (or not JSON) cannot be split into records: one error naming the line.
    path.write_bytes(b'[\n{"chat_id": "\xff"}\n]')
    with pytest.raises(ConversationInputError, match=r"dump\.json line 2: bytes that are not UTF-8"):
        read_conversations(path, on_bad_record="skip")


# --- through Dagster --------------------------------------------------------------------------------------
def _materialize(path: Path, checkpoints: Path, on_bad_record: str) -> dg.ExecuteInProcessResult:
    return _run(
        [conversations],
        resources={
            "source": ConversationSource(path=str(path), on_bad_record=on_bad_record),
            "kura": KuraPipelineResource(checkpoint_dir=str(checkpoints)),
            "io_manager": JSONLIOManager(base_dir=str(checkpoints)),
        },
    )


_INSTANCES: dict[str, dg.DagsterInstance] = {}


def _run(assets: list, resources: dict) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(assets, resources=resources, instance=instance, raise_on_error=False)
    _INSTANCES[result.run_id] = instance
    return result


def _warnings(result: dg.ExecuteInProcessResult) -> list[str]:
    logs = _INSTANCES[result.run_id].all_logs(result.run_id)
    return [r.user_message for r in logs if r.level == logging.WARNING]


def _check_quarantined_run(result: dg.ExecuteInProcessResult, checkpoints: Path) -> None:
    assert result.success
    quarantine = checkpoints / "quarantine" / "conversations.jsonl"
    rows = [json.loads(line) for line in quarantine.read_text(encoding="utf-8").splitlines()]
    assert [r["location"] for r in rows] == [f"line {n}" for n in BAD]
    assert all(r["reason"] and r["raw"] and r["source"].endswith("conversations.jsonl") for r in rows)
    md = result.get_asset_materialization_events()[0].materialization.metadata
    assert md["bad_records"].value == len(BAD) and "quarantined" not in md
    assert md["quarantine_path"].value == str(quarantine)
    assert md["conversations"].value == len(GOOD_IDS)
    warnings = _warnings(result)
    assert any(f"Skipped {len(BAD)} bad record(s)" in w and str(quarantine) in w for w in warnings), warnings
    # The checkpoint holds exactly the good conversations, and the quarantine is not taken for a checkpoint.
    loaded = [Conversation.model_validate_json(line) for line in (checkpoints / "conversations.jsonl").read_text().splitlines()]
    assert [c.chat_id for c in loaded] == GOOD_IDS
    assert sorted(p.name for p in checkpoints.glob("*.jsonl")) == ["conversations.jsonl"]


def test_dagster_run_fails_by_default_with_the_lines(bad_jsonl: Path, tmp_path: Path) -> None:
    result = _materialize(bad_jsonl, tmp_path / "ck", "fail")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    error, message = failure.step_failure_data.error, ""
    while error is not None:  # Dagster wraps the user error; the cause holds our message
        message += error.message
        error = error.cause
    assert f"{len(BAD)} bad record(s)" in message
    for number in BAD:
        assert f"line {number}:" in message
    assert not (tmp_path / "ck" / "conversations.jsonl").exists()
    assert not (tmp_path / "ck" / "quarantine").exists()


def test_dagster_run_skips_and_quarantines(bad_jsonl: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "ck"
    _check_quarantined_run(_materialize(bad_jsonl, checkpoints, "skip"), checkpoints)
    # Fixed input: the old quarantine file no longer describes it and is removed.
    bad_jsonl.write_bytes(LINES[0][0] + b"\n" + LINES[-1][0] + b"\n")
    result = _materialize(bad_jsonl, checkpoints, "skip")
    assert result.success and not (checkpoints / "quarantine" / "conversations.jsonl").exists()
    md = result.get_asset_materialization_events()[0].materialization.metadata
    assert md["bad_records"].value == 0 and "quarantine_path" not in md


def test_environment_configured_definitions_skip_and_quarantine(
    bad_jsonl: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "env-ck"
    monkeypatch.setenv("KURA_CONVERSATIONS", str(bad_jsonl))
    monkeypatch.setenv("KURA_ON_BAD_RECORD", "skip")
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(checkpoints))
    monkeypatch.setenv("KURA_CHECKPOINT_FORMATS", "jsonl")
    defs = build_definitions()
    result = _run([conversations], dict(defs.resources))
    _check_quarantined_run(result, checkpoints)
