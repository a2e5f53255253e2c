"""``<prefix>/cluster_growth``: what is new and growing (README "A taxonomy that stays put").

Downstream of ``clusters``: how many of each base cluster's conversations fall in each period, in long format
(``cluster_id``, ``cluster_name``, ``period``, ``conversations``; one row per cluster and period it has
conversations in). A period is a partition key when the pipeline is partitioned (a UTC day with
``partitions="daily"``, a file with ``partitions="files"``), else the UTC day of the conversation's
``created_at`` (a naive timestamp is taken as UTC, as Kura writes them). Written beside the checkpoints like
the facets table, atomically, as ``cluster_growth.parquet`` and ``cluster_growth.jsonl``::

    duckdb.sql("SELECT period, sum(conversations) FROM 'checkpoints/cluster_growth.parquet' GROUP BY 1 ORDER BY 1")

The materialization shows the new clusters (those the clusters run made, from its ``taxonomy/new_cluster_ids``)
and the fastest-growing ones (latest period against the trailing average of the ``growth_window`` periods
before it). Once a whole window of history exists, its check ``no_growth_spike`` warns (severity WARN: it
blocks nothing) when a cluster with at least ``growth_alert_min_conversations`` conversations in the latest
period has more than ``growth_alert_factor`` times its trailing average, so Dagster's alerting can page someone.
A cluster with no conversations in the window is new, not growing: it is listed among the new clusters and
never warns.
"""

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Optional

import dagster as dg
import pyarrow as pa

from kura_dagster.orchestration.names import KuraNames
from kura_dagster.types import Cluster

GROWTH_NAME = "cluster_growth"
CHECK_NAME = "no_growth_spike"
SCHEMA = pa.schema([("cluster_id", pa.string()), ("cluster_name", pa.string()), ("period", pa.string()),
                    ("conversations", pa.int64())])
SHOWN = 10
"""Rows of the markdown tables in the metadata."""


def growth_key(names: KuraNames) -> dg.AssetKey:
    return dg.AssetKey([names.prefix, GROWTH_NAME]) if names.prefix else dg.AssetKey(GROWTH_NAME)


def growth_table(clusters: Sequence[Cluster], period_of: Mapping[str, str]) -> pa.Table:
    """Per base cluster and period, the number of its conversations (``period_of``: chat_id → period). A member
    without a period is an error naming it: nothing is dropped silently."""
    rows: list[tuple[str, str, str, int]] = []
    missing: list[str] = []
    for c in sorted(clusters, key=lambda c: c.id):
        counts = Counter()
        for chat_id in c.chat_ids:
            period = period_of.get(chat_id)
            if period is None:
                missing.append(chat_id)
            else:
                counts[period] += 1
        rows += [(c.id, c.name, p, n) for p, n in sorted(counts.items())]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" … (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} clustered conversation(s) have no period (not in the conversations or "
                         f"summaries read for cluster_growth): {shown}")
    columns = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.Table.from_arrays([pa.array(list(col), type=f.type) for col, f in zip(columns, SCHEMA)], schema=SCHEMA)


def period_sequence(periods: Sequence[str]) -> list[str]:
    """The periods in order: every calendar day from the first to the last when they are dates (a day without
    conversations is a 0, not a gap), else the distinct keys sorted (file partitions)."""
    keys = sorted(set(periods))
    if not keys:
        return []
    try:
        first, last = date.fromisoformat(keys[0]), date.fromisoformat(keys[-1])
        for k in keys:
            date.fromisoformat(k)
    except ValueError:
        return keys
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class Growth:
    cluster_id: str
    name: str
    latest: int
    """Conversations in the latest period."""
    trailing_mean: float
    """Mean conversations per period over the window before the latest period (0 for periods without any)."""
    total: int
    first_period: str

    @property
    def factor(self) -> float:
        """``latest / trailing_mean``: ``inf`` for a cluster with no conversations in the window."""
        if self.trailing_mean > 0:
            return self.latest / self.trailing_mean
        return math.inf if self.latest else 0.0


def cluster_growth(table: pa.Table, window: int) -> tuple[Optional[str], int, list[Growth]]:
    """``(latest period, periods of history before it in the window, growth of every cluster)`` from a
    :func:`growth_table`."""
    rows = table.to_pylist()
    sequence = period_sequence([r["period"] for r in rows])
    if not sequence:
        return None, 0, []
    latest, before = sequence[-1], set(sequence[-1 - window:-1])
    span = len(sequence[-1 - window:-1])
    by_cluster: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = by_cluster.setdefault(r["cluster_id"], {"name": r["cluster_name"], "latest": 0, "window": 0, "total": 0,
                                                    "first": r["period"]})
        g["total"] += r["conversations"]
        g["first"] = min(g["first"], r["period"])
        if r["period"] == latest:
            g["latest"] += r["conversations"]
        elif r["period"] in before:
            g["window"] += r["conversations"]
    return latest, span, [Growth(cid, g["name"], g["latest"], g["window"] / span if span else 0.0, g["total"], g["first"])
                    for cid, g in sorted(by_cluster.items())]


