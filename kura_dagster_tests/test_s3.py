"""Checkpoints on a real S3 API: moto's S3 server on 127.0.0.1, started and stopped by this module, reached by the
real s3fs client through the standard variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, …).

Faults are injected at the server: a small WSGI layer in front of moto fails (or holds, for a kill) the requests a
test names, so the client code under test is exactly what runs against AWS or MinIO.

What is checked: every format, the MultiIOManager, the summary cache, quarantine, listing, deleting, migration and
the storage overview work on ``s3://``; a reader never sees a partial object; a failed or killed save leaves the
previous version loadable and no partial objects visible; a damaged object raises CheckpointCorruptError naming
it; the credentials appear in no log, metadata or object.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

pytest.importorskip("s3fs", reason="the S3 tests need s3fs (pip install -e '.[dev]')")
moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (pip install -e '.[dev]')")

from kura_dagster.checkpoints import storage  # noqa: E402
from kura_dagster.checkpoints.errors import CheckpointCorruptError  # noqa: E402
from kura_dagster.checkpoints.registry import build_manager  # noqa: E402
from kura_dagster.types import ConversationSummary  # noqa: E402
from kura_dagster_tests._crash_writer import WriterServer, identify, make_versions  # noqa: E402
from kura_dagster_tests._formats import available_formats, format_params  # noqa: E402

BUCKET = "kura-tests"
ACCESS_KEY = "AKIAKURATESTS3KEY0001"
SECRET = f"kura-test-secret-{uuid.uuid4().hex}"  # must never show up in a log, metadata or object


# --- the server ---------------------------------------------------------------------------------------------------
@dataclass
class _Rule:
    match: Callable[[str, str, str], bool]  # (method, path, query) -> applies?
    times: int
    hold: threading.Event | None = None  # hold the request until set (then fail it): a client killed mid-request
    arrived: threading.Event = field(default_factory=threading.Event)


class FaultInjector:
    """WSGI layer in front of moto: requests matching a rule are answered with an S3 error (AccessDenied, which
    clients do not retry) instead of reaching moto; a ``hold`` rule first keeps the request waiting."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.rules: list[_Rule] = []
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header) of every request

    def fail(self, match: Callable[[str, str, str], bool], times: int = 1) -> _Rule:
        rule = _Rule(match, times)
        with self.lock:
            self.rules.append(rule)
        return rule

    def hold(self, match: Callable[[str, str, str], bool]) -> _Rule:
        rule = _Rule(match, 1, hold=threading.Event())
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            for rule in self.rules:
                if rule.hold is not None:
                    rule.hold.set()
            self.rules.clear()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path, query = environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", "")
        rule = None
        with self.lock:
            self.requests.append((method, path, environ.get("HTTP_RANGE", "")))
            for r in self.rules:
                if r.times > 0 and r.match(method, path, query):
                    r.times -= 1
                    rule = r
                    break
        if rule is None:
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            environ["wsgi.input"].read(length)  # the body was sent; the server refuses it
        rule.arrived.set()
        if rule.hold is not None:
            rule.hold.wait(60)
        body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                b"<Message>injected fault</Message></Error>")
        start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]


@dataclass
class S3:
    endpoint: str
    faults: FaultInjector

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(use_listings_cache=False)

    def keys(self, url: str) -> list[str]:
        """Every object under ``url``, relative to it."""
        root = url.split("://", 1)[1].rstrip("/")
        return sorted(k[len(root) + 1:] for k in self.fs().find(root))

    def all_bytes(self) -> bytes:
        fs = self.fs()
        return b"\n".join(fs.cat_file(k) for k in fs.find(BUCKET))


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3]:
    """moto's S3 server on a free loopback port, and the standard variables pointing s3fs at it."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    faults = FaultInjector(server._server.app)  # noqa: SLF001 - werkzeug's server serves whatever .app is
    server._server.app = faults  # noqa: SLF001
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("AWS_"):
                mp.delenv(key)
        mp.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", os.devnull)  # no profile of the developer's machine
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        import s3fs

        # fsspec caches filesystems by their options, not by the environment: a client another module made for
        # another endpoint would be reused. Start and end with none.
        s3fs.S3FileSystem.clear_instance_cache()
        s3 = S3(f"http://{host}:{port}", faults)
        s3.fs().mkdir(BUCKET)
        try:
            yield s3
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


@pytest.fixture
def s3(s3_server: S3) -> Iterator[S3]:
    yield s3_server
    s3_server.faults.clear()


@pytest.fixture
def s3_dir(s3: S3) -> str:
    """A fresh prefix in the test bucket."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"


