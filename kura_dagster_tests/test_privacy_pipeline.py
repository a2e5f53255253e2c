"""Issue 20: aggregation thresholds, scrubbing through the pipeline, the privacy auditor and the facets table.

Expectations are written by hand: cluster geometry and facet figures below, planted values searched for as
raw bytes in every file the pipeline writes.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from kura_dagster.checkpoints.columnar import SummaryColumns
from kura_dagster.pipeline.facets import FacetRows, cluster_facets
from kura_dagster.pipeline.settings import PipelineSettings
from kura_dagster.pipeline.thresholds import (
    OTHER_NAME,
    FoldReport,
    ThresholdError,
    Thresholds,
    base_clusters_with_thresholds,
    threshold_problems,
)
from kura_dagster.types import Cluster, Conversation, ConversationSummary, GeneratedCluster, Message
from kura_dagster_tests.test_kura_layout import kura_python  # noqa: F401 (a fixture)

API_KEY = "sk-test-privacy-20"


# --- thresholds on hand-made geometry ---------------------------------------------------------------------

class RecordingNamer:
    """Names each group after its first member and records every chat id it was shown."""

    identity = "recording"

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def name_clusters(self, groups):
        out = []
        for g in groups:
            self.seen.update(s.chat_id for s in g)
            out.append(GeneratedCluster(name=f"named after {g[0].chat_id[0]}", summary="s", slug="x_y_z"))
        return out


def _blobs(users: dict[str, list[str]] | None = None) -> SummaryColumns:
    """Four tight blobs in 8-D: A (12 at e1), B (11 at e2), C (3 at 0.6 e1 + 0.8 e3, nearest A), D (2 at
    0.6 e2 + 0.8 e4, nearest B). Chat ids start with their blob's letter."""
    rng = np.random.default_rng(7)
    e = np.eye(8)
    centres = {"A": (12, e[0]), "B": (11, e[1]), "C": (3, 0.6 * e[0] + 0.8 * e[2]), "D": (2, 0.6 * e[1] + 0.8 * e[3])}
    summaries = []
    for letter, (n, centre) in centres.items():
        for i in range(n):
            v = centre + rng.normal(0, 0.01, 8)
            user = (users or {}).get(letter, [f"{letter}-user-{i}"] * n)[i]
            summaries.append(ConversationSummary(chat_id=f"{letter}{i:02d}", summary=f"{letter} {i}", metadata={"uid": user},
                                                 embedding=(v / np.linalg.norm(v)).tolist()))
    return SummaryColumns.coerce(summaries)


SETTINGS = PipelineSettings(clusters_per_group=7)  # k = ceil(28 / 7) = 4: one group per blob


def _sizes(clusters: list[Cluster]) -> dict[str, int]:
    return {c.name: len(c.chat_ids) for c in clusters}


def test_small_groups_fold_into_the_nearest_shown_cluster_and_are_never_named():
    namer, report = RecordingNamer(), FoldReport()
    out = base_clusters_with_thresholds(_blobs(), namer, SETTINGS, Thresholds(min_conversations=10), report=report)
    assert _sizes(out) == {"named after A": 15, "named after B": 13}
    by_name = {c.name: set(c.chat_ids) for c in out}
    assert {f"C{i:02d}" for i in range(3)} <= by_name["named after A"]
    assert {f"D{i:02d}" for i in range(2)} <= by_name["named after B"]
    assert {cid[0] for cid in namer.seen} == {"A", "B"}  # C's and D's text never reached the namer
    assert (report.groups, report.small_groups, report.conversations_folded, report.conversations_in_other) == (4, 2, 5, 0)


def test_small_groups_together_make_one_other_cluster_named_for_what_it_is():
    namer = RecordingNamer()
    out = base_clusters_with_thresholds(_blobs(), namer, SETTINGS, Thresholds(min_conversations=5))
    assert _sizes(out) == {"named after A": 12, "named after B": 11, OTHER_NAME: 5}
    other = next(c for c in out if c.name == OTHER_NAME)
    assert sorted(other.chat_ids) == ["C00", "C01", "C02", "D00", "D01"] and other.slug == "other_requests"
    assert {cid[0] for cid in namer.seen} == {"A", "B"}


