"""Kura's own formats: a conversation dump (``.json``, one JSON array) and JSON lines of conversations.

Each record must be a Kura ``Conversation`` as it stands: exactly Kura's fields, ``user``/``assistant``
roles, at least one message, a unique ``chat_id`` (see :func:`kura_dagster.types.conversation.check_record`).
"""

from __future__ import annotations

from collections.abc import Iterable

from kura_dagster.sources.result import Collector
from kura_dagster.types.conversation import RecordItem


def read_kura(items: Iterable[RecordItem], collector: Collector) -> None:
    for location, raw, record, parse_error in items:
        collector.kura_record(location, raw, record, parse_error)
