"""The one conversion of a source row (a dict: a JSON record, a Parquet/Arrow/HF/DataFrame row) into a Kura
conversation, and the ``column_map`` that says where Kura's fields are.

``column_map`` keys, each mapped to a column (top-level field) of the source:

* ``chat_id`` (default: ``chat_id``, else ``id``; without either, an id generated from the file's name, the
  record's position in it and its content: unique per record and the same on every read of the same file),
* ``created_at`` (default: ``created_at``, else ``created``; without either, :data:`DEFAULT_CREATED_AT`),
* ``messages`` (default: ``messages``), a list of ``{role, content, created_at}`` objects (or that list as a
  JSON string); ``messages.role``, ``messages.content``, ``messages.created_at`` rename the keys inside,
* ``metadata`` (default: ``metadata`` when present), a mapping (or a JSON object string), and
  ``metadata.<key>`` to put one column into ``metadata[<key>]``.

What becomes of messages Kura has no place for (it knows only ``user`` and ``assistant`` turns of text):

* ``system`` and ``developer`` messages are dropped (``system_messages``); ``tool``, ``function`` and
  ``ipython`` messages (and ShareGPT's ``function_call``/``observation`` turns) are dropped (``tool_messages``);
  ``human`` becomes ``user`` and ``gpt``/``chatgpt``/``bard``/``model`` become ``assistant``
  (``roles_renamed``); any other role makes the record bad (quarantined whole, naming the role);
* a list of content parts keeps its text parts (``text``, ``input_text``, ``output_text``, or plain strings)
  joined with ``"\\n"``; other parts (images, audio, files, refusals) are dropped (``non_text_parts``);
  a message left with no text at all (``content: null``, only images) is dropped (``messages_without_text``);
* an assistant's ``tool_calls`` (and a legacy ``function_call``) are dropped (``tool_calls``, one per call);
  any other key of a message with a value is not kept (``message_field:<key>``);
* a message without ``created_at`` takes the conversation's (``message_created_at_defaulted``);
* a conversation with no messages at all is skipped (``empty_conversations``); one whose messages were all
  dropped is a bad record;
* metadata values Kura accepts (str, int, float, bool, flat lists of one of them) are kept; ``null``/NaN
  values are left out (``metadata_nulls``); anything else is JSON-encoded into a string (``metadata_encoded``);
* a source field no mapping uses is not kept (``unmapped_field:<name>``, counted per record where it has a value).

Every count is per kept conversation, in :attr:`ReadResult.dropped`; a bad record is quarantined whole instead.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from kura_dagster.types.conversation import ConversationInputError

DEFAULT_CREATED_AT = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""``created_at`` of a conversation whose source has no timestamp (deterministic, so re-reads agree)."""

FIELDS = ("chat_id", "created_at", "messages", "metadata")
MESSAGE_KEYS = ("role", "content", "created_at")
DEFAULTS = {"chat_id": ("chat_id", "id"), "created_at": ("created_at", "created"), "messages": ("messages",),
            "metadata": ("metadata",)}
SYSTEM_ROLES = frozenset({"system", "developer"})
TOOL_ROLES = frozenset({"tool", "function", "ipython", "function_call", "observation"})
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
                "model": "assistant"}
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})