def _versions(rows: int = 40) -> dict[str, list[ConversationSummary]]:
    return make_versions(rows)


def _key(path: str) -> str:
    """``/kura-tests/abc/summaries.jsonl`` (a request path) → ``abc/summaries.jsonl``."""
    return path.split("/", 2)[2] if path.count("/") >= 2 else ""


# --- locations ----------------------------------------------------------------------------------------------------
def test_resolve_location_keeps_urls_and_absolutises_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.resolve_location("s3://bucket/kura") == "s3://bucket/kura"
    assert storage.resolve_location("memory://x/y") == "memory://x/y"
    assert storage.resolve_location("checkpoints") == str(tmp_path / "checkpoints")
    assert storage.resolve_location("~/ck") == str(tmp_path / "home" / "ck")


def test_version_and_pointer_names_cannot_be_checkpoint_or_partition_names() -> None:
    from kura_dagster.checkpoints.errors import InvalidCheckpointName

    for name in (f"{storage.VERSION_MARK}00000000000000000001-0123abcd", f"summaries/{storage.POINTER_NAME}"):
        with pytest.raises(InvalidCheckpointName, match="reserved"):
            storage.validate_name(name)


def test_checkpoint_dir_from_the_environment_stays_an_s3_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug this replaces: ``os.path.abspath("s3://b/k")`` made a local folder ``./s3:/b/k``."""
    from kura_dagster.io_managers.multi import MultiIOManager, io_manager_from_env

    monkeypatch.chdir(tmp_path)
    for formats in ("jsonl", "parquet", "jsonl,parquet,hf"):
        io = io_manager_from_env({"KURA_CHECKPOINT_DIR": "s3://bucket/kura", "KURA_CHECKPOINT_FORMATS": formats})
        assert io.base_dir == "s3://bucket/kura"
        assert isinstance(io, MultiIOManager) == ("," in formats)
    assert io_manager_from_env({"KURA_CHECKPOINT_DIR": "ck"}).base_dir == str(tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


# --- every format -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", format_params())
def test_every_format_saves_lists_loads_and_deletes_on_s3(fmt: str, s3: S3, s3_dir: str) -> None:
    versions = _versions()
    manager = build_manager(fmt, s3_dir)
    saved = manager.save_checkpoint("summaries", versions["A"])
    assert saved is not None and saved.path.startswith("s3://") and saved.rows == len(versions["A"])
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), versions) == "A"
    manager.save_checkpoint("summaries", versions["B"])
    fresh = build_manager(fmt, s3_dir)  # another manager (another reader) sees the new version
    assert identify(fresh.load_checkpoint("summaries", ConversationSummary), versions) == "B"
    assert fresh.list_checkpoints() == ["summaries"]
    info = fresh.get_checkpoint_info("summaries")
    assert info is not None and info["num_rows"] == len(versions["B"]) and info["size_bytes"] > 0
    assert [s.chat_id for s in fresh.iter_checkpoint("summaries", ConversationSummary)] == [
        s.chat_id for s in versions["B"]]
    kept = fresh.filter_checkpoint("summaries", lambda row: row["topic"] == "coding", ConversationSummary)
    assert kept == [s for s in versions["B"] if s.topic == "coding"]
    # Exactly the checkpoint's objects: no temporary object, and for a directory one pointer and one version.
    keys = s3.keys(s3_dir)
    if fmt == "jsonl":
        assert keys == ["summaries.jsonl", "summaries.jsonl.meta.json"]
    elif fmt == "parquet":
        assert keys == ["summaries.parquet"]
    else:
        assert {k.split("/")[1] for k in keys} == {storage.POINTER_NAME, storage.read_pointer(
            storage.to_upath(f"{s3_dir}/summaries"))}
    assert fresh.delete_checkpoint("summaries")
    assert not fresh.has_checkpoint("summaries") and fresh.list_checkpoints() == []
    assert s3.keys(s3_dir) == []


def test_an_hf_version_is_a_complete_save_to_disk_directory(s3: S3, s3_dir: str) -> None:
    """What the pointer names can be opened by ``datasets.load_from_disk`` as it is."""
    from datasets import load_from_disk

    versions = _versions(10)
    manager = build_manager("hf", s3_dir)
    manager.save_checkpoint("summaries", versions["A"])
    version = storage.read_pointer(storage.to_upath(f"{s3_dir}/summaries"))
    assert version is not None and version.startswith(storage.VERSION_MARK)
    dataset = load_from_disk(f"{s3_dir}/summaries/{version}")
    assert dataset["chat_id"] == [s.chat_id for s in versions["A"]]


@pytest.mark.parametrize("fmt", [f for f in available_formats() if f != "jsonl"])
def test_describing_a_checkpoint_on_s3_downloads_no_data(fmt: str, s3: S3, s3_dir: str) -> None:
    """get_checkpoint_info reads the footer (Parquet) or the manifest and the stream's schema (HF), not the data."""
    rows = [ConversationSummary(chat_id=f"c{i}", summary=f"summary {i}", metadata={},
                                embedding=[((i * 31 + j * 7) % 1009) / 1009 for j in range(64)]) for i in range(4000)]
    manager = build_manager(fmt, s3_dir)
    size = manager.save_checkpoint("summaries", rows).bytes
    assert size > 200_000
    s3.faults.requests.clear()
    # (64 kB read blocks instead of s3fs's 50 MB, which would fetch a file this small whole in any case)
    info = build_manager(fmt, s3_dir, storage_options={"default_block_size": 1 << 16}).get_checkpoint_info("summaries")
    assert info is not None and info["num_rows"] == len(rows) and "embedding" in info["features"]
    data_gets = [r for m, p, r in s3.faults.requests if m == "GET" and p.endswith((".parquet", ".arrow"))]
    assert data_gets and all(r.startswith("bytes=") for r in data_gets), data_gets
    fetched = sum(int(b) - int(a) + 1 for r in data_gets for a, b in [r[len("bytes="):].split("-")])
    assert fetched < size / 2, (fetched, size)  # (Parquet: the last 64 kB, where the footer is)


