"""Migration between formats and directories (function, CLI, Dagster job) and the storage overview."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster import cli
from kura_dagster.checkpoints import JSONLCheckpointManager
from kura_dagster.checkpoints.registry import build_manager
from kura_dagster.checkpoints.migrate import (
    KURA_CHECKPOINT_MODELS,
    MigrationError,
    content_digest,
    first_difference,
    migrate,
    open_location,
    parse_location,
    storage_overview,
)
from kura_dagster.orchestration.migration_job import checkpoint_storage_job, migrate_checkpoints_job
from kura_dagster.types import ConversationSummary
from kura_dagster_tests._formats import available_formats

FORMATS = available_formats()
KURA054 = Path(__file__).parent / "data" / "kura054"
needs = {f: pytest.mark.skipif(f not in FORMATS, reason=f"{f} backend not available") for f in ("parquet", "hf")}


def _summaries(n=4, emb=(0.1, 0.2)):
    return [ConversationSummary(chat_id=f"c{i}", summary=f"s{i}", metadata={"i": i, "flag": True},
                                embedding=[e * (i + 1) for e in emb]) for i in range(n)]


def _lines(path: Path, model):
    return [model.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]


def _dumps(models):
    return [m.model_dump() for m in models]


# --- the function ------------------------------------------------------------------------------------------------
def test_round_trip_through_every_format_preserves_content(tmp_path):
    """jsonl → parquet → hf → jsonl: the final JSONL is byte-for-byte the first (float64 kept where asked)."""
    first = JSONLCheckpointManager(tmp_path / "a")
    first.save_checkpoint("summaries", _summaries())
    chain, previous = [first], first
    for i, fmt in enumerate([f for f in ("parquet", "hf") if f in FORMATS] + ["jsonl"]):
        opts = {"embedding_dtype": "float64"} if fmt != "jsonl" else {}
        nxt = build_manager(fmt, tmp_path / f"step{i}", **opts)
        report = migrate(previous, nxt)
        assert report.ok and [(c.name, c.status, c.rows) for c in report.checkpoints] == [("summaries", "copied", 4)]
        assert report.checkpoints[0].destination_bytes == nxt.get_file_size("summaries") > 0
        assert report.checkpoints[0].content == content_digest(_summaries())
        chain.append(nxt)
        previous = nxt
    assert (tmp_path / f"step{len(chain) - 2}" / "summaries.jsonl").read_bytes() == (
        tmp_path / "a" / "summaries.jsonl").read_bytes()


@needs["parquet"]
def test_float32_destination_verifies_at_float32_and_says_so(tmp_path):
    src = JSONLCheckpointManager(tmp_path / "src")
    src.save_checkpoint("summaries", _summaries())  # 0.1, 0.2 … are not float32 values
    report = migrate(src, build_manager("parquet", tmp_path / "dst"))
    assert report.ok and "rounded to float32" in report.checkpoints[0].note
    assert first_difference(_summaries(), build_manager("parquet", tmp_path / "dst").load_checkpoint(
        "summaries", ConversationSummary)) == "row 0 differs in embedding"


def test_rerun_is_unchanged_conflicts_need_overwrite(tmp_path):
    src, dst = JSONLCheckpointManager(tmp_path / "src"), JSONLCheckpointManager(tmp_path / "dst")
    src.save_checkpoint("summaries", _summaries())
    migrate(src, dst)
    again = migrate(src, dst)
    assert [c.status for c in again.checkpoints] == ["unchanged"] and again.ok
    src.save_checkpoint("summaries", _summaries(5))
    conflict = migrate(src, dst)
    assert [c.status for c in conflict.checkpoints] == ["conflict"] and not conflict.ok
    assert "5 rows" in conflict.checkpoints[0].note or "4 rows" in conflict.checkpoints[0].note
    assert len(dst.load_checkpoint("summaries", ConversationSummary)) == 4  # untouched
    replaced = migrate(src, dst, overwrite=True)
    assert [c.status for c in replaced.checkpoints] == ["copied"]
    assert len(dst.load_checkpoint("summaries", ConversationSummary)) == 5


def test_a_copy_that_does_not_verify_is_deleted_and_reported(tmp_path):
    class LossyJSONL(JSONLCheckpointManager):
        """A destination that silently drops the last row (the bug verification exists to catch)."""

        def _write(self, path, models, model, **kwargs):
            return super()._write(path, models[:-1], model, **kwargs)

    src, dst = JSONLCheckpointManager(tmp_path / "src"), LossyJSONL(tmp_path / "dst")
    src.save_checkpoint("summaries", _summaries())
    with pytest.raises(MigrationError, match=r"did not verify.*3 rows, the source 4.*deleted"):
        migrate(src, dst)
    assert not dst.has_checkpoint("summaries")


def test_errors_name_what_is_wrong(tmp_path):
    src = JSONLCheckpointManager(tmp_path / "src")
    src.save_checkpoint("summaries", _summaries())
    with pytest.raises(MigrationError, match="No jsonl checkpoint 'clusters'.*holds: summaries"):
        migrate(src, JSONLCheckpointManager(tmp_path / "dst"), ["clusters"])
    with pytest.raises(MigrationError, match="same location"):
        migrate(src, JSONLCheckpointManager(tmp_path / "src"))
    # A file that does not record its model, under a name that is not Kura's: the error says what to pass.
    (tmp_path / "src" / "mine.jsonl").write_bytes((tmp_path / "src" / "summaries.jsonl").read_bytes())
    with pytest.raises(MigrationError, match="mine.jsonl does not record its model.*--model"):
        migrate(src, JSONLCheckpointManager(tmp_path / "dst"), ["mine"])
    report = migrate(src, JSONLCheckpointManager(tmp_path / "dst"), ["mine"], models={"mine": "ConversationSummary"})
    assert report.checkpoints[0].rows == 4
    for bad in ("summaries", "csv:/x", "jsonl:"):
        with pytest.raises(ValueError, match="FORMAT:DIR"):
            parse_location(bad)
    assert parse_location("parquet:s3://bucket/kura") == ("parquet", "s3://bucket/kura")


@pytest.mark.parametrize("where", ["repository", "shared"])
def test_imports_the_directory_kura_wrote_as_jsonl(tmp_path, where, request):
    """Kura's JSONL files record no model: Kura's checkpoint names decide, and the copy is Kura's bytes exactly.
    On the small directory Kura 0.5.4 wrote in the repository (always) and on ../shared's 1,000 rows (when present)."""
    shared_data = KURA054 / "jsonl" if where == "repository" else request.getfixturevalue("shared_data")
    report = migrate(open_location(f"jsonl:{shared_data}"), open_location(f"jsonl:{tmp_path}"),
                     ["summaries", "clusters", "dimensionality"])
    assert [c.model.rsplit(".", 1)[-1] for c in report.checkpoints] == [
        "ConversationSummary", "Cluster", "ProjectedCluster"]
    for c in report.checkpoints:
        assert (tmp_path / f"{c.name}.jsonl").read_bytes() == (shared_data / f"{c.name}.jsonl").read_bytes()
        assert c.rows == len((shared_data / f"{c.name}.jsonl").read_text().splitlines())


