"""The incremental taxonomy in the steps (README "A taxonomy that stays put"): the clusters, meta_clusters and
projected_clusters steps call these instead of building from scratch when a taxonomy is stored beside the
checkpoints (:mod:`kura_dagster.checkpoints.taxonomy_state`). A full build runs on the first run, when
``rebuild_taxonomy`` is set, when the settings or the embedding space changed, and when drift passes
``rebuild_new_share``/``rebuild_far_share``. Each helper returns the stage's output and its ``taxonomy/…``
metadata (see :meth:`kura_dagster.pipeline.taxonomy.TaxonomyReport.as_metadata`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dagster as dg
import numpy as np

from kura_dagster.checkpoints.taxonomy_state import BASE, META, PROJECTION, load_taxonomy, save_taxonomy
from kura_dagster.pipeline.taxonomy import (
    TaxonomyOptions,
    TaxonomyReport,
    base_state,
    meta_state,
    place,
    projection_state,
    render_base,
    render_meta,
    settings_key,
    tree_vectors,
    update_base_clusters,
    update_meta_clusters,
)
from kura_dagster.types import Cluster


def taxonomy_options(kura: Any) -> TaxonomyOptions:
    return TaxonomyOptions(rename_fraction=kura.rename_fraction, assign_quantile=kura.assign_quantile,
                           rebuild_new_share=kura.rebuild_new_share, rebuild_far_share=kura.rebuild_far_share)


def rebuild_requested(kura: Any) -> bool:
    """``rebuild_taxonomy`` of the ``kura`` resource (the ``<prefix>_rebuild_taxonomy`` job sets it)."""
    return bool(getattr(kura, "rebuild_taxonomy", False))


def taxonomy_metadata(report: TaxonomyReport) -> dict[str, Any]:
    return {k: dg.MetadataValue.json(v) if isinstance(v, (list, dict)) else v
            for k, v in report.as_metadata().items()}


CARRIED = ("taxonomy/new_conversations", "taxonomy/removed_conversations", "taxonomy/assigned_to_existing",
           "taxonomy/drift/unassigned_share", "taxonomy/drift/new_cluster_share", "taxonomy/drift/far_share")
"""The conversation-level figures of the clusters run, repeated on meta_clusters and projected_clusters."""


def carried_figures(context: dg.AssetExecutionContext, upstream: str) -> dict[str, Any]:
    """:data:`CARRIED` from the latest materialization of the asset's upstream ``upstream`` (``clusters`` for
    meta_clusters, ``meta_clusters`` for projected_clusters), so every stage of the taxonomy shows them."""
    deps = [k for k in context.assets_def.asset_deps.get(context.asset_key, ()) if k.path[-1] == upstream]
    event = context.instance.get_latest_materialization_event(deps[0]) if deps else None
    md = event.asset_materialization.metadata if event is not None and event.asset_materialization else {}
    return {k: md[k].value for k in CARRIED if k in md}


def _full(report: TaxonomyReport, state: Any, reason: str) -> None:
    report.rebuild, report.rebuild_reason = True, reason
    report.generation = int(state.params["generation"]) + 1 if state is not None else 1


def _log(context: dg.AssetExecutionContext, stage: str, report: TaxonomyReport) -> None:
    if report.rebuild:
        context.log.info(f"{stage}: full taxonomy build (generation {report.generation}): {report.rebuild_reason}")
    elif stage != "clusters":
        context.log.info(f"{stage}: incremental: {len(report.new_cluster_ids)} new, {len(report.renamed_cluster_ids)} "
                         f"renamed, {len(report.retired_cluster_ids)} retired cluster(s)")
    else:
        context.log.info(
            f"{stage}: incremental: {report.assigned_to_existing} new conversation(s) joined existing clusters, "
            f"{len(report.new_cluster_ids)} new, {len(report.renamed_cluster_ids)} renamed, "
            f"{len(report.retired_cluster_ids)} retired cluster(s); drift: {report.new_cluster_share:.1%} in "
            f"clusters made since the build, {report.far_share:.1%} far from their centroid")


def taxonomy_base_clusters(context: dg.AssetExecutionContext, kura: Any, columns: Any, namer: Any, cache: Any,
                           full_build: Any) -> tuple[list[Cluster], dict[str, Any]]:
    """Base clusters: the stored taxonomy updated with this run's summaries, or ``full_build()`` (the privacy
    thresholds' k-means and naming: ``(clusters, privacy metadata)``) when one is due."""
    from kura_dagster.orchestration.privacy import audit_metadata, privacy_auditor, scrub_metadata
    from kura_dagster.pipeline.privacy import ScrubbingNamer
    from kura_dagster.pipeline.thresholds import FoldReport, base_clusters_with_thresholds

    options, thresholds, settings = taxonomy_options(kura), kura.thresholds(), kura.settings()
    key = settings_key(settings, thresholds, columns.dim)
    state = load_taxonomy(kura.checkpoint_dir, BASE)
    report = TaxonomyReport()
    reason = ("requested (rebuild_taxonomy)" if rebuild_requested(kura) else
              "first build (no taxonomy stored)" if state is None else "")
    if not reason:
        scrubbing = ScrubbingNamer(namer)
        auditor = privacy_auditor(context, kura, cache)
        fold = FoldReport()

        def new_clusters(view: Any) -> list[Cluster]:
            return base_clusters_with_thresholds(view, scrubbing, settings, thresholds, auditor=auditor,
                                                 min_rating=kura.audit_min_rating, report=fold)

        out, new_state = update_base_clusters(columns, state, scrubbing, settings, thresholds, key, options,
                                              new_clusters=new_clusters, auditor=auditor,
                                              min_rating=kura.audit_min_rating, report=report)
        if new_state is not None:
            save_taxonomy(kura.checkpoint_dir, BASE, new_state)
            _log(context, "clusters", report)
            return out, {**taxonomy_metadata(report), **fold.as_metadata(), **scrub_metadata(scrubbing.scrubbed),
                         **audit_metadata(auditor, kura), "privacy/min_conversations": thresholds.min_conversations}
        reason = report.rebuild_reason
    report = TaxonomyReport(new_conversations=len(columns))
    _full(report, state, reason)
    out, privacy_md = full_build()
    report.new_cluster_ids = [c.id for c in out]
    new_state = base_state(columns, out, key, options, report.generation)
    save_taxonomy(kura.checkpoint_dir, BASE, new_state)
    _log(context, "clusters", report)
    return render_base(new_state), {**taxonomy_metadata(report), **privacy_md}