def test_missing_bucket_is_an_error_naming_it_and_no_bucket_is_created(s3: S3) -> None:
    from kura_dagster.io_managers import JSONLIOManager

    bucket = f"kura-missing-{uuid.uuid4().hex[:8]}"
    for fmt in available_formats():
        with pytest.raises(FileNotFoundError, match=f"Cannot write s3://{bucket}/kura/.*never creates a bucket"):
            build_manager(fmt, f"s3://{bucket}/kura").save_checkpoint("summaries", _versions(3)["A"])

    @dg.asset
    def summaries() -> list[ConversationSummary]:
        return _versions(3)["A"]

    # (Dagster's UPathIOManager makes the output's directory first: on S3 that created the missing bucket.)
    result = dg.materialize([summaries], resources={"io_manager": JSONLIOManager(base_dir=f"s3://{bucket}/kura")},
                            raise_on_error=False)
    assert not result.success
    assert f"s3://{bucket}/kura" in result.failure_data_for_node("summaries").error.to_string()
    assert not s3.fs().exists(bucket)


# --- a reader never sees a partial object; a failed write keeps the previous version --------------------------------
def test_a_multipart_upload_that_fails_midway_leaves_the_old_object_and_no_upload(s3: S3, s3_dir: str) -> None:
    """A 12 MB object goes up in 6 MB parts; the second part fails. The old object is intact, the failed
    multipart upload was aborted, and readers never saw any of it."""
    target = storage.to_upath(f"{s3_dir}/blob.bin", {"default_block_size": 5 << 20})  # (s3fs's default: 50 MB)
    old = os.urandom(1 << 20)
    storage.atomic_write_bytes(target, old)
    s3.faults.fail(lambda m, p, q: m == "PUT" and p.endswith("/blob.bin") and "partNumber=2" in q)
    chunk = b"n" * (6 << 20)

    def write(fh: Any) -> None:
        fh.write(chunk)
        assert target.read_bytes() == old  # part 1 was uploaded: still invisible
        fh.write(chunk)

    with pytest.raises(PermissionError, match="injected fault"):
        storage.atomic_write_file(target, write)
    assert target.read_bytes() == old
    assert s3.keys(s3_dir) == ["blob.bin"]
    assert s3.fs().list_multipart_uploads(BUCKET) == []


