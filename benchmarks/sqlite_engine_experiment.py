"""Experiment, not shipped: how much of an unchanged rerun is Dagster's sqlite event log creating an SQLAlchemy
engine (and compiling its SQL again) for every event and query.

Runs ``dagster asset materialize -m kura_dagster.definitions --select '*'`` in this process; with
``CACHE_ENGINES=1`` it first patches ``SqliteEventLogStorage._connect`` to keep one engine per shard (still
``NullPool``: a new sqlite connection per use, as Dagster does, only the engine and its compiled-SQL cache are
kept). Use an instance and checkpoints materialized once before, and alternate::

    export DAGSTER_HOME=… KURA_CHECKPOINT_DIR=…
    for i in 1 2 3; do for c in 0 1; do CACHE_ENGINES=$c taskset -c 0,1 python benchmarks/sqlite_engine_experiment.py; done; done

Result (benchmarks/results/fixed_costs.md, notes): 15.4, 15.5, 15.7 s against 12.5, 11.3, 10.2 s at load ~6.
A storage class that keeps its engines, configured in ``dagster.yaml``, or Postgres storage, would take that.
"""
import sys, time, os
if os.environ.get("CACHE_ENGINES") == "1":
    from contextlib import contextmanager
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool
    from dagster._core.storage.event_log.sqlite import sqlite_event_log as m
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
    engines = {}
    @contextmanager
    def _connect(self, shard):
        with self._db_lock:
            engine = engines.get((id(self), shard))
            if engine is None:
                engine = engines[(id(self), shard)] = create_engine(
                    self.conn_string_for_shard(shard), poolclass=NullPool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn
    m.SqliteEventLogStorage._connect = _connect
t = time.perf_counter()
sys.argv = ['dagster', 'asset', 'materialize', '-m', 'kura_dagster.definitions', '--select', '*']
from dagster._cli import main
try:
    main()
except SystemExit:
    pass
print("WALL", os.environ.get("CACHE_ENGINES"), round(time.perf_counter() - t, 2), os.getloadavg()[0], file=sys.stderr)
