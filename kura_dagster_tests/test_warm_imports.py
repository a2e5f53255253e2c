"""While ``summaries`` waits on an LLM server it imports what ``clusters`` will need (scikit-learn, ~1.1 s), on a
daemon thread, so an in-process run does not pay for it after the last summary; offline, nothing is warmed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from kura_dagster.orchestration import assets
from kura_dagster_tests.fake_openai import FakeOpenAIServer, fake_conversations


def test_the_thread_imports_the_modules_and_leaves_a_missing_one_to_its_stage() -> None:
    code = textwrap.dedent("""
        import sys, threading
        from kura_dagster.orchestration.assets import _warm_imports
        assert "colorsys" not in sys.modules
        _warm_imports(["no_such_module_for_kura", "colorsys"])
        [t.join() for t in threading.enumerate() if t.name == "kura-warm-imports"]
        print("colorsys" in sys.modules, "no_such_module_for_kura" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"] and "Traceback" not in out.stderr


@pytest.mark.parametrize("llm", ["openai:fake-model", "local"])
def test_summaries_warm_the_clusters_imports_only_while_waiting_on_a_server(
    llm: str, fake_openai: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kura_dagster.io_managers import JSONLIOManager
    from kura_dagster.orchestration.resources import ConversationSource, KuraPipelineResource

    warmed: list[tuple[str, ...]] = []
    monkeypatch.setattr(assets, "_warm_imports", lambda modules: warmed.append(tuple(modules)))
    source = tmp_path / "conversations.jsonl"
    source.write_text("".join(c.model_dump_json() + "\n" for c in fake_conversations(12)))
    kura = KuraPipelineResource(llm=llm, embeddings="local", base_url=fake_openai.url, checkpoint_dir=str(tmp_path),
                                min_conversations=1)
    selected = [a for a in assets.kura_assets if a.key.to_user_string() in ("conversations", "summaries")]
    result = dg.materialize(selected, resources={"io_manager": JSONLIOManager(base_dir=str(tmp_path)), "kura": kura,
                                                 "source": ConversationSource(path=str(source))})
    assert result.success
    assert warmed == ([("sklearn.cluster",)] if llm != "local" else [])
