"""A writer process to kill: the fault-injection tests and ``benchmarks/stress_checkpoints.py`` share it.

Started as ``python -m kura_dagster_tests._crash_writer <format> <dir> <name> <rows>``, it imports the format
once and then acts as a small fork server, so each victim costs a ``fork`` instead of a 1–3 s interpreter start:

    spawn <versions> <count>   fork a child that saves the given versions in turn (``A,B``), ``count`` saves
                               in all (0 = until killed); answers ``pid <pid>``
    reap <pid>                 wait for that child; answers ``status <exit status or -signal>``
    quit

The server itself never saves anything (no thread pools are started before a fork). The test process kills
children with SIGKILL (``kill -9``) at random moments and then loads the checkpoint itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kura_dagster.checkpoints import arrow
from kura_dagster.checkpoints.errors import CheckpointError
from kura_dagster.checkpoints.registry import manager_class
from kura_dagster.checkpoints.storage import TMP_MARK
from kura_dagster.types import ConversationSummary

VERSION_NAMES = ("A", "B", "C", "D")


def make_versions(rows: int) -> dict[str, list[ConversationSummary]]:
    """Four different contents with different row counts, so any mixture of two is recognisable."""
    out: dict[str, list[ConversationSummary]] = {}
    for k, tag in enumerate(VERSION_NAMES):
        n = rows + 7 * k
        out[tag] = [
            ConversationSummary(
                chat_id=f"{tag}-{i}",
                summary=f"version {tag}, summary {i}: " + "lorem ipsum " * (i % 13),
                request=f"request {i}",
                topic=["coding", "writing", "maths"][i % 3],
                languages=["english", "python"][: 1 + i % 2],
                task="t",
                concerning_score=1 + i % 5,
                user_frustration=1 + (i + k) % 5,
                assistant_errors=[] if i % 4 else ["e"],
                metadata={"version": tag, "i": i},
                embedding=[((i * 31 + j * 7 + k) % 64) / 64.0 for j in range(32)],  # exact in float32
            )
            for i in range(n)
        ]
    return out


def identify(loaded: list[ConversationSummary] | None, versions: dict[str, list[ConversationSummary]]) -> str | None:
    """Which complete version ``loaded`` is, ``None`` for an absent checkpoint; raises on anything else."""
    if loaded is None:
        return None
    for tag, rows in versions.items():
        if loaded == rows:
            return tag
    tags = sorted({r.metadata.get("version", "?") for r in loaded})
    raise AssertionError(f"loaded {len(loaded)} rows that are no complete version (version tags {tags})")


# --- the server (child side) ------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the server dies, so that no saver outlives a failed test."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _serve(fmt: str, directory: str, name: str, rows: int) -> None:
    cls = manager_class(fmt)  # import the format before forking
    arrow.warm_up()  # and pyarrow's pandas: children inherit them instead of importing them while they are killed
    versions = make_versions(rows)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "spawn":
            order, count = args[0].split(","), int(args[1])
            pid = os.fork()
            if pid == 0:  # the victim
                code = 1
                try:
                    _die_with_parent()
                    manager = cls(directory)
                    i = 0
                    while count == 0 or i < count:
                        manager.save_checkpoint(name, versions[order[i % len(order)]])
                        i += 1
                    code = 0
                finally:
                    os._exit(code)
            print("pid", pid, flush=True)
        elif cmd == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            print("status", os.waitstatus_to_exitcode(status), flush=True)
        elif cmd == "quit":
            return


# --- the client (test side) -------------------------------------------------------------------------------
class WriterServer:
    """The test side of the fork server: spawn savers, kill them, reap them."""

    def __init__(self, fmt: str, directory: Path, name: str, rows: int) -> None:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kura_dagster_tests._crash_writer", fmt, str(directory), name, str(rows)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env, cwd=str(root),
        )
        self.live: set[int] = set()
        assert self._read() == ["ready"], "the writer server did not start"

    def _read(self) -> list[str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"writer server exited with {self.proc.wait()}")
        return line.split()

    def _ask(self, text: str) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self._read()

    def spawn(self, order: str, count: int = 0) -> int:
        pid = int(self._ask(f"spawn {order} {count}")[1])
        self.live.add(pid)
        return pid

    def reap(self, pid: int) -> int:
        status = int(self._ask(f"reap {pid}")[1])
        self.live.discard(pid)
        return status

    def kill(self, pid: int) -> int:
        os.kill(pid, signal.SIGKILL)
        return self.reap(pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            for pid in list(self.live):  # savers a failed test left running
                with contextlib.suppress(ProcessLookupError):
                    self.kill(pid)
            self._ask_quit()
        self.proc.wait(timeout=30)

    def _ask_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()

    def __enter__(self) -> WriterServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None and exc[0] is not None:
            self.proc.kill()
        self.close()


def temp_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TMP_MARK)) if directory.exists() else []


@dataclass
class KillReport:
    """What ``kill_trials`` saw, per format."""

    fmt: str
    kills: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    mid_write: int = 0
    """Kills that left a temporary file behind, i.e. landed while a save was writing."""
    save_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def kill_trials(fmt: str, directory: Path, trials: int, *, rows: int = 300, seed: int = 0,
                name: str = "summaries", from_absent_every: int = 4) -> KillReport:
    """kill -9 a saving process ``trials`` times at random moments; after each kill, load and classify.

    Every load must return a complete version (``A`` or ``B``), or nothing when the trial started without
    a checkpoint. After each kill the checkpoint must still be listed once and saveable again.
    """
    rng = random.Random(seed)
    versions = make_versions(rows)
    report = KillReport(fmt)
    cls = manager_class(fmt)
    manager = cls(directory)
    with WriterServer(fmt, directory, name, rows) as server:
        # Calibrate on a fresh child's first save (lazy imports included): kills land anywhere in 0–3 of those.
        assert server.reap(server.spawn("B", 1)) == 0, "a plain save failed"
        t0 = time.perf_counter()
        assert server.reap(server.spawn("A", 1)) == 0, "a plain save failed"
        report.save_seconds = time.perf_counter() - t0
        for trial in range(trials):
            start_absent = from_absent_every and trial % from_absent_every == from_absent_every - 1
            if start_absent:
                manager.delete_checkpoint(name)
            existed = manager.has_checkpoint(name)
            before = set(temp_leftovers(directory))
            pid = server.spawn("B,A" if trial % 2 else "A,B")
            time.sleep(rng.uniform(0, 3 * report.save_seconds))
            status = server.kill(pid)
            report.kills += 1
            if status != -signal.SIGKILL:
                report.failures.append(f"trial {trial}: the writer ended with {status} before the kill")
                continue
            if set(temp_leftovers(directory)) - before:
                report.mid_write += 1
            try:
                tag = identify(manager.load_checkpoint(name, ConversationSummary), versions)
                if tag is None and existed:
                    raise AssertionError("the checkpoint vanished: it existed before the kill")
                listed = manager.list_checkpoints()
                if listed != ([name] if tag else []):
                    raise AssertionError(f"list_checkpoints() is {listed}")
            except (AssertionError, CheckpointError, OSError, ValueError) as exc:
                report.failures.append(f"trial {trial} (killed after a random delay): {type(exc).__name__}: {exc}")
                continue
            key = "absent" if tag is None else tag
            report.outcomes[key] = report.outcomes.get(key, 0) + 1
        # After all the kills, a plain save still works and leaves a clean, complete checkpoint.
        if server.reap(server.spawn("B", 1)) != 0:
            report.failures.append("a save after the kills failed")
        elif identify(manager.load_checkpoint(name, ConversationSummary), versions) != "B":
            report.failures.append("the save after the kills did not load back")
        elif temp_leftovers(directory):
            report.failures.append(f"temporary files of dead writers were not cleaned up: {temp_leftovers(directory)}")
    return report


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
