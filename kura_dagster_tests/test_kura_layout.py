"""Kura reads what we say it reads: ``layout="kura"`` Parquet/HF checkpoints and ``kura-dagster export --format``.

The fast tests check the files against Kura 0.5.4's layouts written out by hand (column types, datasets 3.x feature
names), our own loaders on them (exact values, a non-UTC zone) and their integrity checks. The slow tests load our
files with Kura 0.5.4 itself, in its own virtual environment (``kura==0.5.4`` with its lock file's pandas 2.3.3,
datasets 3.6.0 and huggingface_hub<1), created once under ``.venv-kura054/`` in the repository root (gitignored;
about 70 s on two cores) and reused while its pins are unchanged. They skip only when the package registry cannot
be reached and ``CI`` is not ``true``; under ``CI=true`` they always run.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
import pytest

from kura_dagster.checkpoints.errors import CheckpointCorruptError
from kura_dagster.checkpoints.hf import HFDatasetCheckpointManager
from kura_dagster.checkpoints.jsonl import JSONLCheckpointManager
from kura_dagster.checkpoints.parquet import ParquetCheckpointManager
from kura_dagster.cli import main
from kura_dagster.types import Cluster, Conversation, ConversationSummary, Message, ProjectedCluster

ROOT = Path(__file__).resolve().parent.parent
KURA_VENV = ROOT / ".venv-kura054"
KURA_PINS = ["kura==0.5.4", "pandas==2.3.3", "datasets==3.6.0", "huggingface_hub<1"]
SAO_PAULO = ZoneInfo("America/Sao_Paulo")  # UTC-03:00, no DST in 2026
T0 = dt.datetime(2026, 3, 1, 21, 30, tzinfo=SAO_PAULO)  # 2026-03-02 00:30 UTC


# --- hand-written checkpoints of every stage ---------------------------------------------------------------
def conversations() -> list[Conversation]:
    return [
        Conversation(chat_id="c-sp-1", created_at=T0, metadata={"lang": "pt", "n": 3, "ok": True, "tags": ["a", "b"],
                                                                 "s": "123"},
                     messages=[Message(created_at=T0, role="user", content="olá"),
                               Message(created_at=T0 + dt.timedelta(seconds=5), role="assistant", content="oi")]),
        Conversation(chat_id="c-sp-2", created_at=T0 + dt.timedelta(days=1), metadata={},
                     messages=[Message(created_at=T0 + dt.timedelta(days=1), role="user", content="tchau")]),
    ]


def summaries() -> list[ConversationSummary]:
    return [
        ConversationSummary(chat_id="c-sp-1", summary="The user greeted the assistant.", request=None, topic="greeting",
                            languages=["portuguese"], task="reply", concerning_score=2, user_frustration=None,
                            assistant_errors=[], metadata={"k": 1.5}, embedding=[0.5, -0.25, 0.1]),
        ConversationSummary(chat_id="c-sp-2", summary="The user said goodbye.", request="leave", topic=None,
                            languages=None, task=None, concerning_score=None, user_frustration=4,
                            assistant_errors=["ignored it"], metadata={}, embedding=[1.0, 2.0, 3.0]),
    ]


CLUSTERS = [Cluster(id="k1", name="Greetings", description="Hello.", slug="greetings", chat_ids=["c-sp-1"],
                    parent_id="m1"),
            Cluster(id="k2", name="Farewells", description="Bye.", slug="farewells", chat_ids=["c-sp-2"],
                    parent_id="m1")]
META = [Cluster(id="m1", name="Small talk", description="Chat.", slug="small_talk", chat_ids=["c-sp-1", "c-sp-2"],
                parent_id=None)]
PROJECTED = [ProjectedCluster(id="m1", name="Small talk", description="Chat.", slug="small_talk",
                              chat_ids=["c-sp-1", "c-sp-2"], parent_id=None, x_coord=0.1, y_coord=-2.5, level=0),
             ProjectedCluster(id="k1", name="Greetings", description="Hello.", slug="greetings", chat_ids=["c-sp-1"],
                              parent_id="m1", x_coord=1.25, y_coord=3.0, level=1)]


def stages() -> dict[str, list]:
    return {"conversations": conversations(), "summaries": summaries(), "clusters": CLUSTERS,
            "meta_clusters": META, "dimensionality": PROJECTED}


MODELS = {"conversations": Conversation, "summaries": ConversationSummary, "clusters": Cluster,
          "meta_clusters": Cluster, "dimensionality": ProjectedCluster}


def save_all(manager) -> None:
    for name, rows in stages().items():
        manager.save_checkpoint(name, rows)


# --- the files are Kura's layout -----------------------------------------------------------------------------
def test_parquet_kura_layout_has_kuras_columns_and_our_loader_reads_it_exactly(tmp_path):
    manager = ParquetCheckpointManager(tmp_path, layout="kura")
    save_all(manager)
    schema = pq.read_schema(tmp_path / "summaries.parquet")
    # kura.checkpoints.parquet's schema for summaries, written out by hand
    assert [(f.name, str(f.type)) for f in schema] == [
        ("chat_id", "string"), ("summary", "string"), ("request", "string"), ("topic", "string"),
        ("languages", "string"), ("task", "string"), ("concerning_score", "int32"), ("user_frustration", "int32"),
        ("assistant_errors", "string"), ("metadata", "string"), ("embedding", "list<element: double>")]
    row = pq.read_table(tmp_path / "conversations.parquet").to_pylist()[0]
    assert row["created_at"] == "2026-03-01T21:30:00-03:00"
    assert json.loads(row["metadata"]) == {"lang": "pt", "n": 3, "ok": True, "tags": ["a", "b"], "s": "123"}
    assert json.loads(row["messages"])[1] == {"created_at": "2026-03-01T21:30:05-03:00", "role": "assistant",
                                              "content": "oi"}
    # Lossless for our models: [] stays [], None stays None, the instant and its offset are kept.
    for name, rows in stages().items():
        assert manager.load_checkpoint(name, MODELS[name]) == rows, name
        assert manager.get_checkpoint_info(name)["layout"] == "kura"
    loaded = manager.load_checkpoint("conversations")  # the model identity is recorded
    assert loaded[0].created_at.utcoffset() == dt.timedelta(hours=-3)
    assert [s.chat_id for s in manager.iter_checkpoint("summaries", batch_size=1)] == ["c-sp-1", "c-sp-2"]
    assert [c.id for c in manager.filter_checkpoint("dimensionality", lambda r: r["level"] == 1)] == ["k1"]


def test_native_layout_stays_the_default(tmp_path):
    ParquetCheckpointManager(tmp_path).save_checkpoint("summaries", summaries())
    types = {f.name: str(f.type) for f in pq.read_schema(tmp_path / "summaries.parquet")}
    assert types["languages"] == "list<element: string>" and types["embedding"].startswith("fixed_size_list")
    HFDatasetCheckpointManager(tmp_path / "hf").save_checkpoint("clusters", CLUSTERS)
    info = json.loads((tmp_path / "hf" / "clusters" / "kura_dagster.json").read_text())
    assert "layout" not in info  # the native manifest, as before


def test_parquet_kura_layout_is_verified_like_native_files(tmp_path):
    manager = ParquetCheckpointManager(tmp_path, layout="kura")
    manager.save_checkpoint("clusters", CLUSTERS)
    path = tmp_path / "clusters.parquet"
    data = bytearray(path.read_bytes())
    at = data.index(b"Greetings")
    data[at] ^= 0x20  # "greetings": a page CRC or our checksum must catch it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="clusters.parquet"):
        manager.load_checkpoint("clusters", Cluster)


def test_hf_kura_layout_writes_datasets_3_features_and_is_verified(tmp_path):
    manager = HFDatasetCheckpointManager(tmp_path, layout="kura")
    saved = {name: manager.save_checkpoint(name, rows) for name, rows in stages().items()}
    info = json.loads((tmp_path / "clusters" / "dataset_info.json").read_text())
    string = {"dtype": "string", "_type": "Value"}
    assert info["features"] == {  # kura.checkpoints.hf_dataset's cluster schema in datasets 3.x's words
        "id": string, "name": string, "description": string, "slug": string,
        "chat_ids": {"feature": string, "_type": "Sequence"}, "parent_id": string,
        "count": {"dtype": "int32", "_type": "Value"}}
    conv = json.loads((tmp_path / "conversations" / "dataset_info.json").read_text())["features"]
    assert conv["created_at"] == {"dtype": "timestamp[ns, tz=UTC]", "_type": "Value"}
    assert conv["messages"]["_type"] == "Sequence" and conv["messages"]["feature"]["role"] == {
        "names": ["user", "assistant"], "_type": "ClassLabel"}
    for name in stages():
        for f in ("dataset_info.json", "data-00000-of-00001.arrow"):
            assert b'"List"' not in (tmp_path / name / f).read_bytes(), (name, f)
    # What Kura's encoding changes is reported, not hidden.
    assert saved["summaries"].extra["kura_layout_changes"] == {
        "assistant_errors: [] reads back as None": 1, "embedding: values rounded to float32": 1}
    assert saved["dimensionality"].extra["kura_layout_changes"] == {"x_coord/y_coord: values rounded to float32": 1}
    # Our loader decodes as Kura does: the instant is kept (in UTC), [] in an optional list is None, float32.
    c1 = manager.load_checkpoint("conversations", Conversation)[0]
    assert c1.created_at == dt.datetime(2026, 3, 2, 0, 30, tzinfo=dt.timezone.utc)
    assert c1.metadata == {"lang": "pt", "n": 3, "ok": True, "tags": ["a", "b"], "s": "123"}
    s1, s2 = manager.load_checkpoint("summaries", ConversationSummary)
    assert s1.assistant_errors is None and s1.request is None and s1.concerning_score == 2
    assert s1.embedding == [0.5, -0.25, 0.10000000149011612]
    assert s2.topic is None and s2.user_frustration == 4 and s2.assistant_errors == ["ignored it"]
    assert manager.load_checkpoint("meta_clusters", Cluster) == META
    # A changed data file is caught by our manifest's checksum.
    data = tmp_path / "clusters" / "data-00000-of-00001.arrow"
    raw = bytearray(data.read_bytes())
    raw[raw.index(b"Farewells")] ^= 0x20
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match="checksum mismatch"):
        manager.load_checkpoint("clusters", Cluster)


def test_hf_kura_layout_refuses_mixed_naive_and_aware_timestamps(tmp_path):
    naive = Conversation(chat_id="n1", created_at=dt.datetime(2026, 3, 1, 12), metadata={},
                         messages=[Message(created_at=dt.datetime(2026, 3, 1, 12), role="user", content="x")])
    with pytest.raises(ValueError, match=r"'n1' \(row 2\): created_at is naive"):
        HFDatasetCheckpointManager(tmp_path, layout="kura").save_checkpoint("conversations", [*conversations(), naive])
    assert not (tmp_path / "conversations").exists()  # nothing half-written
    saved = HFDatasetCheckpointManager(tmp_path, layout="kura").save_checkpoint("conversations", [naive])
    assert saved.rows == 1
    assert HFDatasetCheckpointManager(tmp_path).load_checkpoint("conversations")[0].created_at == naive.created_at


def test_models_without_a_kura_layout_are_stored_natively(tmp_path):
    from kura_dagster.types import ClusterTreeNode

    node = ClusterTreeNode(id="n", name="N", description="d", slug="s", count=2, children=["a", "b"])
    saved = ParquetCheckpointManager(tmp_path, layout="kura").save_checkpoint("tree", [node])
    assert saved.extra["layout"] == "native"
    assert ParquetCheckpointManager(tmp_path).load_checkpoint("tree", ClusterTreeNode) == [node]
    with pytest.raises(ValueError, match="layout must be one of native, kura"):
        ParquetCheckpointManager(tmp_path, layout="Kura")


def test_layout_from_the_environment_and_the_factory(tmp_path):
    from kura_dagster.io_managers.multi import io_manager_from_env
    from kura_dagster.orchestration.factory import build_kura_defs

    env = {"KURA_CHECKPOINT_FORMATS": "parquet,hf,jsonl", "KURA_CHECKPOINT_LAYOUT": "kura",
           "KURA_CHECKPOINT_DIR": str(tmp_path)}
    assert [(b.format, b.layout) for b in io_manager_from_env(env).backends] == [
        ("parquet", "kura"), ("hf", "kura"), ("jsonl", None)]
    with pytest.raises(ValueError, match="KURA_CHECKPOINT_LAYOUT='parket'"):
        io_manager_from_env({**env, "KURA_CHECKPOINT_LAYOUT": "parket"})
    defs = build_kura_defs("a", checkpoint_dir=str(tmp_path), formats=["hf"], checkpoint_layout="kura")
    assert defs.resources["a_io_manager"].layout == "kura"
    assert build_kura_defs("b", checkpoint_dir=str(tmp_path), formats=["parquet"]).resources[
        "b_io_manager"].layout == "native"


def test_export_writes_kuras_parquet_and_hf_layouts_joining_partitions(tmp_path, capsys):
    src = tmp_path / "ck"
    conv = conversations()
    day = ParquetCheckpointManager(src / "conversations")  # partitions, native layout
    day.save_checkpoint("2026-03-01", conv[:1])
    day.save_checkpoint("2026-03-02", conv[1:])
    native = ParquetCheckpointManager(src)
    for name in ("summaries", "clusters", "meta_clusters", "dimensionality"):
        native.save_checkpoint(name, stages()[name])
    for fmt in ("parquet", "hf"):
        assert main(["export", str(src), str(tmp_path / fmt), "--format", fmt, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["format"] == fmt and [f["rows"] for f in report["files"]] == [2, 2, 2, 1, 2]
        assert report["files"][0]["partitions"] == ["2026-03-01", "2026-03-02"]
    assert pq.read_schema(tmp_path / "parquet" / "conversations.parquet").names == [
        "chat_id", "created_at", "messages", "metadata"]
    assert ParquetCheckpointManager(tmp_path / "parquet").load_checkpoint("conversations") == conv
    assert [c.chat_id for c in HFDatasetCheckpointManager(tmp_path / "hf").load_checkpoint("conversations")] == [
        "c-sp-1", "c-sp-2"]
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'csv'"
        main(["export", str(src), str(tmp_path / "x"), "--format", "csv"])
    assert "invalid choice: 'csv'" in capsys.readouterr().err


# --- Kura 0.5.4 itself reads them ----------------------------------------------------------------------------
KURA_LOAD = """
import json, logging, sys
logging.disable(logging.CRITICAL)
from kura.checkpoints import HFDatasetCheckpointManager, JSONLCheckpointManager, ParquetCheckpointManager
from kura.types import Cluster, Conversation, ConversationSummary
from kura.types.dimensionality import ProjectedCluster
managers = {"parquet": ParquetCheckpointManager, "hf": HFDatasetCheckpointManager, "jsonl": JSONLCheckpointManager}
out = {}
for arg in sys.argv[1:]:
    fmt, _, directory = arg.partition(":")
    mgr = managers[fmt](directory)
    out[arg] = {name: (None if (got := mgr.load_checkpoint(name, cls)) is None
                       else [m.model_dump(mode="json") for m in got])
                for name, cls in [("conversations", Conversation), ("summaries", ConversationSummary),
                                  ("clusters", Cluster), ("meta_clusters", Cluster),
                                  ("dimensionality", ProjectedCluster)]}
