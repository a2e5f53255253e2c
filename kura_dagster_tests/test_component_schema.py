"""KuraPipelineComponent's YAML schema is strict: a misspelt attribute or setting is an error at its line, in
``dg check yaml`` (when dagster-dg-cli is installed) and when Dagster loads the component."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

SAMPLE_PROJECT = Path(__file__).parent / "sample_project"

GOOD = """type: kura_dagster.KuraPipelineComponent
attributes:
  key_prefix: sales
  conversations: ../../../data/sales/*.jsonl
  settings:
    max_clusters: 3
    demo_size: 20
"""


def _project(tmp_path: Path, yaml_text: str) -> Path:
    """A dg project like the sample one, holding one KuraPipelineComponent (dg validates one file per type)."""
    root = tmp_path / "proj"
    shutil.copytree(SAMPLE_PROJECT / "data", root / "data")
    shutil.copy(SAMPLE_PROJECT / "pyproject.toml", root / "pyproject.toml")
    package = root / "chat_analytics"
    (package / "defs" / "sales").mkdir(parents=True)
    shutil.copy(SAMPLE_PROJECT / "chat_analytics" / "definitions.py", package / "definitions.py")
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "defs" / "sales" / "defs.yaml").write_text(yaml_text)
    return root


def _load(root: Path, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "chat_analytics" or m.startswith("chat_analytics.")]:
        del sys.modules[name]
    return dg.load_from_defs_folder(path_within_project=root / "chat_analytics")


@pytest.mark.parametrize("typo, needle", [
    (GOOD.replace("  key_prefix: sales", "  key_prefix: sales\n  key_prefx: sales"), "key_prefx"),
    (GOOD.replace("    max_clusters: 3", "    cluster_per_group: 20"), "cluster_per_group"),
])
def test_component_yaml_typos_fail_to_load(tmp_path, monkeypatch, typo, needle):
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path / "ck"))
    with pytest.raises(Exception) as err:
        _load(_project(tmp_path, typo), monkeypatch)
    text = "".join(str(e) for e in (err.value, err.value.__cause__, err.value.__context__) if e is not None)
    assert needle in text


def test_component_settings_reach_the_resources(tmp_path, monkeypatch):
    monkeypatch.setenv("KURA_CHECKPOINT_DIR", str(tmp_path / "ck"))
    defs = _load(_project(tmp_path, GOOD), monkeypatch)
    assert defs.resources["sales_kura"].max_clusters == 3
    assert defs.resources["sales_kura"].clusters_per_group == 10  # unset: the resource's default, not None
    assert defs.resources["sales_source"].demo_size == 20
    # errors of this pipeline name its defs.yaml attributes, not the factory's keywords or KURA_* variables
    assert defs.resources["sales_source"].configured_by == "component"
    assert (defs.resources["sales_source"].allow_empty, defs.resources["sales_source"].max_shrink) == (False, 0.5)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dg", path=os.path.dirname(sys.executable)) is None,
                    reason="dagster-dg-cli (the dev extra) is not installed")
def test_dg_check_yaml_names_the_typo_and_its_line(tmp_path):
    dg_cli = shutil.which("dg", path=os.path.dirname(sys.executable))
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "DAGSTER_DISABLE_TELEMETRY": "1"}
    os.makedirs(env["DAGSTER_HOME"])
    Path(env["DAGSTER_HOME"], "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    cases = [
        (GOOD.replace("    max_clusters: 3", "    cluster_per_group: 20"), "cluster_per_group", 5),
        (GOOD.replace("  key_prefix: sales", "  key_prefx: sales"), "key_prefx", 3),
    ]
    for i, (text, needle, line) in enumerate(cases):
        root = _project(tmp_path / str(i), text)
        done = subprocess.run([dg_cli, "check", "yaml"], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
        out = done.stdout + done.stderr
        assert done.returncode == 1, out
        assert needle in out and f"defs.yaml:{line}" in out, out