@pytest.mark.slow
def test_kura_reads_an_other_cluster_as_an_ordinary_cluster(tmp_path, kura_python):
    """Kura 0.5.4 (its own managers, in its own venv) loads the folded clusters like any others, in JSONL and in
    the Kura layout of Parquet and HF."""
    from kura_dagster.checkpoints import HFDatasetCheckpointManager, JSONLCheckpointManager, ParquetCheckpointManager
    from kura_dagster_tests.test_kura_layout import kura_loads

    out = base_clusters_with_thresholds(_blobs(), RecordingNamer(), SETTINGS, Thresholds(min_conversations=5))
    JSONLCheckpointManager(tmp_path / "jsonl").save_checkpoint("clusters", out)
    ParquetCheckpointManager(tmp_path / "parquet", layout="kura").save_checkpoint("clusters", out)
    HFDatasetCheckpointManager(tmp_path / "hf", layout="kura").save_checkpoint("clusters", out)
    got = kura_loads(kura_python, *(f"{fmt}:{tmp_path / fmt}" for fmt in ("jsonl", "parquet", "hf")))
    for where, stages in got.items():
        clusters = {c["name"]: c for c in stages["clusters"]}
        assert sorted(clusters) == sorted(["named after A", "named after B", OTHER_NAME]), where
        other = clusters[OTHER_NAME]
        assert sorted(other["chat_ids"]) == ["C00", "C01", "C02", "D00", "D01"] and other["count"] == 5, where
        assert other["slug"] == "other_requests" and other["parent_id"] is None, where


def test_user_threshold_and_auditor_withhold_like_small_groups():
    two_users = {"A": ["alice"] * 6 + ["bob"] * 6}  # A: 12 conversations but only 2 users
    namer = RecordingNamer()
    out = base_clusters_with_thresholds(_blobs(two_users), namer, SETTINGS,
                                        Thresholds(min_conversations=10, min_users=3, user_key="uid"))
    assert _sizes(out) == {"named after B": 11, OTHER_NAME: 17}  # A (2 users) + C + D: 7 users
    assert {cid[0] for cid in namer.seen} == {"B"}
    # the auditor rates B's name 2 (< 3): B is withheld too, and everything is one "Other" cluster
    report = FoldReport()
    out = base_clusters_with_thresholds(_blobs(), RecordingNamer(), SETTINGS, Thresholds(min_conversations=10),
                                        auditor=lambda names: [2 if n.name.endswith("B") else 5 for n in names],
                                        report=report)
    assert _sizes(out) == {"named after A": 12, OTHER_NAME: 16}
    assert report.withheld_groups == 1 and report.ratings == {5: 1, 2: 1}


def test_too_few_conversations_for_any_cluster_is_an_error_and_the_problems_name_small_clusters():
    with pytest.raises(ThresholdError, match="28 conversations cannot make one cluster of at least 30"):
        base_clusters_with_thresholds(_blobs(), RecordingNamer(), SETTINGS, Thresholds(min_conversations=30))
    small = Cluster(id="c1", name="n", description="d", slug="s", chat_ids=["a", "b"], parent_id=None)
    big = Cluster(id="c2", name="m", description="d", slug="s", chat_ids=list("cdefg"), parent_id=None)
    t = Thresholds(min_conversations=3, min_users=2, user_key="uid")
    problems = threshold_problems([small, big], t, {"a": "u1", "b": "u2", **{k: "u9" for k in "cdefg"}})
    assert problems == ["cluster 'c1' ('n') holds 2 conversation(s), fewer than min_conversations=3",
                        "cluster 'c2' ('m') holds 1 distinct 'uid', fewer than min_users=2"]


# --- facets against hand-computed figures ------------------------------------------------------------------

def _facet_corpus() -> tuple[list[Cluster], FacetRows]:
    def s(cid, langs, task, concern, frustration, errors):
        return ConversationSummary(chat_id=cid, summary="x", languages=langs, task=task, concerning_score=concern,
                                   user_frustration=frustration, assistant_errors=errors, metadata={})
    summaries = [s("s1", ["english", "python"], "debug code", 1, 2, []),
                 s("s2", ["english"], "debug code", 3, 4, ["wrong answer"]),
                 s("s3", ["german"], "write poem", None, None, None),
                 s("s4", ["english"], "plan trip", 5, 1, []),
                 s("s5", ["french"], "plan trip", 2, 1, []),
                 s("s6", [], None, 1, 3, ["x"])]
    rows = FacetRows.from_summaries(summaries, users=["u1", "u1", "u2", "u3", None, "u3"])
    parent = Cluster(id="P", name="parent", description="d", slug="p", chat_ids=[f"s{i}" for i in range(1, 7)],
                     parent_id=None)
    x = Cluster(id="X", name="x", description="d", slug="x", chat_ids=["s1", "s2", "s3"], parent_id="P")
    y = Cluster(id="Y", name="y", description="d", slug="y", chat_ids=["s4", "s5", "s6"], parent_id="P")
    return [parent, x, y], rows


