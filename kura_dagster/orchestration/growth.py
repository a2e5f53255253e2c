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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Optional, Union

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def period_table(chat_ids: Sequence[str], periods: Sequence[str]) -> pa.Table:
    """``chat_id`` → ``period`` as a table (what :func:`growth_table` joins the clusters' members with)."""
    return pa.table({"chat_id": pa.array(chat_ids, pa.string()), "period": pa.array(periods, pa.string())})


def growth_table(clusters: Sequence[Cluster], periods: Union[pa.Table, Mapping[str, str]]) -> pa.Table:
    """Per base cluster and period, the number of its conversations (``periods``: a :func:`period_table` or a
    mapping chat_id → period; a conversation in several periods counts in the earliest). A member without a
    period is an error naming it: nothing is dropped silently. Joined and counted by Arrow."""
    if not isinstance(periods, pa.Table):
        periods = period_table(list(periods.keys()), list(periods.values()))
    if periods.num_rows and pc.count_distinct(periods.column("chat_id")).as_py() < periods.num_rows:
        periods = periods.group_by("chat_id").aggregate([("period", "min")]).rename_columns(["chat_id", "period"])
    ordered = sorted(clusters, key=lambda c: c.id)
    sizes = np.fromiter((len(c.chat_ids) for c in ordered), dtype=np.int64, count=len(ordered))
    members = pa.table({"chat_id": pa.array([cid for c in ordered for cid in c.chat_ids], pa.string()),
                        "cluster": pa.array(np.repeat(np.arange(len(ordered), dtype=np.int32), sizes))})
    joined = members.join(periods, keys="chat_id", join_type="left outer")
    missing = joined.filter(pc.is_null(joined.column("period"))).column("chat_id").to_pylist()
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" … (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} clustered conversation(s) have no period (not in the conversations or "
                         f"summaries read for cluster_growth): {shown}")
    counts = joined.group_by(["cluster", "period"]).aggregate([("chat_id", "count")])
    counts = counts.sort_by([("cluster", "ascending"), ("period", "ascending")])
    index = counts.column("cluster")
    return pa.table([pa.array([c.id for c in ordered], pa.string()).take(index),
                     pa.array([c.name for c in ordered], pa.string()).take(index),
                     counts.column("period"), counts.column("chat_id_count").cast(pa.int64())], schema=SCHEMA)


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
    sequence = period_sequence(pc.unique(table.column("period")).to_pylist())
    if not sequence:
        return None, 0, []
    latest, before = sequence[-1], sequence[-1 - window:-1]
    periods, conversations = table.column("period"), table.column("conversations")
    parts = pa.table({
        "cluster_id": table.column("cluster_id"), "cluster_name": table.column("cluster_name"), "period": periods,
        "latest": pc.if_else(pc.equal(periods, latest), conversations, 0),
        "window": pc.if_else(pc.is_in(periods, value_set=pa.array(before, pa.string())), conversations, 0),
        "total": conversations,
    })
    per_cluster = parts.group_by(["cluster_id", "cluster_name"]).aggregate(
        [("latest", "sum"), ("window", "sum"), ("total", "sum"), ("period", "min")]).sort_by("cluster_id")
    span = len(before)
    return latest, span, [Growth(r["cluster_id"], r["cluster_name"], r["latest_sum"],
                                 r["window_sum"] / span if span else 0.0, r["total_sum"], r["period_min"])
                          for r in per_cluster.to_pylist()]


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
    return {k: getattr(v, "value", v) for k, v in metadata.items()
            if k.startswith("taxonomy/") or k == "kura/reused_from_run"}


