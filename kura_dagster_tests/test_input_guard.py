"""Never lose a good analysis to a bad input (issue 17 items 2 and 4): an emptied or cut-short source fails before
anything is written, per partition, with the setting that allows it named where the pipeline is configured; a
bad-record error and an S3 location without credentials name the setting that applies too.

The instance is the project's own ``dagster.yaml`` (its event log holds the last materialization's counts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster import build_kura_defs
from kura_dagster.definitions import build_definitions
from kura_dagster.orchestration.component import KuraPipelineComponent
from kura_dagster.orchestration.hints import setting
from kura_dagster.types import Conversation

def _conv(i: int, day: str = "2026-03-14") -> dict:
    t = f"{day}T09:{i % 60:02d}:00+05:30"  # India time: not UTC
    return {"chat_id": f"c{i}", "created_at": t, "metadata": {},
            "messages": [{"created_at": t, "role": "user", "content": f"question {i}"},
                         {"created_at": t, "role": "assistant", "content": f"answer {i}"}]}


def _write(path: Path, n: int, start: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(_conv(i)) + "\n" for i in range(start, start + n)))


@pytest.fixture
def instance(project_instance: dg.DagsterInstance) -> dg.DagsterInstance:
    return project_instance  # conftest: a fresh home with the project's own dagster.yaml


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, prefix: str | None = "p",
                 partition_key: str | None = None) -> dg.ExecuteInProcessResult:
    key = dg.AssetKey([prefix, "conversations"] if prefix else ["conversations"])
    return dg.materialize(list(defs.assets), resources=defs.resources, instance=instance, selection=[key],
                          partition_key=partition_key, raise_on_error=False)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    events = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return events[0].step_failure_data.error.to_string()


def test_an_emptied_or_shrunk_source_fails_and_leaves_the_checkpoint(tmp_path: Path, instance) -> None:
    src, ck = tmp_path / "in" / "chats.jsonl", tmp_path / "ck"
    _write(src, 10)
    assert _materialize(build_kura_defs("p", conversations=str(src), checkpoint_dir=str(ck)), instance).success
    saved = (ck / "conversations.jsonl").read_bytes()
    assert saved.count(b"\n") == 10

    src.write_text("")  # the upstream writer truncated the file
    text = _failure(_materialize(build_kura_defs("p", conversations=str(src), checkpoint_dir=str(ck)), instance))
    assert str(src) in text and "0 conversations read, 10 at the last materialization" in text
    assert "allow_empty=True in build_kura_defs(...)" in text
    assert (ck / "conversations.jsonl").read_bytes() == saved

    _write(src, 3)  # 70% fewer: more than the default max_shrink=0.5 allows
    text = _failure(_materialize(build_kura_defs("p", conversations=str(src), checkpoint_dir=str(ck)), instance))
    assert "3 conversations read, 10 at the last materialization (70% fewer; max_shrink=0.5 allows 50%)" in text
    assert "max_shrink=0.7 in build_kura_defs(...)" in text
    assert (ck / "conversations.jsonl").read_bytes() == saved
    # the value the error suggests is enough (10 x (1 - 0.7) is 3.0000000000000004 in floating point)
    assert _materialize(build_kura_defs("p", conversations=str(src), checkpoint_dir=str(ck), max_shrink=0.7),
                        instance).success
    _write(src, 2)  # against the last materialization (3): 33% fewer, within the default
    assert _materialize(build_kura_defs("p", conversations=str(src), checkpoint_dir=str(ck)), instance).success
    src.write_text("")
    assert _materialize(build_kura_defs("p", conversations=str(src), checkpoint_dir=str(ck), allow_empty=True),
                        instance).success
    assert (ck / "conversations.jsonl").read_bytes() == b""


def test_the_demo_set_may_be_made_smaller(tmp_path: Path, instance) -> None:
    for size in (40, 10):  # demo_size is a choice, not a shrunken input
        assert _materialize(build_kura_defs("p", checkpoint_dir=str(tmp_path / "ck"), demo_size=size), instance).success
    assert (tmp_path / "ck" / "conversations.jsonl").read_bytes().count(b"\n") == 10


def test_a_first_empty_read_fails_and_names_the_standalone_variable(tmp_path: Path, instance) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    env = {"KURA_CONVERSATIONS": str(src), "KURA_CHECKPOINT_DIR": str(tmp_path / "ck")}
    text = _failure(_materialize(build_definitions(env), instance, prefix=None))
    assert "no earlier materialization: nothing to analyse" in text and "KURA_ALLOW_EMPTY=1" in text
    assert not (tmp_path / "ck" / "conversations.jsonl").exists()
    assert _materialize(build_definitions({**env, "KURA_ALLOW_EMPTY": "1"}), instance, prefix=None).success
    with pytest.raises(ValueError, match="KURA_MAX_SHRINK='2' must be a share between 0 and 1"):
        build_definitions({**env, "KURA_MAX_SHRINK": "2"})
    assert build_definitions({**env, "KURA_MAX_SHRINK": "0.9"}).resources["source"].max_shrink == 0.9


@pytest.mark.slow
def test_file_partitions_are_guarded_each_against_its_own_last_materialization(tmp_path: Path, instance) -> None:
    _write(tmp_path / "in" / "a.jsonl", 6)
    _write(tmp_path / "in" / "b.jsonl", 4, start=6)
    defs = build_kura_defs("p", conversations=str(tmp_path / "in" / "*.jsonl"), partitions="files",
                           checkpoint_dir=str(tmp_path / "ck"))
    instance.add_dynamic_partitions("p_files", ["a", "b"])
    for key in ("a", "b"):
        assert _materialize(defs, instance, partition_key=key).success
    saved = (tmp_path / "ck" / "conversations" / "b.jsonl").read_bytes()
    (tmp_path / "in" / "b.jsonl").write_text(json.dumps(_conv(6))[:30])  # cut to a partial first line
    skip = build_kura_defs("p", conversations=str(tmp_path / "in" / "*.jsonl"), partitions="files",
                           checkpoint_dir=str(tmp_path / "ck"), on_bad_record="skip")
    text = _failure(_materialize(skip, instance, partition_key="b"))
    assert "partition b: 0 conversations read, 4 at the last materialization" in text
    assert (tmp_path / "ck" / "conversations" / "b.jsonl").read_bytes() == saved
    assert not (tmp_path / "ck" / "quarantine").exists()  # failed before anything was written
    _write(tmp_path / "in" / "a.jsonl", 5)  # partition a on its own: 6 → 5 is fine
    assert _materialize(defs, instance, partition_key="a").success


def test_hints_name_the_setting_where_the_pipeline_is_configured(tmp_path: Path, instance) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(_conv(1)) + "\n" + '{"chat_id": "x"}\n')
    text = _failure(_materialize(build_kura_defs("p", conversations=str(src), checkpoint_dir=str(tmp_path / "ck")),
                                 instance))
    assert "on_bad_record='skip' in build_kura_defs(...)" in text and "KURA_ON_BAD_RECORD" not in text
    env = {"KURA_CONVERSATIONS": str(src), "KURA_CHECKPOINT_DIR": str(tmp_path / "ck2")}
    assert "KURA_ON_BAD_RECORD=skip" in _failure(_materialize(build_definitions(env), instance, prefix=None))
    component = KuraPipelineComponent(key_prefix="sales", conversations=str(src), allow_empty=True)
    assert component.model_dump()["allow_empty"] is True
    assert setting("component", "on_bad_record", "skip") == \
        "on_bad_record: skip under attributes: in the component's defs.yaml"
    assert setting("component", "allow_empty", True) == "allow_empty: true under attributes: in the component's defs.yaml"


@pytest.mark.slow
def test_s3_checkpoints_without_credentials_name_the_url_and_what_supplies_them(tmp_path: Path, instance,
                                                                               monkeypatch) -> None:
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import s3fs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key in list(os.environ):
            if key.startswith("AWS_"):
                monkeypatch.delenv(key)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3fs.S3FileSystem.clear_instance_cache()
        src = tmp_path / "chats.jsonl"
        _write(src, 3)
        env = {"KURA_CONVERSATIONS": str(src), "KURA_CHECKPOINT_DIR": "s3://kura-nocreds/x"}
        text = _failure(_materialize(build_definitions(env), instance, prefix=None))
        assert "s3://kura-nocreds/x: no credentials for this storage (NoCredentialsError" in text
        assert "KURA_CHECKPOINT_DIR" in text and "AWS_ACCESS_KEY_ID" in text and "AWS_PROFILE" in text
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
