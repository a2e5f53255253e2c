"""Shared fixtures. Tests that read ``../shared/data`` skip cleanly when it is absent (a user's fresh clone)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("KURA_SHARED_DATA", ROOT.parent / "shared" / "data" / "kura-mtbench-1000"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real checkpoints Kura wrote (1,000 MT-Bench conversations and every stage after them)."""
    if not (SHARED_DATA / "conversations.jsonl").exists():
        pytest.skip(f"shared Kura data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_kura_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits KURA_* settings (or API keys) from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("KURA_") or key in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HF_TOKEN"):
            monkeypatch.delenv(key, raising=False)


@pytest.fixture
def fake_openai(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A fake OpenAI-compatible server on 127.0.0.1 (started and stopped here), with ``OPENAI_API_KEY`` set to
    the test module's ``API_KEY`` (a test value, so that tests can check it never leaks)."""
    from kura_dagster_tests.fake_openai import FakeOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", getattr(request.module, "API_KEY", "sk-test-fake-openai"))
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def project_instance(tmp_path: Path):
    """A Dagster instance in a fresh home holding a copy of the project's own ``dagster.yaml`` (pools, run
    monitoring, retention as users get them), for tests where the instance matters."""
    import shutil

    import dagster as dg

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance
