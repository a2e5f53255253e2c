"""Security: no pickle, no code execution on load, no path escapes, no secrets at rest.

* The package source and its compiled bytecode are scanned for pickle/dill/cloudpickle/marshal/shelve/joblib
  loading (and ``eval``/``exec``, ``allow_pickle=True``, ``trust_remote_code=True``); the scanner is shown to
  catch each pattern on a planted sample first.
* Loading a checkpoint never executes code: a pickle payload in place of a checkpoint is refused without being
  run, and a model identity stored in a checkpoint is looked up in the registry, never imported.
* Checkpoint names, asset keys and partition keys with ``..``, absolute paths or NUL raise a clear error, for
  every format and through Dagster, and nothing is written outside the base directory.
* The whole pipeline runs through ``dagster asset materialize`` with canary secrets in ``HF_TOKEN`` and
  ``OPENAI_API_KEY`` (an OpenAI test double and a Hub test double on 127.0.0.1 receive them); afterwards no file
  in DAGSTER_HOME (event log, run storage with the run config, compute logs), the checkpoint directory or the
  console output contains them.
"""

from __future__ import annotations

import ast
import base64
import dis
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

import kura_dagster
from kura_dagster.checkpoints import InvalidCheckpointName
from kura_dagster.checkpoints.registry import manager_class
from kura_dagster.io_managers.base import CheckpointIOManager
from kura_dagster.io_managers.multi import SINGLE_FORMAT_IO_MANAGERS
from kura_dagster.types import ConversationSummary
from kura_dagster_tests._crash_writer import make_versions
from kura_dagster_tests._formats import available_formats, format_params
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations

ROOT = Path(__file__).resolve().parent.parent

# --- no pickle anywhere -----------------------------------------------------------------------------------
BANNED_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib", "copyreg"}
BANNED_ATTRIBUTES = {"read_pickle", "to_pickle"}
BANNED_TRUE_KEYWORDS = {"allow_pickle", "trust_remote_code"}
BANNED_BUILTINS = {"eval", "exec"}


def _ast_problems(source: str, filename: str) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            problems += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            problems.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRIBUTES:
            problems.append(f"{where}: .{node.attr}")
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in BANNED_BUILTINS:
                problems.append(f"{where}: {node.func.id}()")
            for kw in node.keywords:
                if kw.arg in BANNED_TRUE_KEYWORDS and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    problems.append(f"{where}: {kw.arg}=...")
    return problems


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _bytecode_problems(source: str, filename: str) -> list[str]:
    """What the interpreter would actually run: imports and names in the compiled code objects, including
    module names passed as strings (``importlib.import_module("pickle")``, ``__import__("dill")``)."""
    problems = []
    for code in _code_objects(compile(source, filename, "exec")):
        for ins in dis.get_instructions(code):
            where = f"{filename}:{ins.positions.lineno if ins.positions else '?'}"
            if ins.opname == "IMPORT_NAME" and str(ins.argval).split(".")[0] in BANNED_MODULES:
                problems.append(f"{where}: IMPORT_NAME {ins.argval}")
            elif ins.opname == "LOAD_CONST" and isinstance(ins.argval, str) and ins.argval in BANNED_MODULES:
                problems.append(f"{where}: module name {ins.argval!r} as a string")
            elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and ins.argval in BANNED_ATTRIBUTES:
                problems.append(f"{where}: .{ins.argval}")
            elif ins.opname in ("LOAD_NAME", "LOAD_GLOBAL") and ins.argval in BANNED_BUILTINS:
                problems.append(f"{where}: {ins.argval}")
    return problems


def _scan(source: str, filename: str) -> list[str]:
    return _ast_problems(source, filename) + _bytecode_problems(source, filename)