@dataclass
class ColumnMap:
    """A parsed ``column_map``: Kura's field → the source's column."""

    fields: dict[str, str] = field(default_factory=dict)
    message_keys: dict[str, str] = field(default_factory=dict)
    metadata_columns: dict[str, str] = field(default_factory=dict)
    given: bool = False
    defaults: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULTS))
    """Columns tried, in order, for a field the map does not name (a chat-dataset shape has its own)."""
    rest_to_metadata: bool = False
    """Every field but the messages (and a ``metadata`` mapping, merged) goes into ``metadata`` under its own
    name, instead of being counted as ``unmapped_field``: chat datasets' ``language``, ``model`` …"""
    require_user: bool = False
    """A conversation left without a user message is a bad record (chat datasets: no human turn)."""

    def merged(self, given: ColumnMap) -> ColumnMap:
        """This shape's mapping with what the user's ``column_map`` says on top."""
        return ColumnMap({**self.fields, **given.fields}, {**self.message_keys, **given.message_keys},
                         {**self.metadata_columns, **given.metadata_columns}, given.given, dict(self.defaults),
                         self.rest_to_metadata, self.require_user)

    @classmethod
    def parse(cls, column_map: Mapping[str, str] | None) -> ColumnMap:
        out = cls(given=bool(column_map))
        for key, column in (column_map or {}).items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"column_map[{key!r}] must be a column name (a non-empty string), got {column!r}")
            if key in FIELDS:
                out.fields[key] = column
            elif key.startswith("messages.") and key[len("messages."):] in MESSAGE_KEYS:
                out.message_keys[key[len("messages."):]] = column
            elif key.startswith("metadata.") and len(key) > len("metadata."):
                out.metadata_columns[key[len("metadata."):]] = column
            else:
                raise ValueError(
                    f"column_map has an unknown key {key!r}; the keys are Kura's fields {list(FIELDS)}, "
                    f"'messages.<{'|'.join(MESSAGE_KEYS)}>' and 'metadata.<key>'"
                )
        return out

    def resolve(self, columns: Iterable[str], source: str) -> Resolved:
        """Bind to the columns the source has: each mapped column must exist (else a clear error naming it and
        listing the columns); unmapped fields take their default column when present."""
        present = list(dict.fromkeys(columns))
        have = set(present)

        def missing(what: str, column: str) -> ConversationInputError:
            return ConversationInputError(
                f"{source}: column_map maps {what} to {column!r}, but there is no column {column!r}; "
                f"the columns are: {', '.join(present) or '(none)'}"
            )

        bound: dict[str, str | None] = {}
        for name in FIELDS:
            if name in self.fields:
                if self.fields[name] not in have:
                    raise missing(name, self.fields[name])
                bound[name] = self.fields[name]
            else:
                bound[name] = next((c for c in self.defaults.get(name, ()) if c in have), None)
        if bound["messages"] is None:
            raise ConversationInputError(
                f"{source}: no 'messages' column; map the column holding the messages with "
                f"column_map={{'messages': ...}}; the columns are: {', '.join(present) or '(none)'}"
            )
        for key, column in self.metadata_columns.items():
            if column not in have:
                raise missing(f"metadata.{key}", column)
        return Resolved(bound, {k: self.message_keys.get(k, k) for k in MESSAGE_KEYS}, dict(self.metadata_columns),
                        {k for k in FIELDS if k in self.fields}, self.rest_to_metadata, self.require_user)


@dataclass
class Resolved:
    columns: dict[str, str | None]
    message_keys: dict[str, str]
    metadata_columns: dict[str, str]
    explicit: set[str]
    rest_to_metadata: bool = False
    require_user: bool = False

    def used(self) -> set[str]:
        return {c for c in self.columns.values() if c} | set(self.metadata_columns.values())


def stable_chat_id(row: Mapping[str, Any], scope: str = "") -> str:
    """32 hex digits of the SHA-256 of ``scope`` (the file's name and the record's position in it, e.g.
    ``chats.jsonl\x00line 12``) and the record's canonical JSON. Two records with the same content (two users who
    both sent "hi") get different ids; the same file read again gives the same ids. The summary step still asks
    the model once for content-identical conversations (its single flight is keyed by content, not id)."""
    text = json.dumps(row, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{scope}\x00{text}".encode("utf-8")).hexdigest()[:32]


def is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _decode_json(value: Any, kind: type, what: str) -> tuple[Any, str | None]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            return None, f"{what} is a string that is not JSON ({exc.msg})"
    if not isinstance(value, kind):
        return None, f"{what} is {type(value).__name__}, expected a {'list' if kind is list else 'mapping'}"
    return value, None


def _timestamp(value: Any) -> Any:
    """Unix seconds → an aware UTC datetime; strings and datetimes are left to pydantic."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    return value


def metadata_value(value: Any, drops: Counter[str]) -> tuple[bool, Any]:
    """A value Kura's metadata accepts, or ``(False, None)`` for a null (counted)."""
    if is_null(value):
        drops["metadata_nulls"] += 1
        return False, None
    if isinstance(value, (bool, int, float, str)):
        return True, value
    if isinstance(value, (list, tuple)):
        items = list(value)
        for kind in (str, int, float):
            if all(isinstance(v, kind) and not isinstance(v, bool) for v in items):
                return True, items
    if isinstance(value, (datetime, date)):
        drops["metadata_encoded"] += 1
        return True, value.isoformat()
    drops["metadata_encoded"] += 1
    return True, json.dumps(value, default=str, sort_keys=True, ensure_ascii=False)


def metadata_dict(raw: Any, drops: Counter[str], what: str) -> tuple[dict[str, Any], str | None]:
    if is_null(raw):
        return {}, None
    if isinstance(raw, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in raw):
        raw = dict(raw)  # an Arrow map column reads as a list of (key, value) pairs
    raw, error = _decode_json(raw, dict, what)
    if error:
        return {}, error
    out: dict[str, Any] = {}
    for key, value in raw.items():
        keep, value = metadata_value(value, drops)
        if keep:
            out[str(key)] = value
    return out, None


def message_text(content: Any, drops: Counter[str]) -> tuple[str | None, str | None]:
    """The text of a message's content (a string, or content parts), or ``None`` when it has none."""
    if content is None:
        return None, None
    if isinstance(content, str):
        return content, None
    if isinstance(content, Mapping):
        content = [content]
    if not isinstance(content, Sequence):
        return None, f"content is {type(content).__name__}, expected a string or a list of content parts"
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type") in TEXT_PART_TYPES and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            drops["non_text_parts"] += 1
    return ("\n".join(texts) if texts else None), None


def convert_messages(messages: list[Any], keys: dict[str, str], created_at: Any,
                     drops: Counter[str]) -> tuple[list[dict[str, Any]], str | None]:
    role_key, content_key, time_key = keys["role"], keys["content"], keys["created_at"]
    used = {role_key, content_key, time_key, "tool_calls", "function_call"}
    out: list[dict[str, Any]] = []
    dropped = Counter()
    for i, m in enumerate(messages):
        if isinstance(m, str):
            m, error = _decode_json(m, dict, f"message {i}")
            if error:
                return [], error
        if not isinstance(m, Mapping):
            return [], f"message {i} is {type(m).__name__}, expected an object with {role_key!r} and {content_key!r}"
        role = m.get(role_key)
        if role in SYSTEM_ROLES:
            dropped["system_messages"] += 1
            continue
        if role in TOOL_ROLES:
            dropped["tool_messages"] += 1
            continue
        if role in ROLE_ALIASES:
            dropped["roles_renamed"] += 1
            role = ROLE_ALIASES[role]
        if role not in ("user", "assistant"):
            if role_key not in m:
                return [], f"message {i} has no {role_key!r} (its keys: {', '.join(map(str, m)) or 'none'})"
            where = "" if role_key == "role" else f" (its {role_key!r})"
            return [], (f"message {i}: unknown role {role!r}{where} (expected 'user' or 'assistant', or "
                        f"{', '.join(sorted(ROLE_ALIASES))} for them; system and tool messages are dropped)")
        text, error = message_text(m.get(content_key), dropped)
        if error:
            return [], f"message {i}: {error}"
        calls = m.get("tool_calls")
        if calls:
            dropped["tool_calls"] += len(calls) if isinstance(calls, Sequence) and not isinstance(calls, str) else 1
        if m.get("function_call"):
            dropped["tool_calls"] += 1
        for key, value in m.items():
            if key not in used and not is_null(value):
                dropped[f"message_field:{key}"] += 1
        if text is None:
            dropped["messages_without_text"] += 1
            continue
        when = m.get(time_key)
        if is_null(when):
            dropped["message_created_at_defaulted"] += 1
            when = created_at
        out.append({"created_at": _timestamp(when), "role": role, "content": text})
    if not out and messages:
        what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(dropped.items())) or "none kept"
        return [], f"no user or assistant message with text is left ({what})"
    drops.update(dropped)
    return out, None


