"""The base IO manager: Dagster paths and partitions on top of a layer-2 checkpoint manager.

A format subclass only says which file extension it uses and how to build its checkpoint manager for a
directory (dagster-polars style). Paths, partitions, names that must not escape the base directory, model
resolution and metadata are all here.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import json
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Optional

import dagster as dg
from pydantic import Field, PrivateAttr
from upath import UPath

from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.storage import to_upath, validate_name
from kura_dagster.io_managers.metadata import add_partition_metadata, checkpoint_metadata
from kura_dagster.io_managers.stored import STORED_STATE_KEY, StoredOutput
from kura_dagster.io_managers.typing import CHECKPOINT_NAME_KEY, input_model, output_model


def _public_settings(value: Any) -> Any:
    """An IO manager's settings without credentials or fsspec options (they say where, not what is stored)."""
    if isinstance(value, Mapping):
        return {k: _public_settings(v) for k, v in value.items()
                if k != "fs_options" and not any(w in str(k).lower() for w in ("key", "token", "secret", "password"))}
    if isinstance(value, (list, tuple)):
        return [_public_settings(v) for v in value]
    return value


def asset_checkpoint_name(context: dg.InputContext | dg.OutputContext) -> list[str]:
    """Path segments for an asset: its ``kura/checkpoint_name`` metadata (Kura's file names, e.g.
    ``dimensionality`` for projected clusters), else its asset key."""
    metadata = (
        context.definition_metadata
        if isinstance(context, dg.OutputContext)
        else (context.upstream_output.definition_metadata if context.upstream_output else None)
    ) or {}
    name = metadata.get(CHECKPOINT_NAME_KEY)
    parts = str(name).split("/") if name else list(context.asset_key.path)
    for part in parts:
        validate_name(part, what="asset key segment")
    return parts


def wants_summary_columns(context: dg.InputContext) -> bool:
    """Is the input annotated with :class:`~kura_dagster.checkpoints.columnar.SummaryColumns`?"""
    typing_type = getattr(getattr(context, "dagster_type", None), "typing_type", None)
    return getattr(typing_type, "__name__", None) == "SummaryColumns" and getattr(
        typing_type, "__module__", ""
    ) == "kura_dagster.checkpoints.columnar"


def _is_summaries_input(_context: Any, value: Any) -> bool:
    from kura_dagster.checkpoints.columnar import SummaryColumns

    return isinstance(value, (SummaryColumns, list)) or (  # several partitions: {partition key: columns}
        isinstance(value, dict) and all(isinstance(v, (SummaryColumns, list)) for v in value.values()))


@functools.cache
def summary_columns_type() -> dg.DagsterType:
    """The Dagster type of a summaries input that wants the columnar fast path: the IO managers above return
    :class:`~kura_dagster.checkpoints.columnar.SummaryColumns`; others (e.g. a multi-backend manager) may return
    a list of summaries, which ``SummaryColumns.coerce`` turns into columns."""
    from kura_dagster.checkpoints.columnar import SummaryColumns

    return dg.DagsterType(type_check_fn=_is_summaries_input, name="SummaryColumns", typing_type=SummaryColumns,
                          description="Summaries as Arrow-backed columns (chat_ids + float32 embedding matrix).")


SUMMARY_COLUMNS_KEY = "kura/summary_columns"
"""Input metadata of a :func:`summary_columns_type` input: read only these summary fields (``"metadata.<key>"``
for one metadata key), without the embeddings (``load_summary_columns(columns=…)``); ``[]``: chat ids only."""


def summary_columns_selection(context: dg.InputContext) -> Optional[list[str]]:
    """The fields the input asks for (:data:`SUMMARY_COLUMNS_KEY`), or ``None``: every column, embeddings too."""
    selected = (context.definition_metadata or {}).get(SUMMARY_COLUMNS_KEY)
    return None if selected is None else list(selected)