def spikes(growth: Sequence[Growth], factor: float, min_conversations: int) -> list[Growth]:
    """Clusters whose latest period exceeds ``factor`` × their trailing mean (with history and at least
    ``min_conversations`` in the latest period), largest factor first."""
    out = [g for g in growth if g.trailing_mean > 0 and g.latest >= min_conversations
           and g.latest > factor * g.trailing_mean]
    return sorted(out, key=lambda g: (-g.factor, -g.latest, g.cluster_id))


def fastest_growing(growth: Sequence[Growth], n: int = SHOWN) -> list[Growth]:
    """The clusters with history that grew most in the latest period (factor, then conversations)."""
    grown = [g for g in growth if g.trailing_mean > 0 and g.latest > g.trailing_mean]
    return sorted(grown, key=lambda g: (-g.factor, -g.latest, g.cluster_id))[:n]


def growth_markdown(rows: Sequence[Growth], window: int) -> str:
    if not rows:
        return "(no cluster has more conversations in the latest period than its trailing average)"
    out = [f"| cluster | id | latest period | trailing mean ({window}) | factor | total |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
    out += [f"| {g.name} | {g.cluster_id} | {g.latest} | {g.trailing_mean:.2f} | {g.factor:.2f} | {g.total} |"
            for g in rows]
    return "\n".join(out)


def new_markdown(rows: Sequence[Growth], note: str = "") -> str:
    if not rows:
        return note or "(no new clusters)"
    out = ([note, ""] if note else []) + ["| cluster | id | conversations | first period |", "| --- | --- | ---: | --- |"]
    out += [f"| {g.name} | {g.cluster_id} | {g.total} | {g.first_period} |" for g in rows[:SHOWN]]
    if len(rows) > SHOWN:
        out.append(f"| … and {len(rows) - SHOWN} more | | | |")
    return "\n".join(out)


def _clusters_taxonomy(context: dg.AssetExecutionContext, clusters_key: dg.AssetKey) -> dict[str, Any]:
    """The ``taxonomy/…`` metadata of the clusters' latest materialization (this run's, when it made them)."""
    event = context.instance.get_latest_materialization_event(clusters_key)
    materialization = getattr(event, "asset_materialization", None)
    metadata = dict(materialization.metadata) if materialization is not None else {}
    return {k: getattr(v, "value", v) for k, v in metadata.items() if k.startswith("taxonomy/")}


def new_clusters(growth: Sequence[Growth], latest: Optional[str], taxonomy: Mapping[str, Any]
                 ) -> tuple[list[Growth], str]:
    """The clusters the clusters run made (its ``taxonomy/new_cluster_ids``), or, without that record, those
    whose first conversations are in the latest period; and a note (a rebuild makes every cluster new)."""
    ids = taxonomy.get("taxonomy/new_cluster_ids")
    if taxonomy.get("taxonomy/rebuild"):
        reason = taxonomy.get("taxonomy/rebuild_reason") or "rebuild"
        return [], f"The taxonomy was built anew ({reason}): all {len(growth)} clusters are new."
    if ids is not None:
        wanted = set(ids)
        return [g for g in growth if g.cluster_id in wanted], ""
    return [g for g in growth if latest is not None and g.first_period == latest], ""


def periods_from_conversations(conversations: Sequence[Any]) -> dict[str, str]:
    from kura_dagster.orchestration.partitions import utc_day

    return {c.chat_id: utc_day(c.created_at) for c in conversations}


def periods_from_partitions(summaries: Mapping[str, Any]) -> dict[str, str]:
    """chat_id → the partition key of the summaries partition it is in."""
    from kura_dagster.checkpoints.columnar import SummaryColumns

    out: dict[str, str] = {}
    for key in sorted(summaries):
        for chat_id in SummaryColumns.coerce(summaries[key]).chat_ids:
            out[chat_id] = key
    return out


def cluster_growth_step(context: dg.AssetExecutionContext, kura: Any, clusters: Sequence[Cluster],
                        period_of: Mapping[str, str], periods: str, clusters_key: dg.AssetKey
                        ) -> dg.MaterializeResult:
    from kura_dagster.orchestration.facets import write_table_files

    started = time.monotonic()
    table = growth_table(clusters, period_of)
    parquet_path, jsonl_path = write_table_files(kura.checkpoint_dir, GROWTH_NAME, table)
    window = kura.growth_window
    latest, history, growth = cluster_growth(table, window)
    new, note = new_clusters(growth, latest, _clusters_taxonomy(context, clusters_key))
    # judged only over a whole window of history: the first days of a pipeline would otherwise warn on noise
    judged = history >= window
    alerts = spikes(growth, kura.growth_alert_factor, kura.growth_alert_min_conversations) if judged else []
    context.log.info(f"Growth of {len(growth)} clusters over {len(set(table.column('period').to_pylist()))} "
                     f"period(s) ({periods}); latest {latest}: {len(new)} new, {len(alerts)} past "
                     f"{kura.growth_alert_factor}× their trailing mean: {parquet_path}")
    check = dg.AssetCheckResult(
        check_name=CHECK_NAME,
        passed=not alerts,
        severity=dg.AssetCheckSeverity.WARN,
        description=(f"{len(alerts)} cluster(s) grew past {kura.growth_alert_factor}× their trailing mean in "
                     f"{latest}" if alerts else f"no cluster grew past {kura.growth_alert_factor}× its trailing mean"
                     if judged else f"not judged yet: {history} of the {window} periods before {latest} exist"),
        metadata={"latest_period": latest or "", "history_periods": history,
                  "growth_alert_factor": kura.growth_alert_factor,
                  "growth_window": window, "growth_alert_min_conversations": kura.growth_alert_min_conversations,
                  "spiking_clusters": dg.MetadataValue.json([g.cluster_id for g in alerts]),
                  **({"spikes": dg.MetadataValue.md(growth_markdown(alerts, window))} if alerts else {})},
    )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "clusters": len(growth),
            "periods": periods,
            "latest_period": latest or "",
            "new_clusters": len(new) if not note else len(growth),
            "new_clusters_table": dg.MetadataValue.md(new_markdown(new, note)),
            "fastest_growing": dg.MetadataValue.md(growth_markdown(fastest_growing(growth), window)),
            "parquet_path": dg.MetadataValue.path(str(parquet_path)),
            "jsonl_path": dg.MetadataValue.path(str(jsonl_path)),
            "elapsed_seconds": round(time.monotonic() - started, 3),
        },
        check_results=[check],
    )


