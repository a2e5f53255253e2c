"""``<prefix>_rebuild_taxonomy`` (``kura_rebuild_taxonomy`` standalone): rebuild the taxonomy on purpose.

Between rebuilds new conversations join the clusters people already know (README "A taxonomy that stays put").
This job materializes ``clusters`` and everything of the pipeline downstream of it (``meta_clusters``,
``projected_clusters``, ``cluster_facets``, ``cluster_growth``, with their checks) with the ``kura`` resource's
``rebuild_taxonomy`` set in the run config, so base clusters, hierarchy and map are built from scratch over the
summaries as stored (new ids and names; the answer cache still serves names already asked). The launchpad shows
the run config and lets a person change it. A run of this job never reuses a stored stage output: the stages
compute (see ``assets.py``), and record ``taxonomy/rebuild`` and ``taxonomy/rebuild_reason`` in their metadata.

It does not refit the offline embedding: a refit moves every summary to another space, so every summaries
partition has to be embedded again, which is a backfill of ``summaries`` with ``refit_embedding`` set (then the
taxonomy notices the new embedding space and rebuilds by itself), not a re-clustering.
"""

from __future__ import annotations

from typing import Any, Optional

import dagster as dg

from kura_dagster.orchestration.names import KuraNames

REBUILD_JOB = "rebuild_taxonomy"


def rebuild_selection(names: KuraNames) -> dg.AssetSelection:
    """``clusters`` and what depends on it within the pipeline's group (not a project's own assets further
    down, which may have other partitions)."""
    return dg.AssetSelection.assets(names.key("clusters")).downstream() & dg.AssetSelection.groups(names.group)


def rebuild_config(kura: Optional[Any]) -> dict[str, Any]:
    """The ``kura`` resource's config with ``rebuild_taxonomy`` set. Run config replaces a resource's whole
    config (fields left out fall back to their defaults, not to the Definitions' values), so every setting the
    pipeline was given is repeated; an ``EnvVar`` or ``EnvVar.int`` stays one (``{"env": NAME}``)."""
    given = kura.model_dump(exclude_unset=True) if kura is not None else {}
    config = {name: ({"env": env} if (env := getattr(getattr(kura, name), "env_var_name", None)) else value)
              for name, value in given.items()}
    return {**config, "rebuild_taxonomy": True}


def build_rebuild_job(names: KuraNames = KuraNames(), kura: Optional[Any] = None) -> dg.UnresolvedAssetJobDefinition:
    """The job of one pipeline; ``kura``: the pipeline's ``kura`` resource, whose settings the run keeps."""
    return dg.define_asset_job(
        names.name(REBUILD_JOB),
        selection=rebuild_selection(names),
        config={"resources": {names.kura: {"config": rebuild_config(kura)}}},
        tags={"kura/rebuild_taxonomy": "true"},
        description=f"Rebuild the taxonomy of the Kura pipeline {names.stem!r} from scratch: clusters → "
        "meta_clusters → projected_clusters and the tables after them, with rebuild_taxonomy set (new cluster "
        "ids and names). Between rebuilds new conversations join the existing clusters.",
    )
