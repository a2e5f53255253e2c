"""Asset checks: the invariants that make each stage's output safe to build on.

Each check is a plain function returning a list of problems (testable without Dagster, and usable on
Kura's own checkpoints), wrapped in an ``@asset_check``. The checks on ``summaries``, ``clusters`` and
``meta_clusters`` are *blocking*: when one fails, the assets downstream of it are not materialized in
that run, so a bad output cannot poison what comes after it. The projection check is the last stage's,
so it has nothing to block; it still fails with severity ERROR.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import dagster as dg

from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.io_managers.base import CHAT_IDS_KEY, SUMMARY_COLUMNS_KEY, summary_columns_type
from kura_dagster.orchestration.names import KuraNames
from kura_dagster.types import Cluster, Conversation, ConversationSummary, ProjectedCluster

# Checks of a partitioned summaries run per partition (partitions_def on the check): Dagster 1.13 calls that a
# preview and warns on every load; the behaviour is tested here (test_partitions.py).
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)

SHOWN_PROBLEMS = 20
"""How many problems a failed check lists in its metadata (all are counted)."""


def _dupes(values: Iterable[str]) -> list[str]:
    return sorted(v for v, n in Counter(values).items() if n > 1)


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" … (+{len(items) - n} more)" if len(items) > n else "")


# --- the invariants ------------------------------------------------------------------------------------


def summary_problems(conversations: Sequence[Conversation | str], summaries: Sequence[ConversationSummary]) -> list[str]:
    """Every conversation (a row or its chat id) has exactly one summary and no summary is orphaned."""
    conv_ids = [c if isinstance(c, str) else c.chat_id for c in conversations]
    sum_ids = [s.chat_id for s in summaries]
    problems = []
    known, summarised = set(conv_ids), set(sum_ids)
    if missing := sorted(known - summarised):
        problems.append(f"{len(missing)} conversation(s) have no summary: {_few(missing)}")
    if orphans := sorted(summarised - known):
        problems.append(f"{len(orphans)} summary(ies) belong to no conversation (orphans): {_few(orphans)}")
    if dupes := _dupes(sum_ids):
        problems.append(f"{len(dupes)} conversation(s) have more than one summary: {_few(dupes)}")
    return problems


def base_cluster_problems(summary_ids: Iterable[str], clusters: Sequence[Cluster]) -> list[str]:
    """Every summary (by chat_id) is in exactly one base cluster, every member is a summary, and no cluster
    is empty."""
    problems = []
    if dupes := _dupes(c.id for c in clusters):
        problems.append(f"duplicate cluster ids: {_few(dupes)}")
    if empty := [c.id for c in clusters if not c.chat_ids]:
        problems.append(f"{len(empty)} cluster(s) have no conversations: {_few(empty)}")
    if nested := [c.id for c in clusters if c.parent_id is not None]:
        problems.append(f"{len(nested)} base cluster(s) already have a parent_id: {_few(nested)}")
    members = [cid for c in clusters for cid in c.chat_ids]
    member_set = set(members)  # (a Counter only when some id is there twice: ~1 s saved at 1M conversations)
    summary_ids = set(summary_ids)
    if unclustered := sorted(summary_ids - member_set):
        problems.append(f"{len(unclustered)} summary(ies) are in no base cluster: {_few(unclustered)}")
    if len(member_set) != len(members) and (twice := sorted(cid for cid, n in Counter(members).items() if n > 1)):
        problems.append(f"{len(twice)} summary(ies) are in more than one base cluster: {_few(twice)}")
    if unknown := sorted(member_set - summary_ids):
        problems.append(f"{len(unknown)} chat_id(s) in clusters have no summary: {_few(unknown)}")
    return problems


def _cycle_members(clusters: Sequence[Cluster]) -> list[str]:
    parent = {c.id: c.parent_id for c in clusters}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = known to reach a root (or a missing parent)
    in_cycle: set[str] = set()
    for start in parent:
        path: list[str] = []
        node: str | None = start
        while node is not None and node in parent and state.get(node) != 2:
            if state.get(node) == 1:
                in_cycle.update(path[path.index(node):])
                break
            state[node] = 1
            path.append(node)
            node = parent[node]
        for n in path:
            state[n] = 2
    return sorted(in_cycle)


def meta_tree_problems(clusters: Sequence[Cluster], max_clusters: int | None = None) -> list[str]:
    """Parents exist, no cycles, a parent's chat_ids are exactly its children's (each conversation under one
    child), and at most ``max_clusters`` roots."""
    problems = []
    if dupes := _dupes(c.id for c in clusters):
        problems.append(f"duplicate cluster ids: {_few(dupes)}")
    by_id = {c.id: c for c in clusters}
    if missing := sorted({c.parent_id for c in clusters if c.parent_id is not None and c.parent_id not in by_id}):
        problems.append(f"{len(missing)} parent id(s) do not exist: {_few(missing)}")
    if cycle := _cycle_members(clusters):
        problems.append(f"{len(cycle)} cluster(s) are part of a parent cycle: {_few(cycle)}")
    children: dict[str, list[Cluster]] = {}
    for c in clusters:
        if c.parent_id is not None:
            children.setdefault(c.parent_id, []).append(c)
    for pid, kids in sorted(children.items()):
        if pid not in by_id:
            continue
        below = [cid for k in kids for cid in k.chat_ids]
        under = set(below)
        own = set(by_id[pid].chat_ids)
        if own != under:
            lost, extra = sorted(under - own), sorted(own - under)
            problems.append(
                f"cluster {pid!r}: chat_ids are not the union of its {len(kids)} children's "
                f"(in children only: {_few(lost, 3) or 'none'}; in the parent only: {_few(extra, 3) or 'none'})"
            )
        if len(under) != len(below) and (twice := sorted(cid for cid, n in Counter(below).items() if n > 1)):
            problems.append(f"cluster {pid!r}: {len(twice)} chat_id(s) are under more than one child: {_few(twice, 3)}")
    roots = [c for c in clusters if c.parent_id is None]
    if clusters and not roots:
        problems.append("the tree has no root cluster")
    if max_clusters is not None and len(roots) > max_clusters:
        problems.append(f"{len(roots)} root clusters, more than max_clusters={max_clusters}")
    return problems


def projection_problems(projected: Sequence[ProjectedCluster], meta_clusters: Sequence[Cluster] | None = None) -> list[str]:
    """Coordinates are finite; ``level`` is 0 for roots and one more than the parent's otherwise; with
    ``meta_clusters``, every meta cluster is projected exactly once and nothing else is."""
    problems = []
    if bad := [p.id for p in projected if not (math.isfinite(p.x_coord) and math.isfinite(p.y_coord))]:
        problems.append(f"{len(bad)} cluster(s) have non-finite coordinates: {_few(bad)}")
    by_id = {p.id: p for p in projected}
    wrong = []
    for p in projected:
        if p.parent_id is None:
            expected: int | None = 0
        elif p.parent_id in by_id:
            expected = by_id[p.parent_id].level + 1
        else:
            problems.append(f"cluster {p.id!r}: parent {p.parent_id!r} is not in the projection")
            continue
        if p.level != expected:
            wrong.append(f"{p.id} (level {p.level}, expected {expected})")
    if wrong:
        problems.append(f"{len(wrong)} cluster(s) have an inconsistent level: {', '.join(wrong[:5])}")
    if dupes := _dupes(p.id for p in projected):
        problems.append(f"clusters projected more than once: {_few(dupes)}")
    if meta_clusters is not None:
        meta_ids, proj_ids = {c.id for c in meta_clusters}, set(by_id)
        if unprojected := sorted(meta_ids - proj_ids):
            problems.append(f"{len(unprojected)} meta cluster(s) are not projected: {_few(unprojected)}")
        if unknown := sorted(proj_ids - meta_ids):
            problems.append(f"{len(unknown)} projected cluster(s) are not meta clusters: {_few(unknown)}")
    return problems


# --- Dagster wrappers ------------------------------------------------------------------------------------


def result(problems: Sequence[str], **counts: int) -> dg.AssetCheckResult:
    """Passed when there are no problems; metadata counts them and lists the first few."""
    metadata: dict = {"problems": len(problems), **counts}
    if problems:
        shown = "\n".join(f"- {p}" for p in problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        metadata["details"] = dg.MetadataValue.md(shown + (f"\n- … and {more} more" if more > 0 else ""))
    return dg.AssetCheckResult(passed=not problems, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


def _rows(value: Any) -> list:
    """A loaded input as one list: several partitions arrive as ``{partition: rows}``."""
    if isinstance(value, dict):
        return [row for k in sorted(value) for row in value[k]]
    return list(value)


def _chat_ids(value: Any) -> list[str]:
    """The chat ids of a summaries input read through the columnar path (``SummaryColumns``, or ``{partition:
    columns}``): at 1M summaries, loading them as models (each embedding a list of Python floats) took 11 GB."""
    parts = [value[k] for k in sorted(value)] if isinstance(value, dict) else [value]
    return [cid for p in parts for cid in (p.chat_ids if hasattr(p, "chat_ids") else [s.chat_id for s in p])]


def build_kura_checks(
    names: KuraNames = KuraNames(),
    partitions_def: Optional[dg.PartitionsDefinition] = None,
    summaries_in_metadata: Optional[dict[str, Any]] = None,
) -> list[dg.AssetChecksDefinition]:
    """The four checks of one pipeline, on its own asset keys and its ``kura`` resource. With partitions, the
    summaries check runs per partition (that partition's conversations and summaries), and the clusters check
    reads the summaries partitions ``clusters`` read."""
    key = names.key

    @dg.asset_check(
        asset=key("summaries"),
        # chat ids only: a ten-day backfill of 7 KB conversations held ~5 GB of conversation rows here
        additional_ins={"conversations": dg.AssetIn(key("conversations"), metadata={CHAT_IDS_KEY: True})},
        blocking=True,
        partitions_def=partitions_def,
        description="Every conversation has exactly one summary, and no summary is orphaned"
        + (" (per partition)." if partitions_def is not None else "."),
    )
    def summaries_cover_conversations(summaries: Any, conversations: Any) -> dg.AssetCheckResult:
        summaries, conversations = _rows(summaries), _rows(conversations)
        return result(summary_problems(conversations, summaries), conversations=len(conversations),
                      summaries=len(summaries))

    @dg.asset_check(
        asset=key("clusters"),
        additional_ins={"summaries": dg.AssetIn(key("summaries"), dagster_type=summary_columns_type(),
                                                metadata={**(summaries_in_metadata or {}), SUMMARY_COLUMNS_KEY: []})},
        blocking=True,
        description="Every summary is in exactly one base cluster, and every cluster member is a summary.",
    )
    def every_summary_in_one_cluster(clusters: list[Cluster], summaries: Any) -> dg.AssetCheckResult:
        chat_ids = _chat_ids(summaries)
        return result(base_cluster_problems(chat_ids, clusters), clusters=len(clusters), summaries=len(chat_ids))

    @dg.asset_check(
        asset=key("meta_clusters"),
        blocking=True,
        required_resource_keys={names.kura},
        description="The tree is well formed: parents exist, no cycles, a parent's chat_ids are the union of its "
        "children's, and there are at most max_clusters roots.",
    )
    def meta_tree_well_formed(context, meta_clusters: list[Cluster]) -> dg.AssetCheckResult:
        max_clusters = getattr(context.resources, names.kura).max_clusters
        roots = sum(1 for c in meta_clusters if c.parent_id is None)
        return result(meta_tree_problems(meta_clusters, max_clusters), clusters=len(meta_clusters), roots=roots,
                      max_clusters=max_clusters)

    @dg.asset_check(
        asset=key("projected_clusters"),
        additional_ins={"meta_clusters": dg.AssetIn(key("meta_clusters"))},
        description="Coordinates are finite, levels follow the tree, and every meta cluster is projected once.",
    )
    def projections_consistent(
        projected_clusters: list[ProjectedCluster], meta_clusters: list[Cluster]
    ) -> dg.AssetCheckResult:
        return result(projection_problems(projected_clusters, meta_clusters), clusters=len(projected_clusters))

    @dg.asset_check(
        asset=key("clusters"),
        additional_ins={"summaries": dg.AssetIn(key("summaries"), dagster_type=summary_columns_type(),
                                                metadata={**(summaries_in_metadata or {}), SUMMARY_COLUMNS_KEY: []})},
        blocking=True,
        required_resource_keys={names.kura},
        description="Privacy: every base cluster holds at least min_conversations conversations and, with user_key, "
        "at least min_users distinct users (nothing below is shown).",
    )
    def clusters_meet_privacy_thresholds(context, clusters: list[Cluster], summaries: Any) -> dg.AssetCheckResult:
        return _threshold_result(getattr(context.resources, names.kura).thresholds(), clusters, summaries)

    @dg.asset_check(
        asset=key("meta_clusters"),
        blocking=True,
        required_resource_keys={names.kura},
        description="Privacy: every cluster of the tree (the map shows them all) meets min_conversations. (Users: "
        "a parent holds its children's conversations, checked by meta_tree_well_formed, so it has at least the "
        "users of each base cluster, checked on clusters; the summaries are not read a third time.)",
    )
    def meta_clusters_meet_privacy_thresholds(context, meta_clusters: list[Cluster]) -> dg.AssetCheckResult:
        return _threshold_result(getattr(context.resources, names.kura).thresholds(), meta_clusters, None)

    return [summaries_cover_conversations, every_summary_in_one_cluster, meta_tree_well_formed, projections_consistent,
            clusters_meet_privacy_thresholds, meta_clusters_meet_privacy_thresholds]


def _threshold_result(thresholds: Any, clusters: Sequence[Cluster], summaries: Any) -> dg.AssetCheckResult:
    """The privacy thresholds over ``clusters``; user counts from the summaries' ``metadata[user_key]`` (none
    without ``summaries``)."""
    from kura_dagster.pipeline.thresholds import threshold_problems, user_ids

    users_by_chat = None
    if thresholds.user_key and summaries is not None:
        parts = [summaries[k] for k in sorted(summaries)] if isinstance(summaries, dict) else [summaries]
        users_by_chat = {}
        for part in parts:
            columns = SummaryColumns.coerce(part)
            users_by_chat.update(zip(columns.chat_ids, user_ids(columns, thresholds.user_key) or []))
    sizes = [len(c.chat_ids) for c in clusters]
    return result(threshold_problems(clusters, thresholds, users_by_chat), clusters=len(clusters),
                  smallest_cluster=min(sizes, default=0), min_conversations=thresholds.min_conversations,
                  **({"min_users": thresholds.min_users} if thresholds.user_key else {}))


kura_checks = build_kura_checks()
"""The standalone pipeline's checks (unprefixed keys)."""