def test_facets_match_hand_computed_figures():
    clusters, rows = _facet_corpus()
    table = {r["cluster_id"]: r for r in cluster_facets(clusters, rows).to_pylist()}
    x, y, p = table["X"], table["Y"], table["P"]
    assert (x["conversations"], x["users"], x["level"], x["is_base"]) == (3, 2, 1, True)
    assert dict(x["language_shares"]) == pytest.approx({"english": 2 / 3, "python": 1 / 3, "german": 1 / 3})
    assert dict(x["task_shares"]) == pytest.approx({"debug code": 2 / 3, "write poem": 1 / 3})
    assert (x["concerning_mean"], x["concerning_max"], x["frustration_mean"], x["assistant_error_share"]) \
        == pytest.approx((2.0, 3.0, 3.0, 0.5))
    assert (y["conversations"], y["users"]) == (3, 1)
    assert dict(y["language_shares"]) == pytest.approx({"english": 1 / 3, "french": 1 / 3})
    assert dict(y["task_shares"]) == pytest.approx({"plan trip": 2 / 3})
    assert (y["concerning_mean"], y["concerning_max"], y["frustration_mean"], y["assistant_error_share"]) \
        == pytest.approx((8 / 3, 5.0, 5 / 3, 1 / 3))
    assert (p["conversations"], p["users"], p["level"], p["is_base"], p["parent_id"]) == (6, 3, 0, False, None)
    assert dict(p["language_shares"]) == pytest.approx({"english": 0.5, "python": 1 / 6, "german": 1 / 6,
                                                        "french": 1 / 6})
    assert dict(p["task_shares"]) == pytest.approx({"debug code": 2 / 6, "plan trip": 2 / 6, "write poem": 1 / 6})
    assert (p["concerning_mean"], p["concerning_max"], p["frustration_mean"], p["assistant_error_share"]) \
        == pytest.approx((2.4, 5.0, 2.2, 0.4))
    offline = {r["cluster_id"]: r for r in cluster_facets(clusters, rows, model_facets=False).to_pylist()}
    assert [offline["P"][k] for k in ("task_shares", "concerning_mean", "concerning_max", "frustration_mean",
                                      "assistant_error_share")] == [None] * 5
    assert dict(offline["P"]["language_shares"]) == pytest.approx(dict(p["language_shares"]))


# --- the auditor: cached and deduplicated like every request -----------------------------------------------

def test_auditor_requests_are_cached_and_deduplicated(fake_openai, tmp_path):
    from kura_dagster.checkpoints.summary_cache import SummaryCache
    from kura_dagster.pipeline.audit import Auditor, audit_requests, openai_auditor
    from kura_dagster.pipeline.models.cached import CachedNamingModel
    from kura_dagster.pipeline.models.openai import OpenAIConfig
    from kura_dagster_tests.fake_openai import fake_privacy_rating

    names = [GeneratedCluster(name=f"Help with topic {i}", summary=f"Users asked about topic {i}.", slug="a_b_c")
             for i in range(4)]
    asked = [names[0], names[1], names[0], names[2], names[3]]
    expected = [fake_privacy_rating(r.messages[-1][1]) for r in audit_requests(asked)]
    config = OpenAIConfig(model="fake-model", base_url=fake_openai.url)

    first = Auditor(CachedNamingModel(openai_auditor(config), SummaryCache(str(tmp_path))))
    assert first(asked) == expected
    assert fake_openai.count("chat") == 4  # the repeated name is asked once
    assert (first.cached.counts.requested, first.cached.counts.deduplicated) == (4, 1)
    again = Auditor(CachedNamingModel(openai_auditor(config), SummaryCache(str(tmp_path))))
    assert again(asked) == expected
    assert fake_openai.count("chat") == 4 and again.cached.counts.cache_hits == 5  # a new run asks nothing


# --- end to end: planted personal data ----------------------------------------------------------------------

PLANTED = {
    "EMAIL": ["jane.doe@example.com", "jürgen.müller@beispiel.de"],
    "PHONE": ["(415) 555-2671", "+49 30 901820", "06 12 34 56 78", "+34 612 34 56 78"],
    "CARD": ["4111 1111 1111 1111", "5500-0000-0000-0004"],
    "IP": ["192.168.1.20", "2001:db8:85a3::8a2e:370:7334"],
    "URL": ["https://shop.example.com/reset?token=abc123&uid=42", "postgres://admin:s3cr3tPass@db.example.com/x"],
    "SECRET": ["AKIAIOSFODNN7EXAMPLE", "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
               "sk-proj-Abcdefghijklmnopqrstuvwxyz0123456789"],
}
VALUES = [v for vs in PLANTED.values() for v in vs]

