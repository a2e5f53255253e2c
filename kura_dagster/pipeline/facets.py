"""Clio's facets as a table: one row per cluster (base and meta) with the figures of its conversations' summaries.

Columns (the Arrow schema :data:`FACETS_SCHEMA`; Parquet and JSONL carry the same):

* ``cluster_id``, ``parent_id`` (null for roots), ``level`` (0 for roots), ``is_base`` (a base cluster, i.e. a
  leaf of the tree), ``name``, ``slug``;
* ``conversations``; ``users`` (distinct ``metadata[user_key]``; null without a ``user_key``);
* ``language_shares``: language → share of the cluster's conversations whose summary lists it (a conversation
  may list several, so shares can sum to more than 1);
* ``task_shares``: the :data:`TOP_TASKS` most common tasks → their share, and ``(other tasks)`` for the rest;
* ``concerning_mean``, ``concerning_max`` (1-5), ``frustration_mean`` (1-5), ``assistant_error_share`` (share
  of conversations whose summary lists at least one assistant error). Each over the summaries that have the
  field; null when none has it.

With ``model_facets=False`` (the offline models, which do not judge tasks, concern, frustration or errors) those
columns are null rather than guessed. Languages come from the summaries either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.types import Cluster, ConversationSummary

TOP_TASKS = 10
OTHER_TASKS = "(other tasks)"
FACET_FIELDS = ("languages", "task", "concerning_score", "user_frustration", "assistant_errors")

FACETS_SCHEMA = pa.schema([
    ("cluster_id", pa.string()), ("parent_id", pa.string()), ("level", pa.int32()), ("is_base", pa.bool_()),
    ("name", pa.string()), ("slug", pa.string()),
    ("conversations", pa.int64()), ("users", pa.int64()),
    ("language_shares", pa.map_(pa.string(), pa.float64())), ("task_shares", pa.map_(pa.string(), pa.float64())),
    ("concerning_mean", pa.float64()), ("concerning_max", pa.float64()), ("frustration_mean", pa.float64()),
    ("assistant_error_share", pa.float64()),
])


@dataclass
class FacetRows:
    """The per-summary facet values, as columns (row ``i`` is ``chat_ids[i]``)."""

    chat_ids: list[str]
    languages: list[list[str]]
    tasks: list[str | None]
    concerning: np.ndarray  # float64, NaN when missing
    frustration: np.ndarray
    has_errors: np.ndarray  # float64: 1, 0, or NaN when the field is missing
    users: list[str | None] | None = None
    language_codes: tuple[np.ndarray, np.ndarray, list[str]] | None = None
    """``(languages per row, their codes in row order, names)``: read straight from Arrow (``languages`` is then
    empty); otherwise derived from ``languages`` by :meth:`language_pairs`."""

    def language_pairs(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        if self.language_codes is not None:
            return self.language_codes
        per_row = np.fromiter(map(len, self.languages), dtype=np.int64, count=len(self.languages))
        flat, names = _codes(list(itertools.chain.from_iterable(self.languages)))
        return per_row, flat, names

    def language_lists(self) -> list[list[str]]:
        """Each row's languages as a list (from the Arrow codes when that is how they were read)."""
        if self.language_codes is None:
            return self.languages
        per_row, flat, names = self.language_codes
        if not len(per_row):
            return []
        return [[names[c] for c in seg] for seg in np.split(flat, np.cumsum(per_row)[:-1])]

    @classmethod
    def from_summaries(cls, summaries: Sequence[ConversationSummary],
                       users: list[str | None] | None = None) -> FacetRows:
        def num(v: object) -> float:
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan

        return cls(
            chat_ids=[s.chat_id for s in summaries],
            languages=[list(dict.fromkeys(s.languages or [])) for s in summaries],
            tasks=[s.task or None for s in summaries],
            concerning=np.array([num(s.concerning_score) for s in summaries], dtype=np.float64),
            frustration=np.array([num(s.user_frustration) for s in summaries], dtype=np.float64),
            has_errors=np.array([np.nan if s.assistant_errors is None else float(bool(s.assistant_errors))
                                 for s in summaries], dtype=np.float64),
            users=users,
        )


