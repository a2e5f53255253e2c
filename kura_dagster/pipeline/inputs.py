"""Reading conversations from a Kura conversation dump (``.json`` array) or a ``.jsonl`` file, strictly.

Every record is checked: valid UTF-8 and JSON, the fields of a Kura ``Conversation`` and no others, known
roles, at least one message, a unique ``chat_id`` and messages no larger than ``max_message_chars``.
``on_bad_record="fail"`` (the default) raises one error that lists the first problems with their line (or
record) numbers; ``"skip"`` returns the good records and the bad ones, so the caller can quarantine them.
Nothing is dropped without a word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from kura_dagster.types import Conversation

OnBadRecord = Literal["fail", "skip"]
DEFAULT_MAX_MESSAGE_CHARS = 1_000_000
SHOWN_PROBLEMS = 10


class ConversationInputError(ValueError):
    """The conversations file cannot be used as it is."""


@dataclass
class BadRecord:
    location: str
    """``line 12`` for JSONL, ``record 12`` for a JSON array (both 1-based)."""
    reason: str
    raw: str
    chat_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"location": self.location, "reason": self.reason, "chat_id": self.chat_id, "raw": self.raw}


@dataclass
class ReadResult:
    source: str
    conversations: list[Conversation] = field(default_factory=list)
    bad_records: list[BadRecord] = field(default_factory=list)


def quarantine_jsonl(bad_records: list[BadRecord], source: str) -> bytes:
    """The quarantine file for ``bad_records``: one JSON object a line with the source file, the location
    (``line 12``), the reason, the ``chat_id`` when known and the raw record, whole (bytes that are not UTF-8
    appear as ``\\xNN``)."""
    return b"".join(
        json.dumps({"source": source, **b.as_dict()}, ensure_ascii=False).encode("utf-8") + b"\n" for b in bad_records
    )


def _validation_text(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "(record)"
        kind = e.get("type")
        if kind == "missing":
            parts.append(f"missing field '{loc}'")
        elif kind == "extra_forbidden":
            parts.append(f"unexpected field '{loc}'")
        elif kind == "literal_error" and loc.endswith("role"):
            parts.append(f"unknown role {e.get('input')!r} at {loc} (expected 'user' or 'assistant')")
        else:
            parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


def _check(record: Any, seen: set[str], max_chars: int) -> tuple[Conversation | None, str | None, str | None]:
    chat_id = record.get("chat_id") if isinstance(record, dict) else None
    chat_id = chat_id if isinstance(chat_id, str) else None
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}", None
    try:
        conversation = Conversation.model_validate(record, strict=False, extra="forbid")
    except ValidationError as err:
        return None, _validation_text(err), chat_id
    if not conversation.messages:
        return None, "the conversation has no messages", chat_id
    for i, m in enumerate(conversation.messages):
        if len(m.content) > max_chars:
            return None, (f"message {i} has {len(m.content):,} characters, more than the limit of {max_chars:,} "
                          "(raise max_message_chars to accept it)"), chat_id
    if conversation.chat_id in seen:
        return None, f"duplicate chat_id {conversation.chat_id!r}", chat_id
    seen.add(conversation.chat_id)
    return conversation, None, chat_id


def read_conversations(
    path: str | Path, on_bad_record: OnBadRecord = "fail", max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS
) -> ReadResult:
    if on_bad_record not in ("fail", "skip"):
        raise ValueError(f"on_bad_record must be 'fail' or 'skip', got {on_bad_record!r}")
    path = Path(path)
    if not path.exists():
        raise ConversationInputError(f"{path}: no such file (set KURA_CONVERSATIONS to a .json dump or a .jsonl file)")
    if path.is_dir():
        raise ConversationInputError(f"{path}: is a directory, not a .json or .jsonl file of conversations")
    result = ReadResult(source=str(path))
    seen: set[str] = set()
    data = path.read_bytes()

    def consider(location: str, raw_bytes: bytes, record: Any = None, parse_error: str | None = None) -> None:
        raw = raw_bytes.decode("utf-8", errors="backslashreplace")  # whole, so a quarantined record can be fixed
        if parse_error is None:
            conversation, reason, chat_id = _check(record, seen, max_message_chars)
        else:
            conversation, reason, chat_id = None, parse_error, None
        if conversation is not None:
            result.conversations.append(conversation)
        else:
            result.bad_records.append(BadRecord(location, reason or "invalid record", raw, chat_id))

    stripped = data.lstrip()
    if path.suffix == ".json" or (path.suffix != ".jsonl" and stripped.startswith(b"[")):
        try:
            records = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConversationInputError(f"{path} line {line}: bytes that are not UTF-8 ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise ConversationInputError(f"{path} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
        if not isinstance(records, list):
            raise ConversationInputError(f"{path}: a Kura conversation dump is a JSON array, got {type(records).__name__}")
        for i, record in enumerate(records, start=1):
            consider(f"record {i}", json.dumps(record, default=str).encode(), record)
    else:
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                consider(f"line {number}", line, parse_error=f"bytes that are not UTF-8 at column {exc.start + 1}")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                consider(f"line {number}", line, parse_error=f"invalid JSON at column {exc.colno} ({exc.msg})")
                continue
            consider(f"line {number}", line, record)

    if result.bad_records and on_bad_record == "fail":
        shown = "\n".join(f"  {path} {b.location}: {b.reason}" for b in result.bad_records[:SHOWN_PROBLEMS])
        more = len(result.bad_records) - SHOWN_PROBLEMS
        raise ConversationInputError(
            f"{len(result.bad_records)} bad record(s) in {path}:\n{shown}"
            + (f"\n  … and {more} more" if more > 0 else "")
            + "\nFix them, or set KURA_ON_BAD_RECORD=skip to skip and quarantine them."
        )
    return result