ON_DEMAND_KEY = "kura/embeddings_on_demand"
"""Input metadata of a :func:`summary_columns_type` input over several partitions: read each partition's chat ids
now and the rest when the step asks for it (:class:`~kura_dagster.checkpoints.columnar.LazySummaryColumns`), so
an incremental taxonomy update reads the embeddings of this run's partitions only."""


CHAT_IDS_KEY = "kura/chat_ids_only"
"""Input metadata: load only the rows' chat ids, as a list of strings
(:func:`~kura_dagster.checkpoints.columnar.load_chat_ids`), for a check that compares sets of ids."""


def wants_chat_ids(context: dg.InputContext) -> bool:
    return bool((context.definition_metadata or {}).get(CHAT_IDS_KEY))


WINDOW_DAYS_KEY = "kura/window_days"
"""Input metadata: load only the partitions of the last N days (daily keys) or the last N partitions."""


def window_keys(keys: list[str], window: int) -> list[str]:
    """The keys of the last ``window`` days before and including the newest key (daily keys), or the last
    ``window`` keys when the keys are not dates."""
    from datetime import date, timedelta

    keys = sorted(keys)
    if not keys:
        return keys
    try:
        newest = date.fromisoformat(keys[-1])
        oldest = (newest - timedelta(days=window - 1)).isoformat()
        return [k for k in keys if date.fromisoformat(k).isoformat() >= oldest]
    except ValueError:
        return keys[-window:]


def partitioned_value(context: dg.OutputContext, obj: Any, paths: dict[str, Any]) -> dict[str, Any]:
    """``obj`` of a multi-partition output, checked: a mapping with exactly the run's partition keys."""
    asset = context.asset_key.to_user_string()
    keys = sorted(paths)
    if not isinstance(obj, Mapping):
        raise dg.DagsterInvariantViolationError(
            f"{asset}: this run covers {len(keys)} partitions ({keys[0]} … {keys[-1]}), so the asset must return a "
            f"dict of partition key → rows (one entry per partition, [] for an empty one), got {type(obj).__name__}"
        )
    missing, extra = sorted(set(keys) - set(obj)), sorted(set(obj) - set(keys))
    if missing or extra:
        raise dg.DagsterInvariantViolationError(
            f"{asset}: the returned partitions do not match the run's"
            + (f"; missing {missing[:5]}" if missing else "") + (f"; not in this run {extra[:5]}" if extra else "")
        )
    return dict(obj)



_SAVED: dict[str, tuple[tuple[int, int, int], list[Any]]] = {}
"""The rows this process last saved to each local single-file checkpoint of an unpartitioned asset, with the file's
inode, size and modification time then. The steps of one run (in one process) read what the step before wrote:
the base clusters, the tree (~5M chat ids at 1M conversations, ~1.3 s a read) and the map, each read by the next
asset and by its checks. A load of that file, unchanged since, gets those rows (a new list of the same models,
which no stage changes in place) instead of reading and verifying the file again."""


def _stamp(path: Any) -> tuple[int, int, int] | None:
    from kura_dagster.checkpoints import storage

    try:
        if not storage.is_local(path):
            return None
        st = os.stat(storage.local_path(path))
    except (OSError, ValueError, TypeError):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def _remember_saved(path: Any, obj: Any) -> None:
    from pydantic import BaseModel

    stamp = _stamp(path)
    if stamp is None or not isinstance(obj, list) or not obj or not isinstance(obj[0], BaseModel):
        _SAVED.pop(str(path), None)
        return
    _SAVED[str(path)] = (stamp, obj)


def _saved_here(path: Any, model: Any) -> list[Any] | None:
    found = _SAVED.get(str(path))
    if found is None or model is None or type(found[1][0]) is not model or _stamp(path) != found[0]:
        return None
    return list(found[1])


_PARTITION_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("kura_partition_notes",
                                                                                     default=None)
