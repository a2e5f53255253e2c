"""How much of an unchanged rerun is Dagster's sqlite storage creating an SQLAlchemy engine (and compiling its
SQL again) for every event and query.

The project's ``dagster.yaml`` names ``KuraInstance`` (``kura_dagster/orchestration/sqlite_storage.py``), whose
run and event-log storages keep one engine per sqlite file (still ``NullPool``: a connection per use). Runs
``dagster asset materialize -m kura_dagster.definitions --select '*'`` in this process; with ``CACHE_ENGINES=0``
it first gives ``KuraInstance`` Dagster's own storage defaults (an engine per use), to compare. Use an instance
(with the project's ``dagster.yaml``) and checkpoints materialized once before, and alternate::

    export DAGSTER_HOME=… KURA_CHECKPOINT_DIR=…
    for i in 1 2 3; do for c in 0 1; do CACHE_ENGINES=$c taskset -c 0,1 python benchmarks/sqlite_engine_experiment.py; done; done

First result (an earlier patch of ``SqliteEventLogStorage._connect`` that kept engines the same way; load ~6):
15.4, 15.5, 15.7 s against 12.5, 11.3, 10.2 s; the shipped class: benchmarks/results/fixed_costs.md.
"""
import sys, time, os
t = time.perf_counter()
if os.environ.get("CACHE_ENGINES") == "0":
    from dagster._core.instance.ref import InstanceRef
    from kura_dagster.orchestration import sqlite_storage
    sqlite_storage.KuraInstance.config_defaults = staticmethod(InstanceRef.config_defaults)
sys.argv = ['dagster', 'asset', 'materialize', '-m', 'kura_dagster.definitions', '--select', '*']
from dagster._cli import main
try:
    main()
except SystemExit:
    pass
import resource
cpu = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds of this process: less swayed by the other load
print("WALL", os.environ.get("CACHE_ENGINES"), round(time.perf_counter() - t, 2), "CPU",
      round(cpu.ru_utime + cpu.ru_stime, 2), "LOAD", os.getloadavg()[0], file=sys.stderr)
