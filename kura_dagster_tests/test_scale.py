"""What keeps clustering bounded at a million conversations: float32 k-means whose groups stay small as k grows,
naming that builds summary models only for the rows it samples, and partitions concatenated without a second
copy of their vectors (benchmarks/scale.py measures the whole)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import normalized_mutual_info_score

from kura_dagster.checkpoints.columnar import SummaryColumns, load_summary_columns
from kura_dagster.checkpoints.parquet import ParquetCheckpointManager
from kura_dagster.pipeline import kmeans
from kura_dagster.pipeline.cluster import (
    NAMING_FIELDS,
    NAMING_SAMPLE,
    base_clusters_from_columns,
    generate_base_clusters,
    naming_sample,
)
from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel, LocalSummaryModel
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.pipeline.summarise import summarise_conversations
from kura_dagster.types import ConversationSummary, GeneratedCluster


class RecordingNamer:
    """The local naming model, recording the groups it was given."""

    identity = "recording"

    def __init__(self) -> None:
        self.inner = LocalClusterNamingModel()
        self.groups: list[list[ConversationSummary]] = []

    def name_clusters(self, groups):
        self.groups = [list(g) for g in groups]
        return self.inner.name_clusters(groups)

    def name_meta_clusters(self, groups):  # pragma: no cover - not used here
        return [GeneratedCluster(name="x", summary="x", slug="x") for _ in groups]


@pytest.fixture(scope="module")
def summaries() -> list[ConversationSummary]:
    convs = demo_conversations(600, seed=3)
    return summarise_conversations(convs, LocalSummaryModel(), LocalEmbeddingModel(dims=64))


def _columns(tmp_path, summaries: list[ConversationSummary], parts: int = 3) -> SummaryColumns:
    manager = ParquetCheckpointManager(str(tmp_path / "summaries"))
    bounds = np.linspace(0, len(summaries), parts + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        manager.save_checkpoint(f"day{i}", summaries[a:b], model_class=ConversationSummary)
    return SummaryColumns.concat([load_summary_columns(manager, f"day{i}") for i in range(parts)])


# --- k-means ---------------------------------------------------------------------------------------------


def test_large_k_keeps_each_groups_k_near_fine_k(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above FINE_K² clusters the coarse level makes ~k/FINE_K groups, so no k-means grows with k (n·k)."""
    monkeypatch.setattr(kmeans, "FINE_K", 8)
    calls: list[tuple[int, int, np.dtype]] = []
    real = kmeans._kmeans

    def spy(x, k, seed, weights=None):
        calls.append((len(x), k, x.dtype))
        return real(x, k, seed, weights)

    monkeypatch.setattr(kmeans, "_kmeans", spy)
    k = 400
    x, truth = make_blobs(n_samples=k * 8, centers=k, n_features=16, cluster_std=0.05, center_box=(-50, 50),
                          random_state=5)
    labels = kmeans.cluster_labels(x.astype(np.float32), k, seed=0)
    assert labels.max() + 1 == k
    assert normalized_mutual_info_score(truth, labels) > 0.95
    assert calls[0][1] == kmeans.coarse_groups(k) == math.ceil(k / 8) > math.ceil(math.sqrt(k))
    assert sum(c[1] for c in calls[1:]) == k
    assert max(c[1] for c in calls[1:]) <= 4 * 8  # a group's share of k stays near FINE_K
    assert {c[2] for c in calls} == {np.dtype(np.float32)}  # float32 in, float32 k-means: no float64 copy
    assert kmeans.coarse_groups(36) == 6  # small k: sqrt(k), as before


def test_distinct_rows_by_digest_of_float32_rows() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(7, 32)).astype(np.float32)
    pick = rng.integers(0, 7, size=500)
    first, inverse, counts = kmeans.distinct_rows(base[pick])
    assert len(first) == len(set(pick.tolist())) and counts.sum() == 500
    for i in range(500):  # same row, same id; different rows, different ids
        assert (base[pick][first[inverse[i]]] == base[pick][i]).all()
    # rows that differ in one bit of one value are told apart
    y = base.copy()
    y[3, 5] = np.nextafter(y[3, 5], np.float32(np.inf))
    assert len(kmeans.distinct_rows(np.vstack([base, y]))[0]) == 8


# --- naming reads only its sample ------------------------------------------------------------------------


