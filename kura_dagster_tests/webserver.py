"""A dagster-webserver for tests: on 127.0.0.1 and a free port, in its own process group, always stopped.

The instance lives in a temporary ``DAGSTER_HOME`` whose ``dagster.yaml`` uses the ``DefaultRunCoordinator``,
so runs launched from the UI start at once without the daemon (the default ``QueuedRunCoordinator`` would
leave them queued). The process is started with ``start_new_session=True``: the webserver, its code server
and the runs it launches share one process group, which ``stop()`` interrupts and, if needed, kills.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

INSTANCE_YAML = """\
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(dagster_home: Path, **extra: str) -> dict[str, str]:
    """The parent environment without KURA_* settings or API keys, plus DAGSTER_HOME and ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KURA_") and k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HF_TOKEN")}
    env.update(DAGSTER_HOME=str(dagster_home), PYTHONUNBUFFERED="1", **extra)
    return env


def make_dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(INSTANCE_YAML)
    return path


@dataclass
class Webserver:
    port: int
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
        if out.get("errors"):
            raise AssertionError(f"GraphQL errors: {out['errors']}")
        return out["data"]

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dagster-webserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        else:
            raise AssertionError(f"dagster-webserver not ready after {timeout:.0f} s:\n{self.log_tail()}")
        # /server_info answers before the code location has loaded; wait until the repository is there.
        while time.monotonic() < deadline:
            data = self.graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
            time.sleep(0.5)
        raise AssertionError(f"code location not loaded after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        """SIGINT to the whole process group (dagster's clean shutdown), then SIGKILL whatever is left."""
        pgid = self.proc.pid  # start_new_session: the webserver leads its own group
        try:
            os.killpg(pgid, signal.SIGINT)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.proc.wait(timeout=10)


def start_webserver(dagster_home: Path, log_path: Path, timeout: float = 120, **env_extra: str) -> Webserver:
    """``dagster-webserver -w workspace.yaml`` from the project root with the given ``DAGSTER_HOME``."""
    port = free_port()
    env = clean_env(dagster_home, **env_extra)
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    server = Webserver(port=port, proc=proc, log_path=log_path, env=env)
    try:
        server.wait_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
