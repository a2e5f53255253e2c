"""``MultiIOManager``: every output kept by an ordered list of backends, with Kura's save and load strategies.

    MultiIOManager(
        base_dir="/data/kura",                       # default directory of backends without their own
        backends=[
            Backend(format="parquet", base_dir="/fast/ssd/kura", compression="zstd"),   # first = primary
            Backend(format="jsonl"),                                                    # /data/kura
            Backend(format="hf", hub_repo="org/kura", hub_token=dg.EnvVar("HF_TOKEN")),
        ],
        save_strategy="all_enabled",                 # or "primary_only"
        load_strategy="first_found",                 # or "priority"
    )

The backends are plain ``dg.Config`` objects (a list of nested *resources* is not supported by Dagster 1.13;
see ``notes/dagster-1.13.md``, addendum), so they are editable in the launchpad and two backends may share a
format (a local SSD and a network mount). For each output directory the IO manager builds one layer-2
:class:`~kura_dagster.checkpoints.multi.MultiCheckpointManager` over the backends' checkpoint managers; paths,
partitions and model resolution are :class:`~kura_dagster.io_managers.base.CheckpointIOManager`'s.

Each materialization records which backends saved, the bytes each wrote, and each failure (a backend that fails
costs nothing in the others under ``all_enabled``); each load logs which backend served it and which damaged
copies it skipped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Optional

import dagster as dg
from pydantic import Field
from upath import UPath

from kura_dagster.checkpoints.base import BaseCheckpointManager
from kura_dagster.checkpoints.multi import (
    LOAD_STRATEGIES,
    SAVE_STRATEGIES,
    MultiCheckpointManager,
    MultiSaveError,
    MultiSaveResult,
    NoReadableCopyError,
    default_labels,
)
from kura_dagster.checkpoints.registry import FORMATS, build_manager
from kura_dagster.checkpoints.storage import resolve_location, to_upath
from kura_dagster.io_managers.base import (_PARTITION_NOTES, CheckpointIOManager, summary_columns_selection,
                                           wants_chat_ids, wants_summary_columns)
from kura_dagster.io_managers.metadata import checkpoint_metadata
from kura_dagster.io_managers.stored import StoredOutput
from kura_dagster.io_managers.typing import input_model, output_model

class Backend(dg.Config):
    """One storage backend of a :class:`MultiIOManager` (order = priority; the first enabled one is primary)."""

    format: Literal["jsonl", "parquet", "hf"] = Field(description="Checkpoint format of this backend.")
    base_dir: Optional[str] = Field(
        default=None, description="Local directory or fsspec URL; defaults to the MultiIOManager's base_dir."
    )
    name: Optional[str] = Field(
        default=None, description="Label in logs and metadata; defaults to the format (jsonl, jsonl_2 … if repeated)."
    )
    enabled: bool = Field(default=True, description="A disabled backend is neither written nor read.")
    compression: Optional[str] = Field(default=None, description="Parquet/HF codec (snappy, zstd, gzip, …).")
    hub_repo: Optional[str] = Field(default=None, description="HF only: push every save to this Hub dataset repo.")
    hub_token: Optional[str] = Field(default=None, description="HF only: Hub token; use dg.EnvVar('HF_TOKEN').")
    streaming: bool = Field(default=False, description="HF only: load lazily, batch by batch.")
    embedding_dtype: Optional[str] = Field(
        default=None, description="Parquet/HF: embedding precision on disk, float32 (the formats' default) or float64."
    )
    layout: Optional[str] = Field(
        default=None, description="Parquet/HF: native (typed columns, the default) or kura (what Kura 0.5.4 reads)."
    )
    fs_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options for base_dir.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword options of the format's checkpoint manager."
    )

    def manager_options(self) -> dict[str, Any]:
        """Keyword options for this format's checkpoint manager: only what is set, so a format that does not
        take an option refuses it clearly instead of ignoring it."""
        opts: dict[str, Any] = {"enabled": self.enabled, **self.options}
        if self.compression is not None:
            opts["compression"] = self.compression
        if self.hub_repo is not None:
            opts["hub_repo"] = self.hub_repo
        if self.hub_token is not None:
            opts["hub_token"] = self.hub_token
        if self.streaming:
            opts["streaming"] = True
        if self.embedding_dtype is not None:
            opts["embedding_dtype"] = self.embedding_dtype
        if self.layout is not None:
            opts["layout"] = self.layout
        if self.fs_options:
            opts["storage_options"] = dict(self.fs_options)
        return opts

    def build(self, directory: UPath, label: str) -> BaseCheckpointManager:
        try:
            return build_manager(self.format, directory, **self.manager_options())
        except TypeError as exc:
            set_opts = sorted(k for k in self.manager_options() if k not in ("enabled", "storage_options"))
            raise dg.DagsterInvalidConfigError(
                f"MultiIOManager backend {label!r} (format {self.format!r}) was given options its checkpoint "
                f"manager does not take ({', '.join(set_opts) or 'none'}): {exc}", [], None
            ) from None
        except ValueError as exc:
            raise dg.DagsterInvalidConfigError(
                f"MultiIOManager backend {label!r} (format {self.format!r}): {exc}", [], None
            ) from None


class MultiIOManager(CheckpointIOManager):
    """Stores each output with several backends (formats and/or directories) and loads it from the first good one."""

    extension: ClassVar[Optional[str]] = None
    backends: list[Backend] = Field(description="Ordered backends; the first enabled one is the primary.")
    save_strategy: Literal["all_enabled", "primary_only"] = Field(
        default="all_enabled", description="all_enabled: every enabled backend; primary_only: the first one."
    )
    load_strategy: Literal["first_found", "priority"] = Field(
        default="first_found",
        description="first_found: the first backend holding a readable copy; priority: the primary backend only.",
    )

    # --- backends ---------------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        defaults = default_labels([_FormatOnly(b.format) for b in self.backends])
        labels = [b.name or d for b, d in zip(self.backends, defaults)]
        if len(set(labels)) != len(labels):
            raise dg.DagsterInvalidConfigError(f"MultiIOManager backend names must be unique; got {labels}", [], None)
        return labels

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        super().setup_for_execution(context)
        if not self.backends:
            raise dg.DagsterInvalidConfigError(
                "MultiIOManager needs at least one backend, e.g. backends=[Backend(format='jsonl', base_dir=...)]",
                [], None,
            )
        for backend, label in zip(self.backends, self.labels()):  # fail at start-up, not mid-run
            backend.build(self._backend_root(backend), label)

    def _backend_root(self, backend: Backend) -> UPath:
        if backend.base_dir is None:
            return self._base_path
        return to_upath(backend.base_dir, backend.fs_options)

    def build_manager(self, directory: UPath) -> MultiCheckpointManager:
        """The multi manager for one output directory: ``directory`` is relative to ``base_dir`` and is resolved
        under each backend's own root."""
        relative = directory.relative_to(self._base_path).parts if directory != self._base_path else ()
        labels = self.labels()
        children = [
            backend.build(self._backend_root(backend).joinpath(*relative), label)
            for backend, label in zip(self.backends, labels)
        ]
        return MultiCheckpointManager(
            children, save_strategy=self.save_strategy, load_strategy=self.load_strategy, labels=labels
        )

    # --- write -----------------------------------------------------------------------------------------
    def make_directory(self, path: UPath) -> None:
        """No-op: each backend creates its own directories when it saves."""

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None or not self.enabled or isinstance(obj, StoredOutput):
            super().handle_output(context, obj)
            return
        if context.has_asset_partitions:
            paths = self._get_paths_for_partitions(context)
            if len(paths) != 1:  # each partition of a single-run backfill on its own, in every backend
                self.handle_partitions_output(context, obj)
                return
            path = next(iter(paths.values()))
        else:
            path = self._get_path(context)
        # Unlike the single-format managers, the "path" metadata is the primary copy's real path, so the
        # whole metadata is added here at once (UPathIOManager.handle_output would add a logical path).
        self.dump_to_path(context, obj, path)
        self.add_stored_state(context)

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path: UPath) -> None:
        manager, name = self._manager_and_name(path)
        model = output_model(context) or (type(obj[0]) if obj else None)
        asset = context.asset_key.to_user_string() if context.has_asset_key else name
        try:
            result = manager.save_checkpoint(name, obj, model_class=model)
        except MultiSaveError as exc:
            for label, failure in exc.result.failed.items():
                context.log.error(f"Backend {label!r} could not save {asset} to {failure.path}: {failure.error}")
            raise
        if result is None:
            context.log.warning(f"Every backend of {type(self).__name__} is disabled: {asset} is not persisted.")
            context.add_output_metadata({"kura/persisted": False})
            return
        for label, failure in result.failed.items():
            context.log.warning(
                f"Backend {label!r} could not save {asset} to {failure.path}: {failure.error}. "
                f"The other backends saved it ({', '.join(result.saved)})."
            )
        context.log.info(f"Saved {asset} to {', '.join(f'{k} ({v.bytes} bytes)' for k, v in result.saved.items())}")
        context.add_output_metadata(multi_save_metadata(obj, model, result))

    # --- read ------------------------------------------------------------------------------------------
    def load_from_path(self, context: dg.InputContext, path: UPath) -> Any:
        manager, name = self._manager_and_name(path)
        asset = context.asset_key.to_user_string() if context.has_asset_key else name
        if wants_summary_columns(context):  # the columnar fast path, from whichever backend serves the load
            from kura_dagster.checkpoints.columnar import load_summary_columns

            columns = summary_columns_selection(context)
            load = {"loader": load_summary_columns if columns is None else
                    functools.partial(load_summary_columns, columns=columns)}
        elif wants_chat_ids(context):  # a check comparing ids: no rows built
            from kura_dagster.checkpoints.columnar import load_chat_ids

            model = input_model(context)
            load = {"loader": lambda child, filename: load_chat_ids(child, filename, model)}
        else:
            load = {"model_class": input_model(context)}
        try:
            loaded = manager.load_with_source(name, **load)
        except NoReadableCopyError as exc:
            for failure in exc.failures:
                context.log.error(f"Backend {failure.label!r} holds an unreadable copy of {asset} at "
                                  f"{failure.path}: {failure.error}")
            raise
        if loaded is None:
            where = ", ".join(f"{label}: {child.get_checkpoint_path(name)}"
                              for label, child in zip(manager.labels, manager.managers) if child.enabled)
            raise FileNotFoundError(
                f"No backend holds {asset} (looked in {where}; load_strategy={self.load_strategy!r}). "
                f"Materialize it first, e.g. `dagster asset materialize --select {asset} -m kura_dagster.definitions`."
            )
        for failure in loaded.skipped:
            context.log.warning(f"Skipped the unreadable copy of {asset} in backend {failure.label!r} "
                                f"({failure.path}): {failure.error}")
        passed = [f"{label} (missing)" for label in loaded.missing] + [f"{f.label} (unreadable)" for f in loaded.skipped]
        fallback = f" after passing over {', '.join(passed)}" if passed else ""
        rows = f"{len(loaded.data)} rows" if hasattr(loaded.data, "__len__") else "a stream"
        notes = _PARTITION_NOTES.get()
        if notes is not None:  # one of several partitions: load_partitions logs them all at once
            notes.append(f"served by backend {loaded.label!r} ({loaded.format}){fallback}")
            return loaded.data
        context.log.info(f"Loaded {rows} of {asset} from backend {loaded.label!r} "
                         f"({loaded.format}, {loaded.path}){fallback}")
        if not context.has_asset_partitions or len(context.asset_partition_keys) == 1:
            # (Dagster attaches input metadata to one partition at most; a multi-partition load only logs.)
            context.add_input_metadata({"kura/served_by": loaded.label,
                                        "kura/served_from": dg.MetadataValue.path(loaded.path)},
                                       description=f"served by {loaded.label}")
        return loaded.data


