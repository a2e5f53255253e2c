"""The ``kura-dagster`` command: migrate checkpoints between formats, and show what each format costs.

    kura-dagster migrate jsonl:./kura_checkpoints parquet:./checkpoints [--names summaries clusters]
                 [--overwrite] [--option compression=zstd] [--model NAME=MODEL] [--json]
    kura-dagster storage ./checkpoints [--json]
    kura-dagster export ./checkpoints/support ./kura_export [--format jsonl|parquet|hf]
                 # Kura's single-file layout, partitions joined (parquet/hf: the layout Kura's own managers read)
    kura-dagster cache list ./checkpoints [--json]
    kura-dagster cache prune ./checkpoints --older-than 30d [--keep IDENTITY] [--dry-run]
    kura-dagster instance free-slots [--run RUN_ID] [--dry-run]   # pool slots of crashed runs (DAGSTER_HOME)

A DIR may be an fsspec URL (``parquet:s3://bucket/kura``); S3's endpoint and credentials come from the standard
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).

Exit status: 0 on success, 1 when a checkpoint conflicts or fails to verify, 2 for bad arguments.
No Dagster import at start (only `instance` imports it): the command starts fast and works where only the checkpoint
layer is installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from kura_dagster.checkpoints.errors import CheckpointError
from kura_dagster.checkpoints.registry import FORMATS


def _key_values(pairs: Sequence[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r}: write KEY=VALUE")
        try:
            out[key] = json.loads(value)  # numbers, booleans, null
        except ValueError:
            out[key] = value
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kura-dagster", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log each step")
    sub = parser.add_subparsers(dest="command", required=True)
    fmts = "|".join(FORMATS)

    mig = sub.add_parser("migrate", help="copy checkpoints to another format or directory, verified, without recomputing")
    mig.add_argument("source", metavar="SRC_FORMAT:SRC_DIR", help=f"e.g. jsonl:./kura_checkpoints ({fmts})")
    mig.add_argument("destination", metavar="DST_FORMAT:DST_DIR",
                     help="e.g. parquet:./checkpoints or hf:s3://bucket/kura (S3 endpoint and keys: AWS_* variables)")
    mig.add_argument("--names", nargs="+", metavar="NAME", help="checkpoints to copy (default: all in the source)")
    mig.add_argument("--overwrite", action="store_true", help="replace destination checkpoints that differ")
    mig.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="destination format option, e.g. compression=zstd or embedding_dtype=float64")
    mig.add_argument("--model", action="append", default=[], metavar="NAME=MODEL",
                     help="model of a checkpoint whose file does not record it, e.g. my_summaries=ConversationSummary")
    mig.add_argument("--json", action="store_true", help="print the report as JSON")

    sto = sub.add_parser("storage", help="bytes of each checkpoint in each format, and the totals")
    sto.add_argument("directory", metavar="DIR", help="a directory or URL, e.g. s3://bucket/kura")
    sto.add_argument("--json", action="store_true", help="print the overview as JSON")

    exp = sub.add_parser("export", help="write Kura's single-file layout (conversations.jsonl, summaries.jsonl, …) "
                         "of a checkpoint directory, joining partitions, streaming")
    exp.add_argument("directory", metavar="DIR", help="a pipeline's checkpoint directory or URL (any format)")
    exp.add_argument("out_dir", metavar="OUT_DIR", help="where to write the files Kura reads")
    exp.add_argument("--format", choices=("jsonl", "parquet", "hf"), default="jsonl",
                     help="jsonl (default): what Kura's JSONL manager and Kura's UI read; parquet / hf: what Kura "
                     "0.5.4's ParquetCheckpointManager / HFDatasetCheckpointManager read (Kura's layout)")
    exp.add_argument("--json", action="store_true", help="print the report as JSON")

    cache = sub.add_parser("cache", help="the LLM answer cache (.kura-cache): list or prune its setting folders")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    lst = cache_sub.add_parser("list", help="each setting folder: kind, identity, size, last use")
    lst.add_argument("directory", metavar="DIR", help="the checkpoint directory (KURA_CHECKPOINT_DIR)")
    lst.add_argument("--json", action="store_true", help="print the folders as JSON")
    prn = cache_sub.add_parser("prune", help="remove setting folders no run has used for a while")
    prn.add_argument("directory", metavar="DIR", help="the checkpoint directory (KURA_CHECKPOINT_DIR)")
    prn.add_argument("--older-than", required=True, type=_duration, metavar="AGE",
                     help="remove folders last used longer ago than this: 30d, 12h, 45m or seconds")
    prn.add_argument("--keep", action="append", default=[], metavar="IDENTITY",
                     help="never remove this identity (as `cache list` shows it); repeatable")
    prn.add_argument("--dry-run", action="store_true", help="only list what would be removed")

    ins = sub.add_parser("instance", help="the Dagster instance at DAGSTER_HOME: free pool slots of crashed runs")
    ins_sub = ins.add_subparsers(dest="instance_command", required=True)
    fre = ins_sub.add_parser("free-slots", help="free the pool slots (kura_llm …) of runs that are over: ended, or "
                             "their process gone (killed, crashed, rebooted); never a live run")
    fre.add_argument("--run", action="append", default=[], metavar="RUN_ID",
                     help="also free this run's slots and mark it failed, though it cannot be checked (started on "
                     "another host or without Kura's executor): only when you know it is no longer running")
    fre.add_argument("--dry-run", action="store_true", help="only show which runs hold slots and what would be freed")
    return parser


def _duration(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s`` or plain seconds → seconds."""
    units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        value = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: write e.g. 30d, 12h, 45m or 90") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return value


