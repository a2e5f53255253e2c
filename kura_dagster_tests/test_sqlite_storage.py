"""The project's instance class (``KuraInstance``: Dagster's sqlite storage keeping its SQLAlchemy engines) with
several processes writing to one instance at once: two runners in parallel (one of them with the multiprocess
executor, so its step processes open the instance from its serialised ref), then every run, event and
materialization read back, also by Dagster's own storage classes from the same files."""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

JOB = textwrap.dedent(
    """
    import sys
    import dagster as dg

    @dg.asset
    def first(context) -> int:
        for i in range(5):
            context.log.info(f"line {i}")
        return 1

    @dg.asset
    def second(context, first: int) -> int:
        return first + 1

    @dg.asset_check(asset=second)
    def second_positive(second: int) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=second > 0)

    defs = dg.Definitions(
        assets=[first, second], asset_checks=[second_positive], jobs=[dg.define_asset_job("both", selection="*")],
        resources={"io_manager": dg.FilesystemIOManager(base_dir=sys.argv[3] if __name__ == "__main__" else ".")},
    )

    def job():
        return defs.get_job_def("both")

    if __name__ == "__main__":
        home, mode, io_dir, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        instance = dg.DagsterInstance.from_config(home)
        assert type(instance).__name__ == "KuraInstance", type(instance)
        for _ in range(runs):
            if mode == "multiprocess":
                from dagster import reconstructable, execute_job
                with execute_job(reconstructable(job), instance=instance,
                                 run_config={"resources": {"io_manager": {"config": {"base_dir": io_dir}}}}) as result:
                    assert result.success
            else:
                assert dg.materialize([first, second], instance=instance, resources=defs.resources,
                                      selection=None).success
        print("done", mode)
    """
)


@pytest.mark.slow
def test_two_processes_write_one_instance_at_once(tmp_path: Path):
    import dagster as dg

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    script = tmp_path / "two_assets.py"
    script.write_text(JOB)
    (tmp_path / "io").mkdir()
    # The sqlite files are created first, as `dagster dev` or the first CLI run does: Dagster's own
    # SqliteRunStorage.from_local (unchanged here) has no retry when two processes create runs.db at once.
    dg.DagsterInstance.from_config(str(home)).dispose()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(home), mode, str(tmp_path / "io"), str(runs)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for mode, runs in (("in_process", 4), ("multiprocess", 1))
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        assert out.startswith("done"), (out, err[-3000:])

    # Read back with the project's instance and with Dagster's own classes on the same files.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {home}\n")
    with dg.DagsterInstance.from_config(str(home)) as kura, dg.DagsterInstance.from_config(str(plain)) as dagster_own:
        assert type(kura).__name__ == "KuraInstance" and type(dagster_own) is dg.DagsterInstance
        for instance in (kura, dagster_own):
            runs = instance.get_runs()
            assert len(runs) == 5
            assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
            for key, expected in ((dg.AssetKey("first"), 5), (dg.AssetKey("second"), 5)):
                records = instance.fetch_materializations(key, limit=100).records
                assert len(records) == expected
                assert len({r.run_id for r in records}) == 5
            for run in runs:
                logs = [e for e in instance.all_logs(run.run_id) if e.user_message.startswith("line ")]
                assert [e.user_message for e in logs] == [f"line {i}" for i in range(5)]


def test_wal_databases_commit_without_an_fsync_and_others_keep_full_sync(tmp_path: Path):
    """sqlite's ``synchronous``: 1 is NORMAL (a WAL file is synced at checkpoints, not at every commit), 2 FULL."""
    import sqlite3

    from dagster._core.storage.sqlite import create_db_conn_string

    from kura_dagster.orchestration.sqlite_storage import _kept_engine

    wal, plain = tmp_path / "wal.db", tmp_path / "plain.db"
    with sqlite3.connect(wal) as conn:
        assert conn.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    sqlite3.connect(plain).close()
    for path, expected in ((wal, 1), (plain, 2)):
        engine = _kept_engine(create_db_conn_string(str(tmp_path), path.stem))
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == expected, path.name
        engine.dispose()
        with sqlite3.connect(path) as other:  # a connection of its own (Dagster's storage, another tool) is untouched
            assert other.execute("PRAGMA synchronous").fetchone() == (2,)
