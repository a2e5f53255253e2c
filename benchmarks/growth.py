"""What ``cluster_growth`` costs with daily partitions, against a new day's budget (issue 19 item 4).

    python benchmarks/growth.py [--days 10] [--per-day 10000] [--repeat 3]

Writes ``days`` Parquet and JSONL partitions of ``per-day`` synthetic summaries (256-d float32 embeddings, as the offline
model makes) and base clusters of 10 over them, then times (best of ``--repeat``):

* loading every partition as the asset's input does (its chat ids only: ``load_summary_columns(columns=[])``,
  no embedding decoded), and, for comparison, the columnar load with the embeddings that it did before,
* the growth itself: chat id → partition, the long table, the trailing means, spikes and the fastest growing,
* writing ``cluster_growth.parquet`` and ``.jsonl`` (the facets table's writer).

The 1M row extrapolates linearly from the measured size (each part is linear in the conversations). Writes
``results/growth.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from kura_dagster.checkpoints.columnar import load_summary_columns
from kura_dagster.checkpoints.jsonl import JSONLCheckpointManager
from kura_dagster.checkpoints.parquet import ParquetCheckpointManager
from kura_dagster.orchestration.facets import write_table_files
from kura_dagster.orchestration.growth import (cluster_growth, fastest_growing, growth_table,
                                               periods_from_partitions, spikes)
from kura_dagster.types import Cluster, ConversationSummary

NEW_DAY_1M_TARGET_S = 0.05 * 470  # issue 19: a new day at 1M costs at most 5% of the full run (470 s, results/scale.md)


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--per-day", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = args.days * args.per_day
    rng = np.random.default_rng(0)
    days = [f"2026-01-{d + 1:02d}" for d in range(args.days)]
    loads: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        managers = [ParquetCheckpointManager(os.path.join(tmp, "summaries")),
                    JSONLCheckpointManager(os.path.join(tmp, "summaries_jsonl"))]
        ids_by_day = {}
        for d, day in enumerate(days):
            ids = [f"c{d}-{i}" for i in range(args.per_day)]
            ids_by_day[day] = ids
            emb = rng.standard_normal((args.per_day, 256)).astype(np.float32)
            part = [ConversationSummary(chat_id=i, summary="s", metadata={}, embedding=e.tolist())
                    for i, e in zip(ids, emb)]
            for manager in managers:
                manager.save_checkpoint(day, part)
        all_ids = [i for day in days for i in ids_by_day[day]]
        order = rng.permutation(n)
        clusters = [Cluster(id=f"k{j}", name=f"cluster {j}", description="d", slug="s", parent_id=None,
                            chat_ids=[all_ids[i] for i in order[j:j + 10]]) for j in range(0, n, 10)]
        for manager in managers:
            fmt = manager.format_name
            # the asset's input asks for the chat ids only (kura/summary_columns: []): no embedding decoded
            load_s, loaded = best(lambda: {day: load_summary_columns(manager, day, columns=[]) for day in days},
                                  args.repeat)
            before_s, _ = best(lambda: {day: load_summary_columns(manager, day) for day in days}, args.repeat)
            loads += [(f"{fmt}: load the summaries partitions' chat ids (no embeddings, as the input does)", load_s),
                      (f"{fmt}: (before: every column with the embeddings; not in the total)", before_s)]

        def compute():
            table = growth_table(clusters, periods_from_partitions(loaded))
            latest, history, growth = cluster_growth(table, 7)
            return table, spikes(growth, 3.0, 10), fastest_growing(growth)

        compute_s, (table, _, _) = best(compute, args.repeat)
        write_s, _ = best(lambda: write_table_files(tmp, "cluster_growth", table), args.repeat)
        size = sum(Path(tmp, f"cluster_growth.{ext}").stat().st_size for ext in ("parquet", "jsonl"))
    scale = 1_000_000 / n
    rows = [*loads, ("growth: periods, long table, trailing means, spikes", compute_s),
            ("write cluster_growth.parquet + .jsonl", write_s)]
    totals = {fmt: sum(s for name, s in rows if "before" not in name and (name.startswith(f"{fmt}:") or not name.startswith(("parquet:", "jsonl:"))))
              for fmt in ("parquet", "jsonl")}
    lines = [
        "# cluster_growth with daily partitions",
        "",
        f"{n:,} summaries in {args.days} partitions (Parquet, and JSONL), {len(clusters):,} base clusters of 10, table of "
        f"{table.num_rows:,} rows ({size / 1e6:.1f} MB both files); best of {args.repeat}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other engineers' work.",
        "",
        f"| part | {n:,} s | 1M s (linear) |",
        "|---|---:|---:|",
        *[f"| {name} | {s:.2f} | {s * scale:.1f} |" for name, s in rows],
        *[f"| **total with {fmt} checkpoints** | **{t:.2f}** | **{t * scale:.1f}** |" for fmt, t in totals.items()],
        "",
        f"A new day's budget at 1M (5% of the 470 s full run): {NEW_DAY_1M_TARGET_S:.1f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).parent.joinpath("results", "growth.md").write_text(text)


if __name__ == "__main__":
    main()
