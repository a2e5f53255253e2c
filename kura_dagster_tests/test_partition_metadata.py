"""A single-run backfill (``--partition-range``) records each partition's own figures (issue 17, item 6): every
day's materialization of ``conversations`` and ``summaries`` carries that day's ``dagster/row_count``, bytes and
path, not the whole range's. Days are UTC days; the conversations were written in Los Angeles in the evening, so
their local date is the day before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from kura_dagster import build_kura_defs
from kura_dagster.types import Conversation, Message

ROOT = Path(__file__).resolve().parent.parent
LA = ZoneInfo("America/Los_Angeles")  # UTC-7 in March 2026 (daylight saving time from 8 March)
# UTC day → conversations of that day. Each was started at 17:00-17:07 Los Angeles time on the evening
# BEFORE (00:00-00:07 UTC): a pipeline that took the local date would put them all one day early.
COUNTS = {"2026-03-11": 40, "2026-03-12": 41, "2026-03-13": 42, "2026-03-14": 43}
LOCAL_EVENING = {"2026-03-11": "2026-03-10", "2026-03-12": "2026-03-11", "2026-03-13": "2026-03-12",
                 "2026-03-14": "2026-03-13"}


def _conversations() -> list[Conversation]:
    out = []
    for day, n in COUNTS.items():
        evening = datetime.fromisoformat(f"{LOCAL_EVENING[day]}T17:00:00").replace(tzinfo=LA)
        for i in range(n):
            out.append(Conversation(
                chat_id=f"{day}-{i:02d}", created_at=evening + timedelta(seconds=10 * i), metadata={},
                messages=[Message(role="user", content=f"question {i} of {day}", created_at=evening),
                          Message(role="assistant", content=f"answer {i}", created_at=evening)]))
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")  # the project's own instance
    return home


def _per_partition(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, dict]:
    records = instance.fetch_materializations(key, limit=100).records
    out: dict[str, dict] = {}
    for record in records:
        mat = record.asset_materialization
        assert mat.partition not in out, f"two materializations of {key.to_user_string()} {mat.partition}"
        out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    return out


@pytest.mark.slow
def test_cli_partition_range_records_each_days_own_rows_bytes_and_path(tmp_path: Path, home: Path) -> None:
    source = tmp_path / "logs.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in _conversations()))
    ck = tmp_path / "ck"
    env = {**os.environ, "DAGSTER_HOME": str(home), "KURA_PARTITIONS": "daily", "KURA_PARTITION_START": "2026-03-11",
           "KURA_CONVERSATIONS": str(source), "KURA_CHECKPOINT_DIR": str(ck)}
    run = subprocess.run([str(Path(sys.executable).parent / "dagster"), "asset", "materialize", "-m",
                          "kura_dagster.definitions", "--select", "conversations,summaries",
                          "--partition-range", "2026-03-11...2026-03-14"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert len(instance.get_runs()) == 1  # one run for the four days
        for stage in ("conversations", "summaries"):
            per_day = _per_partition(instance, dg.AssetKey(stage))
            assert sorted(per_day) == sorted(COUNTS)
            for day, n in COUNTS.items():
                md, path = per_day[day], ck / stage / f"{day}.jsonl"
                assert md["dagster/row_count"] == n, (stage, day, md["dagster/row_count"])
                assert len(path.read_text().splitlines()) == n
                assert md["path"] == str(path)
                assert md["kura/bytes"] == path.stat().st_size
                # the range's totals stay on the run's output, next to each day's own figures
                assert md["kura/partition_rows"] == COUNTS


def test_multi_format_partition_range_records_each_days_own_copies(tmp_path: Path, home: Path) -> None:
    """The same through the multi-format IO manager (JSONL first, then Parquet), in process."""
    source = tmp_path / "logs.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in _conversations()))
    ck = tmp_path / "ck"
    defs = build_kura_defs("m", conversations=str(source), partitions="daily", partition_start="2026-03-11",
                           checkpoint_dir=str(ck), formats=["jsonl", "parquet"], sensor=False)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(["m", "conversations"])})
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": "2026-03-11", "dagster/asset_partition_range_end": "2026-03-14"})
        assert result.success
        per_day = _per_partition(instance, dg.AssetKey(["m", "conversations"]))
    assert sorted(per_day) == sorted(COUNTS)
    for day, n in COUNTS.items():
        md = per_day[day]
        assert md["dagster/row_count"] == n
        jsonl = next(ck.rglob(f"conversations/{day}.jsonl"))
        parquet = next(ck.rglob(f"conversations/{day}.parquet"))
        assert md["path"] == str(jsonl)  # the primary copy of that day
        assert md["kura/bytes/jsonl"] == jsonl.stat().st_size
        assert md["kura/bytes/parquet"] == parquet.stat().st_size
