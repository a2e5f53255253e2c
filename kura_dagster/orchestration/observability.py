"""Metadata worth looking at in the Dagster UI, built from an asset's output.

Numbers stay numbers (Dagster plots numeric metadata across materializations); the meta-cluster tree is
markdown; the cluster map is a small PNG scatter plot embedded in markdown as base64 (Dagster's own
tutorial does the same). Every builder returns a plain ``dict`` for ``MaterializeResult(metadata=...)``.
Rows, bytes, path, schema and a preview come from the IO manager (``io_managers/metadata.py``), not from here.
"""

from __future__ import annotations

import base64
import io
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg

from kura_dagster.pipeline.dimensionality import cluster_levels
from kura_dagster.types import Cluster, ProjectedCluster

TREE_MAX_LINES = 200
"""The tree markdown lists at most this many clusters (roots first, then their subtrees)."""
MAP_MAX_BYTES = 60_000
"""The embedded PNG is re-rendered at a lower resolution until it is at most this large."""
MAP_LABEL_CHARS = 36
LEGEND_ROOTS = 12
MAP_POINTS = 2_000
"""At most this many leaf clusters are drawn on the cluster map: the largest (ties by id), so the picture and its
cost stay bounded (~100k base clusters at 1M conversations); the title says how many are shown."""
"""The cluster map's legend names at most this many roots (the biggest)."""


def size_stats(sizes: Sequence[int], noun: str) -> dict[str, float | int]:
    """``min_/median_/mean_/max_{noun}`` as numbers (0 for an empty sequence)."""
    if not sizes:
        return {f"min_{noun}": 0, f"median_{noun}": 0.0, f"mean_{noun}": 0.0, f"max_{noun}": 0}
    return {
        f"min_{noun}": int(min(sizes)),
        f"median_{noun}": float(statistics.median(sizes)),
        f"mean_{noun}": round(float(statistics.fmean(sizes)), 3),
        f"max_{noun}": int(max(sizes)),
    }


def cluster_size_metadata(clusters: Sequence[Cluster]) -> dict[str, Any]:
    """For base clusters: how many, and how big (min, median, mean, max conversations per cluster)."""
    sizes = [len(c.chat_ids) for c in clusters]
    return {
        "clusters": len(clusters),
        "conversations_clustered": sum(sizes),
        **size_stats(sizes, "cluster_size"),
    }


def _md_escape(text: str) -> str:
    out = text.replace("\\", "\\\\")
    for ch in "`*_[]<>#|":
        out = out.replace(ch, "\\" + ch)
    return " ".join(out.split())


def _children(clusters: Sequence[Cluster]) -> dict[str | None, list[Cluster]]:
    children: dict[str | None, list[Cluster]] = {}
    for c in clusters:
        children.setdefault(c.parent_id, []).append(c)
    for kids in children.values():
        kids.sort(key=lambda c: (-len(c.chat_ids), c.name, c.id))
    return children


def tree_markdown(clusters: Sequence[Cluster], max_lines: int = TREE_MAX_LINES) -> str:
    """The hierarchy as a nested markdown list, biggest first: ``- **name** (n conversations)``."""
    children = _children(clusters)
    lines: list[str] = []
    stack: list[tuple[Cluster, int]] = [(c, 0) for c in reversed(children.get(None, []))]
    while stack and len(lines) < max_lines:
        c, depth = stack.pop()
        n = len(c.chat_ids)
        lines.append(f"{'  ' * depth}- **{_md_escape(c.name)}** ({n} conversation{'s' if n != 1 else ''})")
        stack.extend((k, depth + 1) for k in reversed(children.get(c.id, [])))
    shown = len(lines)
    if shown < len(clusters):
        lines.append(f"\n… and {len(clusters) - shown} more clusters (the full tree is in the checkpoint).")
    return "\n".join(lines) if lines else "(no clusters)"