# What each format's save uploads, and a request in the middle of it to fail or hold.
MID_UPLOAD: dict[str, Callable[[str, str, str], bool]] = {
    # JSONL: the data file's upload (after its sidecar already accepts the new version next to the old one)
    "jsonl": lambda m, p, q: m == "PUT" and p.endswith("/summaries.jsonl") and "partNumber=1" in q,
    "parquet": lambda m, p, q: m == "PUT" and p.endswith("/summaries.parquet") and "partNumber=1" in q,
    # HF: a file of the new version, after others may have been uploaded
    "hf": lambda m, p, q: m == "PUT" and storage.VERSION_MARK in p and p.endswith("/state.json"),
}
HF_PUBLISH = lambda m, p, q: m == "PUT" and p.endswith("/" + storage.POINTER_NAME)  # noqa: E731


@pytest.mark.parametrize("fmt", format_params())
def test_a_save_that_fails_mid_upload_keeps_the_previous_version(fmt: str, s3: S3, s3_dir: str) -> None:
    versions = _versions()
    manager = build_manager(fmt, s3_dir)
    manager.save_checkpoint("summaries", versions["A"])
    before = s3.keys(s3_dir)
    rule = s3.faults.fail(MID_UPLOAD[fmt])
    with pytest.raises(PermissionError, match="injected fault"):
        manager.save_checkpoint("summaries", versions["B"])
    assert rule.arrived.is_set()
    assert identify(build_manager(fmt, s3_dir).load_checkpoint("summaries", ConversationSummary), versions) == "A"
    assert s3.keys(s3_dir) == before  # no partial object of the failed save is left
    assert s3.fs().list_multipart_uploads(BUCKET) == []
    manager.save_checkpoint("summaries", versions["B"])  # and the next save works
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), versions) == "B"


def test_an_hf_save_whose_pointer_publish_fails_keeps_the_previous_version(s3: S3, s3_dir: str) -> None:
    versions = _versions()
    manager = build_manager("hf", s3_dir)
    manager.save_checkpoint("summaries", versions["A"])
    before = s3.keys(s3_dir)
    s3.faults.fail(HF_PUBLISH)
    with pytest.raises(PermissionError, match="injected fault"):
        manager.save_checkpoint("summaries", versions["B"])
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), versions) == "A"
    assert s3.keys(s3_dir) == before


def test_multi_io_manager_reports_a_failed_s3_backend_and_leaves_nothing_partial(s3: S3, s3_dir: str) -> None:
    """all_enabled: the HF backend's failed upload is reported (warning, metadata, table) and its partial
    objects are gone; the JSONL backend's copy stands."""
    from kura_dagster.io_managers.multi import Backend, MultiIOManager

    versions = _versions(10)

    @dg.asset
    def summaries() -> list[ConversationSummary]:
        return versions["A"]

    io = MultiIOManager(base_dir=s3_dir, backends=[Backend(format="jsonl"), Backend(format="hf")])
    s3.faults.fail(MID_UPLOAD["hf"])
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([summaries], resources={"io_manager": io}, instance=instance)
    assert result.success
    md = result.asset_materializations_for_node("summaries")[0].metadata
    assert md["kura/saved_to"].value == "jsonl" and md["kura/backends_failed"].value == 1
    failed = [r for r in md["kura/backends"].records if r.data["status"] == "failed"]
    assert failed and failed[0].data["backend"] == "hf" and "injected fault" in failed[0].data["detail"]
    warnings = [e.message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING]
    assert any("Backend 'hf' could not save summaries" in (w or "") for w in warnings)
    assert s3.keys(s3_dir) == ["summaries.jsonl", "summaries.jsonl.meta.json"]


