"""Time and peak memory of the offline pipeline, stage by stage, at 1k, 10k and 100k conversations.

    python benchmarks/pipeline.py                    # 1k, 10k, 100k; writes benchmarks/results/pipeline.md
    python benchmarks/pipeline.py --sizes 1000 5000  # any sizes
    python benchmarks/pipeline.py --data support --out benchmarks/results/pipeline_support.md
                                                     # templated RAG support logs (issue 14)

Each size runs in its own subprocess (so peak memory is that size's alone), pinned to at most two CPU
cores with BLAS/OpenMP threads capped at two. Conversations come from the demo generator
(``kura_dagster.pipeline.demo_data``: seventeen topics, several phrasings and three many-valued slots per
topic, topic-specific answers and follow-ups), so texts are varied rather than copies of a few hundred.
``--data support`` uses ``kura_dagster_tests.support_data`` instead: questions wrapped in a RAG prompt
template with pasted markdown documentation, multi-turn support chats and code-heavy questions (long
messages, so the summary stage's template detection and cleaning are exercised).

Per stage the table reports wall time and the process's peak resident memory (RSS, sampled every 5 ms
by a background thread with psutil, and never below ``getrusage``'s high-water mark when it is the
stage that set it). "end to end" is the sum of the four stages; generating the input is reported
separately and is not part of the pipeline.

Target (issue 2): 100k conversations end to end in at most 5 minutes and 4 GB on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pipeline.md"
TARGET_SECONDS, TARGET_GB = 300, 4.0
STAGES = ("summaries", "clusters", "meta_clusters", "projected_clusters")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class PeakRSS:
    """Samples this process's RSS in a background thread; ``peak()`` is the highest since ``reset()``."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def reset(self) -> None:
        self._peak = self._proc.memory_info().rss

    def peak(self) -> int:
        return max(self._peak, self._proc.memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _maxrss_bytes() -> int:
    # Linux reports kilobytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(n: int, seed: int, data: str = "demo") -> dict:
    """Run the pipeline once on ``n`` generated conversations; return per-stage seconds and peak bytes."""
    from kura_dagster.pipeline import (
        PipelineSettings,
        demo_conversations,
        generate_base_clusters,
        project_clusters,
        reduce_clusters,
        summarise_conversations,
    )
    from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel, LocalSummaryModel

    sampler = PeakRSS()
    rows: dict[str, dict] = {}

    def timed(name, fn):
        sampler.reset()
        before_max = _maxrss_bytes()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = sampler.peak()
        if _maxrss_bytes() > before_max:  # this stage set a new high-water mark: trust the kernel's figure
            peak = max(peak, _maxrss_bytes())
        rows[name] = {"seconds": seconds, "cpu_seconds": cpu, "peak_bytes": peak}
        return out

    settings = PipelineSettings(seed=seed)
    if data == "support":
        sys.path.insert(0, str(HERE.parent))  # the generator lives with the tests (kura_dagster_tests/)
        from kura_dagster_tests.support_data import support_conversations

        convs = timed("generate", lambda: support_conversations(n, seed=seed))
    else:
        convs = timed("generate", lambda: demo_conversations(n, seed=seed))
    summary_model = LocalSummaryModel()
    embedder = LocalEmbeddingModel(dims=settings.embedding_dims, seed=settings.seed)
    namer = LocalClusterNamingModel(seed=settings.seed)
    summaries = timed("summaries", lambda: summarise_conversations(convs, summary_model, embedder))
    clusters = timed("clusters", lambda: generate_base_clusters(summaries, namer, settings))
    def meta_step():  # as the asset does: groups formed on the base clusters' centroids in the summaries' space
        from kura_dagster.pipeline.cluster import embedding_matrix
        from kura_dagster.pipeline.meta_cluster import cluster_centroids

        centroids = cluster_centroids(clusters, [s.chat_id for s in summaries], embedding_matrix(summaries))
        return reduce_clusters(clusters, namer, embedder, settings, centroids=centroids)

    meta = timed("meta_clusters", meta_step)
    projected = timed("projected_clusters", lambda: project_clusters(meta, embedder, settings))
    sampler.stop()
    return {
        "n": n,
        "stages": rows,
        "base_clusters": len(clusters),
        "all_clusters": len(meta),
        "roots": sum(c.parent_id is None for c in meta),
        "projected": len(projected),
        "max_rss_bytes": _maxrss_bytes(),
    }


def run_pinned_child(script: str | Path, args: list[str], env: dict[str, str], what: str) -> dict:
    """Run ``script args`` in a fresh Python pinned to two cores; its last stdout line is the JSON result.
    (``benchmarks/scale.py`` runs its children through this too.)"""
    cmd = [sys.executable, str(Path(script).resolve()), *args]
    pin = None
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:2]
        pin = lambda: os.sched_setaffinity(0, cores)  # noqa: E731 - runs in the child before exec
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=pin, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {what} failed:\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_size(n: int, seed: int, data: str = "demo") -> dict:
    env = dict(os.environ, **{v: "2" for v in THREAD_VARS})
    return run_pinned_child(__file__, ["--child", str(n), "--seed", str(seed), "--data", data], env, f"for n={n}")


