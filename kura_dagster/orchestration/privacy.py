"""The privacy part of the steps (Clio): scrubbing, aggregation thresholds and the privacy auditor, called from
``assets.py``'s summaries, clusters and meta_clusters steps. Each helper returns the stage's output and the
metadata to add to its materialization (counts per placeholder type, what was folded, audit ratings)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional

import dagster as dg

from kura_dagster.pipeline.audit import Auditor, openai_auditor
from kura_dagster.pipeline.models.cached import CachedNamingModel
from kura_dagster.pipeline.privacy import ScrubbingNamer, scrub_metadata, scrub_summaries
from kura_dagster.pipeline.thresholds import FoldReport, base_clusters_with_thresholds, withhold
from kura_dagster.types import Cluster, ConversationSummary, GeneratedCluster


def scrubbed_summaries(
    context: dg.AssetExecutionContext, summaries: Sequence[ConversationSummary], counts: Optional[Counter] = None
) -> tuple[list[ConversationSummary], dict[str, Any]]:
    """The summaries with personal data replaced by typed placeholders in every free-text field. ``counts``:
    what the scrubbing summary model already replaced in this run's answers (cached answers were stored
    scrubbed); the tally of both goes into the metadata."""
    counts = counts if counts is not None else Counter()
    out = scrub_summaries(summaries, counts)
    if counts:
        context.log.info(f"Scrubbed {sum(counts.values())} personal value(s) from the summaries: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return out, scrub_metadata(counts)


def privacy_auditor(context: dg.AssetExecutionContext, kura: Any, cache: Any) -> Optional[Auditor]:
    """The cached LLM auditor when ``privacy_audit`` is on; ``None`` otherwise (and offline, where no model can
    judge: the run says so)."""
    if not kura.privacy_audit:
        return None
    from kura_dagster.orchestration.resources import parse_backend

    model = parse_backend(kura.llm, "llm")
    if model is None:
        context.log.warning("privacy_audit is on but llm is 'local': the offline models cannot rate names, so "
                            "no cluster was audited (the thresholds still apply).")
        return None
    return Auditor(CachedNamingModel(openai_auditor(kura.openai_config(model), seed=kura.seed), cache))


def audit_metadata(auditor: Optional[Auditor], kura: Any) -> dict[str, Any]:
    if auditor is None:
        return {"privacy/audit": "off" if not kura.privacy_audit else "skipped (offline models)"}
    ratings = Counter(auditor.ratings)
    counts = auditor.cached.counts
    return {"privacy/audit": f"on (withheld below {kura.audit_min_rating})",
            "privacy/audit_ratings": dg.MetadataValue.json({str(r): ratings.get(r, 0) for r in range(1, 6)}),
            "privacy/audit_requests": counts.requested, "privacy/audit_cache_hits": counts.cache_hits,
            "privacy/audit_deduplicated": counts.deduplicated}


def private_base_clusters(
    context: dg.AssetExecutionContext, kura: Any, columns: Any, namer: Any, cache: Any
) -> tuple[list[Cluster], dict[str, Any]]:
    """Base clusters with the thresholds applied before naming, scrubbed names, and the auditor (if on)."""
    thresholds = kura.thresholds()
    if not 1 <= kura.audit_min_rating <= 5:
        raise ValueError(f"audit_min_rating must be between 1 and 5 (Clio's scale), got {kura.audit_min_rating}")
    scrubbing = ScrubbingNamer(namer)
    auditor = privacy_auditor(context, kura, cache)
    report = FoldReport()
    out = base_clusters_with_thresholds(columns, scrubbing, kura.settings(), thresholds, auditor=auditor,
                                        min_rating=kura.audit_min_rating, report=report,
                                        join_quantile=getattr(kura, "assign_quantile", 0.95))
    context.log.info(
        f"Thresholds ({thresholds.describe()}): {report.shown} cluster(s) shown of {report.groups} k-means groups; "
        f"{report.small_groups} too small, {report.withheld_groups} withheld by the auditor; of their members "
        f"{report.conversations_joined} joined the nearest shown cluster (within its spread), "
        f"{report.conversations_in_other} went to {report.other_clusters} 'Other requests' cluster(s), "
        f"{report.conversations_folded} were folded into the nearest shown cluster (their 'Other' too small)")
    return out, {**report.as_metadata(), "privacy/min_conversations": thresholds.min_conversations,
                 **({"privacy/user_key": thresholds.user_key, "privacy/min_users": thresholds.min_users}
                    if thresholds.user_key else {}),
                 **scrub_metadata(scrubbing.scrubbed), **audit_metadata(auditor, kura)}


def private_meta_clusters(
    context: dg.AssetExecutionContext, kura: Any, base: Sequence[Cluster], out: list[Cluster],
    scrubbed: Counter, cache: Any,
) -> tuple[list[Cluster], dict[str, Any]]:
    """The new parents audited (if on): one rated below ``audit_min_rating`` keeps its place in the tree under
    the generic "Other requests" name. ``scrubbed``: what the scrubbing namer replaced in the parents' names."""
    auditor = privacy_auditor(context, kura, cache)
    withheld = 0
    if auditor is not None:
        base_ids = {c.id for c in base}
        parents = [i for i, c in enumerate(out) if c.id not in base_ids]
        ratings = auditor([GeneratedCluster(name=out[i].name, summary=out[i].description, slug=out[i].slug)
                           for i in parents])
        kept, withheld = withhold([out[i] for i in parents], ratings, kura.audit_min_rating)
        out = list(out)
        for i, c in zip(parents, kept):
            out[i] = c
        if withheld:
            context.log.info(f"The privacy auditor withheld the names of {withheld} meta cluster(s)")
    return out, {**scrub_metadata(scrubbed), **audit_metadata(auditor, kura), "privacy/withheld_meta_clusters": withheld}