TEMPLATES = [  # (user request with a planted value, assistant reply with another); several languages
    ("Please write an email to {v} asking for the invoice.", "Sure, here is a draft for {w}."),
    ("Kannst du mir helfen, eine E-Mail an {v} zu schreiben?", "Gerne, hier ist ein Entwurf für {w}."),
    ("Peux-tu m'aider à configurer le serveur {v} pour la production ?", "Voici la configuration pour {w}."),
    ("¿Puedes revisar este código?\n```python\nTOKEN = \"{v}\"\nprint(connect(TOKEN))\n```",
     "Claro. No pongas {w} en el código:\n```python\nimport os\nTOKEN = os.environ['TOKEN']\n```"),
]


def _planted_conversations(n: int = 48) -> list[Conversation]:
    base = datetime(2026, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))
    out = []
    for i in range(n):
        user, reply = TEMPLATES[i % len(TEMPLATES)]
        v, w = VALUES[i % len(VALUES)], VALUES[(i * 7 + 3) % len(VALUES)]
        out.append(Conversation(chat_id=f"c{i:03d}", created_at=base + timedelta(minutes=i),
                                metadata={"user_id": f"user-{i % 12}"},
                                messages=[Message(created_at=base, role="user", content=user.format(v=v)),
                                          Message(created_at=base, role="assistant", content=reply.format(w=w))]))
    return out


def _run(tmp_path: Path, **settings):
    import os

    import dagster as dg

    from kura_dagster.orchestration.factory import build_kura_defs

    source = tmp_path / "source.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in _planted_conversations()), encoding="utf-8")
    out = tmp_path / "checkpoints"
    defs = build_kura_defs(None, conversations=str(source), checkpoint_dir=str(out), sensor=False, **settings)
    os.environ["KURA_REUSE"] = "0"  # every step computes (conftest's fixture clears KURA_* after each test)
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance,
                                                                                 raise_on_error=False)
    return result, out


def _leaks(out: Path) -> dict[str, list[str]]:
    """Planted values found in any file the pipeline wrote, except the conversations checkpoint."""
    found: dict[str, list[str]] = {}
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith("conversations."):
            data = path.read_bytes()
            hits = [v for v in VALUES if v.encode("utf-8") in data]
            if hits:
                found[str(path.relative_to(out))] = hits
    return found