def test_the_scanner_catches_each_pattern() -> None:
    planted = {
        "import pickle": "import pickle",
        "from dill import loads": "from dill",
        "import cloudpickle as cp": "import cloudpickle",
        "import marshal": "import marshal",
        "import importlib\nimportlib.import_module('pickle')": "'pickle' as a string",
        "__import__('dill')": "'dill' as a string",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)": "allow_pickle",
        "import pandas as pd\npd.read_pickle('x')": ".read_pickle",
        "load_dataset('x', trust_remote_code=True)": "trust_remote_code",
        "eval('1 + 1')": "eval",
    }
    for source, expected in planted.items():
        assert any(expected in p for p in _scan(source, "<planted>")), (source, _scan(source, "<planted>"))
    assert _scan("import json\njson.loads('{}')\nnp.load('x.npy', allow_pickle=False)", "<clean>") == []


def test_no_pickle_or_code_loading_in_the_installed_package() -> None:
    package_dir = Path(kura_dagster.__file__).resolve().parent  # what `import kura_dagster` really runs
    files = sorted(package_dir.rglob("*.py"))
    assert len(files) > 20
    problems = [p for f in files for p in _scan(f.read_text(encoding="utf-8"), str(f.relative_to(package_dir.parent)))]
    assert problems == []


def test_every_io_manager_in_the_definitions_is_a_checkpoint_io_manager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dagster's default IO manager pickles; ours replaces it for every asset output."""
    from kura_dagster.definitions import build_definitions

    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path))
    for formats in ("jsonl", ",".join(available_formats())):
        monkeypatch.setenv("KURA_CHECKPOINT_FORMATS", formats)
        defs = build_definitions()
        assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
        assert len(assets) >= 5
        for assets_def in assets:
            for out in assets_def.node_def.output_defs:
                manager = (defs.resources or {}).get(out.io_manager_key)
                assert isinstance(manager, CheckpointIOManager), (assets_def.key, out.io_manager_key, manager)


# --- loading never executes code ----------------------------------------------------------------------------
def _pickle_payload(marker: Path) -> bytes:
    """A classic pickle that runs ``touch <marker>`` when unpickled (written by hand: no pickle import here)."""
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


