"""Layer 3, MultiIOManager: real Dagster runs over several backends, healthy and degraded, and the env wiring."""

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.checkpoints.registry import build_manager
from kura_dagster.io_managers import JSONLIOManager
from kura_dagster.io_managers.multi import Backend, MultiIOManager, io_manager_from_env
from kura_dagster.types import ConversationSummary
from kura_dagster_tests._formats import available_formats

FORMATS = available_formats()
ALL_FORMATS = ["jsonl", "parquet", "hf"]
needs_all_formats = pytest.mark.skipif(set(ALL_FORMATS) - set(FORMATS), reason="Parquet/HF backends not available")


def _summaries(n: int = 3) -> list[ConversationSummary]:
    return [ConversationSummary(chat_id=f"c{i}", summary=f"s{i}", metadata={"i": i}, embedding=[0.5 * i, 1.0])
            for i in range(n)]


@dg.asset
def up() -> list[ConversationSummary]:
    return _summaries()


@dg.asset
def down(up: list[ConversationSummary]) -> list[ConversationSummary]:
    return up[:2]


def _run_logs(instance: dg.DagsterInstance, result) -> list[tuple[str, str]]:
    """(level, message) of every user log line of a run."""
    import logging

    return [(logging.getLevelName(r.level), r.user_message) for r in instance.all_logs(result.run_id)]


def _backends(tmp_path: Path, formats=("jsonl", "parquet")) -> list[Backend]:
    return [Backend(format=f, base_dir=str(tmp_path / f"{f}-{i}")) for i, f in enumerate(formats)]


def test_each_materialization_records_which_backends_saved_and_bytes(tmp_path):
    formats = [f for f in ("jsonl", "parquet", "hf") if f in FORMATS]
    io = MultiIOManager(base_dir=str(tmp_path / "base"), backends=_backends(tmp_path, formats))
    result = dg.materialize([up, down], resources={"io_manager": io})
    assert result.success
    md = result.asset_materializations_for_node("up")[0].metadata
    labels = formats
    assert md["kura/saved_to"].value == ", ".join(labels)
    assert md["kura/backends_failed"].value == 0
    total = 0
    for i, fmt in enumerate(formats):
        mgr = build_manager(fmt, tmp_path / f"{fmt}-{i}")
        assert [s.model_dump() for s in mgr.load_checkpoint("up", ConversationSummary)] == [
            s.model_dump() for s in _summaries()]
        assert md[f"kura/bytes/{fmt}"].value == mgr.get_file_size("up") > 0
        total += mgr.get_file_size("up")
    assert md["kura/bytes"].value == total
    assert md["path"].value == str(tmp_path / "jsonl-0" / "up.jsonl")
    assert md["dagster/row_count"].value == 3
    assert [r.data["status"] for r in md["kura/backends"].records] == ["saved"] * len(formats)
    if "parquet" in formats:  # each backend's own facts are kept, under its name
        assert md["kura/parquet/codec"].value == "snappy"
    assert not (tmp_path / "base").exists()  # every backend has its own base_dir: nothing lands in the default