def _clusters(out: Path, name: str) -> list[Cluster]:
    return [Cluster.model_validate_json(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]


def _assert_thresholds(out: Path, min_conversations: int, min_users: int) -> None:
    users = {c.chat_id: c.metadata["user_id"] for c in _planted_conversations()}
    for name in ("clusters", "meta_clusters", "dimensionality"):
        for c in _clusters(out, name):
            assert len(c.chat_ids) >= min_conversations, (name, c.name, len(c.chat_ids))
            assert len({users[i] for i in c.chat_ids}) >= min_users, (name, c.name)


@pytest.mark.slow
def test_offline_no_planted_value_leaves_the_conversations(tmp_path):
    result, out = _run(tmp_path, min_conversations=4, min_users=3, user_key="user_id")
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    raw = (out / "conversations.jsonl").read_text(encoding="utf-8")
    assert all(json.dumps(v, ensure_ascii=False)[1:-1] in raw for v in VALUES)  # planted where they should be
    assert _leaks(out) == {}
    _assert_thresholds(out, 4, 3)
    summaries = [json.loads(line) for line in (out / "summaries.jsonl").read_text().splitlines()]
    assert any("[EMAIL]" in s["summary"] or "[EMAIL]" in s["request"] for s in summaries)
    md = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert sum(md["summaries"][f"privacy/scrubbed/{t}"].value for t in PLANTED) > 0
    # the facets table: queryable from DuckDB, one row per cluster, model facets null offline
    import duckdb

    rows = duckdb.sql(f"SELECT cluster_id, conversations, users, concerning_mean FROM "
                      f"'{out / 'cluster_facets.parquet'}'").fetchall()
    assert sorted(r[0] for r in rows) == sorted(c.id for c in _clusters(out, "meta_clusters"))
    assert all(r[3] is None and r[2] >= 3 for r in rows)
    jsonl = [json.loads(line) for line in (out / "cluster_facets.jsonl").read_text().splitlines()]
    assert {r["cluster_id"]: r["conversations"] for r in jsonl} == {r[0]: r[1] for r in rows}


@pytest.mark.slow
def test_llm_mode_scrubs_a_leaky_model_and_audits_names(fake_openai, tmp_path):
    from kura_dagster_tests.fake_openai import fake_privacy_rating

    fake_openai.set_leaky()  # the model copies the conversation into every text field
    result, out = _run(tmp_path, llm="openai:fake-model", embeddings="openai:fake-emb", base_url=fake_openai.url,
                       min_conversations=4, privacy_audit=True, max_clusters=2)  # a round of parents
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert _leaks(out) == {}
    _assert_thresholds(out, 4, 1)
    md = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert sum(md["summaries"][f"privacy/scrubbed/{t}"].value for t in PLANTED) >= len(_planted_conversations())
    ratings = md["clusters"]["privacy/audit_ratings"].value
    assert md["clusters"]["privacy/withheld_groups"].value == ratings["1"] + ratings["2"]
    # every base cluster still named by the model passed the fake server's audit (rating >= 3)
    from kura_dagster.pipeline.audit import audit_requests

    base = _clusters(out, "clusters")
    for c in base:
        if c.name != OTHER_NAME:
            request = audit_requests([GeneratedCluster(name=c.name, summary=c.description, slug=c.slug)])[0]
            assert fake_privacy_rating(request.messages[-1][1]) >= 3
    # meta clusters: a parent rated below 3 keeps its place under the generic name
    parents = [c for c in _clusters(out, "meta_clusters") if c.id not in {b.id for b in base}]
    withheld = 0
    meta = _clusters(out, "meta_clusters")
    for c in parents:
        if c.name == OTHER_NAME and all(k.name == OTHER_NAME for k in meta if k.parent_id == c.id):
            continue  # a parent of "Other requests" only is one itself (never named, so never withheld)
        if c.name == OTHER_NAME:
            withheld += 1
        else:
            request = audit_requests([GeneratedCluster(name=c.name, summary=c.description, slug=c.slug)])[0]
            assert fake_privacy_rating(request.messages[-1][1]) >= 3
    assert md["meta_clusters"]["privacy/withheld_meta_clusters"].value == withheld >= 1  # (this corpus: one)
    facets = [json.loads(line) for line in (out / "cluster_facets.jsonl").read_text().splitlines()]
    assert all(r["concerning_mean"] is not None and 1 <= r["concerning_mean"] <= 5 for r in facets)


@pytest.mark.slow
def test_the_blocking_check_fails_a_run_that_shows_a_small_cluster(tmp_path, monkeypatch):
    from kura_dagster.orchestration import privacy
    from kura_dagster.pipeline import thresholds

    real = thresholds.base_clusters_with_thresholds

    def broken(columns, namer, settings, t, **kwargs):  # "forgets" the thresholds: every k-means group shown
        return real(columns, namer, settings, Thresholds(min_conversations=1), **kwargs)

    monkeypatch.setattr(privacy, "base_clusters_with_thresholds", broken)
    result, out = _run(tmp_path)  # defaults: min_conversations=10; 48 conversations make 5 groups of ~10
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["clusters_meet_privacy_thresholds"] is False
    assert min(len(c.chat_ids) for c in _clusters(out, "clusters")) < 10  # it really was broken
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "meta_clusters" not in done and "projected_clusters" not in done  # blocked downstream
    assert not (out / "meta_clusters.jsonl").exists()


def test_facet_rows_read_from_parquet_columns_equal_those_of_the_models(tmp_path):
    from kura_dagster.checkpoints.columnar import load_summary_columns
    from kura_dagster.checkpoints.parquet import ParquetCheckpointManager
    from kura_dagster.pipeline.facets import summary_facet_rows

    summaries = [ConversationSummary(chat_id=f"c{i}", summary="s", languages=["english", "python"][: 1 + i % 2],
                                     task=None if i == 3 else f"task {i % 3}", concerning_score=1 + i % 5,
                                     user_frustration=None if i % 3 == 0 else 2,
                                     assistant_errors=None if i == 4 else ([] if i % 2 else ["e"]),
                                     metadata={"user_id": f"u{i % 4}"} if i != 5 else {}, embedding=[0.5, 0.5])
                 for i in range(12)]
    manager = ParquetCheckpointManager(str(tmp_path))
    manager.save_checkpoint("summaries", summaries)
    columns = load_summary_columns(manager, "summaries")
    assert columns._models is None  # the Arrow path, no models
    arrow = summary_facet_rows(columns, "user_id")
    models = summary_facet_rows(SummaryColumns.coerce(summaries), "user_id")
    assert (arrow.chat_ids, arrow.language_lists(), arrow.tasks, arrow.users) == \
        (models.chat_ids, models.language_lists(), models.tasks, models.users)
    assert arrow.language_lists()[:2] == [["english"], ["english", "python"]]
    assert arrow.users[5] is None and arrow.tasks[3] is None
    for name in ("concerning", "frustration", "has_errors"):
        np.testing.assert_array_equal(getattr(arrow, name), getattr(models, name))
    assert np.isnan(arrow.has_errors[4]) and arrow.has_errors[0] == 1.0 and arrow.has_errors[1] == 0.0


def test_privacy_settings_are_factory_keywords_component_settings_and_environment_variables(tmp_path):
    from kura_dagster.definitions import build_definitions
    from kura_dagster.orchestration.component import KuraSettings
    from kura_dagster.orchestration.factory import build_kura_defs

    fields = dict(min_conversations=20, min_users=4, user_key="account", privacy_audit=True, audit_min_rating=4)
    kura = build_kura_defs("support", checkpoint_dir=str(tmp_path), **fields).resources["support_kura"]
    assert {k: getattr(kura, k) for k in fields} == fields
    assert KuraSettings(**fields).model_dump(exclude_unset=True) == fields  # the Component's settings: mapping
    env = {"KURA_CHECKPOINT_DIR": str(tmp_path), "KURA_MIN_CONVERSATIONS": "20", "KURA_MIN_USERS": "4",
           "KURA_USER_KEY": "account", "KURA_PRIVACY_AUDIT": "1", "KURA_AUDIT_MIN_RATING": "4"}
    kura = build_definitions(env).resources["kura"]
    assert {k: getattr(kura, k) for k in fields} == fields
    with pytest.raises(ValueError, match="KURA_MIN_CONVERSATIONS='0' must be at least 1"):
        build_definitions({**env, "KURA_MIN_CONVERSATIONS": "0"})


# --- where the members of small groups go (issue 20 follow-up): hand-made angles ----------------------------

def _at(degrees: float, a: int, b: int, dims: int = 8) -> np.ndarray:
    """The unit vector at ``degrees`` from axis ``a`` towards axis ``b``."""
    v = np.zeros(dims)
    v[a], v[b] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return v


SPREAD = (-10, -5, 0, 5, 10) * 2
"""A shown cluster's members: symmetric about its axis, so its centroid is the axis and its 0.95 quantile of
distances (position 8.55 of 10 sorted values: both 1 - cos 10°) is exactly 1 - cos 10° = 0.0152."""


def _place(rows: list[np.ndarray], shown_sizes: list[int], thresholds: Thresholds, users=None,
           settings: PipelineSettings = PipelineSettings()):
    from kura_dagster.pipeline.thresholds import place_small_members

    x = np.stack(rows).astype(np.float32)
    bounds = np.cumsum([0, *shown_sizes])
    shown = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    report = FoldReport()
    final, pools = place_small_members(x, shown, np.arange(bounds[-1], len(rows)), users, thresholds, settings,
                                       0.95, report)
    return final, [p.tolist() for p in pools], report


def test_a_small_group_member_within_a_shown_clusters_spread_joins_it_and_one_outside_does_not():
    a = [_at(d, 0, 1) for d in SPREAD]  # rows 0-9, centroid e1, radius 1 - cos 10°
    b = [_at(d, 2, 3) for d in SPREAD]  # rows 10-19
    # row 20: 8° from A (1 - cos 8° = 0.0097 <= 0.0152: joins); row 21: 12° (0.0219 > 0.0152); rows 22-23 at
    # 40° and 45° from A; with row 21 they are three far members: one "Other" (three is enough here)
    rest = [_at(8, 0, 1), _at(12, 0, 1), _at(40, 0, 1), _at(45, 0, 1)]
    final, pools, report = _place(a + b + rest, [10, 10], Thresholds(min_conversations=3))
    assert final == [[*range(10), 20], list(range(10, 20))]
    assert pools == [[21, 22, 23]]
    assert (report.conversations_joined, report.conversations_in_other, report.other_clusters,
            report.conversations_folded) == (1, 3, 1, 0)


def test_an_other_below_the_thresholds_folds_into_the_nearest_shown_cluster():
    a = [_at(d, 0, 1) for d in SPREAD]
    b = [_at(d, 2, 3) for d in SPREAD]
    rest = [_at(40, 0, 1), _at(45, 2, 3), _at(-50, 2, 3)]  # far from both: 20 -> A, 21 and 22 -> B
    final, pools, report = _place(a + b + rest, [10, 10], Thresholds(min_conversations=4))
    assert pools == [] and final == [[*range(10), 20], [*range(10, 20), 21, 22]]
    assert (report.conversations_joined, report.conversations_in_other, report.conversations_folded) == (0, 0, 3)


def test_one_other_per_neighbourhood_of_the_meta_steps_first_round():
    # four shown clusters, two by two: A (e1) and A' (20° towards e2); B (e3) and B' (20° towards e4). With
    # max_clusters=2 the meta step makes a round of groups_for_round(4) = 2 parents: {A, A'} and {B, B'}
    shown = [[_at(c + d, 0, 1) for d in SPREAD] for c in (0, 20)] + \
        [[_at(c + d, 2, 3) for d in SPREAD] for c in (0, 20)]
    near_a = [_at(-40, 0, 1), _at(-45, 0, 1), _at(-50, 0, 1)]  # rows 40-42: far, nearest A
    near_b = [_at(-40, 2, 3), _at(-45, 2, 3), _at(-50, 2, 3)]  # rows 43-45: far, nearest B
    rows = [v for s in shown for v in s] + near_a + near_b
    settings = PipelineSettings(max_clusters=2)
    final, pools, report = _place(rows, [10] * 4, Thresholds(min_conversations=3), settings=settings)
    assert sorted(pools) == [[40, 41, 42], [43, 44, 45]] and report.other_clusters == 2
    # without a meta round (max_clusters=10: the four are the roots) the far members make one "Other"
    final, pools, report = _place(rows, [10] * 4, Thresholds(min_conversations=3))
    assert pools == [[40, 41, 42, 43, 44, 45]] and report.other_clusters == 1


def test_with_a_user_key_an_other_of_one_user_folds_and_joining_needs_no_users():
    a = [_at(d, 0, 1) for d in SPREAD]
    b = [_at(d, 2, 3) for d in SPREAD]
    rest = [_at(5, 2, 3), _at(40, 0, 1), _at(45, 0, 1), _at(50, 0, 1)]  # 20 joins B; 21-23 far, nearest A
    users = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(10)] + ["zoe", "max", "max", "max"]
    t = Thresholds(min_conversations=3, min_users=2, user_key="uid")
    final, pools, report = _place(a + b + rest, [10, 10], t, users)
    assert pools == [] and final == [[*range(10), 21, 22, 23], [*range(10, 20), 20]]  # 3 conversations, 1 user
    users[21] = "ann"  # now two users: an "Other" of three
    final, pools, report = _place(a + b + rest, [10, 10], t, users)
    assert pools == [[21, 22, 23]] and final == [list(range(10)), [*range(10, 20), 20]]


