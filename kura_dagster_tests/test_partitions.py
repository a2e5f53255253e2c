"""Partitioned pipelines: daily and file partitions, single-run backfills, clusters over the partitions."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from kura_dagster import build_kura_defs
from kura_dagster.orchestration.partitions import utc_day
from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster.types import Cluster, Conversation, ConversationSummary, Message

CONVS = demo_conversations(200)
DAYS = sorted({utc_day(c.created_at) for c in CONVS})


def _write(path: Path, conversations: list[Conversation]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(c.model_dump_json() + "\n" for c in conversations))


def _lines(path: Path, model):
    return [model.model_validate_json(line) for line in path.read_text().splitlines()]


def _run(defs: dg.Definitions, instance, *, selection, partition_key=None, partition_range=None):
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=set(selection))
    tags = {}
    if partition_range:
        tags = {"dagster/asset_partition_range_start": partition_range[0],
                "dagster/asset_partition_range_end": partition_range[1]}
    return job.execute_in_process(instance=instance, partition_key=partition_key, tags=tags)


def _keys(prefix, *stages):
    return [dg.AssetKey([prefix, s]) for s in stages]


@pytest.fixture
def daily(tmp_path):
    # one big file; the first partition day is the second day of data, so the first day is outside every partition
    _write(tmp_path / "logs.jsonl", CONVS)
    defs = build_kura_defs("d", conversations=str(tmp_path / "logs.jsonl"), partitions="daily",
                           partition_start=DAYS[1], checkpoint_dir=str(tmp_path / "ck"), clusters_per_group=4)
    return defs, tmp_path / "ck"


def test_one_day_and_then_clusters_over_all_materialized_days(daily):
    defs, ck = daily
    per_day = Counter(utc_day(c.created_at) for c in CONVS)
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, selection=_keys("d", "conversations", "summaries"), partition_key=DAYS[2])
        assert result.success
        convs = _lines(ck / "conversations" / f"{DAYS[2]}.jsonl", Conversation)
        assert len(convs) == per_day[DAYS[2]] and {utc_day(c.created_at) for c in convs} == {DAYS[2]}
        md = result.get_asset_materialization_events()[0].materialization.metadata
        assert md["outside_partitions"].value == per_day[DAYS[0]]  # reported, not silently dropped
        assert md["in_other_partitions"].value == len(CONVS) - per_day[DAYS[0]] - per_day[DAYS[2]]
        summaries = _lines(ck / "summaries" / f"{DAYS[2]}.jsonl", ConversationSummary)
        assert [s.chat_id for s in summaries] == [c.chat_id for c in convs]
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks)  # every conversation of the day has one summary

        # A second day, then the unpartitioned stages read both materialized days (and only those).
        assert _run(defs, instance, selection=_keys("d", "conversations", "summaries"), partition_key=DAYS[3]).success
        result = _run(defs, instance, selection=_keys("d", "clusters", "meta_clusters", "projected_clusters"))
        assert result.success
        clusters = _lines(ck / "clusters.jsonl", Cluster)
        members = sorted(cid for c in clusters for cid in c.chat_ids)
        expected = sorted(c.chat_id for c in CONVS if utc_day(c.created_at) in (DAYS[2], DAYS[3]))
        assert members == expected
        md = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
        assert md["clusters"]["partitions_read"].value == 2 and md["clusters"]["summaries_read"].value == len(expected)


def test_single_run_backfill_writes_each_partition(daily):
    defs, ck = daily
    per_day = Counter(utc_day(c.created_at) for c in CONVS)
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, selection=_keys("d", "conversations", "summaries"),
                      partition_range=(DAYS[1], DAYS[4]))
        assert result.success
        for day in DAYS[1:5]:
            assert len(_lines(ck / "conversations" / f"{day}.jsonl", Conversation)) == per_day[day]
            assert len(_lines(ck / "summaries" / f"{day}.jsonl", ConversationSummary)) == per_day[day]
        mats = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "summaries"]
        assert sorted(e.partition for e in mats) == DAYS[1:5]  # one materialization per partition
        # Each partition reads back as a run of that partition alone would have written it.
        alone = _run(defs, instance, selection=_keys("d", "conversations"), partition_key=DAYS[2])
        assert alone.success
        assert len(_lines(ck / "conversations" / f"{DAYS[2]}.jsonl", Conversation)) == per_day[DAYS[2]]


def test_day_template_reads_only_that_day(tmp_path):
    by_day: dict[str, list[Conversation]] = {}
    for c in CONVS:
        by_day.setdefault(utc_day(c.created_at), []).append(c)
    for day, convs in by_day.items():
        _write(tmp_path / "logs" / f"{day}.jsonl", convs)
    (tmp_path / "logs" / f"{DAYS[0]}.jsonl").write_text("{not json\n")  # another day's file is never read
    defs = build_kura_defs("t", conversations=str(tmp_path / "logs" / "{date}.jsonl"), partitions="daily",
                           partition_start=DAYS[0], checkpoint_dir=str(tmp_path / "ck"))
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, selection=_keys("t", "conversations"), partition_key=DAYS[3])
        assert result.success
        md = result.get_asset_materialization_events()[0].materialization.metadata
        assert md["conversations"].value == len(by_day[DAYS[3]])
        assert md["in_other_partitions"].value == 0  # nothing else was read
        # a day without a file is an empty partition, reported in the metadata (not a failed backfill)
        (tmp_path / "logs" / f"{DAYS[2]}.jsonl").unlink()
        result = _run(defs, instance, selection=_keys("t", "conversations"), partition_range=(DAYS[1], DAYS[2]))
        assert result.success
        md = result.get_asset_materialization_events()[0].materialization.metadata
        assert md["missing_day_files"].value == 1 and md["conversations"].value == len(by_day[DAYS[1]])
        assert (tmp_path / "ck" / "conversations" / f"{DAYS[2]}.jsonl").read_text() == ""
    assert {s.name for s in defs.sensors} == {"t_new_files"}


def test_window_days_reads_only_recent_partitions(tmp_path):
    _write(tmp_path / "logs.jsonl", CONVS)
    defs = build_kura_defs("w", conversations=str(tmp_path / "logs.jsonl"), partitions="daily",
                           partition_start=DAYS[0], window_days=2, checkpoint_dir=str(tmp_path / "ck"))
    with dg.instance_for_test() as instance:
        assert _run(defs, instance, selection=_keys("w", "conversations", "summaries"),
                    partition_range=(DAYS[0], DAYS[3])).success
        result = _run(defs, instance, selection=_keys("w", "clusters"))
        assert result.success
    md = result.get_asset_materialization_events()[0].materialization.metadata
    assert (md["first_partition"].value, md["last_partition"].value) == (DAYS[2], DAYS[3])
    members = {cid for c in _lines(tmp_path / "ck" / "clusters.jsonl", Cluster) for cid in c.chat_ids}
    assert members == {c.chat_id for c in CONVS if utc_day(c.created_at) in DAYS[2:4]}


def _tick(sensor, context, instance):
    """One sensor tick: the sensor's own result (its dynamic partition requests apply when the daemon runs it)."""
    return sensor(context)