def _user_value(v: object) -> str | None:
    return None if v is None or v == "" else str(v)


def _arrow_metadata_values(table: pa.Table, key: str) -> list[str | None] | None:
    """``metadata[key]`` of each row from the Arrow ``metadata`` column (a struct, or JSON text); ``None`` when
    the column has another shape (the caller then builds models)."""
    import json

    import pyarrow.compute as pc

    if "metadata" not in table.column_names:
        return None
    col = table.column("metadata")
    if pa.types.is_struct(col.type):
        if col.type.get_field_index(key) < 0:
            return [None] * table.num_rows
        return [_user_value(v) for v in pc.struct_field(col, key).to_pylist()]
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return [None if t is None else _user_value(json.loads(t).get(key)) for t in col.to_pylist()]
    return None


def metadata_values(columns: SummaryColumns, key: str) -> list[str | None]:
    """Each summary's ``metadata[key]`` as a string (``None`` when absent), read from the Arrow column when the
    summaries came from Parquet/HF (no models built), else from the models."""
    if columns._parts is not None:
        return [v for part in columns._parts for v in metadata_values(part, key)]
    if columns._models is not None:
        return [_user_value(s.metadata.get(key)) for s in columns._models]
    found = _arrow_metadata_values(columns.read_columns([f"metadata.{key}"]), key) if len(columns) else []
    if found is not None:
        return found
    return [_user_value(s.metadata.get(key)) for s in columns.models_for(np.arange(len(columns)), fields=["metadata"])]


