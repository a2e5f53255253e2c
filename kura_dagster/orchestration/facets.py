"""``<prefix>/cluster_facets``: Clio's facets per cluster as a table (``pipeline.facets``), downstream of
``summaries`` and ``meta_clusters`` (every cluster, base and meta).

The table is written beside the checkpoints, atomically (old or new, never half), as
``cluster_facets.parquet`` and ``cluster_facets.jsonl``: it is not one of Kura's checkpoints, so it does not go
through the checkpoint IO managers (which write Kura's models). DuckDB or pandas read it as it is::

    duckdb.sql("SELECT name, concerning_mean FROM 'checkpoints/cluster_facets.parquet' ORDER BY 2 DESC")
"""

import io
import json
import time
from typing import Any, Optional

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.checkpoints.storage import atomic_write_bytes, to_upath
from kura_dagster.io_managers.base import SUMMARY_COLUMNS_KEY, summary_columns_type
from kura_dagster.orchestration.names import KuraNames
from kura_dagster.pipeline.facets import FACET_FIELDS, FacetRows, cluster_facets, summary_facet_rows, top_clusters
from kura_dagster.types import Cluster

FACETS_NAME = "cluster_facets"


def facets_key(names: KuraNames) -> dg.AssetKey:
    return dg.AssetKey([names.prefix, FACETS_NAME]) if names.prefix else dg.AssetKey(FACETS_NAME)


def facet_rows(summaries: Any, user_key: Optional[str]) -> FacetRows:
    """The facet fields of every summary (one partition after another when the input is by partition), read
    without embeddings (from the Arrow columns when the checkpoint is Parquet/HF)."""
    parts = [summaries[k] for k in sorted(summaries)] if isinstance(summaries, dict) else [summaries]
    return summary_facet_rows(SummaryColumns.concat([SummaryColumns.coerce(p) for p in parts]), user_key)


def table_jsonl(table: pa.Table) -> bytes:
    """One JSON object per row (``json.dumps`` of the row); the map columns as objects. Encoded column by column,
    each distinct value once (a cluster's name repeats on every row of the growth table)."""
    if not table.num_rows:
        return b""
    encoded = []
    for field, column in zip(table.schema, table.columns):
        values = column.to_pylist()
        if pa.types.is_map(field.type):
            encoded.append([json.dumps(None if v is None else dict(v), ensure_ascii=False) for v in values])
            continue
        memo: dict[Any, str] = {}  # one arrow type per column: no 1 / True / 1.0 mix-up
        out = []
        for v in values:
            try:
                out.append(memo[v])
            except KeyError:
                out.append(memo.setdefault(v, json.dumps(v, ensure_ascii=False)))
            except TypeError:  # unhashable (lists)
                out.append(json.dumps(v, ensure_ascii=False))
        encoded.append(out)
    keys = [json.dumps(name, ensure_ascii=False) + ": " for name in table.column_names]
    lines = ["{" + ", ".join(k + v for k, v in zip(keys, row)) + "}" for row in zip(*encoded)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_table_files(checkpoint_dir: str, name: str, table: pa.Table) -> tuple[Any, Any]:
    """``<name>.parquet`` (zstd) and ``<name>.jsonl`` beside the checkpoints, each written atomically (old or
    new, never half); returns both paths. The tables beside Kura's checkpoints (facets, growth) use it."""
    root = to_upath(checkpoint_dir)
    parquet_path, jsonl_path = root / f"{name}.parquet", root / f"{name}.jsonl"
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(parquet_path, buf.getvalue())
    atomic_write_bytes(jsonl_path, table_jsonl(table))
    return parquet_path, jsonl_path


def table_files_state(checkpoint_dir: str, name: str) -> Optional[str]:
    """A short hash of ``<name>.parquet`` and ``<name>.jsonl`` beside the checkpoints as stored now (their
    bytes), or ``None`` when either is absent: what :func:`~kura_dagster.orchestration.reuse.reuse_stored_output`
    compares before it keeps the tables of an unchanged run."""
    import hashlib

    root = to_upath(checkpoint_dir)
    digest = hashlib.sha256()
    for path in (root / f"{name}.parquet", root / f"{name}.jsonl"):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:24]