def _mb(b: int) -> str:
    return f"{b / 2**20:,.0f}"


def table(results: list[dict]) -> str:
    sizes = [r["n"] for r in results]
    head = "| stage | " + " | ".join(f"{n:,}: wall s | {n:,}: CPU s | {n:,}: peak MB" for n in sizes) + " |"
    sep = "|---|" + "---:|---:|---:|" * len(sizes)
    lines = [head, sep]
    for stage in ("generate (input, not timed in total)", *STAGES):
        key = stage.split(" ")[0]
        cells = []
        for r in results:
            s = r["stages"][key]
            cells += [f"{s['seconds']:.2f}", f"{s['cpu_seconds']:.2f}", _mb(s["peak_bytes"])]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    cells = []
    for r in results:
        total = sum(r["stages"][s]["seconds"] for s in STAGES)
        cpu = sum(r["stages"][s]["cpu_seconds"] for s in STAGES)
        cells += [f"**{total:.2f}**", f"**{cpu:.2f}**", f"**{_mb(r['max_rss_bytes'])}**"]
    lines.append("| **end to end** (4 stages; peak = process max RSS) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| conversations | base clusters | all clusters | roots |")
    lines.append("|---:|---:|---:|---:|")
    for r in results:
        lines.append(f"| {r['n']:,} | {r['base_clusters']:,} | {r['all_clusters']:,} | {r['roots']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--data", choices=("demo", "support"), default="demo",
                    help="demo: the demo generator; support: templated RAG support conversations")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.seed, args.data)))
        return 0
    results = []
    for n in args.sizes:
        print(f"running n={n:,} …", file=sys.stderr, flush=True)
        results.append(run_size(n, args.seed, args.data))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    md = "\n".join([
        "# Offline pipeline benchmark",
        "",
        f"`python benchmarks/pipeline.py{' --data support' if args.data == 'support' else ''}` — "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, Python "
        f"{platform.python_version()}, {platform.machine()}, {min(cpus or 1, 2)} cores (pinned), "
        "BLAS/OpenMP threads = 2. Input: " + (
            "templated RAG support conversations (`support_data`: prompt template, pasted markdown docs, "
            "multi-turn chats, code)." if args.data == "support"
            else "the demo generator (17 topics, varied phrasings and slots)."),
        f"Target: 100k conversations end to end in ≤ {TARGET_SECONDS} s and ≤ {TARGET_GB:g} GB.",
        "Peak MB is the process's resident memory at its highest during that stage (it includes the data "
        "held from earlier stages). CPU s is the process's user+system time (up to 2x wall on two cores); "
        f"load average when run: {os.getloadavg()[0]:.1f} (other work on the machine inflates wall time).",
        "",
        table(results),
        "",
    ])
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md, encoding="utf-8")
    big = [r for r in results if r["n"] >= 100_000]
    for r in big:
        total = sum(r["stages"][s]["seconds"] for s in STAGES)
        ok = total <= TARGET_SECONDS and r["max_rss_bytes"] <= TARGET_GB * 2**30
        print(f"n={r['n']:,}: {total:.0f} s, {r['max_rss_bytes'] / 2**30:.2f} GB -> "
              f"{'meets' if ok else 'MISSES'} the target", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