def _cache_command(args: argparse.Namespace) -> int:
    import time

    from kura_dagster.checkpoints.summary_cache import cache_folders, prune_cache

    def row(folder: Any, decision: str = "") -> str:
        age = "unknown" if folder.last_used is None else f"{(time.time() - folder.last_used) / 86400:.1f} d ago"
        return (f"| {folder.kind} | {folder.identity or '(unknown)'} | {folder.bytes:,} | {age} |"
                + (f" {decision} |" if decision else ""))

    if args.cache_command == "list":
        folders = cache_folders(args.directory)
        if args.json:
            print(json.dumps([f.as_dict() for f in folders], indent=1))
            return 0
        print("| kind | identity | bytes | last used |\n|---|---|---|---|")
        print("\n".join(row(f) for f in folders) or "(no cache)")
        return 0
    decisions = list(prune_cache(args.directory, older_than=args.older_than, keep=args.keep, dry_run=args.dry_run))
    print("| kind | identity | bytes | last used | decision |\n|---|---|---|---|---|")
    print("\n".join(row(f, d) for f, d in decisions) or "(no cache)")
    gone = [f for f, d in decisions if d in ("removed", "would remove")]
    verb = "would free" if args.dry_run else "freed"
    print(f"\n{len(gone)} of {len(decisions)} setting folders {'to remove' if args.dry_run else 'removed'}, "
          f"{verb} {sum(f.bytes for f in gone):,} bytes")
    return 0


def _instance_command(args: argparse.Namespace) -> int:
    import os

    if not os.environ.get("DAGSTER_HOME"):
        print("error: DAGSTER_HOME is not set: set it to the folder of the instance's dagster.yaml (for this "
              "project's instance, export DAGSTER_HOME=$PWD in the project folder)", file=sys.stderr)
        return 2
    import dagster as dg

    from kura_dagster.orchestration.recovery import free_dead_runs, free_run, judge, slot_holders

    with dg.DagsterInstance.get() as instance:
        holders = judge(instance, slot_holders(instance, claimed_only=False))
        unknown = [r for r in args.run if r not in holders]
        if unknown:
            print(f"error: no slot is held or awaited by run {', '.join(unknown)}", file=sys.stderr)
            return 1
        print("| run | job | pools and steps | state |\n|---|---|---|---|")
        for h in holders.values():
            steps = "; ".join(f"{p}: {', '.join(sorted(set(k)))}" for p, k in sorted(h.pools.items()))
            print(f"| {h.run_id} | {h.job_name or '-'} | {steps} | {h.verdict}: {h.reason} |")
        if not holders:
            print("(no run holds or waits for a pool slot)")
        freed = [h.run_id for h in free_dead_runs(instance, dry_run=args.dry_run)]
        for run_id in args.run:
            if run_id not in freed:
                if not args.dry_run:
                    free_run(instance, run_id, "freed by hand with kura-dagster instance free-slots --run")
                freed.append(run_id)
        verb = "would free" if args.dry_run else "freed"
        print(f"\n{verb} the slots of {len(freed)} run(s){': ' + ', '.join(freed) if freed else ''}")
        left = [h.run_id for h in holders.values() if h.run_id not in freed and h.verdict == "unknown"]
        if left:
            print("not checkable from here (another host, or started without Kura's executor); if one is no longer "
                  f"running: kura-dagster instance free-slots --run RUN_ID ({', '.join(left)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from kura_dagster.checkpoints.migrate import migrate, open_location, storage_overview

    try:
        if args.command == "cache":
            return _cache_command(args)
        if args.command == "instance":
            return _instance_command(args)
        if args.command == "export":
            from dataclasses import asdict

            from kura_dagster.checkpoints.export import export_kura

            try:
                report = export_kura(args.directory, args.out_dir, format=args.format)
            except CheckpointError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            print(json.dumps(asdict(report), indent=1) if args.json else report.as_markdown())
            return 0
        if args.command == "storage":
            from kura_dagster.checkpoints.summary_cache import CACHE_DIRNAME, cache_size

            overview = storage_overview(args.directory)
            cache_bytes, cache_folders = cache_size(args.directory)
            if args.json:
                print(json.dumps({**overview.as_dict(), "cache": {"bytes": cache_bytes, "folders": cache_folders}},
                                 indent=1))
            else:
                print(overview.as_markdown())
                print(f"\nAnswer cache ({CACHE_DIRNAME}): {cache_bytes:,} bytes in {cache_folders} setting folders "
                      "(`kura-dagster cache prune` removes unused ones)")
            return 0
        options = _key_values(args.option, "--option")
        models = {k: str(v) for k, v in _key_values(args.model, "--model").items()}
        source = open_location(args.source)
        destination = open_location(args.destination, **options)
    except (ValueError, TypeError, LookupError, OSError) as exc:
        parser.error(str(exc))
    try:
        report = migrate(source, destination, args.names, overwrite=args.overwrite, models=models)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), indent=1) if args.json else report.as_markdown())
    if not report.ok:
        print(f"error: the destination holds different rows for {', '.join(report.conflicts)}; "
              "rerun with --overwrite to replace them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