class _FormatOnly:
    """Stands in for a manager when only the format name matters (default labels)."""

    def __init__(self, format_name: str) -> None:
        self.format_name = format_name


def multi_save_metadata(obj: Sequence[Any], model: Any, result: MultiSaveResult) -> dict[str, Any]:
    """One metadata dict for a multi save, without duplicate keys: the checkpoint's rows/schema/preview once,
    then which backends saved, the bytes each wrote, and every failure."""
    md = checkpoint_metadata(obj, model, None)
    primary = result.primary
    assert primary is not None
    md["path"] = dg.MetadataValue.path(primary.path)
    md["kura/format"] = dg.MetadataValue.text(", ".join(s.format for s in result.saved.values()))
    md["kura/saved_to"] = dg.MetadataValue.text(", ".join(result.saved))
    md["kura/bytes"] = dg.MetadataValue.int(result.bytes)
    md["kura/backends_failed"] = dg.MetadataValue.int(len(result.failed))
    for label, saved in result.saved.items():
        md[f"kura/bytes/{label}"] = dg.MetadataValue.int(saved.bytes)
        for key, value in saved.extra.items():  # codec, embedding precision, Hub push result …, per backend
            md[f"kura/{label}/{key}"] = value if isinstance(value, (int, float, str, bool)) else dg.MetadataValue.json(value)
    records = []
    for label, saved in result.saved.items():
        records.append(dg.TableRecord({"backend": label, "format": saved.format, "status": "saved", "path": saved.path,
                                       "bytes": saved.bytes, "detail": saved.checksum or ""}))
    for label, failure in result.failed.items():
        records.append(dg.TableRecord({"backend": label, "format": "", "status": "failed", "path": failure.path,
                                       "bytes": 0, "detail": failure.error[:300]}))
    for label, reason in result.skipped.items():
        records.append(dg.TableRecord({"backend": label, "format": "", "status": "skipped", "path": "",
                                       "bytes": 0, "detail": reason}))
    md["kura/backends"] = dg.MetadataValue.table(
        records=records,
        schema=dg.TableSchema(columns=[dg.TableColumn("backend", "string"), dg.TableColumn("format", "string"),
                                       dg.TableColumn("status", "string"), dg.TableColumn("path", "string"),
                                       dg.TableColumn("bytes", "int"), dg.TableColumn("detail", "string")]),
    )
    return md


