"""Partitions of a pipeline's ``conversations`` and ``summaries``: one per UTC day, or one per input file.

* ``daily``: a conversation belongs to the day of its ``created_at`` in UTC (Kura writes naive timestamps:
  they are read as UTC). A source laid out by day (``logs/{date}.jsonl``) is read one file per partition;
  any other source is read whole and split by day (each partition run then reads the whole source: say so to
  users with one big file). Conversations dated outside every partition are counted and reported.
* ``files``: dynamic partitions, one per file of a directory or glob; a partition reads only its file.

A run may cover several partitions (``--partition-range``, single-run backfills): the assets then return
``{partition key: rows}`` and the IO managers store each partition on its own.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Optional, TypeVar

import dagster as dg

from kura_dagster.orchestration.names import KuraNames
from kura_dagster.types import Conversation

PARTITION_KINDS = ("daily", "files")
DATE_TEMPLATE = "{date}"
T = TypeVar("T")


def utc_day(moment: datetime) -> str:
    """``YYYY-MM-DD`` of ``moment`` in UTC; a naive datetime is taken to be UTC already."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.date().isoformat()


def build_partitions_def(
    kind: Optional[str], names: KuraNames, start: Optional[str] = None
) -> Optional[dg.PartitionsDefinition]:
    if kind is None:
        return None
    if kind == "daily":
        if not start:
            raise ValueError("partitions='daily' needs partition_start='YYYY-MM-DD' (the first day of the logs)")
        try:
            date.fromisoformat(start)
        except ValueError:
            raise ValueError(f"partition_start={start!r} is not a date (YYYY-MM-DD)") from None
        return dg.DailyPartitionsDefinition(start_date=start, timezone="UTC")
    if kind == "files":
        return dg.DynamicPartitionsDefinition(name=names.name("files"))
    raise ValueError(f"partitions={kind!r}: choose one of {', '.join(PARTITION_KINDS)} (or None)")


def run_partition_keys(context: Any) -> list[str]:
    """The partition keys of a step's run: one, several (a range), or none (unpartitioned)."""
    if not getattr(context, "has_partition_key", False) and not getattr(context, "has_partition_key_range", False):
        return []
    return list(context.partition_keys)


def as_partition_map(value: Any, keys: Sequence[str]) -> dict[str, Any]:
    """An input of a partitioned step as ``{key: value}``: Dagster hands one partition's value as it is and
    several as a dict."""
    if len(keys) == 1 and not (isinstance(value, Mapping) and set(value) == set(keys)):
        return {keys[0]: value}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected one value per partition of {keys}, got {type(value).__name__}")
    return dict(value)


def one_or_many(parts: Mapping[str, T], keys: Sequence[str]) -> Any:
    """A step's output: the value itself for one partition, ``{key: value}`` for several."""
    return parts[keys[0]] if len(keys) == 1 else {k: parts[k] for k in keys}


@dataclass
class DaySplit:
    """Conversations split by UTC day for the days of a run."""

    by_day: dict[str, list[Conversation]]
    other_partitions: int = 0
    """Conversations of days that are partitions, but not in this run."""
    outside: list[Conversation] = field(default_factory=list)
    """Conversations dated before the first partition or after the last one: in no partition."""


def split_by_day(conversations: Iterable[Conversation], days: Sequence[str],
                 partitions_def: dg.PartitionsDefinition) -> DaySplit:
    wanted = set(days)
    by_day: dict[str, list[Conversation]] = {d: [] for d in days}
    other = 0
    outside: list[Conversation] = []
    first, last = _bounds(partitions_def)
    for conv in conversations:
        day = utc_day(conv.created_at)
        if day in wanted:
            by_day[day].append(conv)
        elif first <= day <= last:
            other += 1
        else:
            outside.append(conv)
    return DaySplit(by_day, other, outside)


def _bounds(partitions_def: dg.PartitionsDefinition) -> tuple[str, str]:
    keys = partitions_def.get_partition_keys()
    return (keys[0], keys[-1]) if keys else ("9999-12-31", "0000-01-01")