# --- a killed writer ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fmt", format_params())
def test_a_writer_killed_mid_upload_leaves_the_previous_version(fmt: str, s3: S3, s3_dir: str) -> None:
    """kill -9 of a saving process while its upload is in flight (held at the server, then refused, as a dead
    client's request would end), and for HF also while it publishes the pointer."""
    rows = 60
    versions = make_versions(rows)
    manager = build_manager(fmt, s3_dir)
    points = {"upload": MID_UPLOAD[fmt], **({"publish": HF_PUBLISH} if fmt == "hf" else {})}
    with WriterServer(fmt, s3_dir, "summaries", rows) as server:  # type: ignore[arg-type]
        assert server.reap(server.spawn("A", 1)) == 0
        for point, match in points.items():
            rule = s3.faults.hold(match)
            pid = server.spawn("B", 1)
            assert rule.arrived.wait(60), f"the writer never reached {point}"
            assert server.kill(pid) == -signal.SIGKILL
            assert rule.hold is not None
            rule.hold.set()
            loaded = build_manager(fmt, s3_dir).load_checkpoint("summaries", ConversationSummary)
            assert identify(loaded, versions) == "A", point
            assert manager.list_checkpoints() == ["summaries"]
        # A crashed writer's unpublished HF version is invisible, and a later save deletes it once it is stale.
        assert server.reap(server.spawn("C", 1)) == 0
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), versions) == "C"
    if fmt == "hf":
        versions_left = {k.split("/")[1] for k in s3.keys(s3_dir) if storage.VERSION_MARK in k}
        # the current one, and one per killed save (younger than the grace period: perhaps uploads in progress)
        assert len(versions_left) == 1 + len(points)
        old = storage.STALE_VERSION_SECONDS
        storage.STALE_VERSION_SECONDS = 0
        try:
            manager.save_checkpoint("summaries", versions["D"])
        finally:
            storage.STALE_VERSION_SECONDS = old
        assert len({k.split("/")[1] for k in s3.keys(s3_dir) if storage.VERSION_MARK in k}) == 1
    else:
        assert sorted(s3.keys(s3_dir)) == sorted(
            ["summaries.jsonl", "summaries.jsonl.meta.json"] if fmt == "jsonl" else ["summaries.parquet"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", format_params())
def test_a_reader_racing_writers_on_s3_sees_only_complete_versions(fmt: str, s3: S3, s3_dir: str) -> None:
    versions = make_versions(60)
    manager = build_manager(fmt, s3_dir)
    manager.save_checkpoint("summaries", versions["A"])
    seen: dict[str | None, int] = {}
    with WriterServer(fmt, s3_dir, "summaries", 60) as server:  # type: ignore[arg-type]
        pids = [server.spawn("C,D", 4), server.spawn("D,C", 4)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(Path(f"/proc/{p}/stat").exists() and
                                                  Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
                                                  != "Z" for p in pids):
            tag = identify(build_manager(fmt, s3_dir).load_checkpoint("summaries", ConversationSummary), versions)
            seen[tag] = seen.get(tag, 0) + 1
        assert [server.reap(p) for p in pids] == [0, 0]
    assert set(seen) <= {"A", "C", "D"} and sum(seen.values()) > 1, seen
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), versions) in ("C", "D")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", format_params())
def test_two_writers_at_once_on_s3_leave_one_complete_version(fmt: str, s3: S3, s3_dir: str) -> None:
    """The S3 lease serialises them (without it two JSONL saves could leave a sidecar matching neither file)."""
    versions = make_versions(60)
    manager = build_manager(fmt, s3_dir)
    manager.save_checkpoint("summaries", versions["A"])
    with WriterServer(fmt, s3_dir, "summaries", 60) as server:  # type: ignore[arg-type]
        pids = [server.spawn("C", 3), server.spawn("D", 3)]
        assert [server.reap(p) for p in pids] == [0, 0]
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), versions) in ("C", "D")
    assert manager.list_checkpoints() == ["summaries"]
    assert not [k for k in s3.keys(s3_dir) if k.endswith(".lock")]


