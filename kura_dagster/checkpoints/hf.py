"""HuggingFace-datasets checkpoints: ``<dir>/<name>/`` written by ``Dataset.save_to_disk``, loaded memory-mapped.

The dataset is built from the same native Arrow table as Parquet (see :mod:`.arrow`). Beside HF's own
``state.json`` and ``dataset_info.json`` the directory holds ``kura_dagster.json``: model identity, schema
version, column encodings, row count and the size and XXH3-128 checksum of every file, verified on each
load (a missing, emptied or altered data file raises :class:`CheckpointCorruptError` naming it).
Datasets Kura wrote (no ``kura_dagster.json``) are read with Kura's decoding.

When ``hub_repo`` is set each save is also pushed to the Hub, one config per checkpoint. The token comes
from ``hub_token`` or ``HF_TOKEN`` and never appears in logs or metadata; a failed push is logged and
reported in ``SavedCheckpoint.extra["hub_push"]`` and never costs the local save.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pyarrow as pa
from datasets import ClassLabel, Dataset
from pydantic import BaseModel
from upath import UPath

from kura_dagster.checkpoints import arrow, kura_layout, storage
from kura_dagster.checkpoints.base import SCHEMA_VERSION, BaseCheckpointManager, SavedCheckpoint, identity_of
from kura_dagster.checkpoints.errors import CheckpointCorruptError

T = TypeVar("T", bound=BaseModel)
logger = logging.getLogger(__name__)

MANIFEST = "kura_dagster.json"
COMPRESSIONS = (None, "gzip", "lz4", "zstd")
MAX_SHARD_SIZE = "4GB"  # one shard for most checkpoints, so the embedding matrix is one zero-copy buffer
# ``save_to_disk`` cuts a shard into record batches of at most 1,000 rows / 100 MB (``datasets.config``). We write
# record batches of up to 1 GB instead: one batch for up to ~150k×1536 summaries, so the columnar path's embedding
# matrix is a view of the memory map (a 2 GB string column per batch is Arrow's limit; 1 GB stays clear of it).
WRITER_BATCH_BYTES = 1 << 30
_SAVE_LOCK = threading.Lock()


@contextlib.contextmanager
def _save_settings(num_rows: int) -> Iterator[None]:
    """Within this block ``save_to_disk`` writes record batches of up to :data:`WRITER_BATCH_BYTES` and shows no
    progress bar (it clutters Dagster's logs). ``datasets`` reads both from module state, so they are set for the
    duration of the save only, under a lock, and restored after."""
    from datasets import config
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    with _SAVE_LOCK:
        saved = config.DEFAULT_MAX_BATCH_SIZE, config.MAX_ROW_GROUP_SIZE
        # HF_DATASETS_DISABLE_PROGRESS_BARS=0 in the environment asks for the bars explicitly: then leave them on.
        silence = not are_progress_bars_disabled() and config.HF_DATASETS_DISABLE_PROGRESS_BARS is not False
        config.DEFAULT_MAX_BATCH_SIZE = max(num_rows, 1)
        config.MAX_ROW_GROUP_SIZE = WRITER_BATCH_BYTES
        if silence:
            disable_progress_bars()
        try:
            yield
        finally:
            config.DEFAULT_MAX_BATCH_SIZE, config.MAX_ROW_GROUP_SIZE = saved
            if silence:
                enable_progress_bars()


def _class_labels(features: Any, prefix: str = "") -> dict[str, list[str]]:
    """``{"messages.role": ["user", "assistant"]}`` for every ClassLabel in (nested) HF features."""
    found: dict[str, list[str]] = {}
    if isinstance(features, ClassLabel):
        found[prefix] = list(features.names)
    elif isinstance(features, dict):
        for key, sub in features.items():
            found.update(_class_labels(sub, f"{prefix}.{key}" if prefix else key))
    elif isinstance(features, (list, tuple)) and features:
        found.update(_class_labels(features[0], prefix))
    elif hasattr(features, "feature"):  # Sequence / List / LargeList
        found.update(_class_labels(features.feature, prefix))
    return found


def _map_file(local: str) -> pa.Buffer:
    """A read-only memory map of a local file as an Arrow buffer (record batches read from it are views of it)."""
    with open(local, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return pa.py_buffer(b"")
        return pa.py_buffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))


def _check_buffer(f: UPath, buffer: pa.Buffer, expected: dict[str, Any]) -> None:
    """Size and XXH3-128 of a mapped data file against the manifest: one pass over the mapping, whose pages the
    table then reads without faulting them in again."""
    if buffer.size != expected["bytes"]:
        raise CheckpointCorruptError(f, f"has {buffer.size} bytes but was saved with {expected['bytes']}: it was "
                                     "truncated or changed")
    hasher = arrow.new_hasher()
    hasher.update(memoryview(buffer))
    actual = arrow.checksum_text(hasher)
    if actual != expected["checksum"]:
        raise CheckpointCorruptError(f, f"checksum mismatch ({actual} != saved {expected['checksum']})")


def _kura_columns(manifest: dict[str, Any] | None) -> bool:
    """Does a dataset hold Kura's columns (one Kura wrote, or one we wrote with ``layout="kura"``)?"""
    return manifest is None or manifest.get("layout") == "kura"


def _files_checksum(manifest: dict[str, Any]) -> str:
    """One checksum for a saved dataset: XXH3-128 over its files' names and checksums."""
    checksum = arrow.new_hasher()
    for name, f in manifest["files"].items():
        checksum.update(f"{name}:{f['checksum']}\n".encode())
    return arrow.checksum_text(checksum)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


class HFDatasetCheckpointManager(BaseCheckpointManager):
    """Kura's ``HFDatasetCheckpointManager`` API: ``save_to_disk`` directories, memory-mapped loads,
    streaming, ``filter_checkpoint`` and optional Hub pushes."""

    format_name = "hf"
    suffix = ""

    def __init__(
        self,
        checkpoint_dir: Any,
        *,
        enabled: bool = True,
        hub_repo: str | None = None,
        hub_token: str | None = None,
        streaming: bool = False,
        compression: str | None = None,
        storage_options: dict[str, Any] | None = None,
        embedding_dtype: str = "float32",
        layout: str = "native",
    ) -> None:
        super().__init__(checkpoint_dir, enabled=enabled, storage_options=storage_options)
        self.layout = kura_layout.check_layout(layout)
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}; got {compression!r}")
        arrow.check_embedding_dtype(embedding_dtype)
        self.hub_repo = hub_repo
        self._hub_token = hub_token
        self.streaming = streaming
        # Kura accepts and records ``compression`` but save_to_disk writes uncompressed Arrow (that is what makes
        # memory mapping work); we do the same and report it in the manifest and metadata.
        self.compression = compression
        self.embedding_dtype = embedding_dtype
        self.storage_options = storage_options or {}

    def __repr__(self) -> str:  # never shows the token
        return (f"HFDatasetCheckpointManager({str(self.checkpoint_dir)!r}, enabled={self.enabled}, "
                f"hub_repo={self.hub_repo!r}, streaming={self.streaming}, layout={self.layout!r})")

    @property
    def hub_token(self) -> str | None:
        return self._hub_token or os.environ.get("HF_TOKEN") or None

    # --- write -----------------------------------------------------------------------------------------
    def _write(self, path: UPath, models: list[BaseModel], model: type[BaseModel] | None, **kwargs: Any) -> SavedCheckpoint:
        kind = kura_layout.kind_to_write(self.layout, model, path)
        if kind is not None:
            return self._write_kura(path, model, kind, [models])  # type: ignore[arg-type]
        table = arrow.models_to_table(models, model, embedding_dtype=self.embedding_dtype)
        meta = arrow.kura_meta(table.schema) or {}
        # Our own fingerprint: otherwise datasets hashes the table through dill (slow, and no pickling here).
        dataset = Dataset(table, fingerprint=os.urandom(8).hex())  # 16 hex digits, as datasets' own
        manifest: dict[str, Any] = {**meta, "compression": self.compression}

        def build(tmp: UPath) -> None:  # always a local directory (object stores upload it afterwards)
            shards = {"num_shards": 1} if len(dataset) == 0 else {"max_shard_size": MAX_SHARD_SIZE}
            with _save_settings(len(dataset)):
                dataset.save_to_disk(storage.local_path(tmp), **shards)
            self._write_manifest(tmp, manifest)

        size = storage.atomic_write_dir(path, build)
        extra: dict[str, Any] = {"codec": "arrow (uncompressed, memory-mapped)", "layout": "native"}
        emb = meta.get("columns", {}).get("embedding")
        if emb:
            extra["embedding_dtype"] = emb["dtype"]
            if emb.get("rounded"):
                extra["embedding_rounded"] = emb["rounded"]
                logger.warning("%s: %d embedding values were rounded to float32", path, emb["rounded"])
        if self.hub_repo:
            extra["hub_push"] = self._push(dataset, path.name, len(models))
        return SavedCheckpoint(name=path.name, path=str(path), format=self.format_name, rows=len(models),
                               bytes=size, model=meta.get("model"), checksum=_files_checksum(manifest),
                               extra=extra)

    def _write_manifest(self, tmp: UPath, manifest: dict[str, Any]) -> None:
        """Record the size and XXH3-128 of every file in ``tmp`` in our manifest, written beside them."""
        files = {}
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name):
            if entry.is_file():
                files[entry.name] = {"bytes": entry.stat().st_size,
                                     "checksum": arrow.hash_file(self._hash_target(entry))}
        manifest["files"] = files
        (tmp / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")))

    def _write_kura(self, path: UPath, model: type[BaseModel], kind: str, batches: Iterable[Sequence[BaseModel]]
                    ) -> SavedCheckpoint:
        """Kura's HF dataset (:mod:`.kura_layout`): its features in datasets 3.x's vocabulary in ``dataset_info.json``
        and in the Arrow file's schema, ``state.json`` as ``save_to_disk`` writes it, and our manifest beside them."""
        encoder = kura_layout.HFEncoder(kind)
        changes: dict[str, int] = {}
        manifest: dict[str, Any] = {"format": arrow.FORMAT_TAG, "schema_version": SCHEMA_VERSION,
                                    "model": identity_of(model), "layout": "kura", "kura_type": kind, "rows": 0,
                                    "columns": {}, "computed": [], "compression": self.compression}
        data_name = "data-00000-of-00001.arrow"

        def build(tmp: UPath) -> None:  # always a local directory (object stores upload it afterwards)
            writer = None
            with pa.OSFile(storage.local_path(tmp / data_name), "wb") as sink:
                try:
                    for batch in batches:
                        if not len(batch):
                            continue
                        encoded = encoder.encode(batch)
                        for key, n in encoded.changes.items():
                            changes[key] = changes.get(key, 0) + n
                        if writer is None:
                            writer = pa.ipc.new_stream(sink, encoded.table.schema)
                        writer.write_table(encoded.table)
                    if writer is None:  # no rows: the schema alone
                        writer = pa.ipc.new_stream(sink, kura_layout.hf_schema(encoder.features))
                finally:
                    if writer is not None:
                        writer.close()
            features = encoder.features
            (tmp / "dataset_info.json").write_text(json.dumps(kura_layout.dataset_info(features), indent=2))
            (tmp / "state.json").write_text(json.dumps(kura_layout.dataset_state([data_name], os.urandom(8).hex()),
                                                       indent=2))
            manifest["rows"] = encoder.rows
            self._write_manifest(tmp, manifest)

        size = storage.atomic_write_dir(path, build)
        extra: dict[str, Any] = {"codec": "arrow (uncompressed, memory-mapped)", "layout": "kura"}
        if changes:
            extra["kura_layout_changes"] = changes
            logger.warning("%s: Kura's HF layout changed some values as Kura's own encoding does (%s); the native "
                           "layout keeps them", path, "; ".join(f"{k}: {n}" for k, n in changes.items()))
        if self.hub_repo:
            table, _ = self.open_verified(path)
            extra["hub_push"] = self._push(Dataset(table, fingerprint=os.urandom(8).hex()), path.name, encoder.rows)
        return SavedCheckpoint(name=path.name, path=str(path), format=self.format_name, rows=encoder.rows,
                               bytes=size, model=manifest["model"], checksum=_files_checksum(manifest), extra=extra)

    def _push(self, dataset: Any, name: str, rows: int) -> str:
        """Push one config to the Hub; returns ``"ok"`` or ``"failed: <reason>"`` (never raises, never logs the token)."""
        token = self.hub_token
        try:
            dataset.push_to_hub(self.hub_repo, config_name=name, token=token,
                                commit_message=f"Update {name} checkpoint with {rows} rows")
        except Exception as exc:  # noqa: BLE001 - any push failure is reported, and the local save stands
            reason = _redact(f"{type(exc).__name__}: {exc}", token)
            logger.warning("Pushing checkpoint %s to the Hub repo %s failed (the local save is intact): %s",
                           name, self.hub_repo, reason)
            return f"failed: {reason}"
        logger.info("Pushed checkpoint %s (%d rows) to the Hub repo %s", name, rows, self.hub_repo)
        return "ok"

    # --- open and verify ---------------------------------------------------------------------------------
    @staticmethod
    def _hash_target(path: UPath) -> Any:
        return storage.local_path(path) if storage.is_local(path) else path

    def _manifest(self, path: UPath) -> dict[str, Any] | None:
        try:
            raw = storage.read_bytes(path / MANIFEST)
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(raw)
            assert isinstance(manifest["files"], dict) and isinstance(manifest["rows"], int)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise CheckpointCorruptError(path / MANIFEST, "the integrity manifest is damaged") from None
        return manifest

    def _verify(self, path: UPath, manifest: dict[str, Any], skip: frozenset[str] = frozenset()) -> None:
        """Check every file the manifest lists (except ``skip``, which the caller hashes while reading)."""
        self._verify_dir(storage.resolve_dir(path), manifest, skip)

    def _verify_dir(self, path: UPath, manifest: dict[str, Any], skip: frozenset[str] = frozenset()) -> None:
        for name, expected in manifest["files"].items():
            if name in skip:
                continue
            f = path / name
            try:
                if not storage.is_local(f):  # one GET: size and checksum of the same version
                    _check_buffer(f, pa.py_buffer(storage.read_bytes(f)), expected)
                    continue
                size = f.stat().st_size
                if size != expected["bytes"]:
                    raise CheckpointCorruptError(f, f"has {size} bytes but was saved with {expected['bytes']}: it "
                                                 "was truncated or changed")
                actual = arrow.hash_file(self._hash_target(f))
            except FileNotFoundError:
                raise CheckpointCorruptError(f, "a file of the dataset is missing") from None
            if actual != expected["checksum"]:
                raise CheckpointCorruptError(f, f"checksum mismatch ({actual} != saved {expected['checksum']})")

    def open_verified(self, path: UPath, *, verify: bool = True) -> tuple[pa.Table, dict[str, Any] | None]:
        """The dataset's Arrow table, memory-mapped (local) or read (object stores), and our manifest
        (``None`` for a Kura dataset), after the integrity checks.

        This reads the files ``save_to_disk`` wrote (listed in ``state.json``) with pyarrow, exactly as
        ``datasets.load_from_disk`` does, minus its per-process copy of remote datasets, which is keyed by
        path and would serve stale rows after an overwrite. On an object store ``path``'s pointer names the
        version that is read (:func:`~kura_dagster.checkpoints.storage.resolve_dir`).
        """
        path = storage.resolve_dir(path)
        manifest = self._manifest(path)
        try:
            state = json.loads(storage.read_bytes(path / "state.json"))
            files = [f["filename"] for f in state["_data_files"]]
        except FileNotFoundError:
            raise CheckpointCorruptError(path / "state.json", "the dataset's state.json is missing") from None
        except (ValueError, KeyError, TypeError):
            raise CheckpointCorruptError(path / "state.json", "the dataset's state.json is damaged") from None
        if not files:
            raise CheckpointCorruptError(path / "state.json", "lists no data files")
        data = self.data_files(path, files)
        check = manifest is not None and verify
        if check:  # data files are hashed below, in the same pass (mapping or download) that serves their rows
            self._verify_dir(path, manifest, skip=frozenset(f.name for f in data))
        tables = []
        for f in data:
            try:
                if storage.is_local(f):
                    source = _map_file(storage.local_path(f))
                else:
                    source = pa.py_buffer(storage.read_bytes(f))
                if check and f.name in manifest["files"]:
                    _check_buffer(f, source, manifest["files"][f.name])
                tables.append(pa.ipc.open_stream(source).read_all())
            except FileNotFoundError:
                raise CheckpointCorruptError(f, "a data file of the dataset is missing") from None
            except (OSError, pa.ArrowException) as exc:
                raise CheckpointCorruptError(f, f"not a readable Arrow file ({exc}); it is truncated or damaged") from None
        try:
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        except pa.ArrowException as exc:
            raise CheckpointCorruptError(path, f"its data files do not share one schema ({exc})") from None
        if manifest is not None and table.num_rows != manifest["rows"]:
            raise CheckpointCorruptError(path, f"holds {table.num_rows} rows but was saved with {manifest['rows']}")
        return table, manifest

    def data_files(self, path: UPath, files: list[str] | None = None) -> list[UPath]:
        """The Arrow files of the dataset at ``path``, in order (from ``state.json``)."""
        if files is None:
            path = storage.resolve_dir(path)
            files = [f["filename"] for f in json.loads(storage.read_bytes(path / "state.json"))["_data_files"]]
        return [path / storage.validate_name(name, what="data file name") for name in files]

    @staticmethod
    def open_data_file(f: UPath) -> Any:
        """A plain (not memory-mapped) binary file object for one Arrow file."""
        return open(storage.local_path(f), "rb", buffering=0) if storage.is_local(f) else f.open("rb")

    def _class_labels(self, path: UPath) -> dict[str, list[str]]:
        """ClassLabel names from ``dataset_info.json`` (Kura stores message roles as class labels)."""
        from datasets import Features

        path = storage.resolve_dir(path)
        try:
            info = json.loads(storage.read_bytes(path / "dataset_info.json"))
            return _class_labels(Features.from_dict(info["features"])) if info.get("features") else {}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorruptError(path / "dataset_info.json", f"damaged features ({exc!r})") from None

    # --- read ------------------------------------------------------------------------------------------
    def load_checkpoint(self, filename: str, model_class: type[T] | None = None, **kwargs: Any) -> Any:
        """A list of models, ``None`` when absent; with ``streaming=True`` (here or on the manager) an iterator
        that builds one batch of models at a time."""
        streaming = kwargs.pop("streaming", None)
        if streaming if streaming is not None else self.streaming:
            kwargs.pop("checkpoint_type", None)
            return self.iter_checkpoint(filename, model_class, **kwargs)
        return super().load_checkpoint(filename, model_class, **kwargs)

    def _read(self, path: UPath, model: type[T], **_: Any) -> list[T]:
        return arrow.read_consistently(path, lambda: self._read_once(path, model))

    def _read_once(self, path: UPath, model: type[T]) -> list[T]:
        table, manifest = self.open_verified(path)
        if _kura_columns(manifest):
            return arrow.kura_table_to_models(table, model, path, class_labels=self._class_labels(path))
        return arrow.table_to_models(table, manifest, model, path)

    def _iter(self, path: UPath, model: type[T], *, batch_size: int) -> Iterator[T]:
        table, manifest = self.open_verified(path)
        if _kura_columns(manifest):
            labels = self._class_labels(path)
            offset = 0
            for batch in table.to_batches(max_chunksize=batch_size):
                rows = arrow.kura_rows(pa.Table.from_batches([batch]), model, class_labels=labels)
                yield from arrow.rows_to_models(rows, model, path, row_offset=offset)
                offset += batch.num_rows
            return
        yield from arrow.iter_batches_as_models(table.to_batches(max_chunksize=batch_size), manifest, model, path)

    def _iter_rows(self, path: UPath) -> Iterator[dict[str, Any]]:
        table, manifest = self.open_verified(path)
        kura_columns = _kura_columns(manifest)
        labels = self._class_labels(path) if kura_columns else None
        model = self._stored_model(path) if kura_columns else None
        for batch in table.to_batches(max_chunksize=10_000):
            sub = pa.Table.from_batches([batch])
            if kura_columns:
                yield from arrow.kura_rows(sub, model, class_labels=labels)
            else:
                yield from arrow.table_rows(sub, manifest)

    def read_table(self, filename: str, columns: list[str] | None = None) -> pa.Table | None:
        """The verified, memory-mapped Arrow table (optionally only ``columns``)."""
        path = self.get_checkpoint_path(filename)
        if not self.enabled or not self._exists(path):
            return None
        table, _ = self.open_verified(path)
        return table.select(columns) if columns else table

    def _remote_schema(self, path: UPath) -> tuple[pa.Schema, dict[str, Any]] | None:
        """(schema, manifest) of a dataset we wrote on an object store, from its manifest and the first bytes of its
        first data file (an Arrow stream starts with its schema): describing it downloads no data."""
        files = storage.resolve_dir(path)
        manifest = self._manifest(files)
        if manifest is None:
            return None
        first = self.data_files(files)[0]
        try:
            with first.open("rb", block_size=1 << 16) as fh:
                return pa.ipc.open_stream(fh).schema, manifest
        except FileNotFoundError:
            raise CheckpointCorruptError(first, "a data file of the dataset is missing") from None
        except (OSError, pa.ArrowException) as exc:
            raise CheckpointCorruptError(first, f"not a readable Arrow file ({exc})") from None

    def _describe(self, path: UPath) -> dict[str, Any]:
        remote = None if storage.is_local(path) else self._remote_schema(path)
        if remote is not None:
            schema, manifest = remote
            rows = manifest["rows"]
        else:
            table, manifest = self.open_verified(path, verify=False)
            schema, rows = table.schema, table.num_rows
        try:
            info = json.loads(storage.read_bytes(storage.resolve_dir(path) / "dataset_info.json"))
            hf_features = info.get("features")
        except (FileNotFoundError, ValueError):
            hf_features = None
        return {
            "num_rows": rows,
            "num_columns": len(schema),
            "column_names": list(schema.names),
            "features": arrow.features_of(schema, manifest),
            "hf_features": hf_features,
            "model": (manifest or {}).get("model"),
            "schema_version": (manifest or {}).get("schema_version"),
            "compression": (manifest or {}).get("compression"),
            "writer": "kura_dagster" if manifest else "kura",
            "layout": "kura" if _kura_columns(manifest) else "native",
        }

    def _is_checkpoint(self, path: UPath) -> bool:
        if not path.is_dir():
            return False
        files = storage.resolve_dir(path)
        return (files / "state.json").exists() or (files / MANIFEST).exists()
