"""Stress the crash safety of every checkpoint format: many more ``kill -9``s than the test suite does.

For each format in ``kura_dagster.checkpoints.registry.FORMATS`` whose module imports, a writer process saving
two versions in turn is killed with SIGKILL at a random moment, ``--kills`` times; after each kill the
checkpoint is loaded and must be one complete version (or absent, when the trial started without one). Then
``--races`` rounds of two writers saving the same checkpoint at once must leave one complete version.

    python benchmarks/stress_checkpoints.py [--kills 200] [--races 10] [--rows 300] [--formats jsonl,parquet,hf]

Prints a markdown table and writes it to ``benchmarks/results/stress_checkpoints.md``. Exit status 1 if any
load returned anything but a complete version.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kura_dagster.checkpoints.errors import CheckpointError  # noqa: E402
from kura_dagster.checkpoints.registry import FORMATS, manager_class  # noqa: E402
from kura_dagster.types import ConversationSummary  # noqa: E402
from kura_dagster_tests._crash_writer import (  # noqa: E402
    WriterServer,
    identify,
    kill_trials,
    make_versions,
    temp_leftovers,
)


def available(requested: list[str] | None) -> list[str]:
    out = []
    for fmt, target in FORMATS.items():
        if requested and fmt not in requested:
            continue
        try:
            manager_class(fmt)
        except ModuleNotFoundError as exc:
            if exc.name != target.partition(":")[0]:
                raise
            print(f"skipping {fmt}: {exc.name} does not exist", file=sys.stderr)
            continue
        out.append(fmt)
    return out


def races(fmt: str, directory: Path, rounds: int, rows: int) -> tuple[int, list[str]]:
    """Two writers save C and D to one checkpoint at once; returns (complete finals, failures)."""
    versions = make_versions(rows)
    manager = manager_class(fmt)(directory)
    manager.save_checkpoint("summaries", versions["A"])
    complete, failures = 0, []
    with WriterServer(fmt, directory, "summaries", rows) as server:
        for r in range(rounds):
            pids = [server.spawn("C,D", 3), server.spawn("D,C", 3)]
            statuses = [server.reap(p) for p in pids]
            try:
                if statuses != [0, 0]:
                    raise AssertionError(f"writers ended with {statuses}")
                if identify(manager.load_checkpoint("summaries", ConversationSummary), versions) not in ("C", "D"):
                    raise AssertionError("the final version is not one the writers saved")
                if temp_leftovers(directory):
                    raise AssertionError(f"temporary files left: {temp_leftovers(directory)}")
                complete += 1
            except (AssertionError, CheckpointError, OSError, ValueError) as exc:  # reported in the table
                failures.append(f"race {r}: {type(exc).__name__}: {exc}")
    return complete, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=200, help="kill -9s per format (default 200)")
    parser.add_argument("--races", type=int, default=10, help="rounds of two concurrent writers per format")
    parser.add_argument("--rows", type=int, default=300, help="rows per saved version")
    parser.add_argument("--formats", default="", help="comma list (default: every format that imports)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stress_checkpoints.md"))
    args = parser.parse_args()

    rows_out, all_failures = [], []
    for fmt in available([f for f in args.formats.split(",") if f] or None):
        with tempfile.TemporaryDirectory(prefix=f"kura-stress-{fmt}-") as tmp:
            t0 = time.perf_counter()
            report = kill_trials(fmt, Path(tmp) / "kill", args.kills, rows=args.rows, seed=args.seed)
            kill_wall = time.perf_counter() - t0
            complete, race_failures = races(fmt, Path(tmp) / "race", args.races, args.rows)
        failures = report.failures + race_failures
        all_failures += [f"{fmt}: {f}" for f in failures]
        outcomes = report.outcomes
        rows_out.append(
            f"| {fmt} | {report.kills} | {outcomes.get('A', 0)} / {outcomes.get('B', 0)} | {outcomes.get('absent', 0)} "
            f"| {report.mid_write} | {len(report.failures)} | {complete}/{args.races} | {len(race_failures)} "
            f"| {report.save_seconds * 1000:.0f} | {kill_wall:.0f} |"
        )
        print(rows_out[-1], flush=True)

    table = "\n".join([
        "| format | kill -9s | complete loads (version A / B) | absent (trial began empty) | kills mid-write "
        "(temp file left) | bad loads | two-writer races ending complete | race failures | save (ms) | kill loop (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows_out,
    ])
    text = (
        "# Checkpoint crash stress\n\n"
        f"`python benchmarks/stress_checkpoints.py --kills {args.kills} --races {args.races} --rows {args.rows}` "
        f"on {platform.machine()} Linux ({os.cpu_count()} cores), Python {platform.python_version()}; "
        f"{args.rows} rows per saved version (ConversationSummary with a 32-float embedding).\n\n"
        "Each kill: a forked writer saves versions A and B in turn and is killed with SIGKILL after a random delay "
        "of 0–3 save times; the checkpoint is then loaded in the parent. A *bad load* is anything but a complete "
        "version (a mixture, partial rows, a corrupt-checkpoint error, or a vanished checkpoint). Every 4th trial "
        "starts with the checkpoint deleted, so *absent* is a correct outcome there.\n\n"
        + table + "\n"
        + ("\n**Failures:**\n\n" + "\n".join(f"- {f}" for f in all_failures[:50]) + "\n" if all_failures else "")
    )
    print()
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"\nwrote {out}")
    return 1 if all_failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
