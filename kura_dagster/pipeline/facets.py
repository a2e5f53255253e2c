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
    found = _arrow_metadata_values(columns.read_columns(["metadata"]), key) if len(columns) else []
    if found is not None:
        return found
    return [_user_value(s.metadata.get(key)) for s in columns.models_for(np.arange(len(columns)), fields=["metadata"])]


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
        languages=[list(dict.fromkeys(v)) if v else [] for v in table.column("languages").to_pylist()],
        tasks=[t or None for t in table.column("task").to_pylist()],
        concerning=floats("concerning_score"), frustration=floats("user_frustration"),
        has_errors=np.where(np.isnan(lengths), np.nan, (lengths > 0).astype(np.float64)),
    )


def summary_facet_rows(columns: SummaryColumns, user_key: str | None = None) -> FacetRows:
    """:class:`FacetRows` of every summary in ``columns``: from the Arrow columns when the summaries came from
    Parquet/HF (no model built: the 100k-row cost is a few column reads), else from the summary models."""
    if columns._parts is not None:
        parts = [summary_facet_rows(p, None) for p in columns._parts]
        rows = FacetRows(chat_ids=list(columns.chat_ids), languages=[x for p in parts for x in p.languages],
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
    """Integer codes (-1 for None) and the vocabulary."""
    vocab: dict[str, int] = {}
    codes = np.fromiter((-1 if v is None else vocab.setdefault(v, len(vocab)) for v in values), dtype=np.int64,
                        count=len(values))
    return codes, list(vocab)


def _nan_stat(fn, values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(fn(values)) if len(values) else None


def cluster_facets(clusters: Sequence[Cluster], rows: FacetRows, *, model_facets: bool = True) -> pa.Table:
    """One row per cluster (in the order given) with its facets; see the module docstring."""
    from scipy import sparse

    position = {cid: i for i, cid in enumerate(rows.chat_ids)}
    levels = _levels(clusters)
    parents = {c.parent_id for c in clusters if c.parent_id is not None}
    # languages as a sparse conversations × languages 0/1 matrix: a cluster's counts are one row-sum
    lang_vocab: dict[str, int] = {}
    indptr, indices = [0], []
    for langs in rows.languages:
        indices.extend(lang_vocab.setdefault(lang, len(lang_vocab)) for lang in langs)
        indptr.append(len(indices))
    lang_matrix = sparse.csr_matrix((np.ones(len(indices), dtype=np.float64), indices, indptr),
                                    shape=(len(rows.chat_ids), max(len(lang_vocab), 1)))
    lang_names = list(lang_vocab)
    task_codes, task_names = _codes(rows.tasks)
    user_codes = _codes(rows.users)[0] if rows.users is not None else None

    out: dict[str, list] = {f.name: [] for f in FACETS_SCHEMA}
    for c in clusters:
        try:
            idx = np.fromiter((position[cid] for cid in c.chat_ids), dtype=np.int64, count=len(c.chat_ids))
        except KeyError as exc:
            raise ValueError(f"cluster {c.id!r} ({c.name!r}) holds chat_id {exc.args[0]!r}, which has no "
                             "summary") from None
        n = len(idx)
        out["cluster_id"].append(c.id)
        out["parent_id"].append(c.parent_id)
        out["level"].append(levels[c.id])
        out["is_base"].append(c.id not in parents)
        out["name"].append(c.name)
        out["slug"].append(c.slug)
        out["conversations"].append(n)
        if user_codes is not None:
            u = user_codes[idx]
            out["users"].append(int(len(np.unique(u[u >= 0]))))
        else:
            out["users"].append(None)
        counts = np.asarray(lang_matrix[idx].sum(axis=0)).reshape(-1) if n and lang_names else np.zeros(0)
        out["language_shares"].append(
            sorted(((lang_names[j], float(counts[j]) / n) for j in np.flatnonzero(counts)), key=lambda kv: -kv[1]))
        if not model_facets:
            for col in ("task_shares", "concerning_mean", "concerning_max", "frustration_mean",
                        "assistant_error_share"):
                out[col].append(None)
            continue
        t = task_codes[idx]
        t = t[t >= 0]
        if len(t):
            tc = np.bincount(t, minlength=len(task_names))
            top = np.argsort(-tc, kind="stable")[:TOP_TASKS]
            top = top[tc[top] > 0]
            shares = [(task_names[j], float(tc[j]) / n) for j in top.tolist()]
            rest = len(t) - int(tc[top].sum())  # conversations with a task outside the top ones
            if rest:
                shares.append((OTHER_TASKS, rest / n))
            out["task_shares"].append(shares)
        else:
            out["task_shares"].append(None)
        out["concerning_mean"].append(_nan_stat(np.mean, rows.concerning[idx]))
        out["concerning_max"].append(_nan_stat(np.max, rows.concerning[idx]))
        out["frustration_mean"].append(_nan_stat(np.mean, rows.frustration[idx]))
        out["assistant_error_share"].append(_nan_stat(np.mean, rows.has_errors[idx]))
    return pa.Table.from_pydict(out, schema=FACETS_SCHEMA)


def top_clusters(table: pa.Table, column: str, n: int = 5) -> list[dict]:
    """The ``n`` clusters with the highest ``column`` (nulls left out), for metadata."""
    rows = [r for r in table.select(["cluster_id", "name", "level", "conversations", column]).to_pylist()
            if r[column] is not None]
    rows.sort(key=lambda r: (-r[column], r["cluster_id"]))
    return rows[:n]