# --- the default Definitions' IO manager, from environment-style settings --------------------------------------
SINGLE_FORMAT_IO_MANAGERS = {
    "jsonl": "kura_dagster.io_managers.jsonl:JSONLIOManager",
    "parquet": "kura_dagster.io_managers.parquet:ParquetIOManager",
    "hf": "kura_dagster.io_managers.hf:HFDatasetIOManager",
}


def _single_format_class(fmt: str) -> type[CheckpointIOManager]:
    import importlib

    module, _, name = SINGLE_FORMAT_IO_MANAGERS[fmt].partition(":")
    return getattr(importlib.import_module(module), name)


def io_manager_for_formats(
    formats: Sequence[str],
    base_dir: str,
    *,
    save_strategy: str = "all_enabled",
    load_strategy: str = "first_found",
    parquet_compression: Optional[str] = None,
    hf_hub_repo: Optional[str] = None,
    hf_hub_token: Any = None,
    fs_options: Optional[dict[str, Any]] = None,
    checkpoint_layout: Optional[str] = None,
) -> CheckpointIOManager:
    """One format → that format's IO manager; several → a :class:`MultiIOManager` with every format side by side
    in ``base_dir`` (``summaries.jsonl``, ``summaries.parquet``, ``summaries/``), in the given priority order.
    ``checkpoint_layout="kura"`` writes Parquet and HF in the layout Kura 0.5.4 reads (JSONL always is)."""
    if checkpoint_layout is not None:
        from kura_dagster.checkpoints.kura_layout import check_layout

        check_layout(checkpoint_layout)
    formats = list(formats)
    if not formats:
        raise ValueError(f"No checkpoint format given; choose one or more of {', '.join(FORMATS)}")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown checkpoint format(s) {unknown}; choose from {', '.join(FORMATS)}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"Checkpoint formats repeat: {formats}")
    if save_strategy not in SAVE_STRATEGIES:
        raise ValueError(f"Unknown save strategy {save_strategy!r}: choose from {', '.join(SAVE_STRATEGIES)}")
    if load_strategy not in LOAD_STRATEGIES:
        raise ValueError(f"Unknown load strategy {load_strategy!r}: choose from {', '.join(LOAD_STRATEGIES)}")

    def options(fmt: str) -> dict[str, Any]:
        layout = {"layout": checkpoint_layout} if checkpoint_layout and fmt in ("parquet", "hf") else {}
        if fmt == "parquet" and parquet_compression:
            return {"compression": parquet_compression, **layout}
        if fmt == "hf":
            opts: dict[str, Any] = dict(layout)
            if hf_hub_repo:
                opts["hub_repo"] = hf_hub_repo
            if hf_hub_token is not None:
                opts["hub_token"] = hf_hub_token
            return opts
        return layout

    if len(formats) == 1:
        return _single_format_class(formats[0])(base_dir=base_dir, fs_options=dict(fs_options or {}),
                                                **options(formats[0]))
    return MultiIOManager(
        base_dir=base_dir,
        fs_options=dict(fs_options or {}),
        backends=[Backend(format=fmt, fs_options=dict(fs_options or {}), **options(fmt))  # type: ignore[arg-type]
                  for fmt in formats],
        save_strategy=save_strategy,  # type: ignore[arg-type]
        load_strategy=load_strategy,  # type: ignore[arg-type]
    )