class _CountedWaits:
    """``storage``'s ``time`` module with the lock's pauses counted: waits are told by count, not by seconds."""

    def __init__(self) -> None:
        self.waits = 0

    def sleep(self, seconds: float) -> None:
        self.waits += 1
        time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_the_s3_lock_waits_for_a_live_holder_and_breaks_a_dead_or_expired_one(
        s3: S3, s3_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    caplog.set_level(logging.WARNING, logger="kura_dagster.checkpoints.storage")
    clock = _CountedWaits()
    monkeypatch.setattr(storage, "time", clock)
    manager = build_manager("parquet", s3_dir)
    fs = s3.fs()
    lock = f"{s3_dir.split('://', 1)[1]}/.summaries.parquet.lock"
    # Held by a live process elsewhere for 1.5 s more: the save waits, and takes the lock only once the lease ran
    # out (broken as stale, after its expiry; never while it was live).
    expires = time.time() + 1.5
    fs.pipe_file(lock, json.dumps({"owner": "x", "host": "elsewhere", "pid": 1, "expires": expires}).encode())
    manager.save_checkpoint("summaries", _versions(5)["A"])
    assert clock.waits >= 1 and time.time() >= expires
    assert [r.getMessage().split(" of ")[1] for r in caplog.records if "Breaking the stale lock" in r.getMessage()] \
        == [f"s3://{s3_dir.split('://', 1)[1]}/summaries.parquet (pid 1 on elsewhere)"]
    assert not fs.exists(lock)
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), _versions(5)) == "A"
    # Held by a process of this machine that no longer exists (kill -9): broken at once, without a single wait.
    caplog.clear()
    clock.waits = 0
    fs.pipe_file(lock, json.dumps({"owner": "y", "host": socket.gethostname(), "pid": 999_999_999,
                                   "expires": time.time() + 600}).encode())
    manager.save_checkpoint("summaries", _versions(5)["B"])
    assert clock.waits == 0
    assert [r.getMessage() for r in caplog.records if "pid 999999999" in r.getMessage()]
    # Held, and renewed, by someone else for longer than a writer waits: a clear error naming the lock.
    fs.pipe_file(lock, json.dumps({"owner": "z", "host": "elsewhere", "pid": 7, "expires": time.time() + 600}).encode())
    monkeypatch.setattr(storage, "LOCK_WAIT_SECONDS", 0.3)
    with pytest.raises(storage.LockTimeoutError, match=r"\.summaries\.parquet\.lock is held by pid 7 on elsewhere"):
        manager.save_checkpoint("summaries", _versions(5)["C"])
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), _versions(5)) == "B"