def test_naming_sample_is_seeded_by_chat_id_and_bounded() -> None:
    ids = [f"chat-{i}" for i in range(100)]
    members = np.arange(0, 100, 3)
    a = naming_sample(ids, members, seed=0)
    assert len(a) == NAMING_SAMPLE and set(a) <= set(members) and (np.diff(a) > 0).all()
    assert np.array_equal(a, naming_sample(ids, members, seed=0))
    assert not np.array_equal(a, naming_sample(ids, members, seed=1))
    # a cluster's sample depends on its members' chat ids only, not on their row numbers
    shifted = ["pad"] * 5 + ids
    assert [shifted[i] for i in naming_sample(shifted, members + 5, seed=0)] == [ids[i] for i in a]
    small = np.array([4, 2, 9])
    assert np.array_equal(naming_sample(ids, small, seed=0), small)


def test_columns_path_equals_models_path_and_builds_only_sampled_models(tmp_path, summaries) -> None:
    settings = PipelineSettings(clusters_per_group=40)  # clusters larger than the naming sample
    columns = _columns(tmp_path, summaries)
    built: list[int] = []
    real = SummaryColumns.models_for

    def spy(self, rows, fields=None):
        out = real(self, rows, fields)
        if self._parts is None:
            built.append(len(out))
        return out

    namer = RecordingNamer()
    SummaryColumns.models_for = spy
    try:
        from_columns = base_clusters_from_columns(columns, namer, settings)
    finally:
        SummaryColumns.models_for = real
    from_models = generate_base_clusters(summaries, LocalClusterNamingModel(), settings)
    assert [c.model_dump() for c in from_columns] == [c.model_dump() for c in from_models]
    sizes = [len(c.chat_ids) for c in from_columns]
    assert sum(sizes) == len(summaries) and max(sizes) > NAMING_SAMPLE
    assert [len(g) for g in namer.groups] == [min(s, NAMING_SAMPLE) for s in sizes]
    assert sum(built) == sum(min(s, NAMING_SAMPLE) for s in sizes) < len(summaries)
    by_id = {s.chat_id: s for s in summaries}
    for cluster, group in zip(from_columns, namer.groups):
        assert {s.chat_id for s in group} <= set(cluster.chat_ids)
        for s in group:  # the generated fields are read; metadata and the embedding are not
            assert s.embedding is None and s.metadata == {}
            assert s.model_dump(include=set(NAMING_FIELDS)) == by_id[s.chat_id].model_dump(include=set(NAMING_FIELDS))


# --- partitions concatenated once ------------------------------------------------------------------------


def test_concat_holds_the_vectors_once_and_models_for_reads_rows_in_order(tmp_path, summaries) -> None:
    columns = _columns(tmp_path, summaries, parts=4)
    assert columns.embeddings.shape == (len(summaries), 64)
    for part in columns._parts:  # each part's matrix is now a view of the concatenated one
        assert np.shares_memory(part.embeddings, columns.embeddings)
    np.testing.assert_array_equal(columns.embeddings, np.asarray([s.embedding for s in summaries], dtype=np.float32))
    rows = [599, 0, 151, 150, 449, 3]
    got = columns.models_for(rows, fields=("summary", "request"))
    assert [m.chat_id for m in got] == [summaries[i].chat_id for i in rows]
    assert [m.request for m in got] == [summaries[i].request for i in rows]
    assert all(m.languages is None and m.metadata == {} for m in got)
    full = columns.models_for([10])[0]
    assert full == summaries[10].model_copy(update={"embedding": None})
    with pytest.raises(IndexError, match="outside the 600 summaries"):
        columns.models_for([600])


def test_clusters_check_reads_summaries_through_the_columnar_path(tmp_path) -> None:
    """The blocking check on clusters runs in the clusters run: it must not load every summary as a model."""
    from kura_dagster import build_kura_defs
    from kura_dagster.orchestration.checks import _chat_ids

    defs = build_kura_defs("s", checkpoint_dir=str(tmp_path / "ck"), partitions="daily", partition_start="2026-01-05")
    check = next(c for c in defs.asset_checks if any(k.name == "every_summary_in_one_cluster" for k in c.check_keys))
    assert check.node_def.input_dict["summaries"].dagster_type.typing_type is SummaryColumns
    # several partitions of columns, or of models (another IO manager), give the chat ids in partition order
    cols = SummaryColumns(["b1", "b2"], np.zeros((2, 3), dtype=np.float32))
    models = [ConversationSummary(summary="s", chat_id="a1", metadata={})]
    assert _chat_ids({"2026-01-06": cols, "2026-01-05": models}) == ["a1", "b1", "b2"]
