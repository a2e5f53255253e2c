"""The standalone code location leaves its long-lived objects out of the garbage collector's full collections
(``gc.freeze`` once the definitions are built) and skips the walk over every live object at process exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import atexit, gc, sys

    def at_exit():  # registered first, so it runs after the code location's own handler (atexit is LIFO)
        print("tracked at exit", len(gc.get_objects()), flush=True)

    atexit.register(at_exit)
    before = len(gc.get_objects())
    import kura_dagster.definitions
    print("tracked before import", before)
    print("frozen after import", gc.get_freeze_count())
    print("tracked after import", len(gc.get_objects()))
    garbage = [list(range(3)) for _ in range(50_000)]  # objects made after the import are tracked as usual
    print("tracked with new objects", len(gc.get_objects()), flush=True)
    """
)


def test_definitions_freeze_what_they_import_and_the_rest_at_exit(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(tmp_path),
                              "KURA_CHECKPOINT_DIR": str(tmp_path / "checkpoints")})
    assert out.returncode == 0, out.stderr[-3000:]
    figures = {line.rsplit(" ", 1)[0]: int(line.rsplit(" ", 1)[1]) for line in out.stdout.splitlines()}
    assert figures["frozen after import"] > 100_000  # Dagster, pydantic, the code location
    assert figures["tracked after import"] < 10_000  # left out of the collector's generations
    assert figures["tracked with new objects"] >= 50_000  # new objects are still collected as usual
    assert figures["tracked at exit"] < 1_000  # frozen too before the interpreter's last collection