def _md_table(rows: list[dict], column: str) -> str:
    if not rows:
        return "(no cluster has this facet: the offline models do not judge it)"
    out = [f"| cluster | level | conversations | {column} |", "| --- | --- | --- | --- |"]
    out += [f"| {r['name']} | {r['level']} | {r['conversations']} | {r[column]:.2f} |" for r in rows]
    return "\n".join(out)


def cluster_facets_step(context: dg.AssetExecutionContext, kura: Any, summaries: Any,
                        meta_clusters: list[Cluster]) -> dg.MaterializeResult:
    started = time.monotonic()
    user_key = kura.thresholds().user_key
    rows = facet_rows(summaries, user_key)
    model_facets = kura.llm.strip() != "local"
    table = cluster_facets(meta_clusters, rows, model_facets=model_facets)
    parquet_path, jsonl_path = write_table_files(kura.checkpoint_dir, FACETS_NAME, table)
    context.log.info(f"Facets of {table.num_rows} clusters from {len(rows.chat_ids)} summaries: {parquet_path}")
    _, codes, names = rows.language_pairs()
    languages = dict(zip(names, np.bincount(codes, minlength=len(names)).tolist()))  # conversations per language
    return dg.MaterializeResult(metadata={
        "clusters": table.num_rows,
        "base_clusters": int(sum(table.column("is_base").to_pylist())),
        "summaries_read": len(rows.chat_ids),
        "model_facets": "from the LLM's summaries" if model_facets
        else "null: the offline models do not judge task, concern, frustration or errors",
        "parquet_path": dg.MetadataValue.path(str(parquet_path)),
        "jsonl_path": dg.MetadataValue.path(str(jsonl_path)),
        "top_by_concerning": dg.MetadataValue.md(_md_table(top_clusters(table, "concerning_mean"), "concerning_mean")),
        "top_by_frustration": dg.MetadataValue.md(_md_table(top_clusters(table, "frustration_mean"),
                                                            "frustration_mean")),
        "languages": dg.MetadataValue.json(dict(sorted(languages.items(), key=lambda kv: -kv[1]))),
        **({"user_key": user_key} if user_key else {}),
        "elapsed_seconds": round(time.monotonic() - started, 3),
    })


def build_facets_asset(names: KuraNames, summaries_in_metadata: Optional[dict[str, Any]] = None,
                       user_key: Optional[str] = None) -> dg.AssetsDefinition:
    """The ``cluster_facets`` asset of one pipeline (its own key prefix, group and ``kura`` resource). Its
    summaries input reads only the facet fields (and ``metadata.<user_key>``), never the embeddings
    (:data:`~kura_dagster.io_managers.base.SUMMARY_COLUMNS_KEY`); a ``user_key`` set only at run time is read then,
    in a second pass."""
    user_key = (user_key or "").strip() or None
    selection = [*FACET_FIELDS, *([f"metadata.{user_key}"] if user_key else [])]

    @dg.asset(
        key=facets_key(names),
        group_name=names.group,
        code_version="1",
        kinds={"python", "kura", "parquet"},
        description="Clio's facets per cluster (base and meta): language and task shares, concerning score, "
        "frustration, assistant errors, conversation and user counts. Written beside the checkpoints as "
        "cluster_facets.parquet and cluster_facets.jsonl (DuckDB/pandas).",
        ins={"summaries": dg.AssetIn(key=names.key("summaries"), dagster_type=summary_columns_type(),
                                     metadata={**(summaries_in_metadata or {}), SUMMARY_COLUMNS_KEY: selection}),
             "meta_clusters": dg.AssetIn(key=names.key("meta_clusters"))},
        required_resource_keys={names.kura, names.io_manager},  # the IO manager: its inputs' stored states (reuse)
    )
    def cluster_facets_asset(context: dg.AssetExecutionContext, summaries: Any,
                             meta_clusters: list[Cluster]) -> dg.MaterializeResult:
        from kura_dagster.orchestration.reuse import reuse_stored_output, shaping_settings

        kura = getattr(context.resources, names.kura)
        if kura.rebuild_taxonomy:  # a requested rebuild computes every stage (assets.py), and so the tables
            return cluster_facets_step(context, kura, summaries, meta_clusters)
        return reuse_stored_output(
            context, names.io_manager, shaping_settings(kura, FACETS_NAME),
            lambda: cluster_facets_step(context, kura, summaries, meta_clusters),
            own_state=lambda: table_files_state(kura.checkpoint_dir, FACETS_NAME))

    return cluster_facets_asset