def base_member_centroids(kura: Any, clusters: Sequence[Cluster]) -> dict[str, np.ndarray]:
    """Each base cluster's mean member embedding from the stored base state (written by the clusters step), so
    meta_clusters does not read every summary's embedding again. Raises, saying what to do, when the stored
    state is not the one of ``clusters``."""
    from kura_dagster.pipeline.taxonomy import stored_member_centroids

    state = load_taxonomy(kura.checkpoint_dir, BASE)
    stored = stored_member_centroids(state) if state is not None else {}
    missing = [c.id for c in clusters if c.id not in stored]
    if missing or len(stored) != len(clusters):
        raise ValueError(
            f"the taxonomy state under {kura.checkpoint_dir}/.kura-artifacts/{BASE} does not hold the centroids of "
            f"this run's {len(clusters)} base clusters ({len(missing)} missing, e.g. {missing[:1]}, "
            f"{len(stored)} stored): materialize clusters again (or run the rebuild_taxonomy job), then "
            "meta_clusters")
    return {c.id: stored[c.id] for c in clusters}


def taxonomy_meta_clusters(context: dg.AssetExecutionContext, kura: Any, clusters: Sequence[Cluster],
                           centroids: dict[str, np.ndarray], namer: Any, full_build: Any
                           ) -> tuple[list[Cluster], dict[str, Any]]:
    """The hierarchy over this run's base clusters: the stored one updated (new base clusters attach to the
    nearest parent or form new ones; only parents whose children changed are renamed), or ``full_build()``
    when the base clusters were rebuilt, on request, or when there is no stored hierarchy."""
    options, settings = taxonomy_options(kura), kura.settings()
    base = load_taxonomy(kura.checkpoint_dir, BASE)
    base_generation = base.params["generation"] if base is not None else None
    state = load_taxonomy(kura.checkpoint_dir, META)
    report = TaxonomyReport()
    reason = ("requested (rebuild_taxonomy)" if rebuild_requested(kura) else
              "first build (no hierarchy stored)" if state is None else
              "the base clusters were rebuilt" if state.params.get("base_generation") != base_generation else
              "settings changed (max_clusters or clusters_per_group)" if state.params.get("settings")
              != [settings.max_clusters, settings.clusters_per_group, settings.seed] else "")
    if not reason:
        out, new_state = update_meta_clusters(clusters, centroids, state, namer, settings, options, report)
        if not report.rebuild_reason:
            save_taxonomy(kura.checkpoint_dir, META, _with_settings(new_state, settings))
            _log(context, "meta_clusters", report)
            return out, {**taxonomy_metadata(report), **carried_figures(context, "clusters")}
        reason = report.rebuild_reason
    report = TaxonomyReport()
    _full(report, state, reason)
    built = full_build()
    vectors = tree_vectors(built, centroids)
    base_ids = {c.id for c in clusters}
    report.new_cluster_ids = [c.id for c in built if c.id not in base_ids]
    new_state = meta_state(built, base_ids, vectors, base_generation, report.generation, options)
    save_taxonomy(kura.checkpoint_dir, META, _with_settings(new_state, settings))
    _log(context, "meta_clusters", report)
    return render_meta(new_state, [c.model_copy(update={"parent_id": None}) for c in clusters]), \
        {**taxonomy_metadata(report), **carried_figures(context, "clusters")}