def day_path(template: str, day: str) -> str:
    return template.replace(DATE_TEMPLATE, day)


def is_day_template(path: Optional[str]) -> bool:
    return bool(path) and DATE_TEMPLATE in str(path)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def file_partition_key(path: str) -> str:
    """The partition key of an input file: its name without extensions, made safe as a checkpoint name
    (``logs/2026-11-28.jsonl.gz`` → ``2026-11-28``, ``a b.v2.json`` → ``a_b``)."""
    name = os.path.basename(path.rstrip("/")).split(".")[0] or os.path.basename(path.rstrip("/"))
    return _UNSAFE.sub("_", name).strip("._-") or "file"


def file_partitions(files: Sequence[str]) -> dict[str, str]:
    """Partition key → file, refusing two files that would share a key."""
    out: dict[str, str] = {}
    clash: dict[str, list[str]] = defaultdict(list)
    for f in files:
        key = file_partition_key(f)
        clash[key].append(f)
        out[key] = f
    dupes = {k: v for k, v in clash.items() if len(v) > 1}
    if dupes:
        k, v = next(iter(dupes.items()))
        raise ValueError(f"files {v} would share the partition key {k!r}: give them distinct names "
                         "(file partitions are keyed by file name)")
    return out


def merge_results(results: Sequence[Any], source: str) -> Any:
    """One ReadResult from several (a day's files, file partitions, upstream partitions)."""
    from kura_dagster.sources import ReadResult

    merged = ReadResult(source=source)
    formats: list[str] = []
    for r in results:
        merged.conversations.extend(r.conversations)
        merged.bad_records.extend(r.bad_records)
        merged.files.extend(r.files)
        for k, v in r.dropped.items():
            merged.dropped[k] = merged.dropped.get(k, 0) + v
        if r.format and r.format not in formats:
            formats.append(r.format)
    merged.format = "+".join(formats)
    return merged


@dataclass
class PartitionedRead:
    result: Any
    """Everything read, merged (for metadata and quarantine)."""
    parts: dict[str, list[Conversation]]
    """The run's partitions and their conversations."""
    other_partitions: int = 0
    outside: list[Conversation] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)


def read_partitioned(
    context: Any, source: Any, kind: str, partitions_def: dg.PartitionsDefinition, records: Any = None,
    upstream: Optional[str] = None,
) -> PartitionedRead:
    """The conversations of a partitioned run, read without scanning more than the partitions need where the
    source allows it (a ``{date}`` path template, one file per partition, a partitioned upstream asset)."""
    from kura_dagster.sources import list_source_files

    keys = run_partition_keys(context)
    if kind == "files":
        files = file_partitions(list_source_files(source.location(), source.fs_options or None))
        unknown = [k for k in keys if k not in files]
        if unknown:
            raise FileNotFoundError(f"no file of {source.location()} for partition(s) {unknown[:5]} (file "
                                    f"partitions are keyed by file name; the files are {sorted(files)[:10]})")
        results = {k: source.read(files[k]) for k in keys}
        merged = merge_results(list(results.values()), f"{source.location()} ({len(keys)} file partition(s))")
        return PartitionedRead(merged, {k: results[k].conversations for k in keys})
    # daily
    missing: list[str] = []
    if records is not None:
        values = list(records.values()) if isinstance(records, Mapping) and set(records) <= set(keys) else [records]
        merged = merge_results([source.from_value(v, upstream or "upstream asset") for v in values],
                               f"asset {upstream}")
    elif is_day_template(source.location()):
        from kura_dagster.checkpoints.storage import to_upath

        results = []
        for day in keys:
            location = day_path(source.location(), day)
            if not to_upath(location, source.fs_options or None).exists():
                missing.append(location)  # no file for that day: an empty partition, reported
                continue
            results.append(source.read(location))
        merged = merge_results(results, f"{source.location()} ({len(keys) - len(missing)} of {len(keys)} day file(s))")
    else:
        merged = source.read()
    split = split_by_day(merged.conversations, keys, partitions_def)
    return PartitionedRead(merged, split.by_day, split.other_partitions, split.outside, missing)
