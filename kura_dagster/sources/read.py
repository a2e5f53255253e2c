"""``read_source``: conversations from a path, glob, directory or fsspec URL, in whichever format the content
is; and the dispatch of JSON records to their format's reader (shared with upstream values)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from itertools import chain, islice
from typing import Any

from kura_dagster.sources import detect
from kura_dagster.sources.claude import check_claude_column_map, read_claude
from kura_dagster.sources.hf_dataset import load_hf, read_dataset
from kura_dagster.sources.kura import read_kura
from kura_dagster.sources.location import COMPRESSED_SUFFIXES, Expansion, expand, public_location
from kura_dagster.sources.openai_chat import read_openai_chat
from kura_dagster.sources.parquet import MAGIC, read_parquet
from kura_dagster.sources.records import read_json_records
from kura_dagster.sources.result import SKIP_HINT, Collector, OnBadRecord, ReadResult
from kura_dagster.sources.rows import SAMPLE_RECORDS, ColumnMap
from kura_dagster.types.conversation import DEFAULT_MAX_MESSAGE_CHARS, RecordItem, split_json_records

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonlines")
FORCED_SHAPE = {"kura": detect.KURA, "claude_export": detect.CLAUDE, "openai_chat": detect.OPENAI,
                "sharegpt": detect.SHAREGPT, "hf_chat": detect.HF_CHAT, "json_records": detect.OTHER}


def dispatch_records(items: Iterable[RecordItem], cmap: ColumnMap, collector: Collector, name: str,
                     forced: str | None, kura_label: str, records_label: str = "json_records") -> str:
    """Hand JSON records to the reader of their format (``forced``, else detected from the first
    :data:`SAMPLE_RECORDS`; the rest stream through, never all held at once); returns the format's label."""
    items = iter(items)
    sample = list(islice(items, SAMPLE_RECORDS))
    records = [r for _, _, r, err in sample if err is None]
    items = chain(sample, items)
    kind = FORCED_SHAPE[forced] if forced in FORCED_SHAPE else detect.records_shape(records)
    if kind == detect.CLAUDE:
        check_claude_column_map(cmap, name)
        read_claude(items, cmap, collector)
        return "claude_export"
    if kind == detect.KURA and not cmap.given:
        read_kura(items, collector)
        return kura_label
    if kind == detect.OPENAI:
        read_openai_chat(items, records, cmap, collector, name)
        return "openai_chat"
    if kind in (detect.SHAREGPT, detect.HF_CHAT):
        read_json_records(items, records, detect.chat_map(kind).merged(cmap), collector, name)
        return kind
    if not cmap.given and forced is None:
        raise detect.unknown_records_error(name, records)
    read_json_records(items, records, cmap, collector, name)
    return records_label


def _strip_compression(name: str) -> str:
    return next((name[: -len(s)] for s in COMPRESSED_SUFFIXES if name.lower().endswith(s)), name)


def _read_file(fs: Any, path: str, name: str, cmap: ColumnMap, forced: str | None, collector: Collector) -> None:
    base = _strip_compression(name).lower()
    with fs.open(path, "rb") as fh:
        head = fh.read(len(MAGIC))
    if forced == "parquet" or (forced is None and head == MAGIC):
        read_parquet(fs, path, name, cmap, collector)
        collector.note_format("parquet")
        return
    with fs.open(path, "rb", compression="infer") as fh:
        data = fh.read()
    jsonl = True if base.endswith(JSONL_SUFFIXES) else None
    items = split_json_records(data, name, jsonl=jsonl)
    is_array = not jsonl and data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")
    kura_label = "kura_json" if is_array or (not data.strip() and base.endswith(".json")) else "kura_jsonl"
    collector.note_format(dispatch_records(items, cmap, collector, name, forced, kura_label))


def read_source(
    location: str | os.PathLike | list[str],
    *,
    column_map: dict[str, str] | None = None,
    on_bad_record: OnBadRecord = "fail",
    storage_options: dict | None = None,
    format: str | None = None,
    max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS,
    split: str = "train",
    skip_hint: str | None = None,
) -> ReadResult:
    """Read conversations from ``location`` (a path, a glob, a directory, an fsspec URL, or a list of them; with
    ``format="hf_dataset"`` also a Hugging Face Hub name) strictly: every record is checked, ``on_bad_record="fail"``
    raises one :class:`ConversationInputError` listing the first problems with their file and line/record/row,
    ``"skip"`` returns the bad records (for quarantine) with the good ones. ``format`` forces a format instead of
    detecting it from the content; ``column_map`` says where Kura's fields are (see :mod:`.rows`);
    ``storage_options`` go to fsspec (and never into the result); ``split`` picks a Hugging Face split;
    ``skip_hint`` ends the bad-record error, naming the setting that skips them where the caller is configured
    (default: the standalone location's ``KURA_ON_BAD_RECORD=skip``)."""
    forced = detect.normalise_format(format)
    cmap = ColumnMap.parse(column_map)
    if on_bad_record not in ("fail", "skip"):
        raise ValueError(f"on_bad_record must be 'fail' or 'skip', got {on_bad_record!r}")
    locations = list(location) if isinstance(location, (list, tuple)) else [location]
    if not locations:
        raise ValueError("read_source needs at least one location")
    expansions: list[Expansion] = []
    for loc in locations:
        hub_ok = forced == "hf_dataset" and isinstance(loc, str) and "://" not in loc
        expansions.append(expand(loc, storage_options, must_exist=not hub_ok))
    count = sum(len(e.paths) or 1 for e in expansions)
    if len(expansions) == 1:
        source = expansions[0].description
    else:
        source = f"{', '.join(e.location for e in expansions)} ({count} files)"
    collector = Collector(source, on_bad_record, max_message_chars)

    for exp in expansions:
        if exp.missing or exp.hf_dir is not None or forced == "hf_dataset":
            if exp.missing:
                name, ds = exp.location, load_hf(name=os.fspath(exp.location), split=split,
                                                 storage_options=storage_options, source=exp.location)
            elif exp.hf_dir is not None:
                name, ds = exp.names[0], load_hf(hf_dir=_url(exp, exp.hf_dir), split=split,
                                                 storage_options=storage_options, source=exp.names[0])
            else:
                name, ds = exp.description, load_hf(files=[_url(exp, p) for p in exp.paths], split=split,
                                                    storage_options=storage_options, source=exp.description)
            collector.start_file(name, posixpath.basename(name.rstrip("/")) if count > 1 else None)
            collector.result.files[-1:] = exp.names or [name]
            read_dataset(ds, cmap, collector, name)
            collector.note_format("hf_dataset")
            continue
        for path, name, label in zip(exp.paths, exp.names, exp.labels):
            collector.start_file(name, label if count > 1 else None)
            _read_file(exp.fs, path, name, cmap, forced, collector)
        if exp.ignored:
            collector.dropped["ignored_files"] += len(exp.ignored)
    return collector.finish(skip_hint or SKIP_HINT)


def _url(exp: Expansion, path: str) -> str:
    """An fsspec path as a URL ``datasets`` can open (a plain path for local files)."""
    protocol = exp.fs.protocol if isinstance(exp.fs.protocol, str) else exp.fs.protocol[0]
    return path if protocol in ("file", "local") else exp.fs.unstrip_protocol(path)


__all__ = ["dispatch_records", "public_location", "read_source"]