def row_to_record(row: Mapping[str, Any], cols: Resolved,
                  id_scope: str = "") -> tuple[dict[str, Any] | None, str | None, Counter[str]]:
    """One source row as a Kura-shaped dict (checked by the caller), or the reason it is bad, or
    ``(None, None, drops)`` for a conversation skipped because it has no messages (counted in ``drops``).
    ``id_scope``: the file and position, for an id generated when the row has none."""
    drops: Counter[str] = Counter()
    c = cols.columns

    def value(name: str) -> tuple[Any, str | None]:
        column = c[name]
        if column is None or is_null(row.get(column)):
            if name in cols.explicit:
                return None, f"no value in column {column!r} (column_map {name} → {column!r})"
            return None, None
        return row[column], None

    messages, error = value("messages")
    if error or messages is None:
        return None, error or f"missing field {c['messages']!r}", drops
    messages, error = _decode_json(messages, list, f"field {c['messages']!r}")
    if error:
        return None, error, drops
    if not messages:
        drops["empty_conversations"] += 1
        return None, None, drops

    created_at, error = value("created_at")
    if error:
        return None, error, drops
    if created_at is None:
        drops["created_at_defaulted"] += 1
        created_at = DEFAULT_CREATED_AT
    created_at = _timestamp(created_at)

    chat_id, error = value("chat_id")
    if error:
        return None, error, drops
    if chat_id is None:
        drops["chat_id_generated"] += 1
        chat_id = stable_chat_id(row, id_scope)
    elif isinstance(chat_id, int) and not isinstance(chat_id, bool):
        chat_id = str(chat_id)
    elif not isinstance(chat_id, str):
        return None, f"chat_id (field {c['chat_id']!r}) is {type(chat_id).__name__}, expected a string", drops

    converted, error = convert_messages(messages, cols.message_keys, created_at, drops)
    if error:
        return None, error, drops
    if cols.require_user and not any(m["role"] == "user" for m in converted):
        return None, (f"no human (user) turn: {len(converted)} assistant message(s) and nothing asked; a "
                      "conversation to analyse needs at least one"), drops

    metadata: dict[str, Any] = {}
    if c["metadata"] is not None:
        metadata, error = metadata_dict(row.get(c["metadata"]), drops, f"metadata (field {c['metadata']!r})")
        if error:
            return None, error, drops
    for key, column in cols.metadata_columns.items():
        keep, v = metadata_value(row.get(column), drops)
        if keep:
            metadata[key] = v

    used = cols.used()
    if cols.rest_to_metadata:  # a chat dataset's other columns (conversation_id, language, model …) are kept
        skip = {c["messages"], c["metadata"]}
        for key, v in row.items():
            if key not in skip and str(key) not in metadata:
                keep, v = metadata_value(v, drops)
                if keep:
                    metadata[str(key)] = v
        return {"chat_id": chat_id, "created_at": created_at, "messages": converted, "metadata": metadata}, None, drops
    for key, v in row.items():
        if key not in used and not is_null(v):
            drops[f"unmapped_field:{key}"] += 1
    return {"chat_id": chat_id, "created_at": created_at, "messages": converted, "metadata": metadata}, None, drops


def raw_text(row: Any) -> str:
    """A record as JSON text, for the quarantine file."""
    return json.dumps(row, default=str, ensure_ascii=False)


def plain(value: Any) -> Any:
    """Python values from numpy/pandas ones (arrays → lists, numpy scalars → Python, NaT/NaN → None,
    Timestamps → datetimes), recursively; used for DataFrame rows."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if tolist is not None and type(value).__module__ == "numpy":
        return plain(tolist())
    to_py = getattr(value, "to_pydatetime", None)
    if to_py is not None:
        return None if str(value) == "NaT" else to_py()
    if type(value).__name__ in ("NaTType", "NAType"):
        return None
    return value


SAMPLE_RECORDS = 100


def record_columns(records: Iterable[Any]) -> list[str]:
    """The fields of the first :data:`SAMPLE_RECORDS` objects, in order of appearance (to bind a column_map)."""
    seen: dict[str, None] = {}
    for n, record in enumerate(records):
        if n >= SAMPLE_RECORDS:
            break
        if isinstance(record, Mapping):
            seen.update(dict.fromkeys(map(str, record)))
    return list(seen)


def feed_rows(rows: Iterable[tuple[str, Any, Any, str | None]], cols: Resolved, collector: Any) -> None:
    """Convert each ``(location, raw, row, parse_error)`` and hand it to the collector (``raw`` ``None`` means
    the row's JSON text is the raw record)."""
    for location, raw, row, parse_error in rows:
        if parse_error is not None:
            collector.bad(location, parse_error, raw)
            continue
        if raw is None:
            raw = raw_text(row)
        if not isinstance(row, Mapping):
            collector.bad(location, f"expected an object, got {type(row).__name__}", raw)
            continue
        record, reason, drops = row_to_record(row, cols, collector.id_scope(location))
        chat_column = cols.columns["chat_id"]
        chat_id = row.get(chat_column) if chat_column else None
        collector.converted(location, raw, record, reason, drops, chat_id if isinstance(chat_id, str) else None)