def test_file_partitions_and_their_sensor(tmp_path):
    _write(tmp_path / "in" / "a.jsonl", CONVS[:30])
    _write(tmp_path / "in" / "b.jsonl", CONVS[30:50])
    defs = build_kura_defs("f", conversations=str(tmp_path / "in" / "*.jsonl"), partitions="files",
                           checkpoint_dir=str(tmp_path / "ck"))
    sensor = defs.resolve_sensor_def("f_new_files")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def())
        data = _tick(sensor, ctx, instance)
        assert sorted(r.partition_key for r in data.run_requests) == ["a", "b"]
        assert data.dynamic_partitions_requests[0].partition_keys == ["a", "b"]
        instance.add_dynamic_partitions("f_files", ["a", "b"])
        # nothing new on the next tick; a new file makes exactly one new partition and run
        again = _tick(sensor, dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def(),
                                                             cursor=data.cursor), instance)
        assert isinstance(again, dg.SkipReason) and "No new or changed files" in again.skip_message
        _write(tmp_path / "in" / "c.jsonl", CONVS[50:60])
        third = _tick(sensor, dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def(),
                                                             cursor=data.cursor), instance)
        assert [r.partition_key for r in third.run_requests] == ["c"]
        result = _run(defs, instance, selection=_keys("f", "conversations", "summaries"), partition_key="b")
        assert result.success
    assert len(_lines(tmp_path / "ck" / "conversations" / "b.jsonl", Conversation)) == 20


