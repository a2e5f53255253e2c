"""Dagster's sqlite storage, keeping its SQLAlchemy engines: the project's ``dagster.yaml`` names ``KuraInstance``.

Dagster's ``SqliteEventLogStorage`` and ``SqliteRunStorage`` create a new SQLAlchemy ``Engine`` for every event
written and every query (``create_engine`` → dialect set-up, the SQL compiled again into a fresh cache, then
disposed). A run of 7 assets and 7 checks writes and reads ~155 times, and that was about a third of an unchanged
rerun's CPU (``benchmarks/results/fixed_costs.md``). These subclasses keep one engine per sqlite file instead.

What is *not* changed, and why it stays safe across processes (several CLI runs, the multiprocess executor's
step processes, the webserver and the daemon on one instance):

* The engines keep Dagster's ``poolclass=NullPool``: every use still opens its own ``sqlite3`` connection and
  closes it when done, exactly as Dagster does. No connection is held between uses, shared between threads (sqlite3
  connections are bound to their thread) or inherited by a forked child, which is what ``NullPool`` is there for;
  sqlite's own file locking and WAL journal arbitrate between processes as before, with Dagster's busy timeout
  (``SQLITE_BUSY_TIMEOUT_SECONDS``). Only the engine object and its compiled-SQL cache are reused: process-local
  state that no other process can observe.
* Each use still runs under Dagster's ``_db_lock`` and in its own transaction (``conn.begin()``), so threads of
  one process are serialised as before; a shard is initialised (tables, WAL) once per process as before.
* A database in WAL mode (every Dagster sqlite file once initialised) commits with ``PRAGMA synchronous=NORMAL``
  instead of sqlite's default ``FULL``: the WAL is synced when it is checkpointed, not at every commit (an LLM run
  of 1,000 conversations made ~1,700 fsync/fdatasync calls, ~1.5 ms each, on the main thread). sqlite documents
  WAL + NORMAL as safe from corruption; a process crash loses nothing (the OS has the pages), a power loss may
  roll back the last events before the checkpoint. A database not (yet) in WAL mode keeps ``FULL``.
* ``wipe()`` (which deletes the shard files) drops the kept engines along with Dagster's record of initialised
  shards; ``dispose()`` disposes them. At most ``MAX_ENGINES`` run shards keep an engine (least recently used
  dropped first), so a long-lived webserver reading thousands of runs does not grow without bound.

The storage is chosen through ``config_defaults`` of an instance subclass because the sqlite files live under the
instance's own folder, which a storage's config in ``dagster.yaml`` cannot name portably (``DAGSTER_HOME`` is not
set when an instance is loaded with ``DagsterInstance.from_config(folder)``). An explicit ``storage:`` section in
``dagster.yaml`` (Postgres, say) still wins over these defaults.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import yaml
from dagster._core.instance import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event
from sqlalchemy.pool import NullPool

MAX_ENGINES = 64
"""Run shards (one sqlite file per run) that keep an engine at once; the index shard always keeps its own."""


def _wal_commits_without_fsync(dbapi_connection: Any, _record: Any) -> None:
    """``synchronous=NORMAL`` for a connection to a database in WAL mode (see the module's docstring)."""
    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode").fetchone()
        if mode and str(mode[0]).lower() == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _kept_engine(conn_string: str, **kwargs: Any) -> Any:
    engine = create_engine(conn_string, poolclass=NullPool, **kwargs)
    event.listen(engine, "connect", _wal_commits_without_fsync)
    return engine


class KeptEngineSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` with one SQLAlchemy engine per shard (still ``NullPool``: a connection per use)."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, Any] = OrderedDict()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[override]
        return cls(inst_data=inst_data, **config_value)

    def _engine(self, shard: str):
        engine = self._engines.get(shard)
        if engine is None:
            engine = _kept_engine(self.conn_string_for_shard(shard),
                                  connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
            self._engines[shard] = engine
            run_shards = [key for key in self._engines if key != INDEX_SHARD_NAME]
            if len(run_shards) > MAX_ENGINES:
                self._engines.pop(run_shards[0]).dispose()
        else:
            self._engines.move_to_end(shard)
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Any]:  # same body as Dagster's, the engine kept
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

    def _drop_engines(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()

    def wipe(self) -> None:
        super().wipe()
        self._drop_engines()

    def upgrade(self) -> None:
        super().upgrade()
        self._drop_engines()

    def dispose(self) -> None:
        super().dispose()
        self._drop_engines()


class KeptEngineSqliteRunStorage(SqliteRunStorage):
    """``SqliteRunStorage`` with one SQLAlchemy engine (still ``NullPool``: a connection per use)."""

    def __init__(self, conn_string: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(conn_string, inst_data)
        self._engine = _kept_engine(conn_string)

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, **config_value)

    @contextmanager
    def connect(self) -> Iterator[Any]:
        with self._engine.connect() as conn:
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()


class KuraSqliteStorage(DagsterSqliteStorage):
    """``DagsterSqliteStorage`` (same folders and files) with the engine-keeping run and event-log storages."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self.base_dir = base_dir
        self._run_storage = KeptEngineSqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = KeptEngineSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data, config_value):  # type: ignore[override]
        return cls.from_local(inst_data=inst_data, **config_value)


class KuraInstance(DagsterInstance):
    """A ``DagsterInstance`` whose default storage is ``KuraSqliteStorage`` (named by the project's
    ``dagster.yaml`` as ``instance_class``); everything else is Dagster's."""

    @classmethod
    def config_schema(cls) -> Mapping[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData(
            __name__, KuraSqliteStorage.__name__, yaml.dump({"base_dir": base_dir}, default_flow_style=False)
        )
        return defaults