def build_growth_asset(names: KuraNames, partitioned: bool,
                       summaries_in_metadata: Optional[dict[str, Any]] = None) -> dg.AssetsDefinition:
    """The ``cluster_growth`` asset of one pipeline, with its ``no_growth_spike`` check. A partitioned pipeline
    counts by the summaries' partitions; an unpartitioned one by the UTC day of the conversations' created_at."""
    from kura_dagster.io_managers.base import summary_columns_type

    key, clusters_key = growth_key(names), names.key("clusters")
    if partitioned:
        ins = {"periods_from": dg.AssetIn(key=names.key("summaries"), dagster_type=summary_columns_type(),
                                          metadata=summaries_in_metadata or {})}
        periods = "partitions of summaries"
    else:
        ins = {"periods_from": dg.AssetIn(key=names.key("conversations"))}
        periods = "UTC days of created_at"

    @dg.asset(
        key=key,
        group_name=names.group,
        code_version="1",
        kinds={"python", "kura", "parquet"},
        description=f"Conversations per base cluster and period ({periods}), long format: cluster_id, "
        "cluster_name, period, conversations. Written beside the checkpoints as cluster_growth.parquet and "
        "cluster_growth.jsonl (DuckDB/pandas); shows new and fastest-growing clusters.",
        ins={"clusters": dg.AssetIn(key=clusters_key), **ins},
        check_specs=[dg.AssetCheckSpec(
            CHECK_NAME, asset=key, blocking=False,
            description="Warns (WARN, blocks nothing) when a cluster's latest period exceeds growth_alert_factor "
            "× its trailing mean over growth_window periods (clusters below growth_alert_min_conversations "
            "are ignored).")],
        required_resource_keys={names.kura},
    )
    def cluster_growth_asset(context: dg.AssetExecutionContext, clusters: list[Cluster],
                             periods_from: Any) -> dg.MaterializeResult:
        if partitioned:  # one partition in all comes as its rows, several as {partition key: rows}
            by_key = periods_from if isinstance(periods_from, dict) else \
                dict(zip(context.asset_partition_keys_for_input("periods_from"), [periods_from]))
            period_of = periods_from_partitions(by_key)
        else:
            period_of = periods_from_conversations(periods_from)
        return cluster_growth_step(context, getattr(context.resources, names.kura), clusters, period_of, periods,
                                   clusters_key)

    return cluster_growth_asset