def tree_metadata(clusters: Sequence[Cluster]) -> dict[str, Any]:
    """For meta clusters: how many, how many roots and leaves, the depth (levels; 1 = flat) and the tree."""
    levels = cluster_levels(clusters) if clusters else {}
    parents = {c.parent_id for c in clusters if c.parent_id is not None}
    roots = [c for c in clusters if c.parent_id is None]
    return {
        "clusters": len(clusters),
        "root_clusters": len(roots),
        "leaf_clusters": sum(1 for c in clusters if c.id not in parents),
        "tree_depth": (max(levels.values()) + 1) if levels else 0,
        **size_stats([len(c.chat_ids) for c in roots], "root_cluster_size"),
        "cluster_tree": dg.MetadataValue.md(tree_markdown(clusters)),
    }


def _root_of(clusters: Sequence[Cluster]) -> dict[str, str]:
    by_id = {c.id: c for c in clusters}
    out: dict[str, str] = {}
    for c in clusters:
        node, seen = c, set()
        while node.parent_id is not None and node.parent_id in by_id and node.id not in seen:
            seen.add(node.id)
            node = by_id[node.parent_id]
        out[c.id] = node.id
    return out


def _short(text: str, n: int = MAP_LABEL_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def map_leaves(projected: Sequence[ProjectedCluster], parents: set[str] | None = None
               ) -> tuple[list[ProjectedCluster], int]:
    """``(the leaf clusters drawn, how many leaves there are)``: at most :data:`MAP_POINTS`, the largest (ties
    by id), in their original order."""
    parents = {p.parent_id for p in projected if p.parent_id is not None} if parents is None else parents
    leaves = [p for p in projected if p.id not in parents] or list(projected)
    if len(leaves) <= MAP_POINTS:
        return leaves, len(leaves)
    keep = {p.id for p in sorted(leaves, key=lambda p: (-len(p.chat_ids), p.id))[:MAP_POINTS]}
    return [p for p in leaves if p.id in keep], len(leaves)


def cluster_map_png(projected: Sequence[ProjectedCluster], dpi: int = 90) -> bytes:
    """A scatter plot of the cluster map: leaf clusters as dots sized by conversations and coloured by their
    root, with the roots in the legend. Rendered on Matplotlib's Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 4.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    by_id = {p.id: p for p in projected}
    root_of = _root_of(projected)
    roots = sorted({root_of[p.id] for p in projected}, key=lambda r: (-len(by_id[r].chat_ids), by_id[r].name, r))
    colour = {r: f"C{i % 10}" for i, r in enumerate(roots)}
    parents = {p.parent_id for p in projected if p.parent_id is not None}
    leaves, total = map_leaves(projected, parents)
    biggest = max((len(p.chat_ids) for p in leaves), default=1) or 1
    by_root: dict[str, list[ProjectedCluster]] = {}
    for p in leaves:
        by_root.setdefault(root_of[p.id], []).append(p)
    for i, r in enumerate(roots):
        mine = by_root.get(r, [])
        label = f"{_short(by_id[r].name)} ({len(by_id[r].chat_ids)})" if i < LEGEND_ROOTS else None
        ax.scatter(
            [p.x_coord for p in mine], [p.y_coord for p in mine],
            s=[12 + 220 * math.sqrt(len(p.chat_ids) / biggest) for p in mine],
            color=colour[r], alpha=0.7, edgecolors="white", linewidths=0.5, label=label,
        )
    more = f", {len(roots) - LEGEND_ROOTS} more roots not in the legend" if len(roots) > LEGEND_ROOTS else ""
    shown = f"the {len(leaves)} largest of {total} clusters" if total > len(leaves) else f"{total} clusters"
    ax.set_title(f"Cluster map: {shown} under {len(roots)} roots{more}", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False, markerscale=0.6,
              title="root (conversations)", title_fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _palette_png(png: bytes, colours: int = 64) -> bytes:
    """``png`` as a palette PNG of ``colours`` colours (Pillow, which Matplotlib depends on)."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colours).save(out, format="PNG", optimize=True)
    return out.getvalue()


def cluster_map_metadata(projected: Sequence[ProjectedCluster]) -> dict[str, Any]:
    """The cluster map as markdown with an embedded PNG (kept under ``MAP_MAX_BYTES``), plus its size."""
    if not projected:
        return {"cluster_map": dg.MetadataValue.md("(no clusters to plot)"), "cluster_map_bytes": 0}
    png = b""
    for dpi in (90, 72, 56, 40):
        png = cluster_map_png(projected, dpi=dpi)
        if len(png) <= MAP_MAX_BYTES:
            break
        small = _palette_png(png)  # 64 colours: a crowded map often fits at this resolution (one render fewer)
        if len(small) <= MAP_MAX_BYTES:
            png = small
            break
    b64 = base64.b64encode(png).decode("ascii")
    return {
        "cluster_map": dg.MetadataValue.md(f"![Cluster map](data:image/png;base64,{b64})"),
        "cluster_map_bytes": len(png),
    }


def projection_metadata(projected: Sequence[ProjectedCluster]) -> dict[str, Any]:
    """For projected clusters: how many, the deepest level and the cluster map."""
    return {
        "clusters": len(projected),
        "max_level": max((p.level for p in projected), default=0),
        **cluster_map_metadata(projected),
    }


class ProgressReporter:
    """Logs ``what: done/total unit (n from cache, m duplicates), rate unit/s, ETA`` for a stage, at most every
    ``every`` seconds, and always once at the end.

    Use it as a stage's ``progress(done, total)`` callback. The stages call it once when they start, before
    any request, with what costs nothing (cache hits, duplicates): the clock starts at that call, so the rate
    is right from the first line on, and rate and ETA count only the work done in this run (``cached()`` and
    ``deduplicated()`` are left out of both). A stage that finishes before the first interval logs one line,
    with its real rate.
    """

    def __init__(
        self, what: str, unit: str, log: Callable[[str], None], *,
        cached: Callable[[], int] = lambda: 0, deduplicated: Callable[[], int] = lambda: 0,
        every: float = 5.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.unit, self.log = what, unit, log
        self.cached, self.deduplicated = cached, deduplicated
        self.every, self.clock = every, clock
        self.started: float | None = None
        self._last_at = 0.0
        self._last_done = -1
        self.lines: list[str] = []

    def rate(self, done: int, now: float | None = None) -> float:
        """Work done in this run per second since the stage started (cache hits and duplicates left out)."""
        now = self.clock() if now is None else now
        elapsed = now - (now if self.started is None else self.started)
        work = max(0, done - self.cached() - self.deduplicated())
        return work / elapsed if elapsed > 0 else 0.0

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.started is None:  # the stage's first call: it starts now
            self.started = self._last_at = now
        finished = done >= total
        if done == self._last_done or (not finished and now - self._last_at < self.every):
            return
        self._last_at, self._last_done = now, done
        rate = self.rate(done, now)
        if finished:
            eta = "0 s"
        elif rate > 0:
            eta = f"{(total - done) / rate:.0f} s"
        else:
            eta = "unknown"
        skipped = [f"{self.cached()} from cache"]
        if self.deduplicated():
            skipped.append(f"{self.deduplicated()} duplicates")
        line = (f"{self.what}: {done}/{total} {self.unit} ({', '.join(skipped)}), {rate:.1f} {self.unit}/s, "
                f"ETA {eta}")
        self.lines.append(line)
        self.log(line)


def request_metadata(**models: Any) -> dict[str, int]:
    """``<name>_requests`` (HTTP requests), ``<name>_cache_hits`` and ``<name>_deduplicated`` for each model
    given by keyword (a ``CachedNamingModel``/``CachedEmbeddingModel`` has counts; an OpenAI model has usage)."""
    out: dict[str, int] = {}
    for name, model in models.items():
        usage = getattr(model, "usage", None)
        counts = getattr(model, "counts", None)
        out[f"{name}_requests"] = int(usage.requests) if usage is not None else 0
        out[f"{name}_cache_hits"] = int(counts.cache_hits) if counts is not None else 0
        out[f"{name}_deduplicated"] = int(counts.deduplicated) if counts is not None else 0
    return out


def settings_metadata(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline settings that produced this output (launchpad overrides included), to compare runs."""
    return {"kura/settings": dg.MetadataValue.json(dict(settings))}
