"""The Dagster UI, driven the way a user drives it: headless Chromium clicks "Materialize all" in the asset graph.

A real dagster-webserver (temporary DAGSTER_HOME, DefaultRunCoordinator, checkpoints in a temporary directory)
serves the project's workspace.yaml on 127.0.0.1. Playwright drives Debian's /usr/bin/chromium (never a
downloaded browser). Screenshots land in kura_dagster_tests/artifacts/ (gitignored). A CLI run against the
same DAGSTER_HOME must show up in the history the UI reads.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kura_dagster.pipeline.demo_data import demo_conversations
from kura_dagster_tests.webserver import BIN, Webserver, group_alive, make_dagster_home, start_webserver

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Kura's five stages plus the two tables beside them (privacy facets, growth per period)
ASSETS = {"conversations", "summaries", "clusters", "meta_clusters", "projected_clusters", "cluster_facets",
          "cluster_growth"}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

LATEST = """
{ assetNodes { assetKey { path } assetMaterializations(limit: 1) { runId } } }
"""
RUNS = """
{ runsOrError(limit: 20) { ... on Runs { results { runId status jobName tags { key value } } } } }
"""
RUN_ERRORS = """
query($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
    ... on MessageEvent { message level stepKey }
    ... on ErrorEvent { error { message stack } } } } } }
"""
MAP_METADATA = """
{ assetOrError(assetKey: {path: ["projected_clusters"]}) { ... on Asset {
    assetMaterializations(limit: 1) { metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } } } } }
"""


def _require_browser() -> None:
    """Skip when the browser or Playwright is missing on a developer machine; under CI that is a failure."""
    problem = None
    if not CHROMIUM.exists():
        problem = f"{CHROMIUM} not found (Debian: apt-get install chromium; .ci/run installs it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run under CI: {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Webserver]:
    _require_browser()
    base = tmp_path_factory.mktemp("ui")
    home = make_dagster_home(base / "dagster_home")
    conversations = base / "conversations.jsonl"  # 120 demo conversations: a meta-cluster tree, and quick
    conversations.write_text("".join(c.model_dump_json() + "\n" for c in demo_conversations(120)))
    server = start_webserver(home, base / "webserver.log", KURA_CHECKPOINT_DIR=str(base / "checkpoints"),
                             KURA_CONVERSATIONS=str(conversations))
    try:
        # What the UI's "Join the Dagster community" dialog calls when dismissed; it would cover the page.
        assert server.graphql("mutation { setNuxSeen }")["setNuxSeen"] is True
        yield server
    finally:
        server.stop()
        assert not group_alive(server.proc.pid), "processes of the webserver's group are still running"


@pytest.fixture(scope="module")
def page(server: Webserver):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _latest_runs(server: Webserver) -> dict[str, str | None]:
    nodes = server.graphql(LATEST)["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): (n["assetMaterializations"][0]["runId"] if n["assetMaterializations"] else None)
            for n in nodes}


def _runs(server: Webserver) -> list[dict]:
    return server.graphql(RUNS)["runsOrError"]["results"]


def _run_errors(server: Webserver, run_id: str) -> str:
    """The error messages of a run's events, for a failure message worth reading."""
    data = server.graphql(RUN_ERRORS, {"runId": run_id})["logsForRun"]
    lines = []
    for e in data.get("events", []):
        err = e.get("error") or {}
        if err or e.get("level") == "ERROR":
            lines.append(f"{e.get('stepKey')}: {e.get('message')} {err.get('message', '')}\n{err.get('stack', '')}"[:3000])
    return "\n".join(lines) or "(no error events)"


def test_materialize_all_from_the_asset_graph(server: Webserver, page) -> None:
    assert set(_latest_runs(server)) == ASSETS
    assert all(run is None for run in _latest_runs(server).values()), "the temporary instance should start empty"

    page.goto(f"{server.url}/asset-groups")
    for name in ASSETS:  # every asset is drawn in the lineage graph
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_role("button", name="Materialize all").click()

    deadline = time.monotonic() + 120
    latest = _latest_runs(server)
    while time.monotonic() < deadline and not all(latest.values()):
        failed = [r for r in _runs(server) if r["status"] in ("FAILURE", "CANCELED")]
        assert not failed, f"run failed: {failed}\n{_run_errors(server, failed[0]['runId'])}"
        time.sleep(1)
        latest = _latest_runs(server)
    assert all(latest.values()), f"not materialized after 120 s: {latest}\n{server.log_tail()}"

    runs = _runs(server)
    assert len(runs) == 1 and len(set(latest.values())) == 1, "one click, one run, all five assets"
    run_id = runs[0]["runId"]
    assert set(latest.values()) == {run_id}
    for _ in range(60):  # the run's last events (checks, RUN_SUCCESS) follow the last materialization
        if _runs(server)[0]["status"] == "SUCCESS":
            break
        time.sleep(0.5)
    assert _runs(server)[0]["status"] == "SUCCESS"

    entries = server.graphql(MAP_METADATA)["assetOrError"]["assetMaterializations"][0]["metadataEntries"]
    cluster_map = next(e for e in entries if e["label"] == "cluster_map")
    assert cluster_map["mdStr"].startswith("![Cluster map](data:image/png;base64,")

    # The asset graph (still open) shows all five as materialized: a green run_success icon beside each.
    success = page.locator('[aria-label="run_success"]')
    deadline = time.monotonic() + 30
    while success.count() < len(ASSETS) and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert success.count() >= len(ASSETS), f"{success.count()} assets shown as materialized in the UI"
    page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))

    # The cluster map, as a user finds it: the asset's page, its metadata, "[Show Markdown]".
    page.goto(f"{server.url}/assets/projected_clusters")
    row = page.locator("tr", has_text="cluster_map").filter(has_text="Show Markdown").first
    row.get_by_text("[Show Markdown]").click()
    image = page.locator('img[src^="data:image/png;base64,"]').first
    image.wait_for()
    width, height, complete = image.evaluate("img => [img.naturalWidth, img.naturalHeight, img.complete]")
    assert complete and width >= 300 and height >= 200, (width, height)
    assert image.get_attribute("src") in cluster_map["mdStr"], "the dialog shows the materialization's map"
    page.screenshot(path=str(ARTIFACTS / "cluster_map.png"))


def test_cli_runs_share_the_ui_instance_history(server: Webserver, page) -> None:
    before = {r["runId"] for r in _runs(server)}
    proc = subprocess.run(
        [str(BIN / "dagster"), "asset", "materialize", "-m", "kura_dagster.definitions", "--select", "conversations"],
        env=server.env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    new = [r for r in _runs(server) if r["runId"] not in before]
    assert len(new) == 1 and new[0]["status"] == "SUCCESS", new
    run_id = new[0]["runId"]
    assert _latest_runs(server)["conversations"] == run_id

    page.goto(f"{server.url}/runs")
    page.get_by_text(run_id[:8]).first.wait_for()
