"""The ``kura-dagster`` command: migrate checkpoints between formats, and show what each format costs.

    kura-dagster migrate jsonl:./kura_checkpoints parquet:./checkpoints [--names summaries clusters]
                 [--overwrite] [--option compression=zstd] [--model NAME=MODEL] [--json]
    kura-dagster storage ./checkpoints [--json]

Exit status: 0 on success, 1 when a checkpoint conflicts or fails to verify, 2 for bad arguments.
No Dagster import: the command starts fast and works where only the checkpoint layer is installed.
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
    mig.add_argument("destination", metavar="DST_FORMAT:DST_DIR", help="e.g. parquet:./checkpoints")
    mig.add_argument("--names", nargs="+", metavar="NAME", help="checkpoints to copy (default: all in the source)")
    mig.add_argument("--overwrite", action="store_true", help="replace destination checkpoints that differ")
    mig.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="destination format option, e.g. compression=zstd or embedding_dtype=float64")
    mig.add_argument("--model", action="append", default=[], metavar="NAME=MODEL",
                     help="model of a checkpoint whose file does not record it, e.g. my_summaries=ConversationSummary")
    mig.add_argument("--json", action="store_true", help="print the report as JSON")

    sto = sub.add_parser("storage", help="bytes of each checkpoint in each format, and the totals")
    sto.add_argument("directory", metavar="DIR")
    sto.add_argument("--json", action="store_true", help="print the overview as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from kura_dagster.migrate import migrate, open_location, storage_overview

    try:
        if args.command == "storage":
            overview = storage_overview(args.directory)
            print(json.dumps(overview.as_dict(), indent=1) if args.json else overview.as_markdown())
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
