"""The job over every asset, the stale-only schedule, the conversations-file sensor, and the launchpad's
config schema, tested with Dagster's own evaluation contexts against a temporary instance."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration.automation import (
    build_conversations_sensor,
    build_stale_refresh_schedule,
    executor_from_env,
    file_sha256,
    kura_job,
)
from kura_dagster.definitions import build_definitions
from kura_dagster.orchestration.resources import ConversationSource

ASSETS = {"conversations", "summaries", "clusters", "meta_clusters", "projected_clusters", "cluster_facets",
          "cluster_growth"}


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def defs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dg.Definitions:
    """The default Definitions, built from a clean environment (conftest drops the developer's KURA_* vars)."""
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    return build_definitions()


# --- the job and the Definitions --------------------------------------------------------------------------


def test_kura_job_covers_every_asset_and_check(defs: dg.Definitions) -> None:
    job = defs.resolve_job_def("kura_job")
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in kura_job.selection.resolve(graph)} == ASSETS
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == ASSETS
    assert {k.name for k in kura_job.selection.resolve_checks(graph)} == {
        "summaries_cover_conversations", "every_summary_in_one_cluster", "meta_tree_well_formed", "projections_consistent",
        "clusters_meet_privacy_thresholds", "meta_clusters_meet_privacy_thresholds", "no_growth_spike"}


def test_definitions_carry_the_schedule_and_the_sensor(defs: dg.Definitions) -> None:
    schedule = defs.resolve_schedule_def("kura_stale_refresh")
    assert schedule.cron_schedule == "0 3 * * *" and schedule.job_name == "kura_job"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensor = defs.resolve_sensor_def("kura_conversations_changed")
    assert sensor.job_name == "kura_job"
    graph = defs.resolve_asset_graph()  # the settings are folded into every code version (versioning.py)
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}
    assert set(versions) == ASSETS
    assert all(re.fullmatch(r"[^+]+\+[0-9a-f]{10}", v) for v in versions.values()), versions


def test_launchpad_config_schema_has_the_pipeline_settings(defs: dg.Definitions) -> None:
    """The launchpad builds its editor from the job's run-config schema: resources.kura.config."""
    root = defs.resolve_job_def("kura_job").run_config_schema.config_type
    kura = root.fields["resources"].config_type.fields["kura"].config_type.fields["config"].config_type
    assert {"clusters_per_group", "max_clusters", "seed", "embedding_dims", "llm", "embeddings"} <= set(kura.fields)
    for name in ("clusters_per_group", "max_clusters", "seed", "embedding_dims", "llm", "embeddings"):
        assert not kura.fields[name].is_required, f"{name} has a default, so 'Materialize all' needs no config"
    source = root.fields["resources"].config_type.fields["source"].config_type.fields["config"].config_type
    assert {"path", "on_bad_record", "demo_size"} <= set(source.fields)


def test_executor_defaults_to_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Dagster's executors with crash recovery for pool slots (orchestration/recovery.py), under the same names
    from kura_dagster.orchestration import recovery

    assert executor_from_env() is recovery.in_process_executor and executor_from_env().name == "in_process"
    monkeypatch.setenv("KURA_EXECUTOR", "multiprocess")
    assert executor_from_env() is recovery.multiprocess_executor and executor_from_env().name == "multiprocess"
    monkeypatch.setenv("KURA_EXECUTOR", "threads")
    with pytest.raises(ValueError, match="KURA_EXECUTOR='threads'"):
        executor_from_env()


# --- the schedule -----------------------------------------------------------------------------------------


def test_schedule_cron_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KURA_SCHEDULE_CRON", "*/20 * * * *")
    assert build_stale_refresh_schedule().cron_schedule == "*/20 * * * *"
    monkeypatch.setenv("KURA_SCHEDULE_CRON", "  ")
    assert build_stale_refresh_schedule().cron_schedule == "0 3 * * *"
    monkeypatch.setenv("KURA_SCHEDULE_CRON", "every day at noon")
    with pytest.raises(ValueError, match="KURA_SCHEDULE_CRON='every day at noon' is not a valid cron schedule"):
        build_stale_refresh_schedule()


def test_schedule_requests_only_stale_or_missing_assets(instance: dg.DagsterInstance) -> None:
    schedule = build_stale_refresh_schedule()
    when = datetime(2026, 11, 29, 3, 0, tzinfo=timezone.utc)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
        data = schedule.evaluate_tick(context)
    [request] = data.run_requests
    assert request.stale_assets_only is True
    assert request.asset_selection is None, "the whole job, narrowed to stale/missing assets by the daemon"
    assert request.tags["kura/trigger"] == "schedule"


# --- the sensor -------------------------------------------------------------------------------------------


def _tick(instance: dg.DagsterInstance, path: str | None, cursor: str | None = None):
    sensor = build_conversations_sensor()
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"source": ConversationSource(path=path)})
    return sensor.evaluate_tick(context)


def test_sensor_skips_without_a_file(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    data = _tick(instance, None)
    assert not data.run_requests and "KURA_CONVERSATIONS is not set" in data.skip_message
    data = _tick(instance, str(tmp_path / "nope.jsonl"))
    assert not data.run_requests and f"{tmp_path / 'nope.jsonl'}: no such file" in data.skip_message


def test_sensor_launches_one_run_per_content_change(instance: dg.DagsterInstance, tmp_path: Path) -> None:
    path = tmp_path / "conversations.jsonl"
    path.write_text('{"v": 1}\n')
    first = _tick(instance, str(path))
    [request] = first.run_requests
    digest = file_sha256(path)
    assert request.run_key == f"{digest}-1" and request.tags["kura/conversations_sha256"] == digest
    assert json.loads(first.cursor) == {"sha256": digest, "changes": 1}
    # The same tick evaluated again (e.g. retried before the cursor was saved) asks for the same run_key,
    # which Dagster launches only once.
    assert _tick(instance, str(path)).run_requests[0].run_key == request.run_key

    path.write_text('{"v": 1}\n')  # rewritten with the same bytes: a new mtime, but no change
    again = _tick(instance, str(path), first.cursor)
    assert not again.run_requests and "is unchanged" in again.skip_message

    path.write_text('{"v": 2}\n')
    second = _tick(instance, str(path), first.cursor)
    [changed] = second.run_requests
    assert changed.run_key == f"{file_sha256(path)}-2"

    path.write_text('{"v": 1}\n')  # reverted: still a change, and not mistaken for the first run
    third = _tick(instance, str(path), second.cursor)
    [reverted] = third.run_requests
    assert reverted.run_key == f"{digest}-3" != request.run_key


def test_sensor_runs_by_default_only_when_a_file_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_conversations_sensor().default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.setenv("KURA_CONVERSATIONS", "/data/conversations.jsonl")
    assert build_conversations_sensor().default_status == dg.DefaultSensorStatus.RUNNING