def _with_settings(state: Any, settings: Any) -> Any:
    from kura_dagster.checkpoints.artifacts import FittedState

    return FittedState(kind=state.kind, params={**state.params, "settings": [settings.max_clusters,
                                                                             settings.clusters_per_group,
                                                                             settings.seed]}, arrays=state.arrays)


def taxonomy_projection(context: dg.AssetExecutionContext, kura: Any, meta_clusters: Sequence[Cluster],
                        embed: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """Each cluster's map coordinates: clusters already on the map keep theirs, new ones are placed by the fitted
    projection (``embed(clusters)`` embeds cluster texts); a new fit when the hierarchy was rebuilt."""
    from kura_dagster.pipeline.dimensionality import fit_projection

    meta = load_taxonomy(kura.checkpoint_dir, META)
    meta_generation = meta.params["generation"] if meta is not None else None
    state = load_taxonomy(kura.checkpoint_dir, PROJECTION)
    report = TaxonomyReport()
    by_id = {c.id: c for c in meta_clusters}
    ids = [c.id for c in meta_clusters]
    reason = ("requested (rebuild_taxonomy)" if rebuild_requested(kura) else
              "first build (no fitted projection stored)" if state is None else
              "the hierarchy was rebuilt" if state.params.get("meta_generation") != meta_generation else
              "the map was fitted on fewer than 3 clusters" if not np.any(state.arrays["components"]) else "")
    if not reason and state.arrays["mean"].shape[0] and meta_clusters:
        xy, fresh = place(state, ids, lambda new: embed([by_id[i] for i in new]))
        report.generation = int(state.params.get("generation", 1))
        report.new_cluster_ids = fresh
        report.retired_cluster_ids = [i for i in state.params["ids"] if i not in by_id]
        new_state = projection_state(ids, xy, state.arrays["mean"], state.arrays["components"],
                                     state.arrays["sign"], meta_generation)
        save_taxonomy(kura.checkpoint_dir, PROJECTION, _generation(new_state, report.generation))
        _log(context, "projected_clusters", report)
        return xy, {**taxonomy_metadata(report), **carried_figures(context, "meta_clusters")}
    report.rebuild, report.rebuild_reason = True, reason or "nothing stored to place clusters with"
    report.generation = int(state.params.get("generation", 0)) + 1 if state is not None else 1
    x = embed(list(meta_clusters)) if meta_clusters else np.zeros((0, 0))
    xy, mean, components, sign = fit_projection(x, kura.seed)
    report.new_cluster_ids = ids
    save_taxonomy(kura.checkpoint_dir, PROJECTION,
                  _generation(projection_state(ids, xy, mean, components, sign, meta_generation), report.generation))
    _log(context, "projected_clusters", report)
    return xy, {**taxonomy_metadata(report), **carried_figures(context, "meta_clusters")}


def _generation(state: Any, generation: int) -> Any:
    from kura_dagster.checkpoints.artifacts import FittedState

    return FittedState(kind=state.kind, params={**state.params, "generation": generation}, arrays=state.arrays)