def test_a_store_refusing_conditional_puts_saves_without_the_lock(s3: S3, s3_dir: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    s3.faults.fail(lambda m, p, q: m == "PUT" and p.endswith(".summaries.jsonl.lock"))
    manager = build_manager("jsonl", s3_dir)
    manager.save_checkpoint("summaries", _versions(3)["A"])
    assert identify(manager.load_checkpoint("summaries", ConversationSummary), _versions(3)) == "A"
    assert "saving s3://" in caplog.text and "without it" in caplog.text


# --- a damaged object is detected ---------------------------------------------------------------------------------
def _flip_byte(fs: Any, key: str, at: int | None = None) -> None:
    data = bytearray(fs.cat_file(key))
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x20
    fs.pipe_file(key, bytes(data))


@pytest.mark.parametrize("fmt", format_params())
def test_a_damaged_object_is_detected_and_named(fmt: str, s3: S3, s3_dir: str) -> None:
    versions = _versions()
    manager = build_manager(fmt, s3_dir)
    manager.save_checkpoint("summaries", versions["A"])
    root = s3_dir.split("://", 1)[1]
    if fmt == "jsonl":
        damaged = f"{root}/summaries.jsonl"
    elif fmt == "parquet":
        damaged = f"{root}/summaries.parquet"
    else:
        version = storage.read_pointer(storage.to_upath(f"{s3_dir}/summaries"))
        damaged = f"{root}/summaries/{version}/data-00000-of-00001.arrow"
    _flip_byte(s3.fs(), damaged)
    with pytest.raises(CheckpointCorruptError) as err:
        build_manager(fmt, s3_dir).load_checkpoint("summaries", ConversationSummary)
    assert damaged in err.value.path


def test_a_damaged_hf_pointer_is_detected_and_named(s3: S3, s3_dir: str) -> None:
    manager = build_manager("hf", s3_dir)
    manager.save_checkpoint("summaries", _versions(5)["A"])
    pointer = f"{s3_dir.split('://', 1)[1]}/summaries/{storage.POINTER_NAME}"
    s3.fs().pipe_file(pointer, b'{"version": "../elsewhere"}')
    with pytest.raises(CheckpointCorruptError, match="version pointer is damaged") as err:
        manager.load_checkpoint("summaries", ConversationSummary)
    assert err.value.path.endswith(pointer)


# --- migration, storage overview, summary cache -------------------------------------------------------------------
def test_migration_and_storage_overview_between_local_and_s3(tmp_path: Path, s3: S3, s3_dir: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from kura_dagster.cli import main

    versions = _versions(20)
    build_manager("jsonl", tmp_path).save_checkpoint("summaries", versions["A"])
    formats = available_formats()
    for fmt in formats:
        assert main(["migrate", f"jsonl:{tmp_path}", f"{fmt}:{s3_dir}/{fmt}"]) == 0
        assert identify(build_manager(fmt, f"{s3_dir}/{fmt}").load_checkpoint("summaries"), versions) == "A"
    assert main(["migrate", f"hf:{s3_dir}/hf", f"parquet:{tmp_path}/back"]) == 0
    assert identify(build_manager("parquet", tmp_path / "back").load_checkpoint("summaries"), versions) == "A"
    capsys.readouterr()
    assert main(["storage", s3_dir, "--json"]) == 0
    overview = json.loads(capsys.readouterr().out)
    assert set(overview["sizes"]["summaries"]) == set(formats)
    assert all(v > 0 for v in overview["sizes"]["summaries"].values())


def test_storage_job_reads_kura_checkpoint_dir_on_s3(s3: S3, s3_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kura_dagster.orchestration.migration_job import checkpoint_storage_job

    build_manager("parquet", s3_dir).save_checkpoint("summaries", _versions(5)["A"])
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", s3_dir)
    result = checkpoint_storage_job.execute_in_process()
    assert result.success
    events = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert events and events[0].event_specific_data.metadata["storage/total_bytes/parquet"].value > 0


def test_summary_cache_on_s3(s3: S3, s3_dir: str) -> None:
    from kura_dagster.checkpoints.summary_cache import SummaryCache
    from kura_dagster.pipeline.demo_data import demo_conversations
    from kura_dagster.types import GeneratedSummary

    conversations = demo_conversations(6)
    answers = [GeneratedSummary(summary=f"summary {i}", request="r", topic="t") for i in range(6)]
    with SummaryCache(s3_dir) as cache:
        cache.put_summaries("model-x", conversations[:4], answers[:4])
    fresh = SummaryCache(s3_dir)
    got = fresh.get_summaries("model-x", conversations)
    assert got[:4] == answers[:4] and got[4:] == [None, None]
    assert any(k.startswith(".kura-cache/summaries/") for k in s3.keys(s3_dir))


# --- end to end, and the credentials ------------------------------------------------------------------------------
@pytest.mark.slow
def test_materialize_the_pipeline_with_every_checkpoint_on_s3(tmp_path: Path, s3: S3, s3_dir: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """The five assets with the MultiIOManager that KURA_CHECKPOINT_DIR=s3://… and KURA_CHECKPOINT_FORMATS give,
    quarantine and cache on S3 too; then the credentials appear in no event, log line, metadata value or object."""
    from kura_dagster.orchestration.assets import kura_assets
    from kura_dagster.io_managers.multi import MultiIOManager, io_manager_from_env
    from kura_dagster.pipeline.demo_data import demo_conversations
    from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource

    source = tmp_path / "conversations.jsonl"
    lines = [c.model_dump_json() for c in demo_conversations(60)]
    source.write_text("\n".join(lines[:30] + ['{"chat_id": "broken"'] + lines[30:]) + "\n")
    formats = available_formats()
    io = io_manager_from_env({"KURA_CHECKPOINT_DIR": s3_dir, "KURA_CHECKPOINT_FORMATS": ",".join(formats)})
    assert isinstance(io, MultiIOManager) and io.base_dir == s3_dir
    instance = dg.DagsterInstance.ephemeral()
    caplog.set_level(logging.DEBUG, logger="kura_dagster")
    result = dg.materialize(kura_assets, instance=instance, resources={
        "io_manager": io,
        "kura": KuraPipelineResource(checkpoint_dir=s3_dir),
        "source": ConversationSource(path=str(source), on_bad_record="skip"),
    })
    assert result.success
    keys = s3.keys(s3_dir)
    for fmt in formats:
        manager = build_manager(fmt, s3_dir)
        names = manager.list_checkpoints()
        assert {"conversations", "summaries", "clusters", "meta_clusters"} <= set(names), (fmt, names)
        assert len(manager.load_checkpoint("summaries")) == 60
    assert any(k.startswith("quarantine/") for k in keys), keys
    assert not [k for k in keys if storage.TMP_MARK in k or storage.OLD_MARK in k]
    # No secret anywhere: events (messages, metadata), the stored objects.
    events = instance.all_logs(result.run_id)
    text = "\n".join(repr(e) for e in events)
    assert s3_dir in text  # (the check can fail: metadata does name the S3 paths)
    assert SECRET not in text and ACCESS_KEY not in text
    assert "Saved" in caplog.text and SECRET not in caplog.text and ACCESS_KEY not in caplog.text  # our own logs
    assert SECRET.encode() not in s3.all_bytes() and ACCESS_KEY.encode() not in s3.all_bytes()


def test_credentials_in_fs_options_stay_out_of_paths_reprs_and_errors(s3: S3, s3_dir: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials given as storage options (not the environment) are used, and never printed."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    options = {"key": ACCESS_KEY, "secret": SECRET, "endpoint_url": s3.endpoint}
    for fmt in available_formats():
        manager = build_manager(fmt, s3_dir, storage_options=options)
        saved = manager.save_checkpoint("summaries", _versions(5)["A"])
        assert saved is not None
        shown = "\n".join([repr(manager), str(saved.as_dict()), json.dumps(manager.get_stats()),
                           str(manager.get_checkpoint_info("summaries"))])
        assert SECRET not in shown and ACCESS_KEY not in shown
    broken = build_manager("jsonl", f"s3://kura-missing-{uuid.uuid4().hex[:8]}/x", storage_options=options)
    with pytest.raises(OSError) as err:
        broken.save_checkpoint("summaries", _versions(2)["A"])
    assert SECRET not in str(err.value) and SECRET not in repr(err.value)


def test_the_s3_specific_endpoint_variable_is_honoured(s3: S3, s3_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``AWS_ENDPOINT_URL_S3`` alone reaches the server too (a fresh client: s3fs caches clients by options)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint)
    manager = build_manager("jsonl", s3_dir, storage_options={"skip_instance_cache": True})
    manager.save_checkpoint("summaries", _versions(3)["A"])
    assert s3.keys(s3_dir) == ["summaries.jsonl", "summaries.jsonl.meta.json"]


@pytest.mark.slow
def test_the_readme_command_with_kura_checkpoint_dir_on_s3(tmp_path: Path, s3: S3, s3_dir: str) -> None:
    """What a new user runs: `dagster asset materialize -m kura_dagster.definitions --select '*'` with
    KURA_CHECKPOINT_DIR=s3://…. Everything lands in the bucket, nothing in a local `./s3:` folder."""
    import subprocess
    import sys

    home, work = tmp_path / "dagster_home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "KURA_CHECKPOINT_DIR": s3_dir,
           "KURA_CHECKPOINT_FORMATS": "jsonl,hf"}
    proc = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "kura_dagster.definitions",
                           "--select", "*"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(work.iterdir()) == []
    for fmt in ("jsonl", "hf"):
        names = build_manager(fmt, s3_dir).list_checkpoints()
        assert {"conversations", "summaries", "clusters", "meta_clusters", "dimensionality"} <= set(names), names
    assert SECRET not in proc.stdout + proc.stderr and ACCESS_KEY not in proc.stdout + proc.stderr