def test_partition_settings_are_validated(tmp_path):
    with pytest.raises(ValueError, match="partition_start"):
        build_kura_defs("x", partitions="daily")
    with pytest.raises(ValueError, match="needs partitions='daily'"):
        build_kura_defs("x", window_days=3)
    with pytest.raises(ValueError, match="directory or glob"):
        build_kura_defs("x", partitions="files")


def test_multi_partition_output_must_be_a_dict_of_the_runs_partitions(tmp_path):
    from kura_dagster.io_managers import JSONLIOManager

    pd = dg.DailyPartitionsDefinition(start_date="2026-01-01")

    @dg.asset(partitions_def=pd, backfill_policy=dg.BackfillPolicy.single_run(), io_manager_key="kura")
    def rows(context) -> list[Conversation]:
        return CONVS[:3]  # a list, not {partition: rows}

    with dg.instance_for_test() as instance:
        job = dg.Definitions(assets=[rows], resources={"kura": JSONLIOManager(base_dir=str(tmp_path))}) \
            .resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, raise_on_error=False, tags={
            "dagster/asset_partition_range_start": "2026-01-01", "dagster/asset_partition_range_end": "2026-01-03"})
    assert not result.success
    failure = json.dumps([str(e.event_specific_data.error) for e in result.all_events if e.is_failure])
    assert "covers 3 partitions" in failure and "dict of partition key" in failure


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_joins_partitions_into_kuras_single_files(tmp_path, fmt, capsys):
    from kura_dagster.cli import main
    from kura_dagster.types import ProjectedCluster

    _write(tmp_path / "logs.jsonl", CONVS)
    defs = build_kura_defs("e", conversations=str(tmp_path / "logs.jsonl"), partitions="daily",
                           partition_start=DAYS[0], formats=[fmt], checkpoint_dir=str(tmp_path / "ck"))
    with dg.instance_for_test() as instance:
        assert _run(defs, instance, selection=_keys("e", "conversations", "summaries"),
                    partition_range=(DAYS[0], DAYS[2])).success
        assert _run(defs, instance, selection=_keys("e", "clusters", "meta_clusters", "projected_clusters")).success
    assert main(["export", str(tmp_path / "ck"), str(tmp_path / "kura")]) == 0
    assert "| conversations |" in capsys.readouterr().out
    out = tmp_path / "kura"
    convs = _lines(out / "conversations.jsonl", Conversation)  # read the way Kura reads: a model per line
    expected = [c for c in CONVS if utc_day(c.created_at) in DAYS[:3]]
    assert [c.chat_id for c in convs] == [c.chat_id for c in expected]  # partitions in key order
    assert [s.chat_id for s in _lines(out / "summaries.jsonl", ConversationSummary)] == [c.chat_id for c in expected]
    meta = _lines(out / "meta_clusters.jsonl", Cluster)
    assert {p.id for p in _lines(out / "dimensionality.jsonl", ProjectedCluster)} == {c.id for c in meta}
    # a damaged partition fails the export with its name, and leaves no half-written file behind
    bad = next((tmp_path / "ck" / "summaries").glob(f"*.{fmt}"))
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    (out / "summaries.jsonl").unlink()
    assert main(["export", str(tmp_path / "ck"), str(out)]) == 1
    assert bad.name in capsys.readouterr().err
    assert not (out / "summaries.jsonl").exists()