def new_clusters(growth: Sequence[Growth], latest: Optional[str], taxonomy: Mapping[str, Any]
                 ) -> tuple[list[Growth], str]:
    """The clusters the clusters run made (its ``taxonomy/new_cluster_ids``), or, without that record, those
    whose first conversations are in the latest period; and a note (a rebuild makes every cluster new)."""
    ids = taxonomy.get("taxonomy/new_cluster_ids")
    if taxonomy.get("kura/reused_from_run"):  # its metadata is that run's: nothing was made this time
        return [], f"The clusters are unchanged since run {taxonomy['kura/reused_from_run']}: no new clusters."
    if taxonomy.get("taxonomy/rebuild"):
        reason = taxonomy.get("taxonomy/rebuild_reason") or "rebuild"
        return list(growth), f"The taxonomy was built anew ({reason}): all {len(growth)} clusters are new."
    if ids is not None:
        wanted = set(ids)
        return [g for g in growth if g.cluster_id in wanted], ""
    return [g for g in growth if latest is not None and g.first_period == latest], ""


def periods_from_conversations(conversations: Sequence[Any]) -> pa.Table:
    """Each conversation's UTC day of ``created_at``."""
    from kura_dagster.orchestration.partitions import utc_day

    return period_table([c.chat_id for c in conversations], [utc_day(c.created_at) for c in conversations])


def periods_from_partitions(summaries: Mapping[str, Any]) -> pa.Table:
    """Each summary's partition key (the summaries partition it is stored in)."""
    from kura_dagster.checkpoints.columnar import SummaryColumns

    keys = sorted(summaries)
    ids = [SummaryColumns.coerce(summaries[k]).chat_ids for k in keys]
    index = np.repeat(np.arange(len(keys), dtype=np.int32), [len(i) for i in ids])
    return pa.table({"chat_id": pa.array([c for part in ids for c in part], pa.string()),
                     "period": pa.array(keys, pa.string()).take(pa.array(index))})


def cluster_growth_step(context: dg.AssetExecutionContext, kura: Any, clusters: Sequence[Cluster],
                        period_of: pa.Table, periods: str, clusters_key: dg.AssetKey
                        ) -> dg.MaterializeResult:
    from kura_dagster.orchestration.facets import write_table_files

    started = time.monotonic()
    table = growth_table(clusters, period_of)
    parquet_path, jsonl_path = write_table_files(kura.checkpoint_dir, GROWTH_NAME, table)
    window = kura.growth_window
    latest, history, growth = cluster_growth(table, window)
    new, note = new_clusters(growth, latest, _clusters_taxonomy(context, clusters_key))
    check, alerts = growth_check(kura, latest, history, growth)
    context.log.info(f"Growth of {len(growth)} clusters over {pc.count_distinct(table.column('period')).as_py()} "
                     f"period(s) ({periods}); latest {latest}: {len(new)} new, {len(alerts)} past "
                     f"{kura.growth_alert_factor}× their trailing mean: {parquet_path}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": table.num_rows,
            "clusters": len(growth),
            "periods": periods,
            "latest_period": latest or "",
            "new_clusters": len(new),
            "new_clusters_table": dg.MetadataValue.md(new_markdown(new, note)),
            "fastest_growing": dg.MetadataValue.md(growth_markdown(fastest_growing(growth), window)),
            "parquet_path": dg.MetadataValue.path(str(parquet_path)),
            "jsonl_path": dg.MetadataValue.path(str(jsonl_path)),
            "elapsed_seconds": round(time.monotonic() - started, 3),
        },
        check_results=[check],
    )


ALERT_SETTINGS = ("growth_alert_factor", "growth_window", "growth_alert_min_conversations")