def test_small_groups_as_tight_together_as_the_loosest_shown_cluster_merge_and_looser_ones_do_not():
    from kura_dagster.pipeline.thresholds import merge_small_groups

    a = [_at(d, 0, 1) for d in SPREAD]  # rows 0-9: the loosest shown spread, 1 - cos 10° = 0.0152
    s1 = [_at(d, 4, 5) for d in (56, 58, 60, 62, 64)]  # rows 10-14
    s2 = [_at(d, 4, 5) for d in (66, 68, 70, 72, 74)]  # rows 15-19: with s1, offsets ±1..±9° about 65°,
    # spread 1 - cos 9° = 0.0123 <= 0.0152: merged (10 conversations: shown)
    s3 = [_at(d, 6, 7) for d in (0, 30, 60)]  # rows 20-22: alone; with s1 or s2 far looser than A
    x = np.stack(a + s1 + s2 + s3).astype(np.float32)
    groups = [np.arange(0, 10), np.arange(10, 15), np.arange(15, 20), np.arange(20, 23)]
    report = FoldReport()
    out = merge_small_groups(x, groups, None, Thresholds(min_conversations=10), 0.95, report)
    assert [g.tolist() for g in out] == [list(range(10)), list(range(10, 20)), [20, 21, 22]]
    assert report.small_groups_merged == 1
    # with a tighter shown cluster (±4°: spread 1 - cos 4° = 0.0024) the two halves are too loose together
    tight = [_at(d, 0, 1) for d in (-4, -2, 0, 2, 4) * 2]
    x2 = np.stack(tight + s1 + s2 + s3).astype(np.float32)
    out = merge_small_groups(x2, groups, None, Thresholds(min_conversations=10), 0.95, FoldReport())
    assert [g.tolist() for g in out] == [g.tolist() for g in groups]


