"""ShareGPT records: ``{"id": …, "conversations": [{"from": "human" | "gpt" | "system" | …, "value": str}], …}``,
a JSON array or JSON lines (or a Parquet/HF dataset with a ``conversations`` column of such turns), the most
common open chat-log shape. Detected from the content (a ``conversations`` list whose turns have ``from`` and
``value``), whatever the file is called; ``format="sharegpt"`` forces it.

Mapped by the shared conversion (:mod:`kura_dagster.sources.rows`) with these defaults (a ``column_map`` can
override any of them):

* ``chat_id`` ← ``id`` (else ``chat_id``, ``conversation_id``); without one, an id generated from the file name,
  the position and the content (``chat_id_generated``);
* speakers: ``human``/``user`` → ``user``; ``gpt``/``chatgpt``/``bard``/``model``/``assistant`` →
  ``assistant`` (``roles_renamed``); ``system`` dropped (``system_messages``); ``function_call``/``observation``/
  ``tool`` dropped (``tool_messages``); **any other speaker makes the record bad** (quarantined whole with the
  speaker named, as an unknown OpenAI role is): a turn of an unknown party is never silently re-labelled;
* a record with no human turn left is bad too ("no human (user) turn"): there is nothing the user asked;
* ``created_at`` ← ``created_at``/``created`` when present, else 1970-01-01T00:00:00Z (``created_at_defaulted``);
* every other field (``lang``, ``model``, ``source`` …) goes into ``metadata`` under its own name.
"""

from __future__ import annotations

from kura_dagster.sources.rows import DEFAULTS, ColumnMap

TURN_KEYS = ("from", "value")
"""The keys of a turn that tell this shape (with :data:`TURNS` and no ``messages`` field)."""
TURNS = "conversations"


def sharegpt_map() -> ColumnMap:
    return ColumnMap(fields={"messages": TURNS}, message_keys={"role": "from", "content": "value"},
                     defaults={**DEFAULTS, "chat_id": ("id", "chat_id", "conversation_id")},
                     rest_to_metadata=True, require_user=True)
