"""The chat-dataset shape of public datasets on the Hugging Face Hub (LMSYS-Chat-1M style): one row per
conversation with a ``conversation`` column of ``{"role", "content"}`` turns, ``conversation_id``, and columns
such as ``model``, ``language``, ``turn``, ``redacted``, ``openai_moderation``. Read from Parquet (the Hub's
files), an HF dataset, JSON records or an upstream table, detected by the ``conversation`` column (with no
``messages`` column); ``format="hf_chat"`` forces it for JSON records.

Mapped by the shared conversion (:mod:`kura_dagster.sources.rows`):

* ``chat_id`` ← ``conversation_id`` (else ``chat_id``, ``id``; without one, generated from the file name, the
  position and the content);
* roles as for OpenAI records (``human`` → ``user``, ``gpt``/``chatgpt``/``bard``/``model`` → ``assistant``,
  ``system`` dropped; an unknown role makes the record bad); a row with no user turn is bad;
* ``created_at`` ← ``created_at``/``created``/``tstamp`` (Unix seconds or ISO), else 1970-01-01T00:00:00Z;
* every other column, ``conversation_id`` included, goes into ``metadata`` under its own name; values Kura's
  metadata cannot hold (``openai_moderation``'s list of objects) are JSON-encoded (``metadata_encoded``).
"""

from __future__ import annotations

from kura_dagster.sources.rows import DEFAULTS, ColumnMap

TURN_KEYS = ("role", "content")
"""The keys of a turn that tell this shape (with :data:`TURNS` and no ``messages`` field)."""
TURNS = "conversation"


def hf_chat_map() -> ColumnMap:
    return ColumnMap(fields={"messages": TURNS},
                     defaults={**DEFAULTS, "chat_id": ("conversation_id", "chat_id", "id"),
                               "created_at": ("created_at", "created", "tstamp")},
                     rest_to_metadata=True, require_user=True)