class RecordingMetaNamer:
    def __init__(self) -> None:
        self.seen: list[list[str]] = []

    def name_meta_clusters(self, groups):
        self.seen.extend([c.name for c in g] for g in groups)
        return [GeneratedCluster(name=" and ".join(c.name for c in g), summary="d", slug="p") for g in groups]


def test_parents_are_named_without_their_other_children_and_a_parent_of_others_is_other():
    from kura_dagster.pipeline.privacy import ScrubbingNamer
    from kura_dagster.pipeline.thresholds import OTHER_DESCRIPTION

    def cluster(name: str, slug: str = "s") -> Cluster:
        return Cluster(id=name, name=name, description=OTHER_DESCRIPTION if name == OTHER_NAME else "d", slug=slug,
                       chat_ids=[name], parent_id=None)

    other = cluster(OTHER_NAME, "other_requests")
    inner = RecordingMetaNamer()
    groups = [[cluster("Soup"), other, cluster("Bread")], [other], [other, other]]
    names = ScrubbingNamer(inner).name_meta_clusters(groups)
    assert [(g.name, g.slug) for g in names] == [("Soup and Bread", "p"), (OTHER_NAME, "other_requests"),
                                                 (OTHER_NAME, "other_requests")]
    assert inner.seen == [["Soup", "Bread"]]  # the model never saw a pool


