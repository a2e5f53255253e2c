"""What reading a source returns (:class:`ReadResult`), bad records and their quarantine file, and the
:class:`Collector` every reader feeds: it runs the strict check on each record, numbers what is bad, counts
what was dropped, and at the end either raises one error listing the first problems or returns them."""

from __future__ import annotations

import json
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from kura_dagster.types import Conversation
from kura_dagster.types.conversation import (
    DEFAULT_MAX_MESSAGE_CHARS,
    bad_records_error,
    check_record,
    conversation_problem,
)

OnBadRecord = Literal["fail", "skip"]
SKIP_HINT = "Fix them, or set KURA_ON_BAD_RECORD=skip to skip and quarantine them."
"""The standalone location's hint; a pipeline built by ``build_kura_defs`` or the Component names its own
setting (the reader takes the hint as ``skip_hint``)."""


@dataclass
class BadRecord:
    location: str
    """Where in the source: ``line 12`` (JSON lines), ``record 12`` (a JSON array or a list), ``row 12`` (a
    table), all 1-based; prefixed with the file's name (``sales/a.jsonl line 12``) when a source has several files."""
    reason: str
    raw: str
    chat_id: str | None = None
    file: str | None = None
    """The file it came from (a path or URL without credentials), or ``None`` for an upstream value."""

    def as_dict(self) -> dict[str, Any]:
        return {"location": self.location, "reason": self.reason, "chat_id": self.chat_id, "raw": self.raw,
                **({"file": self.file} if self.file else {})}


@dataclass
class ReadResult:
    source: str
    """What was read, for people: ``s3://b/sales/*.jsonl (3 files)``; never holds credentials."""
    conversations: list[Conversation] = field(default_factory=list)
    bad_records: list[BadRecord] = field(default_factory=list)
    format: str = ""
    """The detected format: ``kura_json``, ``kura_jsonl``, ``claude_export``, ``openai_chat``, ``sharegpt``,
    ``hf_chat``, ``json_records``, ``parquet``, ``hf_dataset``; for upstream values ``conversations``, ``records``, ``arrow_table``, ``pandas``,
    ``polars``. Several files of different formats give them joined with ``+``."""
    files: list[str] = field(default_factory=list)
    """The files read (paths or URLs without credentials)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """What was dropped or changed on the way, counted (``system_messages``, ``tool_messages``,
    ``non_text_parts``, ``created_at_defaulted``, ``unmapped_field:<name>`` …); see the README's table."""


def quarantine_jsonl(bad_records: list[BadRecord], source: str) -> bytes:
    """The quarantine file for ``bad_records``: one JSON object a line with the source, the file (when there are
    several), the location (``line 12``), the reason, the ``chat_id`` when known and the raw record, whole (bytes
    that are not UTF-8 appear as ``\\xNN``)."""
    return b"".join(
        json.dumps({"source": source, **b.as_dict()}, ensure_ascii=False).encode("utf-8") + b"\n" for b in bad_records
    )


class Collector:
    """Accumulates one source's result. Readers call :meth:`kura_record` (a record that must be a Kura
    conversation as it stands), :meth:`converted` (a record a format reader turned into one) or :meth:`bad`."""

    def __init__(self, source: str, on_bad_record: OnBadRecord, max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
                 shown_prefix: str | None = None) -> None:
        if on_bad_record not in ("fail", "skip"):
            raise ValueError(f"on_bad_record must be 'fail' or 'skip', got {on_bad_record!r}")
        self.result = ReadResult(source=source)
        self.on_bad_record = on_bad_record
        self.max_message_chars = max_message_chars
        self.seen: set[str] = set()
        self.dropped: Counter[str] = Counter()
        self.formats: list[str] = []
        self._shown: list[str] = []
        self._file: str | None = None
        self._file_label = ""
        self._shown_prefix = source if shown_prefix is None else shown_prefix

    def start_file(self, file: str, label: str | None) -> None:
        """Records from now on come from ``file``; ``label`` (its name relative to the source) prefixes their
        locations when the source has several files."""
        self._file, self._file_label = file, label or ""
        self._shown_prefix = file
        self.result.files.append(file)

    def note_format(self, fmt: str) -> None:
        if fmt not in self.formats:
            self.formats.append(fmt)

    def id_scope(self, location: str) -> str:
        """What a generated chat_id hashes besides the content: the file (its name relative to the source, or its
        base name) and the record's place in it, so equal records get different ids and a re-read the same ones."""
        name = self._file_label or (posixpath.basename(self._file.rstrip("/")) if self._file else self.result.source)
        return f"{name}\x00{location}"

    def _location(self, location: str) -> str:
        return f"{self._file_label} {location}" if self._file_label else location

    def bad(self, location: str, reason: str, raw: bytes | str | None, chat_id: str | None = None,
            record: Any = None) -> None:
        """A bad record, kept whole: ``raw`` as read, or (``None``) ``record`` as JSON text."""
        if raw is None:
            raw = json.dumps(record, default=str, ensure_ascii=False)
        text = raw.decode("utf-8", errors="backslashreplace") if isinstance(raw, bytes) else raw
        self.result.bad_records.append(BadRecord(self._location(location), reason, text, chat_id, self._file))
        self._shown.append(f"{self._shown_prefix} {location}: {reason}")

    def kura_record(self, location: str, raw: bytes | str | None, record: Any, parse_error: str | None = None) -> None:
        if parse_error is not None:
            self.bad(location, parse_error, raw, record=record)
            return
        conversation, reason, chat_id = check_record(record, self.seen, self.max_message_chars)
        if conversation is None:
            self.bad(location, reason or "invalid record", raw, chat_id, record)
        else:
            self.result.conversations.append(conversation)

    def model(self, location: str, conversation: Conversation) -> None:
        """An upstream ``Conversation`` object: valid by construction, still checked for the rest."""
        problem = conversation_problem(conversation, self.seen, self.max_message_chars)
        if problem:
            self.bad(location, problem, conversation.model_dump_json(), conversation.chat_id)
        else:
            self.result.conversations.append(conversation)

    def converted(self, location: str, raw: bytes | str | None, record: dict[str, Any] | None, reason: str | None,
                  drops: Counter[str], chat_id: str | None = None) -> None:
        """A format reader's result for one source record: a Kura-shaped dict, or a reason it is bad, or
        neither (skipped, with the reason counted in ``drops``). ``drops`` count only when the record is kept."""
        if reason is not None:
            self.bad(location, reason, raw, chat_id)
            return
        if record is None:
            self.dropped.update(drops)
            return
        conversation, reason, chat_id = check_record(record, self.seen, self.max_message_chars)
        if conversation is None:
            reason = reason or "invalid record"
            if drops.get("chat_id_generated"):
                reason += (f" (chat_id {record.get('chat_id')!r} was generated: the record has no id, so its id "
                           "hashes the file name, the position and the content)")
            self.bad(location, reason, raw, chat_id if chat_id is not None else record.get("chat_id"))
        else:
            self.result.conversations.append(conversation)
            self.dropped.update(drops)

    def finish(self, hint: str = SKIP_HINT) -> ReadResult:
        result = self.result
        result.format = "+".join(self.formats)
        result.dropped = dict(sorted((k, v) for k, v in self.dropped.items() if v))
        if result.bad_records and self.on_bad_record == "fail":
            raise bad_records_error(result.source, self._shown, hint)
        return result
