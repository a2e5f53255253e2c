"""UI metadata builders: cluster sizes, the meta-cluster tree as markdown, and the cluster-map PNG."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dagster as dg

from kura_dagster.orchestration.observability import (
    MAP_MAX_BYTES,
    ProgressReporter,
    cluster_map_metadata,
    cluster_size_metadata,
    projection_metadata,
    tree_markdown,
    tree_metadata,
)
from kura_dagster.types import Cluster, ProjectedCluster


def _cluster(cid: str, chats: list[str], parent: str | None = None, name: str | None = None) -> Cluster:
    return Cluster(id=cid, name=name or cid, description="d", slug="a_b_c", chat_ids=chats, parent_id=parent)


def _tree() -> list[Cluster]:
    return [_cluster("p", ["1", "2", "3"], name="Fix *Python* [bugs]"), _cluster("a", ["1", "2"], "p"),
            _cluster("b", ["3"], "p"), _cluster("c", ["4", "5", "6", "7"])]


def _png(md: str) -> bytes:
    match = re.fullmatch(r"!\[Cluster map\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", md)
    assert match, md[:80]
    return base64.b64decode(match.group(1))


def test_cluster_sizes_are_numbers() -> None:
    md = cluster_size_metadata([_cluster("a", ["1", "2"]), _cluster("b", ["3"]), _cluster("c", ["4", "5", "6", "7"])])
    assert md == {"clusters": 3, "conversations_clustered": 7, "min_cluster_size": 1, "median_cluster_size": 2.0,
                  "mean_cluster_size": 2.333, "max_cluster_size": 4}
    assert cluster_size_metadata([])["max_cluster_size"] == 0


def test_tree_as_markdown_biggest_first_and_escaped() -> None:
    assert tree_markdown(_tree()) == (
        "- **c** (4 conversations)\n"
        "- **Fix \\*Python\\* \\[bugs\\]** (3 conversations)\n"
        "  - **a** (2 conversations)\n"
        "  - **b** (1 conversation)"
    )
    assert tree_markdown(_tree(), max_lines=2).endswith("… and 2 more clusters (the full tree is in the checkpoint).")


def test_tree_metadata_counts_roots_leaves_and_depth() -> None:
    md = tree_metadata(_tree())
    assert (md["clusters"], md["root_clusters"], md["leaf_clusters"], md["tree_depth"]) == (4, 2, 3, 2)
    assert (md["min_root_cluster_size"], md["max_root_cluster_size"]) == (3, 4)
    assert isinstance(md["cluster_tree"], dg.MarkdownMetadataValue)
    assert tree_metadata([_cluster("x", ["1"])])["tree_depth"] == 1, "flat: one level"


def test_cluster_map_is_a_small_png_of_kuras_own_projection(shared_data: Path) -> None:
    projected = [ProjectedCluster.model_validate_json(line)
                 for line in (shared_data / "dimensionality.jsonl").read_text().splitlines() if line.strip()]
    md = projection_metadata(projected)
    png = _png(md["cluster_map"].value)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (648, 378)
    assert md["cluster_map_bytes"] == len(png) <= MAP_MAX_BYTES
    assert md["clusters"] == len(projected) and md["max_level"] == max(p.level for p in projected)


def test_cluster_map_of_nothing_is_a_note() -> None:
    md = cluster_map_metadata([])
    assert md["cluster_map_bytes"] == 0 and "no clusters" in md["cluster_map"].value


# --- progress -------------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reporter(clock: FakeClock, cached: int = 0, duplicates: int = 0) -> tuple[ProgressReporter, list[str]]:
    lines: list[str] = []
    return ProgressReporter("embeddings", "texts", lines.append, cached=lambda: cached,
                            deduplicated=lambda: duplicates, every=5.0, clock=clock), lines


def test_rate_and_eta_are_right_at_the_first_and_last_tick_and_leave_out_cache_hits() -> None:
    clock = FakeClock()
    progress, lines = reporter(clock, cached=900)
    progress(900, 1000)  # the stage starts: 900 cached, nothing to log yet
    clock.now += 2.0
    progress(920, 1000)  # before the first interval: quiet
    clock.now += 3.0
    progress(950, 1000)  # first tick, 5 s in: 50 texts of work
    clock.now += 5.0
    progress(1000, 1000)
    assert lines == ["embeddings: 950/1000 texts (900 from cache), 10.0 texts/s, ETA 5 s",
                     "embeddings: 1000/1000 texts (900 from cache), 10.0 texts/s, ETA 0 s"]


def test_a_stage_that_finishes_before_the_first_tick_reports_its_real_rate_once() -> None:
    clock = FakeClock()
    progress, lines = reporter(clock, duplicates=200)
    progress(200, 100_000)
    clock.now += 0.5
    progress(50_000, 100_000)
    clock.now += 0.5
    progress(100_000, 100_000)
    progress(100_000, 100_000)  # told again: not logged twice
    assert lines == ["embeddings: 100000/100000 texts (0 from cache, 200 duplicates), 99800.0 texts/s, ETA 0 s"]


def test_everything_cached_is_no_work_and_no_rate() -> None:
    progress, lines = reporter(FakeClock(), cached=10)
    progress(10, 10)
    assert lines == ["embeddings: 10/10 texts (10 from cache), 0.0 texts/s, ETA 0 s"]


def test_the_stages_start_the_clock_before_any_work() -> None:
    """Through the real stage: its first call comes before any summary is made, with the duplicates."""
    from kura_dagster.pipeline.models.local import LocalEmbeddingModel, LocalSummaryModel
    from kura_dagster.pipeline.summarise import SummaryCounts, summarise_conversations
    from kura_dagster_tests.fake_openai import fake_conversations

    convs = fake_conversations(5) * 3
    calls: list[tuple[int, int]] = []
    counts = SummaryCounts()
    summarise_conversations(convs, LocalSummaryModel(), LocalEmbeddingModel(dims=8), counts=counts,
                            progress=lambda d, t: calls.append((d, t)),
                            embedding_progress=lambda d, t: calls.append((-d, t)))
    assert calls[0] == (10, 15) and calls[-1] == (-15, 15)  # 10 duplicates known before any work
    assert (-10, 15) in calls and counts.embeddings.deduplicated == 10


def test_cluster_map_draws_at_most_map_points_leaves_the_largest_first(monkeypatch) -> None:
    from kura_dagster.orchestration import observability

    monkeypatch.setattr(observability, "MAP_POINTS", 3)

    def p(cid: str, n: int, parent: str | None = "root") -> ProjectedCluster:
        return ProjectedCluster(id=cid, name=cid, description="", slug=cid, chat_ids=[f"{cid}{i}" for i in range(n)],
                                parent_id=parent, x_coord=float(n), y_coord=0.0, level=0 if parent is None else 1)

    tree = [p("root", 20, None), p("a", 2), p("b", 7), p("c", 5), p("d", 5), p("e", 1)]
    shown, total = observability.map_leaves(tree)
    assert total == 5 and [x.id for x in shown] == ["b", "c", "d"]  # 7, 5, 5 (c before d by id), original order
    md = observability.cluster_map_metadata(tree)
    assert _png(md["cluster_map"].value).startswith(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setattr(observability, "MAP_POINTS", 10)
    assert [x.id for x in observability.map_leaves(tree)[0]] == ["a", "b", "c", "d", "e"]
