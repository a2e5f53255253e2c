"""A Hugging Face dataset, with a ``column_map`` as Kura's ``Conversation.from_hf_dataset`` takes functions:
``chat_id``, ``created_at``, ``messages`` default to the columns of those names (Kura's ``x["chat_id"]`` …);
``metadata`` to a ``metadata`` column when there is one (Kura's default is ``{}``), and ``metadata.<key>``
picks single columns (Kura's ``metadata_fn``).

Three ways in: a ``save_to_disk`` directory (local or fsspec URL, found by its ``state.json`` /
``dataset_info.json`` / ``dataset_dict.json``), data files (``.json``/``.jsonl``/``.parquet``/``.csv``/``.arrow``,
a glob or a directory) through ``datasets.load_dataset``, or a Hub name (``"org/name"``, with network) through
``datasets.load_dataset(name)``. A ``DatasetDict`` takes ``split`` (``train`` by default).
"""

from __future__ import annotations

import posixpath
from typing import Any

from kura_dagster.sources.result import Collector
from kura_dagster.sources.rows import ColumnMap
from kura_dagster.sources.tables import bind, read_batches
from kura_dagster.types.conversation import ConversationInputError

BUILDERS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet", ".pq": "parquet",
            ".csv": "csv", ".arrow": "arrow"}


def _builder(paths: list[str], source: str) -> str:
    kinds = {BUILDERS.get(posixpath.splitext(p)[1].lower()) for p in paths}
    if None in kinds or len(kinds) != 1:
        raise ConversationInputError(
            f"{source}: datasets.load_dataset reads data files of one kind ({', '.join(sorted(BUILDERS))}); "
            f"got {', '.join(sorted({posixpath.basename(p) for p in paths})[:5])}"
        )
    return kinds.pop()


def load_hf(*, hf_dir: str | None = None, files: list[str] | None = None, name: str | None = None,
            split: str = "train", storage_options: dict | None = None, source: str) -> Any:
    import datasets  # only when a dataset is read

    so = storage_options or None
    if hf_dir is not None:
        ds = datasets.load_from_disk(hf_dir, storage_options=so)
    elif files:
        ds = datasets.load_dataset(_builder(files, source), data_files=files, split=split, storage_options=so)
    else:
        try:
            ds = datasets.load_dataset(name, split=split, storage_options=so)
        except Exception as exc:  # network, authentication, a name that is neither a path nor a dataset
            raise ConversationInputError(
                f"{source}: no such file or directory, and loading it as a Hugging Face Hub dataset failed: {exc}"
            ) from exc
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ConversationInputError(f"{source}: no split {split!r}; the splits are: {', '.join(ds)}")
        ds = ds[split]
    return ds


def read_dataset(ds: Any, cmap: ColumnMap, collector: Collector, source: str) -> None:
    cols, needed = bind(cmap, ds.features.arrow_schema, source)
    unread = [n for n in ds.column_names if n not in needed]
    batches = ds.select_columns(needed).with_format("arrow").iter(batch_size=4096)
    read_batches(batches, cols, collector, ds.num_rows, unread)
