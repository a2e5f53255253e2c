"""Conversations from wherever they are: files in Kura's, Claude.ai's or OpenAI's format, Parquet, Hugging Face
datasets (local, data files or the Hub), and upstream asset values, all through one strict check.

A layer between ``checkpoints`` and ``pipeline``: it imports only ``types`` (and libraries: fsspec, pyarrow,
``datasets`` when a dataset is read), never Dagster. One format, one file:

* :mod:`.kura` (Kura's dump and JSON lines), :mod:`.claude` (Claude.ai export), :mod:`.openai_chat`,
  :mod:`.sharegpt` (ShareGPT records), :mod:`.hf_chat` (the Hub's chat-dataset rows, LMSYS style),
  :mod:`.records` (other JSON records with a column_map), :mod:`.parquet`, :mod:`.hf_dataset`, :mod:`.values`
  (upstream values);
* :mod:`.rows`, the one row → conversation conversion and its rules; :mod:`.detect`, format detection;
  :mod:`.location`, paths/globs/URLs via fsspec; :mod:`.result`, results, bad records and the strict check.
"""

from kura_dagster.sources.location import list_source_files, public_location
from kura_dagster.sources.read import read_source
from kura_dagster.sources.result import SKIP_HINT, BadRecord, OnBadRecord, ReadResult, quarantine_jsonl
from kura_dagster.sources.rows import DEFAULT_CREATED_AT, ColumnMap
from kura_dagster.sources.values import conversations_from_value
from kura_dagster.types.conversation import DEFAULT_MAX_MESSAGE_CHARS, SHOWN_PROBLEMS, ConversationInputError


def read_conversations(path, on_bad_record: OnBadRecord = "fail",
                       max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS) -> ReadResult:
    """Today's reader, kept: one file (or any location) in whichever format its content is."""
    return read_source(path, on_bad_record=on_bad_record, max_message_chars=max_message_chars)


__all__ = [
    "BadRecord",
    "ColumnMap",
    "ConversationInputError",
    "DEFAULT_CREATED_AT",
    "DEFAULT_MAX_MESSAGE_CHARS",
    "OnBadRecord",
    "ReadResult",
    "SHOWN_PROBLEMS",
    "SKIP_HINT",
    "conversations_from_value",
    "list_source_files",
    "public_location",
    "quarantine_jsonl",
    "read_conversations",
    "read_source",
]