@pytest.mark.parametrize("fmt", [pytest.param("parquet", marks=needs["parquet"]), pytest.param("hf", marks=needs["hf"])])
def test_imports_kuras_own_parquet_and_hf_directories(tmp_path, fmt):
    report = migrate(open_location(f"{fmt}:{KURA054 / fmt}"), open_location(f"jsonl:{tmp_path}"))
    assert sorted(c.name for c in report.checkpoints) == sorted(KURA_CHECKPOINT_MODELS)
    for c in report.checkpoints:
        model = KURA_CHECKPOINT_MODELS[c.name]
        expected = _lines(KURA054 / f"{c.name}.kura_loaded.{fmt}.jsonl", model)  # what Kura itself loads back
        assert _dumps(_lines(tmp_path / f"{c.name}.jsonl", model)) == _dumps(expected)
        assert c.rows == len(expected) == 12


# --- the storage overview ----------------------------------------------------------------------------------------
def _populate(root: Path) -> None:
    for fmt in FORMATS:
        build_manager(fmt, root).save_checkpoint("summaries", _summaries())
    JSONLCheckpointManager(root).save_checkpoint("clusters_jsonl_only", _summaries(1))
    JSONLCheckpointManager(root / "jsonl").save_checkpoint("old", _summaries(2))  # the seed's per-format subdirectory


def _disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def test_storage_overview_counts_every_format_side_by_side_and_in_subdirectories(tmp_path):
    _populate(tmp_path)
    overview = storage_overview(tmp_path)
    assert overview.formats == FORMATS
    paths = {"jsonl": tmp_path / "summaries.jsonl", "parquet": tmp_path / "summaries.parquet", "hf": tmp_path / "summaries"}
    assert overview.sizes["summaries"] == {f: _disk_size(paths[f]) for f in FORMATS}
    assert overview.sizes["old"] == {"jsonl": (tmp_path / "jsonl" / "old.jsonl").stat().st_size}
    assert overview.totals["jsonl"] == sum(_disk_size(tmp_path / n) for n in (
        "summaries.jsonl", "clusters_jsonl_only.jsonl", "jsonl/old.jsonl"))
    text = overview.as_markdown()
    assert f"**{overview.totals['jsonl']:,}**" in text and "| summaries |" in text
    with pytest.raises(FileNotFoundError):
        storage_overview(tmp_path / "absent")