def io_manager_settings_from_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """The checkpoint settings of the environment, validated (README): ``KURA_CHECKPOINT_FORMATS`` (comma list in
    priority order, default ``jsonl``), ``KURA_SAVE_STRATEGY``, ``KURA_LOAD_STRATEGY``, ``KURA_PARQUET_COMPRESSION``,
    ``KURA_CHECKPOINT_LAYOUT`` (``native`` or ``kura``), ``KURA_HF_HUB_REPO`` and ``HF_TOKEN`` (passed as ``dg.EnvVar``, never read): keywords of
    :func:`io_manager_for_formats` (and of ``build_kura_defs``)."""
    env = os.environ if environ is None else environ
    raw = env.get("KURA_CHECKPOINT_FORMATS", "jsonl")
    formats = [f.strip().lower() for f in raw.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats or len(set(formats)) != len(formats):
        raise ValueError(
            f"KURA_CHECKPOINT_FORMATS={raw!r}: "
            + (f"unknown format(s) {bad}" if bad else "repeated formats" if formats else "no format")
            + f"; give a comma-separated list of {', '.join(FORMATS)} in priority order, e.g. 'jsonl,parquet'"
        )
    strategies = {}
    for var, valid, default in (("KURA_SAVE_STRATEGY", SAVE_STRATEGIES, "all_enabled"),
                                ("KURA_LOAD_STRATEGY", LOAD_STRATEGIES, "first_found")):
        value = env.get(var, default).strip() or default
        if value not in valid:
            raise ValueError(f"{var}={value!r} is not valid; choose from {', '.join(valid)}")
        strategies[var] = value
    layout = (env.get("KURA_CHECKPOINT_LAYOUT") or "").strip().lower() or None
    if layout not in (None, "native", "kura"):
        raise ValueError(f"KURA_CHECKPOINT_LAYOUT={env.get('KURA_CHECKPOINT_LAYOUT')!r} is not valid; choose native "
                         "(typed columns, the default) or kura (Parquet/HF that Kura 0.5.4's own managers read)")
    compression = env.get("KURA_PARQUET_COMPRESSION") or None
    if compression and "parquet" in formats:
        from kura_dagster.checkpoints.parquet import COMPRESSIONS

        if compression.lower() not in COMPRESSIONS:
            raise ValueError(f"KURA_PARQUET_COMPRESSION={compression!r} is not valid; choose from {', '.join(COMPRESSIONS)}")
    return dict(
        formats=formats,
        save_strategy=strategies["KURA_SAVE_STRATEGY"],
        load_strategy=strategies["KURA_LOAD_STRATEGY"],
        parquet_compression=compression.lower() if compression else None,
        hf_hub_repo=env.get("KURA_HF_HUB_REPO") or None,
        hf_hub_token=dg.EnvVar("HF_TOKEN") if env.get("HF_TOKEN") else None,
        **({"checkpoint_layout": layout} if layout else {}),
    )


def io_manager_from_env(environ: Optional[Mapping[str, str]] = None) -> CheckpointIOManager:
    """The IO manager of the environment's checkpoint settings under ``KURA_CHECKPOINT_DIR``. An object-store
    ``KURA_CHECKPOINT_DIR`` (``s3://bucket/kura``) takes its endpoint and credentials from the standard variables
    s3fs reads (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …), never from this config."""
    env = os.environ if environ is None else environ
    settings = io_manager_settings_from_env(env)
    base_dir = resolve_location(env.get("KURA_CHECKPOINT_DIR") or "checkpoints")  # s3://… stays a URL
    return io_manager_for_formats(settings.pop("formats"), base_dir, **settings)