@pytest.mark.slow
def test_cli_backfill_with_a_partition_range(tmp_path):
    """The README's commands: one run for a range of days, then the unpartitioned stages."""
    import os
    import subprocess
    import sys

    by_day: dict[str, list[Conversation]] = {}
    for c in CONVS:
        by_day.setdefault(utc_day(c.created_at), []).append(c)
    for day, convs in by_day.items():
        _write(tmp_path / "logs" / f"{day}.jsonl", convs)
    env = {**os.environ, "KURA_PARTITIONS": "daily", "KURA_PARTITION_START": DAYS[0], "DAGSTER_HOME": str(tmp_path),
           "KURA_CONVERSATIONS": str(tmp_path / "logs" / "{date}.jsonl"), "KURA_CHECKPOINT_DIR": str(tmp_path / "ck")}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    dagster = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "kura_dagster.definitions"]
    first = subprocess.run([*dagster, "--select", "conversations,summaries", "--partition-range",
                            f"{DAYS[0]}...{DAYS[2]}"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    for day in DAYS[:3]:
        assert len(_lines(tmp_path / "ck" / "summaries" / f"{day}.jsonl", ConversationSummary)) == len(by_day[day])
    second = subprocess.run([*dagster, "--select", "clusters*"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    members = sorted(cid for c in _lines(tmp_path / "ck" / "clusters.jsonl", Cluster) for cid in c.chat_ids)
    assert members == sorted(c.chat_id for d in DAYS[:3] for c in by_day[d])


def test_incremental_cost_with_an_llm(tmp_path, fake_openai):
    """A new day costs that day's summaries; re-materializing an unchanged old day sends no LLM request."""
    by_day: dict[str, list[Conversation]] = {}
    for c in CONVS[:60]:
        by_day.setdefault(utc_day(c.created_at), []).append(c)
    days = sorted(by_day)
    for day, convs in by_day.items():
        _write(tmp_path / "logs" / f"{day}.jsonl", convs)
    defs = build_kura_defs("llm", conversations=str(tmp_path / "logs" / "{date}.jsonl"), partitions="daily",
                           partition_start=days[0], checkpoint_dir=str(tmp_path / "ck"), llm="openai:fake-model",
                           base_url=fake_openai.url, max_concurrency=4)
    distinct = {day: len({json.dumps([m.content for m in c.messages]) for c in convs}) for day, convs in by_day.items()}
    with dg.instance_for_test() as instance:
        assert _run(defs, instance, selection=_keys("llm", "conversations", "summaries"), partition_key=days[0]).success
        first = fake_openai.count("chat")
        assert 0 < first <= distinct[days[0]]  # one request per distinct conversation of that day
        assert _run(defs, instance, selection=_keys("llm", "conversations", "summaries"), partition_key=days[1]).success
        assert fake_openai.count("chat") - first <= distinct[days[1]]  # the new day only
        before = fake_openai.count("chat")
        result = _run(defs, instance, selection=_keys("llm", "conversations", "summaries"), partition_key=days[0])
        assert result.success and fake_openai.count("chat") == before  # an unchanged old day: no request
        md = [e for e in result.get_asset_materialization_events() if e.asset_key.path[-1] == "summaries"][0]
        assert md.materialization.metadata["cache_hits"].value + md.materialization.metadata["deduplicated"].value \
            == len(by_day[days[0]])


def test_a_daily_partitioned_upstream_asset_is_read_one_day_at_a_time(tmp_path):
    """conversations=dg.AssetKey of a project asset partitioned by the same days: a partition reads only its day."""
    reads: list[str] = []
    pd = dg.DailyPartitionsDefinition(start_date=DAYS[0], timezone="UTC")

    @dg.asset(partitions_def=pd, io_manager_key="warehouse_io_manager")
    def daily_chats(context) -> list[dict]:
        reads.append(context.partition_key)
        return [c.model_dump(mode="json") for c in CONVS if utc_day(c.created_at) == context.partition_key]

    defs = dg.Definitions.merge(
        dg.Definitions(assets=[daily_chats], resources={"warehouse_io_manager": dg.InMemoryIOManager()}),
        build_kura_defs("u", conversations=dg.AssetKey("daily_chats"), partitions="daily", partition_start=DAYS[0],
                        checkpoint_dir=str(tmp_path / "ck")),
    )
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, selection=[dg.AssetKey("daily_chats"), *_keys("u", "conversations")],
                      partition_key=DAYS[1])
        assert result.success and reads == [DAYS[1]]
        md = [e for e in result.get_asset_materialization_events() if e.asset_key.path[0] == "u"][0]
        assert md.materialization.metadata["in_other_partitions"].value == 0
    convs = _lines(tmp_path / "ck" / "conversations" / f"{DAYS[1]}.jsonl", Conversation)
    assert [c.chat_id for c in convs] == [c.chat_id for c in CONVS if utc_day(c.created_at) == DAYS[1]]


def test_a_changed_day_marks_its_summaries_partition_stale(tmp_path):
    from dagster._core.definitions.data_version import StaleStatus
    from dagster._utils.test.data_versions import get_stale_status_resolver

    by_day: dict[str, list[Conversation]] = {}
    for c in CONVS:
        by_day.setdefault(utc_day(c.created_at), []).append(c)
    for day, convs in by_day.items():
        _write(tmp_path / "logs" / f"{day}.jsonl", convs)
    defs = build_kura_defs("s", conversations=str(tmp_path / "logs" / "{date}.jsonl"), partitions="daily",
                           partition_start=DAYS[0], checkpoint_dir=str(tmp_path / "ck"))
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    summaries = dg.AssetKey(["s", "summaries"])
    with dg.instance_for_test() as instance:
        for day in DAYS[:2]:
            assert _run(defs, instance, selection=_keys("s", "conversations", "summaries"), partition_key=day).success
        status = get_stale_status_resolver(instance, assets)
        assert status.get_status(summaries, DAYS[0]) == status.get_status(summaries, DAYS[1]) == StaleStatus.FRESH
        # re-reading an unchanged day leaves its summaries fresh; a changed day makes them stale
        assert _run(defs, instance, selection=_keys("s", "conversations"), partition_key=DAYS[0]).success
        _write(tmp_path / "logs" / f"{DAYS[1]}.jsonl", by_day[DAYS[1]][:-1])
        assert _run(defs, instance, selection=_keys("s", "conversations"), partition_key=DAYS[1]).success
        status = get_stale_status_resolver(instance, assets)
        assert status.get_status(summaries, DAYS[0]) == StaleStatus.FRESH
        assert status.get_status(summaries, DAYS[1]) == StaleStatus.STALE


# --- days in UTC, from timestamps in other zones near midnight (expected keys written by hand) ----------------
def _conv(chat_id: str, created_at: datetime) -> Conversation:
    return Conversation(chat_id=chat_id, created_at=created_at, metadata={},
                        messages=[Message(created_at=created_at, role="user", content=f"hello from {chat_id}")])


_PST, _IST = timezone(timedelta(hours=-8)), timezone(timedelta(hours=5, minutes=30))
NEAR_MIDNIGHT = {  # chat_id: (created_at, its UTC day)
    "pst-late": (datetime(2024, 5, 1, 23, 30, tzinfo=_PST), "2024-05-02"),  # 07:30 UTC next day
    "ist-early": (datetime(2024, 5, 2, 1, 15, tzinfo=_IST), "2024-05-01"),  # 19:45 UTC the day before
    "sydney-morning": (datetime(2024, 5, 3, 9, 59, tzinfo=ZoneInfo("Australia/Sydney")), "2024-05-02"),  # +10:00
    "la-afternoon": (datetime(2024, 5, 2, 17, 0, tzinfo=ZoneInfo("America/Los_Angeles")), "2024-05-03"),  # -07:00
    "utc-midnight": (datetime(2024, 5, 2, 0, 0, tzinfo=timezone.utc), "2024-05-02"),
    "naive-last-moment": (datetime(2024, 5, 1, 23, 59, 59, 999999), "2024-05-01"),  # naive: taken as UTC
}


def test_utc_day_of_timestamps_in_other_zones() -> None:
    assert {k: utc_day(t) for k, (t, _) in NEAR_MIDNIGHT.items()} == {k: d for k, (_, d) in NEAR_MIDNIGHT.items()}


def test_a_day_partition_holds_the_conversations_of_its_utc_day(tmp_path) -> None:
    _write(tmp_path / "logs.jsonl", [_conv(k, t) for k, (t, _) in NEAR_MIDNIGHT.items()])
    defs = build_kura_defs("z", conversations=str(tmp_path / "logs.jsonl"), partitions="daily",
                           partition_start="2024-05-01", checkpoint_dir=str(tmp_path / "ck"))
    with dg.instance_for_test() as instance:
        result = _run(defs, instance, selection=_keys("z", "conversations"),
                      partition_range=("2024-05-01", "2024-05-03"))
        assert result.success
    got = {day: sorted(c.chat_id for c in _lines(tmp_path / "ck" / "conversations" / f"{day}.jsonl", Conversation))
           for day in ("2024-05-01", "2024-05-02", "2024-05-03")}
    assert got == {"2024-05-01": ["ist-early", "naive-last-moment"],
                   "2024-05-02": ["pst-late", "sydney-morning", "utc-midnight"],
                   "2024-05-03": ["la-afternoon"]}
    # each keeps its own zone in the checkpoint: the partition is chosen in UTC, the value is not converted
    sydney = next(c for c in _lines(tmp_path / "ck" / "conversations" / "2024-05-02.jsonl", Conversation)
                  if c.chat_id == "sydney-morning")
    assert sydney.created_at.isoformat() == "2024-05-03T09:59:00+10:00"