print(json.dumps(out))
"""


def _pip(python: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def kura_python() -> Path:
    """Python of a virtual environment with Kura 0.5.4 (created once, reused while its pins are unchanged)."""
    python = KURA_VENV / "bin" / "python"
    marker = KURA_VENV / ".kura-pins"
    in_ci = os.environ.get("CI", "").lower() == "true"
    with open(ROOT / ".venv-kura054.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator at a time (parallel runs wait, then reuse it)
        if marker.exists() and marker.read_text() == "\n".join(KURA_PINS) and python.exists():
            return python
        probe = _pip(Path(sys.executable), "download", "--no-deps", "--no-cache-dir", "-d",
                     str(ROOT / ".venv-kura054.probe"), "--timeout", "20", "--retries", "1", "kura==0.5.4",
                     timeout=120)
        shutil.rmtree(ROOT / ".venv-kura054.probe", ignore_errors=True)
        if probe.returncode != 0:
            reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
            if in_ci:
                pytest.fail(f"CI=true but kura==0.5.4 cannot be downloaded: {reason}")
            pytest.skip(f"the package registry is unreachable (pip download kura==0.5.4: {reason}); "
                        "Kura 0.5.4 cannot be installed to check it reads our files")
        shutil.rmtree(KURA_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(KURA_VENV)], check=True)
        done = _pip(python, "install", "-q", *KURA_PINS, timeout=900)
        if done.returncode != 0:
            shutil.rmtree(KURA_VENV, ignore_errors=True)
            pytest.fail(f"installing {' '.join(KURA_PINS)} failed:\n{done.stderr[-3000:]}")
        marker.write_text("\n".join(KURA_PINS))
    return python


def kura_loads(python: Path, *locations: str) -> dict:
    """What Kura 0.5.4's own managers load from each ``format:directory``, as JSON."""
    done = subprocess.run([str(python), "-c", KURA_LOAD, *locations], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


SP1 = {"chat_id": "c-sp-1", "metadata": {"lang": "pt", "n": 3, "ok": True, "tags": ["a", "b"], "s": "123"}}


@pytest.mark.slow
def test_kura_054_loads_every_stage_of_our_kura_layout_and_export(tmp_path, kura_python):
    for name, rows in stages().items():
        ParquetCheckpointManager(tmp_path / "parquet", layout="kura").save_checkpoint(name, rows)
        HFDatasetCheckpointManager(tmp_path / "hf", layout="kura").save_checkpoint(name, rows)
        # export's source: the native layout (float64, so that the exported Parquet and JSONL keep 0.1 exactly)
        HFDatasetCheckpointManager(tmp_path / "native", embedding_dtype="float64").save_checkpoint(name, rows)
        ParquetCheckpointManager(tmp_path / "native-parquet").save_checkpoint(name, rows)
    for fmt in ("parquet", "hf", "jsonl"):
        assert main(["export", str(tmp_path / "native"), str(tmp_path / f"export-{fmt}"), "--format", fmt]) == 0
    got = kura_loads(kura_python, *(f"{fmt}:{tmp_path / d}" for fmt, d in [
        ("parquet", "parquet"), ("hf", "hf"), ("parquet", "export-parquet"), ("hf", "export-hf"),
        ("jsonl", "export-jsonl"), ("parquet", "native-parquet"), ("hf", "native")]))
    # What the README says: Kura 0.5.4 cannot read the native layout (its managers log the error and return None).
    for where in (f"parquet:{tmp_path / 'native-parquet'}", f"hf:{tmp_path / 'native'}"):
        assert got.pop(where) == dict.fromkeys(MODELS), where
    assert len(got) == 5
    for where, loaded in got.items():
        fmt = where.partition(":")[0]
        assert {k: None if v is None else len(v) for k, v in loaded.items()} == {
            "conversations": 2, "summaries": 2, "clusters": 2, "meta_clusters": 1, "dimensionality": 2}, where
        c1, c2 = loaded["conversations"]
        assert {k: c1[k] for k in SP1} == SP1 and c2["chat_id"] == "c-sp-2" and c2["metadata"] == {}
        assert [m["content"] for m in c1["messages"]] == ["olá", "oi"]
        assert [m["role"] for m in c1["messages"]] == ["user", "assistant"]
        s1, s2 = loaded["summaries"]
        assert (s1["chat_id"], s1["request"], s1["concerning_score"], s1["metadata"]) == ("c-sp-1", None, 2, {"k": 1.5})
        assert (s2["request"], s2["topic"], s2["user_frustration"], s2["assistant_errors"]) == (
            "leave", None, 4, ["ignored it"])
        assert s2["embedding"] == [1.0, 2.0, 3.0]
        assert [(c["id"], c["parent_id"], c["count"]) for c in loaded["clusters"]] == [("k1", "m1", 1), ("k2", "m1", 1)]
        assert [(c["id"], c["parent_id"], c["chat_ids"]) for c in loaded["meta_clusters"]] == [
            ("m1", None, ["c-sp-1", "c-sp-2"])]
        assert [(c["id"], c["level"], c["y_coord"]) for c in loaded["dimensionality"]] == [
            ("m1", 0, -2.5), ("k1", 1, 3.0)]
        if fmt == "hf":  # Kura's HF encoding: UTC instants, float32, [] in an optional list reads as None
            assert c1["created_at"] == "2026-03-02T00:30:00Z"
            assert c1["messages"][1]["created_at"] == "2026-03-02T00:30:05Z"
            assert s1["assistant_errors"] is None
            assert s1["embedding"][2] == 0.10000000149011612 and s1["embedding"][:2] == [0.5, -0.25]
            assert math.isclose(loaded["dimensionality"][0]["x_coord"], 0.1, rel_tol=1e-7)
        else:  # Parquet and JSONL keep the offset, [] and float64
            assert c1["created_at"] == "2026-03-01T21:30:00-03:00"
            assert s1["assistant_errors"] == [] and s1["embedding"] == [0.5, -0.25, 0.1]
            assert loaded["dimensionality"][0]["x_coord"] == 0.1


@pytest.mark.slow
def test_kura_054_loads_a_pipeline_run_with_the_kura_layout(tmp_path, kura_python):
    """The IO managers' path: a demo pipeline run writing JSONL, Parquet and HF with ``checkpoint_layout="kura"``;
    Kura 0.5.4 loads the Parquet and HF stages as it loads the JSONL ones (its own reference format)."""
    import dagster as dg

    from kura_dagster.orchestration.factory import build_kura_defs

    defs = build_kura_defs("k", checkpoint_dir=str(tmp_path), formats=["jsonl", "parquet", "hf"],
                           checkpoint_layout="kura", demo_size=12, embedding_dims=16)
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(instance=dg.DagsterInstance.ephemeral()).success
    got = kura_loads(kura_python, f"jsonl:{tmp_path}", f"parquet:{tmp_path}", f"hf:{tmp_path}")
    reference = got[f"jsonl:{tmp_path}"]
    assert [c["chat_id"] for c in reference["conversations"]] == [f"demo-{i:05d}" for i in range(12)]
    assert len(reference["summaries"]) == 12 and all(len(s["embedding"]) == 16 for s in reference["summaries"])
    assert sum(c["count"] for c in reference["clusters"]) == 12
    for fmt in ("parquet", "hf"):
        loaded = got[f"{fmt}:{tmp_path}"]
        for name, rows in reference.items():
            assert rows and loaded[name] is not None and len(loaded[name]) == len(rows), (fmt, name)
        assert loaded["conversations"] == reference["conversations"], fmt  # every message, time and metadata value
        assert [s["chat_id"] for s in loaded["summaries"]] == [s["chat_id"] for s in reference["summaries"]]
        for got_s, ref_s in zip(loaded["summaries"], reference["summaries"]):
            assert got_s["summary"] == ref_s["summary"]
            assert len(got_s["embedding"]) == len(ref_s["embedding"]) == 16
            assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
                       for a, b in zip(got_s["embedding"], ref_s["embedding"]))
        for name in ("clusters", "meta_clusters", "dimensionality"):
            assert [(c["id"], c["chat_ids"], c["parent_id"]) for c in loaded[name]] == [
                (c["id"], c["chat_ids"], c["parent_id"]) for c in reference[name]], (fmt, name)


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_columnar_path_reads_the_kura_layout(tmp_path, fmt):
    from kura_dagster.checkpoints.columnar import load_summary_columns

    cls = ParquetCheckpointManager if fmt == "parquet" else HFDatasetCheckpointManager
    manager = cls(tmp_path, layout="kura")
    manager.save_checkpoint("summaries", summaries())
    columns = load_summary_columns(manager, "summaries")
    assert columns.chat_ids == ["c-sp-1", "c-sp-2"]
    assert columns.embeddings.tolist() == [[0.5, -0.25, pytest.approx(0.1)], [1.0, 2.0, 3.0]]
    s1, s2 = columns.to_models()
    assert (s1.languages, s1.concerning_score, s1.metadata, s1.embedding) == (["portuguese"], 2, {"k": 1.5}, None)
    assert (s2.request, s2.assistant_errors, s2.user_frustration) == ("leave", ["ignored it"], 4)
