"""Conversations and messages, field for field as Kura defines them (``kura.types.conversation``).

Also the strict reading of Kura's own formats (a ``.json`` dump, a ``.jsonl`` file): how the bytes split into
records, and what makes a record a valid ``Conversation``. :mod:`kura_dagster.sources` builds every other
format on these; this module imports nothing above the types layer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError

# What Kura's web UI accepts in metadata on upload: scalars, or flat lists of them.
MetadataValue = Union[str, int, float, bool, list[str], list[int], list[float]]
MetadataDict = dict[str, MetadataValue]

DEFAULT_MAX_MESSAGE_CHARS = 1_000_000
SHOWN_PROBLEMS = 10


class ConversationInputError(ValueError):
    """Conversations cannot be read from a source as it is (the message names the file, line or record)."""


class Message(BaseModel):
    created_at: datetime
    role: Literal["user", "assistant"]
    content: str


class Conversation(BaseModel):
    chat_id: str
    created_at: datetime
    messages: list[Message]
    metadata: MetadataDict

    @classmethod
    def generate_conversation_dump(cls, conversations: list[Conversation], file_path: str | Path) -> None:
        """Write Kura's conversation dump: one JSON array of conversations."""
        Path(file_path).write_text(
            json.dumps([c.model_dump(mode="json") for c in conversations]), encoding="utf-8"
        )

    @classmethod
    def from_conversation_dump(cls, file_path: str | Path) -> list[Conversation]:
        """Read Kura's conversation dump (a JSON array), or a ``.jsonl`` file of conversations, strictly.

        Any bad record raises :class:`ConversationInputError` naming the file and the record (or line) and
        what was wrong. :func:`kura_dagster.sources.read_source` reads other formats and can skip bad records.
        """
        path = Path(file_path)
        seen: set[str] = set()
        conversations: list[Conversation] = []
        problems: list[str] = []
        for location, _raw, record, parse_error in split_json_records(path.read_bytes(), str(path),
                                                                      jsonl=path.suffix == ".jsonl" or None):
            conversation, reason = (None, parse_error) if parse_error else check_record(record, seen)[:2]
            if conversation is None:
                problems.append(f"{path} {location}: {reason}")
            else:
                conversations.append(conversation)
        if problems:
            raise bad_records_error(str(path), problems, "Fix them, or read the file with "
                                    "kura_dagster.sources.read_source(..., on_bad_record='skip') to skip them.")
        return conversations


# --- strict reading of Kura's formats (shared with kura_dagster.sources) -------------------------------------
KURA_FIELDS = frozenset(Conversation.model_fields)


def validation_text(err: ValidationError) -> str:
    """A pydantic error as one line: ``missing field 'created_at'; unknown role 'system' at messages.0.role …``."""
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


def conversation_problem(conversation: Conversation, seen: set[str], max_chars: int) -> str | None:
    """What is wrong with an otherwise valid conversation (no messages, a huge message, a repeated chat_id),
    or ``None``; a good one's ``chat_id`` is added to ``seen``."""
    if not conversation.messages:
        return "the conversation has no messages"
    for i, m in enumerate(conversation.messages):
        if len(m.content) > max_chars:
            return (f"message {i} has {len(m.content):,} characters, more than the limit of {max_chars:,} "
                    "(raise max_message_chars to accept it)")
    if conversation.chat_id in seen:
        return f"duplicate chat_id {conversation.chat_id!r}"
    seen.add(conversation.chat_id)
    return None


def check_record(
    record: Any, seen: set[str], max_chars: int = DEFAULT_MAX_MESSAGE_CHARS
) -> tuple[Conversation | None, str | None, str | None]:
    """``record`` (a parsed JSON value) as a Kura ``Conversation`` with exactly Kura's fields: the conversation
    or ``None``, the reason it is bad, and its ``chat_id`` when it has a usable one."""
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}", None
    chat_id = record.get("chat_id")
    chat_id = chat_id if isinstance(chat_id, str) else None
    try:
        conversation = Conversation.model_validate(record, strict=False, extra="forbid")
    except ValidationError as err:
        return None, validation_text(err), chat_id
    problem = conversation_problem(conversation, seen, max_chars)
    return (None, problem, chat_id) if problem else (conversation, None, chat_id)


RecordItem = tuple[str, bytes, Any, "str | None"]
"""``(location, raw bytes, parsed record, parse error)``: ``location`` is ``line 12`` or ``record 12``."""


def split_json_records(data: bytes, name: str, *, jsonl: bool | None = None) -> Iterator[RecordItem]:
    """The records of a JSON array (``record N``) or of JSON lines (``line N``), decided by the content
    unless ``jsonl`` says: an array starts with ``[``; anything else is JSON lines (one object spread over
    several lines is taken as one record). An array that is not UTF-8 or not JSON cannot be split into records
    and raises :class:`ConversationInputError` naming ``name`` and the line; a bad line is yielded with its
    error, to be reported or quarantined whole."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    stripped = data.lstrip()
    if jsonl is None:
        jsonl = not stripped.startswith(b"[")
        if jsonl and stripped.startswith(b"{") and not _first_line_parses(stripped):
            whole = _loads_or_none(data)
            if isinstance(whole, dict):  # one pretty-printed object
                yield "record 1", data, whole, None
                return
    if not jsonl:
        try:
            records = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConversationInputError(f"{name} line {line}: bytes that are not UTF-8 ({exc.reason})") from None
        except json.JSONDecodeError as exc:
            raise ConversationInputError(f"{name} line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
        if not isinstance(records, list):
            raise ConversationInputError(f"{name}: expected a JSON array of records, got {type(records).__name__}")
        for i, record in enumerate(records, start=1):
            yield f"record {i}", json.dumps(record, default=str, ensure_ascii=False).encode(), record, None
        return
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield f"line {number}", line, None, f"bytes that are not UTF-8 at column {exc.start + 1}"
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield f"line {number}", line, None, f"invalid JSON at column {exc.colno} ({exc.msg})"
            continue
        yield f"line {number}", line, record, None


def _first_line_parses(data: bytes) -> bool:
    return _loads_or_none(data.split(b"\n", 1)[0]) is not None


def _loads_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def bad_records_error(source: str, problems: list[str], hint: str) -> ConversationInputError:
    """One error for all of a source's bad records: the count, the first :data:`SHOWN_PROBLEMS` (each naming
    its file and line, record or row), and what to do."""
    shown = "\n".join(f"  {p}" for p in problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return ConversationInputError(
        f"{len(problems)} bad record(s) in {source}:\n{shown}" + (f"\n  … and {more} more" if more > 0 else "")
        + (f"\n{hint}" if hint else "")
    )