def stored_growth_check(context: dg.AssetExecutionContext, kura: Any) -> dg.AssetCheckResult:
    """The ``no_growth_spike`` check of the stored ``cluster_growth.parquet`` (a reused table). The alert
    settings shape no output, so the check is judged again when they changed; with the same settings as the last
    completed evaluation (which judged this same table: a reused table is the one the last materialization
    kept or wrote, and its check came with it), that evaluation is repeated without reading the table (reading
    it converts Python values to Arrow, and pyarrow imports pandas for that: 0.3 s of an unchanged rerun)."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    check_key = dg.AssetCheckKey(context.asset_key, CHECK_NAME)
    done = context.instance.event_log_storage.get_asset_check_execution_history(
        check_key, limit=1, status={Status.SUCCEEDED, Status.FAILED})
    evaluation = done[0].event.asset_check_evaluation if done and done[0].event is not None else None
    if evaluation is not None:
        judged = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
        if all(k in judged and judged[k] == getattr(kura, k) for k in ALERT_SETTINGS):
            return dg.AssetCheckResult(check_name=CHECK_NAME, passed=evaluation.passed,
                                       severity=evaluation.severity, description=evaluation.description,
                                       metadata=dict(evaluation.metadata))
    return judged_growth_check(kura)


def judged_growth_check(kura: Any) -> dg.AssetCheckResult:
    """The ``no_growth_spike`` check judged on the stored ``cluster_growth.parquet`` with this run's settings."""
    import pyarrow.parquet as pq

    from kura_dagster.checkpoints.storage import to_upath

    with (to_upath(kura.checkpoint_dir) / f"{GROWTH_NAME}.parquet").open("rb") as f:
        table = pq.ParquetFile(f).read()  # not pq.read_table: its pyarrow.dataset imports pandas (0.3 s)
    latest, history, growth = cluster_growth(table, kura.growth_window)
    return growth_check(kura, latest, history, growth)[0]


def growth_check(kura: Any, latest: Optional[str], history: int, growth: list[Growth]
                 ) -> tuple[dg.AssetCheckResult, list[Growth]]:
    window = kura.growth_window
    # judged only over a whole window of history: the first days of a pipeline would otherwise warn on noise
    judged = history >= window
    alerts = spikes(growth, kura.growth_alert_factor, kura.growth_alert_min_conversations) if judged else []
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
    return check, alerts


def build_growth_asset(names: KuraNames, partitioned: bool,
                       summaries_in_metadata: Optional[dict[str, Any]] = None) -> dg.AssetsDefinition:
    """The ``cluster_growth`` asset of one pipeline, with its ``no_growth_spike`` check. A partitioned pipeline
    counts by the summaries' partitions; an unpartitioned one by the UTC day of the conversations' created_at."""
    from kura_dagster.io_managers.base import SUMMARY_COLUMNS_KEY, summary_columns_type

    key, clusters_key = growth_key(names), names.key("clusters")
    if partitioned:
        ins = {"periods_from": dg.AssetIn(key=names.key("summaries"), dagster_type=summary_columns_type(),
                                          # the chat ids only: no embedding decoded, no other field read
                                          metadata={**(summaries_in_metadata or {}), SUMMARY_COLUMNS_KEY: []})}
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
        required_resource_keys={names.kura, names.io_manager},  # the IO manager: its inputs' stored states (reuse)
    )
    def cluster_growth_asset(context: dg.AssetExecutionContext, clusters: list[Cluster],
                             periods_from: Any) -> dg.MaterializeResult:
        from kura_dagster.orchestration.facets import table_files_state
        from kura_dagster.orchestration.reuse import reuse_stored_output, shaping_settings

        kura = getattr(context.resources, names.kura)

        def computed() -> dg.MaterializeResult:
            if partitioned:  # one partition in all comes as its rows, several as {partition key: rows}
                by_key = periods_from if isinstance(periods_from, dict) else \
                    dict(zip(context.asset_partition_keys_for_input("periods_from"), [periods_from]))
                period_of = periods_from_partitions(by_key)
            else:
                period_of = periods_from_conversations(periods_from)
            return cluster_growth_step(context, kura, clusters, period_of, periods, clusters_key)

        if kura.rebuild_taxonomy:  # a requested rebuild computes every stage (assets.py), and so the tables
            return computed()
        return reuse_stored_output(
            context, names.io_manager, shaping_settings(kura, GROWTH_NAME), computed,
            own_state=lambda: table_files_state(kura.checkpoint_dir, GROWTH_NAME),
            reused=lambda result: result._replace(check_results=[stored_growth_check(context, kura)]))

    return cluster_growth_asset