"""While :meth:`CheckpointIOManager.load_partitions` loads several partitions: where each came from (logged once)."""


class CheckpointIOManager(dg.ConfigurableIOManager, dg.UPathIOManager):
    """Stores ``list[pydantic model]`` outputs as Kura checkpoints under ``base_dir``."""

    extension: ClassVar[Optional[str]] = None
    base_dir: Optional[str] = Field(
        default=None,
        description="Local directory or fsspec URL (s3://…, gs://…, memory://…). Defaults to the instance's storage directory.",
    )
    enabled: bool = Field(default=True, description="When false, outputs are not persisted (Kura's enabled=False).")
    fs_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options for base_dir.")
    _base_path: UPath = PrivateAttr()

    # --- the one thing a format implements ----------------------------------------------------------------
    def build_manager(self, directory: UPath) -> BaseCheckpointManager:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- Dagster lifecycle ------------------------------------------------------------------------------
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        base = self.base_dir or str(UPath(context.instance.storage_directory()) / "kura")  # type: ignore[union-attr]
        self._base_path = to_upath(base, self.fs_options)

    @property
    def base_path(self) -> UPath:
        return self._base_path

    @property
    def storage_options(self) -> dict[str, Any]:
        """The fsspec options of ``base_dir``. Dagster 1.13.27's own property reads ``UPath._kwargs``, which
        universal_pathlib 0.3 removed (fixed in 1.13.28); reading the UPath's public attribute works on both."""
        return dict(getattr(self._base_path, "storage_options", {}) or {})

    # --- paths -----------------------------------------------------------------------------------------
    def get_asset_relative_path(self, context: dg.InputContext | dg.OutputContext) -> UPath:
        return UPath(*asset_checkpoint_name(context))

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        return base_path / validate_name(partition, what="partition key")

    def _manager_and_name(self, path: UPath) -> tuple[BaseCheckpointManager, str]:
        name = path.name[: -len(self.extension)] if self.extension and path.name.endswith(self.extension) else path.name
        return self.build_manager(path.parent), name

    # --- write -----------------------------------------------------------------------------------------
    def make_directory(self, path: UPath) -> None:
        """No-op: a checkpoint save creates the local directories it needs, and on S3 there are none to make
        (s3fs's mkdir would create a missing bucket instead of failing)."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:
            return
        if isinstance(obj, StoredOutput):
            self.keep_stored(context, obj)
            return
        if not self.enabled:
            context.log.warning(
                f"{type(self).__name__} is disabled (enabled=False): the output of {context.asset_key.to_user_string()} "
                "is not persisted, and no later run can load it."
            )
            context.add_output_metadata({"kura/persisted": False})
            return
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            self.handle_partitions_output(context, obj)
            return
        super().handle_output(context, obj)
        self.add_stored_state(context)

    def handle_partitions_output(self, context: dg.OutputContext, obj: Any) -> None:
        """One output that covers several partitions (a single-run backfill, ``--partition-range``): ``obj``
        maps each partition key to its rows, and each partition is saved to its own checkpoint, exactly as a run
        of that partition alone would save it (``UPathIOManager`` refuses this case: dagster-io/dagster#14332)."""
        paths = self._get_paths_for_partitions(context)
        parts = partitioned_value(context, obj, paths)
        rows: dict[str, int] = {}
        total_bytes = 0
        last: dict[str, Any] = {}
        own: dict[str, dict[str, Any]] = {}
        for key in sorted(paths):
            self.make_directory(paths[key].parent)
            self.dump_to_path(context, parts[key], paths[key])
            # each partition's metadata is collected and summed up once (the same key twice would raise)
            last = own[key] = {"path": dg.MetadataValue.path(str(paths[key])), **context.consume_logged_metadata()}
            rows[key] = len(parts[key])
            total_bytes += int(getattr(last.get("kura/bytes"), "value", 0) or 0)
        # each partition's materialization gets its own rows, bytes, path, checksum and preview over the totals
        add_partition_metadata(context, own)
        kept = {k: v for k, v in last.items() if k in ("dagster/column_schema", "kura/model", "kura/format", "preview")}
        context.add_output_metadata({
            **kept,
            "dagster/row_count": dg.MetadataValue.int(sum(rows.values())),
            "kura/bytes": dg.MetadataValue.int(total_bytes),
            "kura/partitions": dg.MetadataValue.int(len(rows)),
            "kura/partition_rows": dg.MetadataValue.json(rows),
            "path": dg.MetadataValue.path(str(next(iter(paths.values())).parent)),
        })

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        manager, name = self._manager_and_name(path)
        model = output_model(context)
        saved = manager.save_checkpoint(name, obj, model_class=model)
        context.add_output_metadata(checkpoint_metadata(obj, model or (type(obj[0]) if obj else None), saved))
        if not context.has_asset_partitions:
            _remember_saved(manager.get_checkpoint_path(name), obj)

    # --- what is stored now (see kura_dagster.orchestration.reuse) -------------------------------------------
    def stored_state(self, name_parts: Sequence[str]) -> Optional[str]:
        """A short hash of the unpartitioned checkpoint named ``name_parts`` as it is stored now (format, rows,
        bytes, checksum and every copy, from the checkpoint's own records) and of this manager's settings
        (formats, strategies, layout; never credentials), or ``None`` when it is absent or not persisted."""
        if not self.enabled:
            return None
        manager, name = self._manager_and_name(self._with_extension(self._base_path.joinpath(*name_parts)))
        info = manager.get_checkpoint_info(name)
        if info is None:
            return None
        facts = {k: info.get(k) for k in ("format", "num_rows", "size_bytes", "checksum", "copies", "model")}
        facts["settings"] = _public_settings(self.model_dump())
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def load_stored(self, name_parts: Sequence[str], model: Optional[type]) -> Optional[list]:
        """The rows of the unpartitioned checkpoint named ``name_parts`` (``None`` when absent), verified as
        every load is."""
        manager, name = self._manager_and_name(self._with_extension(self._base_path.joinpath(*name_parts)))
        return manager.load_checkpoint(name, model)

    def add_stored_state(self, context: dg.OutputContext) -> None:
        """Record :data:`~kura_dagster.io_managers.stored.STORED_STATE_KEY` after an unpartitioned save."""
        if context.has_asset_key and not context.has_asset_partitions:
            try:
                state = self.stored_state(asset_checkpoint_name(context))
            except Exception as exc:  # the save succeeded; without a state the next run computes instead of reusing
                context.log.warning(f"Saved {context.asset_key.to_user_string()}, but could not read back its stored "
                                    f"state ({type(exc).__name__}: {exc}); the next run will compute it again")
                return
            if state is not None:
                context.add_output_metadata({STORED_STATE_KEY: dg.MetadataValue.text(state)})

    def keep_stored(self, context: dg.OutputContext, obj: StoredOutput) -> None:
        """The asset reused its stored output: write nothing, after checking the checkpoint is still the one
        the reuse decision saw (a change in between fails the step rather than mixing old and new)."""
        asset = context.asset_key.to_user_string() if context.has_asset_key else "output"
        state = self.stored_state(asset_checkpoint_name(context)) if not context.has_asset_partitions else None
        if state != obj.state:
            raise dg.DagsterInvariantViolationError(
                f"{asset}: its checkpoint under {self._base_path} changed while the step ran (stored state {state} "
                f"instead of {obj.state}); rerun to recompute it"
            )

    # --- read ------------------------------------------------------------------------------------------
    def load_input(self, context: dg.InputContext) -> Any:
        if not self.enabled:
            raise dg.DagsterInvariantViolationError(
                f"{type(self).__name__} is disabled (enabled=False), so it cannot load "
                f"{context.asset_key.to_user_string()}. Enable it or load through another IO manager."
            )
        return super().load_input(context)

    def load_partitions(self, context: dg.InputContext) -> Any:
        """Several partitions: only those that exist when the input allows missing ones (an unpartitioned
        ``clusters`` over daily summaries), and only the last ``kura/window_days`` when it sets a window."""
        keys = list(context.asset_partition_keys)
        metadata = context.definition_metadata or {}
        window = metadata.get(WINDOW_DAYS_KEY)
        if len(keys) == 1 and not window:
            return super().load_partitions(context)
        paths = self._get_paths_for_partitions(context)
        if metadata.get("allow_missing_partitions"):
            present = [k for k in keys if self.path_exists(paths[k])]
            if len(present) < len(keys):
                context.log.info(f"{len(present)} of {len(keys)} partitions of "
                                 f"{context.asset_key.to_user_string()} are materialized; loading those")
            keys = present
        if window:
            keys = window_keys(keys, int(window))
        # one log line for the whole load, not one event-log write per partition (~18 ms each: 1.8 s for the
        # 100 partitions a new day's clusters step reads)
        notes: list[str] = []
        token = _PARTITION_NOTES.set(notes)
        try:
            out = {k: self.load_from_path(context, paths[k]) for k in keys}
        finally:
            _PARTITION_NOTES.reset(token)
        if keys:
            rows = sum(len(v) for v in out.values() if hasattr(v, "__len__"))
            context.log.info(f"Loaded {rows} rows of {context.asset_key.to_user_string()} from {len(keys)} "
                             f"partition(s) ({keys[0]} … {keys[-1]}): " + "; ".join(dict.fromkeys(notes)))
        return out

    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        manager, name = self._manager_and_name(path)
        if wants_summary_columns(context):  # the columnar fast path (e.g. the clusters asset)
            from kura_dagster.checkpoints.columnar import LazySummaryColumns, load_summary_columns

            columns = summary_columns_selection(context)
            if columns is None and _PARTITION_NOTES.get() is not None and \
                    (context.definition_metadata or {}).get(ON_DEMAND_KEY):
                result = LazySummaryColumns.of_checkpoint(manager, name, input_model(context))
            else:
                result = load_summary_columns(manager, name) if columns is None else \
                    load_summary_columns(manager, name, columns=columns)
        elif wants_chat_ids(context):  # a check comparing ids: no rows built
            from kura_dagster.checkpoints.columnar import load_chat_ids

            result = load_chat_ids(manager, name, input_model(context))
        else:
            result = _saved_here(manager.get_checkpoint_path(name), input_model(context))
            if result is None:
                result = manager.load_checkpoint(name, input_model(context))
        if result is None:
            raise FileNotFoundError(
                f"No {manager.format_name} checkpoint at {path} for asset "
                f"{context.asset_key.to_user_string()}: materialize it first (for example "
                f"`dagster asset materialize --select {context.asset_key.to_user_string()} -m kura_dagster.definitions`)."
            )
        rows = len(result) if hasattr(result, "__len__") else "streamed"
        notes = _PARTITION_NOTES.get()
        if notes is not None:  # one of several partitions: load_partitions logs them all at once
            notes.append(f"from {path.parent}")
        elif not context.has_asset_partitions or len(context.asset_partition_keys) == 1:
            # on Dagster's own LOADED_INPUT event rather than an event of its own: each event is a write to the
            # instance's event log, and an unchanged rerun loads ~20 inputs (issue 17 item 10)
            context.add_input_metadata({"rows": rows, "path": dg.MetadataValue.path(str(path))},
                                       description=f"Loaded {rows} rows from {path}")
        else:  # (Dagster attaches input metadata to one partition at most)
            context.log.info(f"Loaded {rows} rows of {context.asset_key.to_user_string()} from {path}")
        return result


    def path_exists(self, path: UPath) -> bool:
        manager, name = self._manager_and_name(path)
        return manager.has_checkpoint(name)