@pytest.mark.slow
def test_demo_taxonomy_no_root_over_35_percent_and_a_small_other(tmp_path):
    """The README's demo (320 conversations, defaults: min_conversations=10, clusters_per_group=10). Before the
    follow-up, 140 conversations (43.8%) were one "Other requests" root named 'Counted'. Now small pieces of a
    topic merge (8 merges: 32 k-means groups -> 24), 3 members join a shown cluster, the 10 far ones are too few
    for an "Other" and fold: 0% in "Other requests", the largest root 20.6% (measured; asserted with room:
    <= 35%, <= 15%)."""
    import os

    import dagster as dg

    from kura_dagster.orchestration.factory import build_kura_defs

    out = tmp_path / "checkpoints"
    defs = build_kura_defs(None, checkpoint_dir=str(out), sensor=False)
    os.environ["KURA_REUSE"] = "0"
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance)
    assert result.success  # the blocking threshold checks passed
    base, meta = _clusters(out, "clusters"), _clusters(out, "meta_clusters")
    n = sum(len(c.chat_ids) for c in base)
    assert n == 320 and min(len(c.chat_ids) for c in meta) >= 10
    roots = [c for c in meta if c.parent_id is None]
    assert max(len(c.chat_ids) for c in roots) / n <= 0.35
    in_other = sum(len(c.chat_ids) for c in base if c.name == OTHER_NAME)
    assert in_other / n <= 0.15
    named = [c for c in meta if c.name != OTHER_NAME]
    assert not [c.name for c in named if "counted" in f"{c.name} {c.description}".lower()]
    # every pool is a base cluster named for what it is; no parent was named from a pool's text
    assert all(c.slug == "other_requests" for c in meta if c.name == OTHER_NAME)


def test_merge_candidates_are_each_pieces_nearest_exact_and_bucketed():
    from kura_dagster.pipeline.thresholds import _candidate_sets

    # 20 well-separated directions (axes 0..19 of 32-d), two pieces 1° apart on each: piece 2i's nearest is 2i+1
    rows = []
    for i in range(20):
        for d in (0.0, 1.0):
            v = np.zeros(32, dtype=np.float32)
            v[i], v[20 + i % 12] = np.cos(np.radians(d)), np.sin(np.radians(d))
            rows.append(v)
    cents = np.stack(rows)
    expected = [{r ^ 1} for r in range(40)]  # the other piece of the same pair
    assert _candidate_sets(cents, 1) == expected
    assert _candidate_sets(cents, 1, brute_up_to=0) == expected  # bucketed: k-means buckets of the centroids


def test_neighbour_limited_merge_matches_the_exhaustive_search_on_the_tight_halves():
    from kura_dagster.pipeline.thresholds import merge_small_groups

    a = [_at(d, 0, 1) for d in SPREAD]
    s1 = [_at(d, 4, 5) for d in (56, 58, 60, 62, 64)]
    s2 = [_at(d, 4, 5) for d in (66, 68, 70, 72, 74)]
    s3 = [_at(d, 6, 7) for d in (0, 30, 60)]
    x = np.stack(a + s1 + s2 + s3).astype(np.float32)
    groups = [np.arange(0, 10), np.arange(10, 15), np.arange(15, 20), np.arange(20, 23)]
    for kwargs in ({"neighbours": 1}, {"neighbours": 1, "brute_up_to": 0}, {"neighbours": 2}):
        out = merge_small_groups(x, groups, None, Thresholds(min_conversations=10), 0.95, FoldReport(), **kwargs)
        assert [g.tolist() for g in out] == [list(range(10)), list(range(10, 20)), [20, 21, 22]], kwargs