@pytest.mark.parametrize("fmt", format_params())
def test_a_pickle_payload_in_place_of_a_checkpoint_is_refused_not_run(fmt: str, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    manager = manager_class(fmt)(tmp_path / "ck")
    manager.save_checkpoint("summaries", make_versions(10)["A"])
    path = Path(str(manager.get_checkpoint_path("summaries")))
    targets = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    for target in targets:
        target.write_bytes(_pickle_payload(marker))
    if path.is_dir():  # and a dataset loading script, which `datasets` once executed
        (path / "summaries.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(Exception) as info:  # noqa: PT011 - which error depends on the file hit first
        manager.load_checkpoint("summaries", ConversationSummary)
    assert str(path.name) in str(info.value) or str(tmp_path) in str(info.value)
    with pytest.raises(Exception):  # noqa: PT011
        manager.load_checkpoint("summaries")
    assert not marker.exists()


@pytest.mark.parametrize("fmt", format_params())
def test_a_model_identity_in_a_checkpoint_is_never_imported(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    identity = b"kura_dagster.types.summarisation.ConversationSummary"
    module = "evil_kura_probe"
    evil = f"{module}.{'E' * (len(identity) - len(module) - 1)}".encode()  # same length: file offsets stay valid
    marker = tmp_path / "IMPORTED"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{module}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom pydantic import BaseModel\nclass {'E' * (len(identity) - len(module) - 1)}(BaseModel):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    manager = manager_class(fmt)(tmp_path / "ck")
    manager.save_checkpoint("summaries", make_versions(10)["A"])
    replaced = 0
    for f in (p for p in (tmp_path / "ck").rglob("*") if p.is_file()):
        raw = f.read_bytes()
        if identity in raw:
            f.write_bytes(raw.replace(identity, evil))
            replaced += 1
    assert replaced, "the checkpoint does not record its model identity anywhere"
    with pytest.raises(Exception) as info:  # noqa: PT011 - LookupError, or the integrity check firing first
        manager.load_checkpoint("summaries")
    assert "evil_kura_probe" in str(info.value) or "integrity" in str(info.value) or "checksum" in str(info.value)
    assert not marker.exists() and module not in sys.modules


# --- names cannot escape the base directory ---------------------------------------------------------------------
BAD_NAMES = {
    "../escape": "'..' path segment",
    "a/../../escape": "'..' path segment",
    "..": "'..' path segment",
    "/etc/passwd": "absolute path",
    "a\x00b": "NUL byte",
    "..\\escape": "backslash",
    "": "empty",
}


def _files_outside(root: Path, base: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and base not in p.parents)


@pytest.mark.parametrize("fmt", format_params())
def test_checkpoint_names_that_escape_are_refused_clearly(fmt: str, tmp_path: Path) -> None:
    base = tmp_path / "base" / "ck"
    manager = manager_class(fmt)(base)
    rows = make_versions(3)["A"]
    operations = {
        "save": lambda n: manager.save_checkpoint(n, rows),
        "load": lambda n: manager.load_checkpoint(n, ConversationSummary),
        "has": manager.has_checkpoint,
        "delete": manager.delete_checkpoint,
        "info": manager.get_checkpoint_info,
        "path": manager.get_checkpoint_path,
        "iter": lambda n: manager.iter_checkpoint(n, ConversationSummary),
        "filter": lambda n: manager.filter_checkpoint(n, lambda r: True, ConversationSummary),
    }
    for name, reason in BAD_NAMES.items():
        for op, call in operations.items():
            with pytest.raises(InvalidCheckpointName) as info:
                call(name)
            assert repr(name) in str(info.value) and reason in str(info.value), (op, str(info.value))
    assert _files_outside(tmp_path, base) == []


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    error, text = failure.step_failure_data.error, ""
    while error is not None:
        text += error.message
        error = error.cause
    return text


@pytest.mark.parametrize("fmt", format_params())
def test_asset_and_partition_keys_that_escape_are_refused_through_dagster(fmt: str, tmp_path: Path) -> None:
    base = tmp_path / "base" / "ck"
    module, _, cls = SINGLE_FORMAT_IO_MANAGERS[fmt].partition(":")
    io_manager = getattr(__import__(module, fromlist=[cls]), cls)(base_dir=str(base))
    rows = make_versions(3)["A"]

    @dg.asset(key=["..", "..", "escaped"])
    def dotted() -> list[ConversationSummary]:
        return rows

    @dg.asset(metadata={"kura/checkpoint_name": "../../escaped"})
    def renamed() -> list[ConversationSummary]:
        return rows

    cases = [([dotted], None, "Invalid asset key segment '..'"), ([renamed], None, "Invalid asset key segment '..'")]
    for key in ("../../escaped", "/tmp/escaped", ".."):
        @dg.asset(name=f"parted_{len(cases)}", partitions_def=dg.StaticPartitionsDefinition([key]))
        def parted() -> list[ConversationSummary]:
            return rows

        cases.append(([parted], key, f"Invalid partition key {key!r}"))
    for assets, partition, expected in cases:
        result = dg.materialize(assets, partition_key=partition, resources={"io_manager": io_manager},
                                raise_on_error=False)
        assert not result.success
        assert expected in _failure_message(result), _failure_message(result)
    assert _files_outside(tmp_path, base) == []
    assert not Path("/tmp/escaped").exists() or not any(Path("/tmp/escaped").iterdir())


# --- secrets never at rest ----------------------------------------------------------------------------------------
HF_CANARY = "hf_CanaryHubToken7Q2xZ9vLkP3mN8"
OPENAI_CANARY = "sk-CanaryOpenAIKey4T6wY1uRbE5cJ0"


class _HubDouble(BaseHTTPRequestHandler):
    """A stand-in for huggingface.co: records every Authorization header it sees and refuses every call, echoing
    the header in its error message (as a careless proxy might), so the client's error text carries the token
    and only redaction keeps it out of the logs."""

    seen: list[str] = []

    def _refuse(self) -> None:
        auth = self.headers.get("authorization", "")
        _HubDouble.seen.append(auth)
        if int(self.headers.get("content-length") or 0):
            self.rfile.read(int(self.headers["content-length"]))
        body = json.dumps({"error": f"test double: this hub refuses everything (you sent {auth!r})"}).encode()
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse  # noqa: N815 - stdlib names

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file():
            raw = p.read_bytes()
            found += [f"{p}: {n!r}" for n in needles if n in raw]
    return found


def _needles(secret: str) -> list[bytes]:
    return [secret.encode(), base64.b64encode(secret.encode()), secret.encode("utf-16-le")]


@pytest.mark.slow
def test_canary_secrets_never_reach_storage_logs_or_checkpoints(tmp_path: Path) -> None:
    home, checkpoints = tmp_path / "dagster_home", tmp_path / "checkpoints"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    conversations = tmp_path / "conversations.jsonl"
    conversations.write_text("".join(c.model_dump_json() + "\n" for c in fake_conversations(24)))
    hub = ThreadingHTTPServer(("127.0.0.1", 0), _HubDouble)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    _HubDouble.seen = []
    formats = ",".join(f for f in ("jsonl", "hf") if f in available_formats())
    try:
        with FakeOpenAIServer() as llm:
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("KURA_", "DAGSTER_", "HF_", "OPENAI_"))},
                "DAGSTER_HOME": str(home),
                "KURA_CHECKPOINT_DIR": str(checkpoints),
                "KURA_CHECKPOINT_FORMATS": formats,
                "KURA_CONVERSATIONS": str(conversations),
                "KURA_LLM": "openai:fake-model",
                "KURA_EMBEDDINGS": "openai:fake-embedder",
                "OPENAI_BASE_URL": llm.url,
                "OPENAI_API_KEY": OPENAI_CANARY,
                "HF_TOKEN": HF_CANARY,
                "KURA_HF_HUB_REPO": "kura-test/canary",
                "HF_ENDPOINT": f"http://127.0.0.1:{hub.server_address[1]}",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "NO_PROXY": "127.0.0.1,localhost",
            }
            proc = subprocess.run(
                [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "kura_dagster.definitions",
                 "--select", "*"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
            )
            llm_requests = llm.count("chat") + llm.count("embeddings")
    finally:
        hub.shutdown()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    # The secrets were really in play: the LLM double was used, and the Hub double received the token.
    assert llm_requests > 0
    if "hf" in formats:
        assert any(HF_CANARY in h for h in _HubDouble.seen), _HubDouble.seen[:3]
    # The scan can see what is stored: the run's own facts are found in the instance's files (a positive control).
    # The event log holds the materialization metadata (the conversations file is its "source"), and the compute
    # logs hold the warnings of the failed Hub pushes, the place a leaked token would most likely show up.
    in_db = _files_containing(home, [str(conversations).encode()])
    assert any(".db:" in s for s in in_db), in_db
    if "hf" in formats:
        assert any(".err:" in s for s in _files_containing(home, [b"to the Hub repo kura-test/canary failed"]))
        # The double echoed the token into the client's error text; what reached the logs is the redacted echo.
        assert _files_containing(home, [b"you sent 'Bearer ***'"]), "the echoed token did not reach the logs"
    # ... and the secrets are nowhere: not in the event log, run storage (run config), compute logs, checkpoints,
    # quarantine, caches, or the console.
    for secret in (HF_CANARY, OPENAI_CANARY):
        assert _files_containing(home, _needles(secret)) == []
        assert _files_containing(checkpoints, _needles(secret)) == []
        assert secret not in output
    # No pickled objects were written anywhere either.
    pickled = [str(p) for root in (home, checkpoints) for p in root.rglob("*")
               if p.is_file() and p.read_bytes()[:2] in (b"\x80\x03", b"\x80\x04", b"\x80\x05")]
    assert pickled == []