# --- the command ---------------------------------------------------------------------------------------------------
def test_cli_migrate_and_storage(tmp_path, capsys):
    src = JSONLCheckpointManager(tmp_path / "src")
    src.save_checkpoint("summaries", _summaries())
    src.save_checkpoint("other", _summaries(2))
    dst_fmt = "parquet" if "parquet" in FORMATS else "jsonl"
    opts = ["--option", "compression=zstd"] if dst_fmt == "parquet" else []
    assert cli.main(["migrate", f"jsonl:{tmp_path / 'src'}", f"{dst_fmt}:{tmp_path / 'dst'}", "--names", "summaries",
                     *opts]) == 0
    out = capsys.readouterr().out
    assert "| summaries | ConversationSummary | copied | 4 |" in out
    assert build_manager(dst_fmt, tmp_path / "dst").list_checkpoints() == ["summaries"]
    assert cli.main(["storage", str(tmp_path / "src"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sizes"]["summaries"]["jsonl"] == (tmp_path / "src" / "summaries.jsonl").stat().st_size
    assert data["totals"]["jsonl"] == sum(v["jsonl"] for v in data["sizes"].values())
    # A conflict exits 1 and says how to resolve it; bad arguments exit 2.
    src.save_checkpoint("summaries", _summaries(3))
    assert cli.main(["migrate", f"jsonl:{tmp_path / 'src'}", f"{dst_fmt}:{tmp_path / 'dst'}", "--names", "summaries"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    for bad in (["migrate", "csv:x", "jsonl:y"], ["migrate", "jsonl:x", "jsonl:y", "--option", "nokey"],
                ["storage", str(tmp_path / "absent")]):
        with pytest.raises(SystemExit) as info:
            cli.main(bad)
        assert info.value.code == 2


def test_console_script_runs(tmp_path):
    JSONLCheckpointManager(tmp_path).save_checkpoint("summaries", _summaries())
    exe = Path(sys.executable).with_name("kura-dagster")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "kura_dagster.cli"]
    out = subprocess.run([*cmd, "storage", str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr
    assert f"{(tmp_path / 'summaries.jsonl').stat().st_size:,}" in out.stdout


# --- the Dagster jobs ------------------------------------------------------------------------------------------------
def test_migration_job_records_the_report_and_storage_in_metadata(tmp_path):
    src = JSONLCheckpointManager(tmp_path / "src")
    src.save_checkpoint("summaries", _summaries())
    dst_fmt = "parquet" if "parquet" in FORMATS else "jsonl"
    config = {"source": f"jsonl:{tmp_path / 'src'}", "destination": f"{dst_fmt}:{tmp_path / 'dst'}"}
    result = migrate_checkpoints_job.execute_in_process(run_config={"ops": {"migrate_checkpoints": {"config": config}}})
    assert result.success
    out = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"][0].event_specific_data.metadata
    assert out["copied"].value == 1 and out["rows"].value == 4
    assert "| summaries | ConversationSummary | copied | 4 |" in out["report"].value
    size = build_manager(dst_fmt, tmp_path / "dst").get_file_size("summaries")
    assert out[f"destination_storage/total_bytes/{dst_fmt}"].value == size
    assert f"{size:,}" in out["destination_storage/overview"].value

    src.save_checkpoint("summaries", _summaries(2))  # now the destination differs: the job fails, data untouched
    failed = migrate_checkpoints_job.execute_in_process(
        run_config={"ops": {"migrate_checkpoints": {"config": config}}}, raise_on_error=False)
    assert not failed.success
    assert "overwrite" in failed.failure_data_for_node("migrate_checkpoints").error.to_string()
    assert build_manager(dst_fmt, tmp_path / "dst").get_file_size("summaries") == size

    storage = checkpoint_storage_job.execute_in_process(
        run_config={"ops": {"checkpoint_storage": {"config": {"directory": str(tmp_path / "src")}}}})
    md = [e for e in storage.all_events if e.event_type_value == "STEP_OUTPUT"][0].event_specific_data.metadata
    assert md["storage/total_bytes/jsonl"].value == (tmp_path / "src" / "summaries.jsonl").stat().st_size
    assert isinstance(md["storage/overview"], dg.MarkdownMetadataValue)
