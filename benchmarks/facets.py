"""What issue 20's privacy and facets work costs at 100,000 conversations, against the pipeline's wall time.

    python benchmarks/facets.py [--n 100000] [--repeat 3]

Builds ``n`` synthetic summaries (256-d embeddings, languages, tasks, scores, errors, ``metadata.user_id``) and
Kura's cluster tree over them (base clusters of 10, then parents of 10 up to 10 roots: 11,110 clusters at 100k,
as in ``results/scale.md``), saves the summaries as Parquet and as JSONL checkpoints, then times (best of
``--repeat``):

* the ``cluster_facets`` step's parts: loading the summaries as its input does (the facet fields and
  ``metadata.user_id`` only, no embeddings: ``load_summary_columns(columns=…)``), reading the facet fields,
  computing the table, writing Parquet + JSONL; and, for comparison, the load of every column with the
  embeddings that it did before;
* scrubbing every summary's text fields (``privacy.scrub_summaries``, the summaries step's extra work);
* reading ``metadata.user_id`` for the user threshold (``thresholds.user_ids``).

The pipeline's end-to-end wall time at 100k comes from ``results/scale.md`` (49.6 s, offline models, Parquet).
Writes ``results/facets.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kura_dagster.checkpoints.columnar import load_summary_columns
from kura_dagster.checkpoints.jsonl import JSONLCheckpointManager
from kura_dagster.checkpoints.parquet import ParquetCheckpointManager
from kura_dagster.orchestration.facets import table_jsonl
from kura_dagster.pipeline.facets import FACET_FIELDS, cluster_facets, summary_facet_rows
from kura_dagster.pipeline.privacy import scrub_summaries
from kura_dagster.pipeline.thresholds import user_ids
from kura_dagster.types import Cluster, ConversationSummary

PIPELINE_100K_WALL_S = 49.6  # results/scale.md: end to end at 100,000 (offline models, Parquet checkpoints)
PIPELINE_100K_CPU_S = 53.0  # the same run's CPU seconds
SELECTION = [*FACET_FIELDS, "metadata.user_id"]
LANGS = ["english", "python", "german", "french", "spanish", "javascript", "japanese", "sql"]
VERBS = ["debug", "write", "explain", "translate", "summarise", "plan", "review", "optimise"]
THINGS = ["a python function", "an email to a client", "a recipe", "a travel itinerary", "a sql query",
          "a poem about autumn", "a cover letter", "a marketing plan", "a unit test", "a budget"]


def summaries(n: int, dims: int = 256, seed: int = 0) -> list[ConversationSummary]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    out = []
    for i in range(n):
        verb, thing = VERBS[i % len(VERBS)], THINGS[(i * 7) % len(THINGS)]
        pii = f" and to reply to jane{i}@example.com" if i % 100 == 0 else ""  # 1% with an e-mail address
        out.append(ConversationSummary(
            chat_id=f"c{i:07d}", summary=f"The user asked the assistant to {verb} {thing}{pii}. The assistant did.",
            request=f"The user's overall request for the assistant is to {verb} {thing}{pii}.",
            topic="software development" if "python" in thing or "sql" in thing else "writing",
            languages=[LANGS[i % 3], LANGS[3 + i % 5]][: 1 + i % 2], task=f"The task is to {verb} {thing}.",
            concerning_score=1 + (i * 13) % 5, user_frustration=1 + (i * 7) % 5,
            assistant_errors=[] if i % 4 else ["Misunderstood the request"],
            metadata={"user_id": f"user-{i % 10_000}", "conversation_turns": 2 + i % 6},
            embedding=vectors[i].tolist()))
    return out


def tree(chat_ids: list[str], per_group: int = 10, max_roots: int = 10) -> list[Cluster]:
    """Base clusters of ``per_group`` conversations, then parents of ``per_group`` children to ``max_roots``."""
    level = [Cluster(id=f"b{j}", name=f"base {j}", description="d", slug="b_c_d",
                     chat_ids=chat_ids[j * per_group:(j + 1) * per_group], parent_id=None)
             for j in range((len(chat_ids) + per_group - 1) // per_group)]
    out, depth = [], 0
    while len(level) > max_roots:
        depth += 1
        parents = []
        for j in range(0, len(level), per_group):
            kids = level[j:j + per_group]
            pid = f"m{depth}-{j // per_group}"
            parents.append(Cluster(id=pid, name=f"meta {pid}", description="d", slug="m_e_t",
                                   chat_ids=[c for k in kids for c in k.chat_ids], parent_id=None))
            out.extend(k.model_copy(update={"parent_id": pid}) for k in kids)
        level = parents
    return out + level


def best(fn, repeat: int) -> tuple[float, object]:
    """The lowest wall time of ``repeat`` runs (and its CPU time, appended to ``CPU_TIMES``)."""
    times, result = [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = min(times)
    CPU_TIMES.append(cpu)
    return wall, result


CPU_TIMES: list[float] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "facets.md"))
    args = parser.parse_args()
    n, repeat = args.n, args.repeat
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    rows = summaries(n)
    clusters = tree([s.chat_id for s in rows])
    print(f"built {n:,} summaries and {len(clusters):,} clusters in {time.perf_counter() - t0:.1f} s")
    table: list[tuple[str, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, manager in (("parquet", ParquetCheckpointManager(tmp)), ("jsonl", JSONLCheckpointManager(tmp))):
            manager.save_checkpoint("summaries", rows)
            # what the asset's input loads (kura/summary_columns: the facet fields and metadata.user_id, no embeddings)
            t_load, columns = best(lambda: load_summary_columns(manager, "summaries", columns=SELECTION), repeat)
            t_rows, facet_rows = best(lambda: summary_facet_rows(columns, "user_id"), repeat)
            t_table, facets = best(lambda: cluster_facets(clusters, facet_rows), repeat)

            def write() -> None:
                import io

                import pyarrow.parquet as pq

                from kura_dagster.checkpoints.storage import atomic_write_bytes, to_upath

                buf = io.BytesIO()
                pq.write_table(facets, buf, compression="zstd")
                atomic_write_bytes(to_upath(tmp) / "cluster_facets.parquet", buf.getvalue())
                atomic_write_bytes(to_upath(tmp) / "cluster_facets.jsonl", table_jsonl(facets))

            t_write, _ = best(write, repeat)
            # before: every column, embeddings decoded (what clusters loads, and cluster_facets loaded until now)
            t_full, full = best(lambda: load_summary_columns(manager, "summaries"), repeat)
            t_users, _ = best(lambda: user_ids(full, "user_id"), repeat)
            del full
            c_load, c_rows, c_table, c_write, c_full, c_users = CPU_TIMES[-6:]
            total, c_total = t_load + t_rows + t_table + t_write, c_load + c_rows + c_table + c_write
            table += [(fmt, "cluster_facets: load the facet fields + metadata.user_id (no embeddings, as its input "
                       "does)", t_load, c_load),
                      (fmt, "cluster_facets: facet fields of every summary", t_rows, c_rows),
                      (fmt, f"cluster_facets: the table ({facets.num_rows:,} clusters)", t_table, c_table),
                      (fmt, "cluster_facets: write Parquet + JSONL (atomic)", t_write, c_write),
                      (fmt, "**cluster_facets: total**", total, c_total),
                      (fmt, "(before: every column with the embeddings, as `clusters` loads them; not in the "
                       "total)", t_full, c_full),
                      (fmt, "user threshold: metadata.user_id of every summary (from the columns `clusters` "
                       "loads)", t_users, c_users)]
            print(f"{fmt}: facets total {total:.2f} s ({100 * total / PIPELINE_100K_WALL_S:.1f}% of "
                  f"{PIPELINE_100K_WALL_S} s)")
    t_scrub, counts = best(lambda: (lambda c: (scrub_summaries(rows, c), c)[1])(Counter()), repeat)
    table.append(("models", f"scrubbing every summary's text fields ({sum(counts.values()):,} replaced)", t_scrub,
                  CPU_TIMES[-1]))
    lines = [
        "# Privacy and facets: cost at 100,000 conversations",
        "",
        f"`python benchmarks/facets.py --n {n} --repeat {repeat}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; load average at the "
        f"start {load:.1f} (the machine was shared by eight sessions: the figures are upper bounds). Best of "
        f"{repeat}. Synthetic summaries (256-d embeddings, 1% with an e-mail address) and Kura's tree of "
        f"{len(clusters):,} clusters (base clusters of 10, parents of 10, 10 roots).",
        "",
        f"Shares: of the pipeline's end-to-end time at 100,000 ({PIPELINE_100K_WALL_S} s wall, {PIPELINE_100K_CPU_S} s "
        "CPU; offline models, Parquet checkpoints, at load 1.5-1.8: [scale.md](scale.md)). Target for "
        "`cluster_facets`: < 5%. Under a high load, wall time inflates more than CPU time: compare CPU to CPU.",
        "",
        "| checkpoint format | piece | wall s | CPU s | wall share | CPU share |",
        "|---|---|---:|---:|---:|---:|",
        *(f"| {fmt} | {what} | {sec:.2f} | {cpu:.2f} | {100 * sec / PIPELINE_100K_WALL_S:.1f}% | "
          f"{100 * cpu / PIPELINE_100K_CPU_S:.1f}% |" for fmt, what, sec, cpu in table),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