def test_primary_deleted_downstream_still_loads_from_the_secondary(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    io = MultiIOManager(backends=_backends(tmp_path, ("jsonl", "parquet" if "parquet" in FORMATS else "jsonl")))
    assert dg.materialize([up], resources={"io_manager": io}, instance=instance).success
    primary = tmp_path / "jsonl-0" / "up.jsonl"
    primary.unlink()
    result = dg.materialize([up, down], selection=[down], resources={"io_manager": io}, instance=instance)
    assert result.success
    assert [s.chat_id for s in result.output_for_node("down")] == ["c0", "c1"]
    served = [m for lvl, m in _run_logs(instance, result) if m.startswith("Loaded 3 rows of up")]
    assert served and ("from backend 'parquet'" in served[0] or "from backend 'jsonl_2'" in served[0])
    assert "jsonl (missing)" in served[0]
    loaded = [e for e in result.all_events if e.event_type_value == "LOADED_INPUT"]
    assert loaded[0].event_specific_data.metadata["kura/served_by"].value in ("parquet", "jsonl_2")


def test_corrupt_primary_first_found_falls_back_priority_fails(tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    backends = _backends(tmp_path, ("jsonl", "jsonl"))
    io = MultiIOManager(backends=backends)
    assert dg.materialize([up], resources={"io_manager": io}, instance=instance).success
    primary = tmp_path / "jsonl-0" / "up.jsonl"
    primary.write_bytes(primary.read_bytes()[:40])
    result = dg.materialize([up, down], selection=[down], resources={"io_manager": io}, instance=instance)
    assert result.success and len(result.output_for_node("down")) == 2
    warnings = [m for lvl, m in _run_logs(instance, result) if lvl == "WARNING"]
    assert any("unreadable copy of up in backend 'jsonl'" in w and str(primary) in w for w in warnings)

    strict = MultiIOManager(backends=backends, load_strategy="priority")
    result = dg.materialize([up, down], selection=[down], resources={"io_manager": strict}, instance=instance,
                            raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("down").error
    assert "load_strategy='priority' does not fall back" in str(failure.to_string())
    assert str(primary) in failure.to_string()


def test_a_failing_backend_costs_nothing_and_is_recorded(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    instance = dg.DagsterInstance.ephemeral()
    io = MultiIOManager(backends=[Backend(format="jsonl", name="nas", base_dir=str(blocker / "nas")),
                                  Backend(format="jsonl", name="ssd", base_dir=str(tmp_path / "ssd"))])
    result = dg.materialize([up, down], resources={"io_manager": io}, instance=instance)
    assert result.success
    md = result.asset_materializations_for_node("up")[0].metadata
    assert md["kura/saved_to"].value == "ssd" and md["kura/backends_failed"].value == 1
    assert "kura/bytes/nas" not in md and md["kura/bytes/ssd"].value == (tmp_path / "ssd" / "up.jsonl").stat().st_size
    failed = [r.data for r in md["kura/backends"].records if r.data["status"] == "failed"]
    assert failed[0]["backend"] == "nas" and "blocker" in failed[0]["path"] and failed[0]["detail"]
    assert md["path"].value == str(tmp_path / "ssd" / "up.jsonl")
    assert any(lvl == "WARNING" and "Backend 'nas' could not save up" in m for lvl, m in _run_logs(instance, result))
    # The downstream step (same run) loaded from the backend that has it.
    assert len(result.output_for_node("down")) == 2


def test_every_backend_failing_fails_the_step_naming_each(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    io = MultiIOManager(backends=[Backend(format="jsonl", base_dir=str(blocker / "a")),
                                  Backend(format="jsonl", base_dir=str(blocker / "b"))])
    result = dg.materialize([up], resources={"io_manager": io}, raise_on_error=False)
    assert not result.success
    text = result.failure_data_for_node("up").error.to_string()
    assert "not saved by any backend" in text and str(blocker / "a") in text and str(blocker / "b") in text


def test_primary_only_and_disabled_backends(tmp_path):
    io = MultiIOManager(backends=_backends(tmp_path, ("jsonl", "jsonl")), save_strategy="primary_only")
    result = dg.materialize([up], resources={"io_manager": io})
    assert (tmp_path / "jsonl-0" / "up.jsonl").exists() and not (tmp_path / "jsonl-1").exists()
    table = result.asset_materializations_for_node("up")[0].metadata["kura/backends"].records
    assert [(r.data["backend"], r.data["status"]) for r in table] == [("jsonl", "saved"), ("jsonl_2", "skipped")]

    off = MultiIOManager(backends=[Backend(format="jsonl", base_dir=str(tmp_path / "off"), enabled=False),
                                   Backend(format="jsonl", base_dir=str(tmp_path / "on"))])
    assert dg.materialize([up], resources={"io_manager": off}).success
    assert (tmp_path / "on" / "up.jsonl").exists() and not (tmp_path / "off").exists()


def test_partitions_are_kept_by_every_backend(tmp_path):
    parts = dg.StaticPartitionsDefinition(["a", "b"])

    @dg.asset(partitions_def=parts)
    def daily(context: dg.AssetExecutionContext) -> list[ConversationSummary]:
        return [ConversationSummary(chat_id=context.partition_key, summary="s", metadata={})]

    @dg.asset
    def combined(daily: dict[str, list[ConversationSummary]]) -> list[ConversationSummary]:
        return sorted((s for rows in daily.values() for s in rows), key=lambda s: s.chat_id)

    second = "parquet" if "parquet" in FORMATS else "jsonl"
    io = MultiIOManager(backends=_backends(tmp_path, ("jsonl", second)))
    for key in ("a", "b"):
        assert dg.materialize([daily], partition_key=key, resources={"io_manager": io}).success
    ext = ".parquet" if second == "parquet" else ".jsonl"
    assert sorted(p.name for p in (tmp_path / f"{second}-1" / "daily").iterdir() if not p.name.startswith(".")
                  and p.name.endswith(ext)) == [f"a{ext}", f"b{ext}"]
    shutil.rmtree(tmp_path / "jsonl-0")  # the primary is gone entirely
    downstream = dg.materialize([daily, combined], selection=[combined], resources={"io_manager": io})
    assert [s.chat_id for s in downstream.output_for_node("combined")] == ["a", "b"]


def test_config_errors_are_clear(tmp_path):
    dup = MultiIOManager(backends=[Backend(format="jsonl", name="x", base_dir=str(tmp_path / "1")),
                                   Backend(format="jsonl", name="x", base_dir=str(tmp_path / "2"))])
    with pytest.raises(dg.DagsterInvalidConfigError, match="names must be unique"):
        dg.materialize([up], resources={"io_manager": dup})
    wrong = MultiIOManager(backends=[Backend(format="jsonl", base_dir=str(tmp_path), hub_repo="org/x")])
    with pytest.raises(dg.DagsterInvalidConfigError, match="backend 'jsonl'.*hub_repo"):
        dg.materialize([up], resources={"io_manager": wrong})
    if "parquet" in FORMATS:
        codec = MultiIOManager(backends=[Backend(format="parquet", name="ssd", base_dir=str(tmp_path), compression="rar")])
        with pytest.raises(dg.DagsterInvalidConfigError, match="backend 'ssd'.*compression must be one of"):
            dg.materialize([up], resources={"io_manager": codec})
    with pytest.raises(Exception, match="format"):
        Backend(format="csv", base_dir=str(tmp_path))  # type: ignore[arg-type]


# --- env wiring of the default Definitions ----------------------------------------------------------------------
def test_env_default_and_single_formats(tmp_path):
    io = io_manager_from_env({"KURA_CHECKPOINT_DIR": str(tmp_path)})
    assert type(io) is JSONLIOManager and io.base_dir == str(tmp_path)
    if "parquet" in FORMATS:
        io = io_manager_from_env({"KURA_CHECKPOINT_FORMATS": "parquet", "KURA_CHECKPOINT_DIR": str(tmp_path),
                                  "KURA_PARQUET_COMPRESSION": "zstd"})
        assert type(io).__name__ == "ParquetIOManager" and io.compression == "zstd"
    if "hf" in FORMATS:
        io = io_manager_from_env({"KURA_CHECKPOINT_FORMATS": "hf", "KURA_CHECKPOINT_DIR": str(tmp_path),
                                  "KURA_HF_HUB_REPO": "org/kura"})
        assert type(io).__name__ == "HFDatasetIOManager" and io.hub_repo == "org/kura" and io.hub_token is None


@needs_all_formats
def test_env_several_formats_make_a_multi_io_manager_side_by_side(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_never_in_config")
    env = {"KURA_CHECKPOINT_FORMATS": " Parquet, jsonl ,hf", "KURA_CHECKPOINT_DIR": str(tmp_path),
           "KURA_SAVE_STRATEGY": "all_enabled", "KURA_LOAD_STRATEGY": "priority",
           "KURA_PARQUET_COMPRESSION": "gzip", "KURA_HF_HUB_REPO": "org/kura", "HF_TOKEN": os.environ["HF_TOKEN"]}
    io = io_manager_from_env(env)
    assert isinstance(io, MultiIOManager)
    assert [b.format for b in io.backends] == ["parquet", "jsonl", "hf"] and io.load_strategy == "priority"
    assert io.backends[0].compression == "gzip" and io.backends[2].hub_repo == "org/kura"
    token = io.backends[2].hub_token
    assert isinstance(token, dg.EnvVar) and token.env_var_name == "HF_TOKEN"
    assert "hf_secret_value" not in repr(io)
    assert io_manager_from_env({k: v for k, v in env.items() if k != "HF_TOKEN"}).backends[2].hub_token is None

    # A real run: every format side by side under KURA_CHECKPOINT_DIR, as in the seed's file organization.
    hub_free = io_manager_from_env({k: v for k, v in env.items() if k not in ("HF_TOKEN", "KURA_HF_HUB_REPO")})
    assert dg.materialize([up], resources={"io_manager": hub_free}).success
    assert (tmp_path / "up.parquet").is_file() and (tmp_path / "up.jsonl").is_file() and (tmp_path / "up").is_dir()


@pytest.mark.parametrize(("env", "message"), [
    ({"KURA_CHECKPOINT_FORMATS": "jsonl,csv"}, r"KURA_CHECKPOINT_FORMATS='jsonl,csv'.*unknown format.*'csv'.*jsonl, parquet, hf"),
    ({"KURA_CHECKPOINT_FORMATS": " , "}, r"KURA_CHECKPOINT_FORMATS.*no format"),
    ({"KURA_CHECKPOINT_FORMATS": "jsonl,jsonl"}, r"KURA_CHECKPOINT_FORMATS.*repeated"),
    ({"KURA_CHECKPOINT_FORMATS": "jsonl,parquet", "KURA_SAVE_STRATEGY": "everywhere"},
     r"KURA_SAVE_STRATEGY='everywhere'.*all_enabled, primary_only"),
    ({"KURA_LOAD_STRATEGY": "fastest"}, r"KURA_LOAD_STRATEGY='fastest'.*first_found, priority"),
    ({"KURA_CHECKPOINT_FORMATS": "parquet", "KURA_PARQUET_COMPRESSION": "rar"}, r"KURA_PARQUET_COMPRESSION='rar'.*zstd"),
])
def test_env_errors_name_the_variable_and_the_valid_options(env, message):
    if "parquet" in env.get("KURA_CHECKPOINT_FORMATS", "") and "parquet" not in FORMATS:
        pytest.skip("Parquet backend not available")
    with pytest.raises(ValueError, match=message):
        io_manager_from_env(env)


def test_default_definitions_use_the_env(tmp_path, monkeypatch):
    from kura_dagster.definitions import build_definitions  # (its import builds `defs` from the default env)

    monkeypatch.setenv("KURA_CHECKPOINT_FORMATS", "jsonl,jsonl")

    with pytest.raises(ValueError, match="KURA_CHECKPOINT_FORMATS"):
        build_definitions()
    monkeypatch.setenv("KURA_CHECKPOINT_FORMATS", ",".join(FORMATS))
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path))
    defs = build_definitions()
    io = defs.resources["io_manager"]
    expected = MultiIOManager if len(FORMATS) > 1 else JSONLIOManager
    assert isinstance(io, expected) and io.base_dir == str(tmp_path)
    assert {"migrate_checkpoints_job", "checkpoint_storage_job"} <= {j.name for j in defs.jobs}


@pytest.mark.skipif("parquet" not in FORMATS, reason="needs the Parquet backend")
def test_summary_columns_input_takes_the_serving_backends_columnar_path(tmp_path):
    """An input annotated SummaryColumns (the clusters asset's) gets the embedding matrix from the backend that
    serves the load, through its own fast path, and falls back like any load when that copy is damaged."""
    import numpy as np

    from kura_dagster.checkpoints import SummaryColumns

    seen = []

    @dg.asset
    def cols(up: SummaryColumns) -> None:
        seen.append(up)

    instance = dg.DagsterInstance.ephemeral()
    io = MultiIOManager(backends=_backends(tmp_path, ("parquet", "jsonl")))
    assert dg.materialize([up, cols], resources={"io_manager": io}, instance=instance).success
    got = seen[-1]
    assert isinstance(got, SummaryColumns) and got.format == "parquet"
    assert got.chat_ids == ["c0", "c1", "c2"] and got.embeddings.dtype == np.float32
    np.testing.assert_array_equal(got.embeddings, [[0.0, 1.0], [0.5, 1.0], [1.0, 1.0]])

    parquet_copy = tmp_path / "parquet-0" / "up.parquet"
    parquet_copy.write_bytes(parquet_copy.read_bytes()[:100])  # damaged: first_found serves the JSONL copy
    result = dg.materialize([up, cols], selection=[cols], resources={"io_manager": io}, instance=instance)
    assert result.success
    assert seen[-1].format == "jsonl" and seen[-1].chat_ids == ["c0", "c1", "c2"]
    np.testing.assert_array_equal(seen[-1].embeddings, got.embeddings)
    assert any("Skipped the unreadable copy of up in backend 'parquet'" in msg
               for _, msg in _run_logs(instance, result))
