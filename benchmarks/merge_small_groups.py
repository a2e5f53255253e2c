"""merge_small_groups alone (the neighbour-limited merge) on synthetic pieces, at 100k- and 1M-sized inputs.

    python benchmarks/merge_small_groups.py --sizes 100000 1000000 [--reference path/to/old_thresholds.py]

Input (seeded, not timed): ``n`` unit rows of 256 dimensions around ``n / 40`` topic centres (noise 0.6 per
dimension over the centre's 1), each topic cut into k-means-like groups of 2–18 rows (about half below
``min_conversations = 10``), so the number of small pieces grows with ``n`` as it does with Kura's
``k = n / clusters_per_group``. Prints, per size: pieces, merges, CPU seconds of the merge and, with
``--reference`` (a copy of an older ``thresholds.py``, e.g. ``git show ca32554:kura_dagster/pipeline/thresholds.py``),
the same for its ``merge_small_groups`` (up to ``--reference-up-to``) and whether both returned the same groups.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from kura_dagster.pipeline.thresholds import FoldReport, Thresholds, merge_small_groups


def pieces(n: int, seed: int = 0, dim: int = 256) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    topics = max(1, n // 40)
    centres = rng.standard_normal((topics, dim), dtype=np.float32)
    topic = np.sort(rng.integers(0, topics, n))
    x = centres[topic] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    groups, at = [], 0
    while at < n:
        size = int(rng.integers(2, 19))
        end = min(at + size, n)
        if topic[end - 1] != topic[at]:  # a group stays within its topic
            end = at + int(np.searchsorted(topic[at:end], topic[at], side="right"))
        groups.append(np.arange(at, end))
        at = end
    return x, groups


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--reference", help="an older thresholds.py whose merge_small_groups to compare with")
    ap.add_argument("--reference-up-to", type=int, default=300_000)
    ap.add_argument("--brute-up-to", type=int, default=None,
                    help="pieces up to which neighbours are exact (default: BRUTE_NEIGHBOURS_UP_TO); 0: always bucketed")
    args = ap.parse_args()
    t = Thresholds(min_conversations=10)
    reference = None
    if args.reference:
        import importlib.util

        spec = importlib.util.spec_from_file_location("reference_thresholds", args.reference)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        reference = module.merge_small_groups
    print(f"load average {os.getloadavg()[0]:.2f}")
    print("| n | groups | small pieces | merges | neighbour-limited CPU s (wall s) | reference CPU s (wall s) "
          "| same groups |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for n in args.sizes:
        x, groups = pieces(n)
        small = sum(len(g) < t.min_conversations for g in groups)
        rep = FoldReport()
        c0, w0 = cpu(), time.perf_counter()
        fast = merge_small_groups(x, list(groups), None, t, 0.95, rep, brute_up_to=args.brute_up_to)
        fast_cpu, fast_wall = cpu() - c0, time.perf_counter() - w0
        ex, same = "—", "—"
        if reference is not None and n <= args.reference_up_to:
            c0, w0 = cpu(), time.perf_counter()
            full = reference(x, list(groups), None, t, 0.95, FoldReport())
            ex = f"{cpu() - c0:.1f} ({time.perf_counter() - w0:.1f})"
            same = "yes" if [g.tolist() for g in full] == [g.tolist() for g in fast] else \
                f"no: {len(full)} vs {len(fast)} groups"
        print(f"| {n:,} | {len(groups):,} | {small:,} | {rep.small_groups_merged:,} | "
              f"{fast_cpu:.1f} ({fast_wall:.1f}) | {ex} | {same} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
