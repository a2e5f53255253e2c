"""Reuse a stage's stored output when nothing it depends on changed, instead of computing it again.

An unchanged rerun (``--select '*'`` with the same conversations and settings) used to recompute every stage
from cached answers: k-means, naming from the answer cache, the projection, the cluster-map PNG, and rewrite
every checkpoint with the same bytes. :func:`reuse_stored_output` wraps a stage: before the stage runs it
fingerprints what shapes the output, that is

* the data version of every input, as the instance recorded it (content hashes: ``assets.content_version``),
  and the state of the input's checkpoint as stored now,
* the asset's code version (the hand-kept version plus the hash of the Definitions' settings) and the package
  version,
* the settings the run actually uses (launchpad overrides included),

and compares that with the fingerprint recorded by the asset's last materialization. When they are equal, and
the checkpoint is still the one that materialization wrote (its ``kura/stored_state``: rows, bytes and checksum
of every copy, and the IO manager's settings), the step returns a
:class:`~kura_dagster.io_managers.stored.StoredOutput` (the stored rows, read back and verified as every load is,
so the step's value is what it was): the IO manager writes nothing, the materialization keeps
the last data version (so nothing downstream becomes stale) and copies the last materialization's metadata,
with this run's work counters (requests, cache hits, tokens, elapsed seconds) at 0 and ``kura/reused_from_run``
naming the run that computed it. Anything else (a first run, another input, other settings, a checkpoint
deleted, changed or written in another format, an instance without that history) computes the stage as before.

Only unpartitioned stages whose inputs are unpartitioned are reused (a partition's history is per partition),
and only with this package's checkpoint IO managers. ``KURA_REUSE=0`` (or ``false``/``no``/``off``) in the
environment of the run turns reuse off, for example to time the stages themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Optional

import dagster as dg

from kura_dagster.io_managers.stored import STORED_STATE_KEY, StoredOutput

REUSE_ENV = "KURA_REUSE"
FINGERPRINT_KEY = "kura/inputs_fingerprint"
"""Materialization metadata: the hash of inputs' data versions, code version and settings the output came from."""
REUSED_FROM_KEY = "kura/reused_from_run"
"""Materialization metadata of a reused output: the run that computed (and wrote) it."""
DATA_VERSION_TAG = "dagster/data_version"
WORK_KEY = re.compile(r"(requests|retries|failures|tokens|cache_hits|deduplicated|generated|elapsed_seconds)$")
"""Metadata that counts a run's own work: 0 on a reused materialization, which did none."""


def reuse_enabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    value = (os.environ if environ is None else environ).get(REUSE_ENV, "1").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{REUSE_ENV}={value!r}: use 1 (reuse unchanged stages, the default) or 0 (always recompute)")


def shaping_settings(kura: Any, stage: str) -> dict[str, Any]:
    """The ``kura`` resource's settings that shape ``stage``'s output: those that shape it or a stage before it
    (see :mod:`~kura_dagster.orchestration.versioning`); every output-shaping setting for a stage not in
    :data:`~kura_dagster.orchestration.names.STAGES`."""
    from kura_dagster.orchestration.names import STAGES
    from kura_dagster.orchestration.versioning import resource_settings

    upto = set(STAGES[: STAGES.index(stage) + 1]) if stage in STAGES else set(STAGES)
    return {name: value for name, (first, value) in resource_settings("kura", kura).items() if first in upto}


def _tag_value(entry: Any, tag: str) -> Optional[str]:
    event = getattr(entry, "asset_materialization", None) or getattr(entry, "asset_observation", None)
    return (getattr(event, "tags", None) or {}).get(tag)


def checkpoint_name(metadata: Optional[Mapping[str, Any]], key: dg.AssetKey) -> list[str]:
    """The path parts of an asset's checkpoint: its ``kura/checkpoint_name`` metadata, else its key."""
    from kura_dagster.io_managers.typing import CHECKPOINT_NAME_KEY

    name = (metadata or {}).get(CHECKPOINT_NAME_KEY)
    return str(name).split("/") if name else list(key.path)