def _arrow_language_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per row: how many distinct languages, and their codes in row order (a language listed twice in one
    summary counts once), from a list<string> column without building Python lists."""
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    lengths = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(pc.list_flatten(col))
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    names = encoded.dictionary.to_pylist()
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keep = codes >= 0
    width = max(len(names), 1)
    pairs = np.unique(row[keep] * width + codes[keep])  # sorted by row, duplicates within a row gone
    return np.bincount(pairs // width, minlength=n).astype(np.int64), pairs % width, names


def _rows_from_arrow(table: pa.Table) -> FacetRows | None:
    """The facet fields straight from Arrow columns of the expected types; ``None`` for any other shape."""
    import pyarrow.compute as pc

    names = set(table.column_names)
    if not set(FACET_FIELDS) <= names:
        return None
    types = {n: table.schema.field(n).type for n in FACET_FIELDS}
    lists = (pa.types.is_list(types["languages"]) or pa.types.is_large_list(types["languages"])) and \
        (pa.types.is_list(types["assistant_errors"]) or pa.types.is_large_list(types["assistant_errors"]))
    numbers = all(pa.types.is_integer(types[n]) or pa.types.is_floating(types[n]) or pa.types.is_null(types[n])
                  for n in ("concerning_score", "user_frustration"))
    if not (lists and numbers and (pa.types.is_string(types["task"]) or pa.types.is_null(types["task"]))):
        return None

    def floats(name: str) -> np.ndarray:
        return pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)

    errors = table.column("assistant_errors")
    lengths = pc.list_value_length(errors).to_numpy(zero_copy_only=False).astype(np.float64)  # NaN where null
    return FacetRows(
        chat_ids=[],  # set by the caller
        languages=[], language_codes=_arrow_language_codes(table.column("languages")),
        tasks=[t or None for t in table.column("task").to_pylist()],
        concerning=floats("concerning_score"), frustration=floats("user_frustration"),
        has_errors=np.where(np.isnan(lengths), np.nan, (lengths > 0).astype(np.float64)),
    )


def summary_facet_rows(columns: SummaryColumns, user_key: str | None = None) -> FacetRows:
    """:class:`FacetRows` of every summary in ``columns``: from the Arrow columns when the summaries came from
    Parquet/HF (no model built: the 100k-row cost is a few column reads), else from the summary models."""
    if columns._parts is not None:
        parts = [summary_facet_rows(p, None) for p in columns._parts]
        rows = FacetRows(chat_ids=list(columns.chat_ids),  # one vocabulary across partitions: lists again
                         languages=[x for p in parts for x in p.language_lists()],
                         tasks=[x for p in parts for x in p.tasks],
                         concerning=np.concatenate([p.concerning for p in parts]) if parts else np.zeros(0),
                         frustration=np.concatenate([p.frustration for p in parts]) if parts else np.zeros(0),
                         has_errors=np.concatenate([p.has_errors for p in parts]) if parts else np.zeros(0))
    elif columns._models is not None:
        rows = FacetRows.from_summaries(columns._models)
    else:
        rows = _rows_from_arrow(columns.read_columns(list(FACET_FIELDS))) if len(columns) else None
        if rows is None:
            rows = FacetRows.from_summaries(columns.models_for(np.arange(len(columns)), fields=FACET_FIELDS))
        rows.chat_ids = list(columns.chat_ids)
    if user_key:
        rows.users = metadata_values(columns, user_key)
    return rows


def _levels(clusters: Sequence[Cluster]) -> dict[str, int]:
    from kura_dagster.pipeline.dimensionality import cluster_levels

    return cluster_levels(clusters)


def _codes(values: Sequence[str | None]) -> tuple[np.ndarray, list[str]]:
    """Integer codes (-1 for None) and the vocabulary (in order of first appearance)."""
    vocab = {v: i for i, v in enumerate(v for v in dict.fromkeys(values) if v is not None)}
    vocab_none = {**vocab, None: -1}
    codes = np.fromiter(map(vocab_none.__getitem__, values), dtype=np.int64, count=len(values))
    return codes, list(vocab)


def _segments(clusters: Sequence[Cluster], position: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cluster's member rows, concatenated in cluster order: ``(rows, cluster index of each, starts)``."""
    sizes = np.fromiter((len(c.chat_ids) for c in clusters), dtype=np.int64, count=len(clusters))
    try:
        rows = np.fromiter(map(position.__getitem__, itertools.chain.from_iterable(c.chat_ids for c in clusters)),
                           dtype=np.int64, count=int(sizes.sum()))
    except KeyError as exc:
        owner = next(c for c in clusters if exc.args[0] in c.chat_ids)
        raise ValueError(f"cluster {owner.id!r} ({owner.name!r}) holds chat_id {exc.args[0]!r}, which has no "
                         "summary") from None
    owner = np.repeat(np.arange(len(clusters), dtype=np.int64), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(clusters) else np.zeros(0, np.int64)
    return rows, owner, starts


def _shares(owner: np.ndarray, codes: np.ndarray, names: list[str], sizes: np.ndarray, n_clusters: int,
            top: int | None = None, other: str | None = None) -> list[list[tuple[str, float]] | None]:
    """Per cluster: ``[(name, count / size)]`` of the codes of its rows (``-1``: none), most common first; with
    ``top``, the first ``top`` and ``other`` for the rest. ``None`` for a cluster none of whose rows has a code."""
    keep = codes >= 0
    owner, codes = owner[keep], codes[keep]
    width = max(len(names), 1)
    pairs, counts = np.unique(owner * width + codes, return_counts=True)
    who, what = pairs // width, pairs % width
    order = np.lexsort((what, -counts, who))  # by cluster, then most common first, then by code
    who, what, counts = who[order], what[order], counts[order]
    out: list[list[tuple[str, float]] | None] = [None] * n_clusters
    rest: dict[int, int] = {}
    size_of = sizes.tolist()
    current, rank = -1, 0
    for i, w, c in zip(who.tolist(), what.tolist(), counts.tolist()):  # one pass over the (cluster, code) pairs
        if i != current:
            current, rank, out[i] = i, 0, []
        if top is None or rank < top:
            out[i].append((names[w], c / size_of[i]))  # type: ignore[union-attr]
        else:
            rest[i] = rest.get(i, 0) + c
        rank += 1
    for i, c in rest.items():
        out[i].append((other or "(other)", c / size_of[i]))  # type: ignore[union-attr]
    return out


def _reduce(fn: np.ufunc, values: np.ndarray, rows: np.ndarray, starts: np.ndarray, sizes: np.ndarray,
            mean: bool = False) -> list[float | None]:
    """Per cluster: ``fn`` (``np.fmax``: max; ``np.add`` with ``mean``: mean) of its rows' values, NaNs left out;
    ``None`` when every value is NaN."""
    if not len(starts):
        return []
    v = values[rows]
    known = ~np.isnan(v)
    safe = np.where(sizes > 0, starts, 0)
    n_known = np.add.reduceat(known.astype(np.int64), safe) * (sizes > 0)
    if mean:
        total = np.add.reduceat(np.where(known, v, 0.0), safe)
        result = np.divide(total, n_known, out=np.full(len(starts), np.nan), where=n_known > 0)
    else:
        result = np.where(n_known > 0, fn.reduceat(v, safe), np.nan)
    return [None if np.isnan(x) else float(x) for x in result.tolist()]


def cluster_facets(clusters: Sequence[Cluster], rows: FacetRows, *, model_facets: bool = True) -> pa.Table:
    """One row per cluster (in the order given) with its facets; see the module docstring. Vectorised over the
    clusters' concatenated member rows (at 100k conversations and 11k clusters: well under a second)."""
    position = {cid: i for i, cid in enumerate(rows.chat_ids)}
    levels = _levels(clusters)
    parents = {c.parent_id for c in clusters if c.parent_id is not None}
    k = len(clusters)
    member_rows, owner, starts = _segments(clusters, position)
    sizes = np.fromiter((len(c.chat_ids) for c in clusters), dtype=np.int64, count=k)

    # languages: one (row, language) pair per listed language
    per_row, flat, lang_names = rows.language_pairs()
    row_start = np.concatenate([[0], np.cumsum(per_row)[:-1]]) if len(per_row) else np.zeros(0, np.int64)
    reps = per_row[member_rows]  # each member row contributes its languages
    lang_owner = np.repeat(owner, reps)
    lang_idx = np.repeat(row_start[member_rows] - np.concatenate([[0], np.cumsum(reps)[:-1]]) if len(reps) else
                         np.zeros(0, np.int64), reps) + np.arange(int(reps.sum()))
    languages = _shares(lang_owner, flat[lang_idx] if len(lang_idx) else np.zeros(0, np.int64), lang_names, sizes, k)

    users: list[int | None] = [None] * k
    if rows.users is not None:
        user_codes, user_names = _codes(rows.users)
        u = user_codes[member_rows]
        keep = u >= 0
        pairs = np.unique(owner[keep] * max(len(user_names), 1) + u[keep])
        users = np.bincount(pairs // max(len(user_names), 1), minlength=k).tolist()

    out: dict[str, list] = {
        "cluster_id": [c.id for c in clusters], "parent_id": [c.parent_id for c in clusters],
        "level": [levels[c.id] for c in clusters], "is_base": [c.id not in parents for c in clusters],
        "name": [c.name for c in clusters], "slug": [c.slug for c in clusters],
        "conversations": sizes.tolist(), "users": users,
        "language_shares": [x or [] for x in languages],
    }
    if model_facets:
        task_codes, task_names = _codes(rows.tasks)
        out["task_shares"] = _shares(owner, task_codes[member_rows], task_names, sizes, k, TOP_TASKS, OTHER_TASKS)
        out["concerning_mean"] = _reduce(np.add, rows.concerning, member_rows, starts, sizes, mean=True)
        out["concerning_max"] = _reduce(np.fmax, rows.concerning, member_rows, starts, sizes)
        out["frustration_mean"] = _reduce(np.add, rows.frustration, member_rows, starts, sizes, mean=True)
        out["assistant_error_share"] = _reduce(np.add, rows.has_errors, member_rows, starts, sizes, mean=True)
    else:  # the offline models do not judge these: empty, not invented
        for col in ("task_shares", "concerning_mean", "concerning_max", "frustration_mean", "assistant_error_share"):
            out[col] = [None] * k
    return pa.Table.from_pydict(out, schema=FACETS_SCHEMA)


def top_clusters(table: pa.Table, column: str, n: int = 5) -> list[dict]:
    """The ``n`` clusters with the highest ``column`` (nulls left out), for metadata."""
    rows = [r for r in table.select(["cluster_id", "name", "level", "conversations", column]).to_pylist()
            if r[column] is not None]
    rows.sort(key=lambda r: (-r[column], r["cluster_id"]))
    return rows[:n]