def inputs_fingerprint(
    context: dg.AssetExecutionContext, settings: Mapping[str, Any], io_manager: Any,
    latest: Optional[Mapping[dg.AssetKey, Any]] = None,
) -> Optional[str]:
    """The fingerprint of what shapes this asset's output now, or ``None`` when an input has no recorded data
    version (never materialized in this instance) or an input is partitioned. Each input counts with its data
    version and with the state of its checkpoint as stored now, so an input rewritten behind the instance's
    back (another instance sharing the checkpoint folder) is not taken for the one the instance recorded.
    ``latest``: the inputs' last materializations, when already fetched (one query for all, see below)."""
    from kura_dagster import __version__

    key = context.asset_key
    graph = context.job_def.asset_layer.asset_graph  # the run's job knows every asset it reads (dg.materialize too)
    inputs: dict[str, Any] = {}
    for dep in sorted(context.assets_def.asset_deps.get(key, ()), key=lambda k: k.path):
        node = graph.get(dep) if graph.has(dep) else None
        if node is None or node.partitions_def is not None:
            return None
        if latest is not None:
            entry = latest.get(dep)
        else:
            record = context.instance.get_latest_data_version_record(dep)
            entry = record.event_log_entry if record is not None else None
        version = _tag_value(entry, DATA_VERSION_TAG) if entry is not None else None
        if version is None:
            return None
        inputs[dep.to_user_string()] = [version, io_manager.stored_state(checkpoint_name(node.metadata, dep))]
    facts = {"asset": key.to_user_string(), "code_version": context.assets_def.code_versions_by_key.get(key),
             "package": __version__, "settings": dict(settings), "inputs": inputs}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _reused_metadata(previous: Mapping[str, Any], fingerprint: str, run_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in previous.items():
        raw = getattr(v, "value", v)
        out[k] = type(raw)(0) if WORK_KEY.search(k) and isinstance(raw, (int, float)) and not isinstance(raw, bool) else v
    out[FINGERPRINT_KEY] = dg.MetadataValue.text(fingerprint)
    out[REUSED_FROM_KEY] = dg.MetadataValue.text(run_id)
    return out


def _stored_rows(context: dg.AssetExecutionContext, io_manager: Any, name: list[str],
                 metadata: Mapping[str, Any]) -> Optional[list]:
    """The stored rows, or ``None`` (then the stage is computed again) when they cannot be read back whole."""
    from kura_dagster.checkpoints.errors import CheckpointCorruptError
    from kura_dagster.io_managers.typing import MODEL_METADATA_KEY
    from kura_dagster.types import resolve_model

    model = resolve_model(str(metadata[MODEL_METADATA_KEY])) if MODEL_METADATA_KEY in metadata else None
    try:
        return io_manager.load_stored(name, model)
    except CheckpointCorruptError as exc:
        context.log.warning(f"{context.asset_key.to_user_string()}: the stored output cannot be reused ({exc}); "
                            "computing it again")
        return None


def reuse_stored_output(
    context: dg.AssetExecutionContext,
    io_manager_key: str,
    settings: Mapping[str, Any],
    compute: Callable[[], dg.MaterializeResult],
    own_state: Optional[Callable[[], Optional[str]]] = None,
    reused: Optional[Callable[[dg.MaterializeResult], dg.MaterializeResult]] = None,
) -> dg.MaterializeResult:
    """``compute()``'s result with :data:`FINGERPRINT_KEY` recorded, or, when the inputs, code version and
    ``settings`` are those of the last materialization and its checkpoint is intact, that stored output
    (see the module docstring).

    An asset that stores its output itself, beside the checkpoints rather than through the IO manager
    (``cluster_facets``, ``cluster_growth``), passes ``own_state``: the state of what it stored, now (``None``
    when absent). It is recorded as :data:`STORED_STATE_KEY` after ``compute()``, and a reused result carries
    no value (nothing to store); ``reused`` may complete it (the asset's check results, say)."""
    from kura_dagster.io_managers.base import CheckpointIOManager

    key = context.asset_key
    io_manager = getattr(context.resources, io_manager_key, None)
    if (not reuse_enabled() or context.assets_def.partitions_def is not None
            or not isinstance(io_manager, CheckpointIOManager)):
        return compute()
    # this asset's and its inputs' last materializations in one query (each query of the sqlite event log opens
    # its own engine and compiles its SQL again, so they are worth counting)
    deps = list(context.assets_def.asset_deps.get(key, ()))
    latest = context.instance.get_latest_materialization_events([key, *deps])
    fingerprint = inputs_fingerprint(context, settings, io_manager, latest)
    if fingerprint is None:
        return compute()
    last = latest.get(key)
    materialization = getattr(last, "asset_materialization", None)
    previous = dict(materialization.metadata) if materialization is not None else {}
    recorded = getattr(previous.get(FINGERPRINT_KEY), "value", None)
    stored_state = getattr(previous.get(STORED_STATE_KEY), "value", None)
    data_version = _tag_value(last, DATA_VERSION_TAG) if last is not None else None
    if recorded == fingerprint and stored_state and data_version and own_state is not None:
        if own_state() == stored_state:
            run_id = getattr(previous.get(REUSED_FROM_KEY), "value", None) or last.run_id
            context.log.info(f"{key.to_user_string()}: inputs, code version and settings unchanged since run "
                             f"{run_id}, and its files are intact: reusing them (set {REUSE_ENV}=0 to recompute)")
            result = dg.MaterializeResult(data_version=dg.DataVersion(data_version),
                                          metadata=_reused_metadata(previous, fingerprint, run_id))
            return reused(result) if reused is not None else result
    elif recorded == fingerprint and stored_state and data_version:
        metadata = context.assets_def.metadata_by_key.get(key) or {}
        name = checkpoint_name(metadata, key)
        rows = _stored_rows(context, io_manager, name, metadata) if io_manager.stored_state(name) == stored_state else None
        if rows is not None:
            run_id = getattr(previous.get(REUSED_FROM_KEY), "value", None) or last.run_id
            context.log.info(f"{key.to_user_string()}: inputs, code version and settings unchanged since run "
                             f"{run_id}, and its checkpoint is intact: reusing it (set {REUSE_ENV}=0 to recompute)")
            return dg.MaterializeResult(value=StoredOutput(rows, stored_state, run_id),
                                        data_version=dg.DataVersion(data_version),
                                        metadata=_reused_metadata(previous, fingerprint, run_id))
    result = compute()
    recorded_now = {FINGERPRINT_KEY: dg.MetadataValue.text(fingerprint)}
    state_now = own_state() if own_state is not None else None
    if state_now is not None:
        recorded_now[STORED_STATE_KEY] = dg.MetadataValue.text(state_now)
    return result._replace(metadata={**(result.metadata or {}), **recorded_now})
