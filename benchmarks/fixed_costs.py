"""Fixed costs: what a run pays outside the model requests, in fresh processes, the way a user runs it.

    python benchmarks/fixed_costs.py                                # every measurement of this tree ("after")
    git archive 20c8386 | tar -x -C /tmp/before                     # the code before issue 17 item 10
    python benchmarks/fixed_costs.py --tree before=/tmp/before --tree after=. --only imports rerun llm

Every run is ``dagster asset materialize -m kura_dagster.definitions --select '*'`` in a fresh process pinned
to two cores, with the project's ``dagster.yaml`` as the instance (``DAGSTER_HOME`` is a temporary folder
holding a copy of it) and the checkpoints in a temporary folder:

* **rerun** (target ≤ 5 s): the offline default models on the built-in demo data, materialized once, then
  rerun with nothing new; and the same with the LLM and embeddings of the fake OpenAI-compatible server
  (``kura_dagster_tests/fake_openai.py``), which must get no request on the rerun;
* **llm** (target ≤ 1.5× the request floor): 1,000 demo conversations (written to a JSONL file) through the
  fake server answering every request after 0.1 s, ``KURA_LLM_MAX_CONCURRENCY=8``, from an empty checkpoint
  folder and a fresh instance each time. The floor is what the requests alone must take: the requests the run
  sent (each distinct: single flight and the answer cache leave no repeat) / 8 × 0.1 s;
* **imports**: ``python -c "import kura_dagster.definitions"`` (what every run and every step subprocess pays
  before any work) and ``import dagster`` alone;
* **executor**: the two small pipelines of ``kura_dagster_tests/sample_project`` (a ``dg`` project with two
  ``KuraPipelineComponent`` s, no executor set, so Dagster's default multiprocess executor), materialized with
  the default executor and with ``--config-json '{"execution": {"config": {"in_process": {}}}}'``.

Each figure is the median of ``--runs`` runs; the one-minute load average is printed before and after each
(the machine is shared, and other work slows every figure). ``--tree LABEL=DIR`` (repeatable) runs source
trees through ``PYTHONPATH``, alternating between them run by run so that each sees the same load; the fake
server and the input always come from this tree. The executor comparison runs the ``after`` tree only. The
sample project's own asset is stored in memory, which a process per step cannot share, so the benchmark's copy
of it stores that asset as JSON files. Results go to ``benchmarks/results/fixed_costs.json`` (by label) and
``benchmarks/results/fixed_costs.md`` (every label side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_JSON = HERE / "results" / "fixed_costs.json"
RESULTS_MD = HERE / "results" / "fixed_costs.md"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from pipeline import THREAD_VARS  # noqa: E402  benchmarks/pipeline.py: the same BLAS/OpenMP caps

RERUN_TARGET_S = 5.0
FLOOR_TARGET = 1.5
DELAY = 0.1
CONCURRENCY = 8
LLM_CONVERSATIONS = 1000
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])


def timed(cmd: list[str], env: dict[str, str], cwd: Path, what: str) -> dict:
    """Run ``cmd`` in a fresh process pinned to two cores; wall seconds and the load average around it."""
    before = load()
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, preexec_fn=_pin, check=False)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    return {"seconds": round(seconds, 3), "load_before": before, "load_after": load()}


TREE_ENV: dict[Path, dict[str, str]] = {}
"""Extra environment of a tree's runs (``--tree LABEL=DIR,VAR=VALUE``)."""


def base_env(code: Path, tmp: Path, **extra: str) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(code / "dagster.yaml", home / "dagster.yaml")  # the project's own instance settings
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KURA_", "DAGSTER_", "OPENAI_"))}
    env.update({v: "2" for v in THREAD_VARS})
    env.update(DAGSTER_HOME=str(home), KURA_CHECKPOINT_DIR=str(tmp / "checkpoints"), PYTHONPATH=str(code), **extra)
    env.update(TREE_ENV.get(code, {}))
    return env


def materialize(env: dict[str, str], cwd: Path, what: str, *extra: str, module: str = "kura_dagster.definitions") -> dict:
    dagster = str(Path(sys.executable).with_name("dagster"))
    return timed([dagster, "asset", "materialize", "-m", module, "--select", "*", *extra], env, cwd, what)


def summary(rows: list[dict]) -> dict:
    secs = [r["seconds"] for r in rows]
    return {"median": round(statistics.median(secs), 2), "min": round(min(secs), 2), "max": round(max(secs), 2),
            "runs": secs, "load": [r["load_before"] for r in rows] + [rows[-1]["load_after"]]}


# --- the fake server ---------------------------------------------------------------------------------------
class Server:
    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kura_dagster_tests.fake_openai", "--port", "0", "--delay", str(delay)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if not line.startswith("OPENAI_BASE_URL="):
            self.proc.kill()
            raise SystemExit(f"the fake server did not start (said {line!r})")
        self.url = line.split("=", 1)[1]

    def requests(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url.rsplit("/v1", 1)[0] + "/_fake/stats", timeout=30) as resp:
            records = json.load(resp)["requests"]
        return {"chat": sum(r["endpoint"] == "chat" for r in records),
                "embeddings": sum(r["endpoint"] == "embeddings" for r in records)}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def llm_env(server: Server) -> dict[str, str]:
    return {"KURA_LLM": "openai:fake-model", "KURA_EMBEDDINGS": "openai:fake-embedding",
            "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-benchmark",
            "KURA_LLM_MAX_CONCURRENCY": str(CONCURRENCY)}


# --- the measurements (labels alternate run by run, so each sees the same load) -----------------------------
def measure_imports(trees: dict[str, Path], runs: int) -> dict[str, dict]:
    rows: dict[str, dict[str, list]] = {label: {} for label in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            for label, code in trees.items():
                env = base_env(code, Path(tmp) / label)
                for name, stmt in (("python -c pass", "pass"), ("import dagster", "import dagster"),
                                   ("import kura_dagster.definitions", "import kura_dagster.definitions")):
                    rows[label].setdefault(name, []).append(timed([sys.executable, "-c", stmt], env, Path(tmp), name))
    out = {label: {name: summary(r) for name, r in by_name.items()} for label, by_name in rows.items()}
    for label, by_name in out.items():
        print(f"  imports {label}: " + ", ".join(f"{k} {v['median']:.2f} s" for k, v in by_name.items()), file=sys.stderr)
    return out


def measure_rerun(trees: dict[str, Path], runs: int, server: Server,
                  kinds: tuple[str, ...] = ("offline", "llm")) -> dict[str, dict]:
    out: dict[str, dict] = {label: {} for label in trees}
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            envs, firsts, rows = {}, {}, {label: [] for label in trees}
            for label, code in trees.items():
                envs[label] = base_env(code, Path(tmp) / label, **(llm_env(server) if kind == "llm" else {}))
                firsts[label] = materialize(envs[label], Path(tmp), f"first {kind} run ({label})")["seconds"]
            before = server.requests()
            for _ in range(runs):
                for label in trees:
                    rows[label].append(materialize(envs[label], Path(tmp), f"{kind} rerun ({label})"))
            sent = {k: v - before[k] for k, v in server.requests().items()}
            for label in trees:
                out[label][kind] = {"first_seconds": firsts[label], **summary(rows[label]), "requests_on_reruns": sent}
                print(f"  rerun {kind} {label}: first {firsts[label]:.1f} s, reruns {out[label][kind]['runs']} "
                      f"(load {out[label][kind]['load']}); requests of all reruns {sent}", file=sys.stderr)
    return out


def measure_llm(trees: dict[str, Path], runs: int, server: Server, conversations: Path) -> dict[str, dict]:
    rows: dict[str, list] = {label: [] for label in trees}
    for i in range(runs):
        for label, code in trees.items():
            with tempfile.TemporaryDirectory() as tmp:
                env = base_env(code, Path(tmp), KURA_CONVERSATIONS=str(conversations), **llm_env(server))
                before = server.requests()
                row = materialize(env, Path(tmp), f"LLM end to end ({label})")
                sent = {k: v - before[k] for k, v in server.requests().items()}
                floor = (sent["chat"] + sent["embeddings"]) / CONCURRENCY * DELAY
                row.update(requests=sent, floor_seconds=round(floor, 2), ratio=round(row["seconds"] / floor, 2))
                rows[label].append(row)
                print(f"  LLM run {i + 1} {label}: {row['seconds']:.1f} s, {sent}, floor {floor:.1f} s, "
                      f"{row['ratio']:.2f}x (load {row['load_before']} → {row['load_after']})", file=sys.stderr)
    out = {}
    for label, r in rows.items():
        ratios = [x["ratio"] for x in r]
        out[label] = {**summary(r), "requests": r[0]["requests"], "floor_seconds": r[0]["floor_seconds"],
                      "ratio_median": round(statistics.median(ratios), 2), "ratios": ratios}
    return out


JSON_IO_MANAGER = '''

class _JsonIOManager(dg.UPathIOManager):
    """(benchmark copy) the project's rows as JSON files, so that step processes share them"""
    extension = ".json"

    def dump_to_path(self, context, obj, path):
        path.write_text(__import__("json").dumps(obj))

    def load_from_path(self, context, path):
        return __import__("json").loads(path.read_text())
'''


def sample_project(tmp: Path) -> Path:
    """A copy of ``kura_dagster_tests/sample_project`` whose own asset is stored in JSON files instead of memory:
    with one process per step, ``raw_chats`` and ``support/conversations`` run in different processes."""
    project = tmp / "sample_project"
    shutil.copytree(ROOT / "kura_dagster_tests" / "sample_project", project)
    raw = project / "chat_analytics" / "defs" / "raw_chats.py"
    text = raw.read_text()
    assert '"warehouse_io_manager": dg.InMemoryIOManager()' in text, "sample_project/raw_chats.py changed"
    text = text.replace('"warehouse_io_manager": dg.InMemoryIOManager()',
                        f'"warehouse_io_manager": _JsonIOManager(base_path=__import__("upath").UPath(r"{tmp / "warehouse"}"))')
    raw.write_text(text.replace("\n\ndefs = dg.Definitions(", JSON_IO_MANAGER + "\n\ndefs = dg.Definitions(", 1))
    return project


def measure_executor(code: Path, runs: int) -> dict:
    out: dict[str, dict] = {}
    for name, extra in (("default (multiprocess)", ()), ("in_process (run config)", ("--config-json", IN_PROCESS))):
        rows = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                project = sample_project(Path(tmp))
                env = base_env(code, Path(tmp))
                env["PYTHONPATH"] = f"{project}{os.pathsep}{code}"
                rows.append(materialize(env, project, f"sample project, {name}", *extra,
                                        module="chat_analytics.definitions"))
        out[name] = summary(rows)
        print(f"  sample project {name}: {out[name]['runs']} (load {out[name]['load']})", file=sys.stderr)
    return out


# --- the report ---------------------------------------------------------------------------------------------
def _cell(results: dict, label: str, *path: str, fmt: str = "{:.2f}") -> str:
    value: object = results.get(label, {})
    for p in path:
        value = value.get(p, {}) if isinstance(value, dict) else {}
    return fmt.format(value) if isinstance(value, (int, float)) else "–"


def report(results: dict) -> str:
    labels = [k for k in ("before", "after") if k in results] + sorted(set(results) - {"before", "after"})
    head = "| | " + " | ".join(labels) + " |"
    sep = "|---|" + "---:|" * len(labels)

    def row(title: str, *path: str, fmt: str = "{:.2f}") -> str:
        return f"| {title} | " + " | ".join(_cell(results, lb, *path, fmt=fmt) for lb in labels) + " |"

    def runs(*path: str) -> str:
        cells = []
        for lb in labels:
            value: object = results.get(lb, {})
            for p in path:
                value = value.get(p, {}) if isinstance(value, dict) else {}
            cells.append(", ".join(f"{x:g}" for x in value) if isinstance(value, list) else "–")
        return " | ".join(cells)

    lines = ["# Fixed costs: reruns, the LLM pipeline against its request floor, executors", ""]
    for lb in labels:
        meta = results[lb].get("meta", {})
        lines.append(f"- **{lb}**: {meta.get('when', '?')}, code {meta.get('code', '?')}, {meta.get('python', '')}, "
                     f"{meta.get('cpus', '?')} CPUs (runs pinned to 2), load average {meta.get('load_start', '?')} at "
                     f"the start and {meta.get('load_end', '?')} at the end; median of {meta.get('runs', '?')} runs "
                     f"({meta.get('llm_runs', '?')} of the LLM end to end).")
    lines += ["", "Every figure is the wall time of a fresh `dagster asset materialize -m kura_dagster.definitions "
              "--select '*'` process (the sample project: `-m chat_analytics.definitions`), with the project's "
              "`dagster.yaml` as the instance. Other sessions share this two-core machine, so the load "
              "average is printed beside every series.", "",
              f"## Unchanged rerun of every asset (target ≤ {RERUN_TARGET_S:g} s)", "", head, sep,
              row("offline default models, demo data: rerun median (s)", "rerun", "offline", "median"),
              row("… first run (s)", "rerun", "offline", "first_seconds"),
              row(f"fake OpenAI server (LLM + embeddings): rerun median (s)", "rerun", "llm", "median"),
              row("… first run (s)", "rerun", "llm", "first_seconds"),
              row("… requests sent by the reruns", "rerun", "llm", "requests_on_reruns", "chat", fmt="{:d}"),
              "", "Runs (s), offline: " + runs("rerun", "offline", "runs") + "; LLM: " + runs("rerun", "llm", "runs"),
              "", "Load averages (before each run, then after the last): offline "
              + runs("rerun", "offline", "load") + "; LLM " + runs("rerun", "llm", "load"), "",
              f"## LLM end to end: {LLM_CONVERSATIONS:,} conversations, {CONCURRENCY} in flight, {DELAY:g} s per "
              f"request (target ≤ {FLOOR_TARGET:g}× the floor)", "", head, sep,
              row("wall time, median (s)", "llm", "median"),
              row("chat requests", "llm", "requests", "chat", fmt="{:d}"),
              row("embedding requests", "llm", "requests", "embeddings", fmt="{:d}"),
              row("request floor = requests / 8 × 0.1 s (s)", "llm", "floor_seconds"),
              row("**wall time / floor** (median)", "llm", "ratio_median"),
              "", "Runs (s): " + runs("llm", "runs") + "; ratios: " + runs("llm", "ratios") + "; load: "
              + runs("llm", "load"), "",
              "## Start-up: imports every process pays", "", head, sep,
              row("`python -c pass` (s)", "imports", "python -c pass", "median"),
              row("`import dagster` (s)", "imports", "import dagster", "median"),
              row("`import kura_dagster.definitions` (s)", "imports", "import kura_dagster.definitions", "median"),
              "", "## Executors: two small pipelines merged (`kura_dagster_tests/sample_project`)", "", head, sep,
              row("Dagster's default executor (multiprocess: one process per step) (s)", "executor",
                  "default (multiprocess)", "median"),
              row("in_process (`--config-json '{\"execution\": {\"config\": {\"in_process\": {}}}}'`) (s)",
                  "executor", "in_process (run config)", "median"),
              "", "Runs (s), multiprocess: " + runs("executor", "default (multiprocess)", "runs") + "; in_process: "
              + runs("executor", "in_process (run config)", "runs"), ""]
    notes = [n for lb in labels for n in results[lb].get("notes", [])]
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                    help="a source tree to measure under a label (repeat; runs alternate between trees); "
                         "default: after=<this tree>")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--llm-runs", type=int, default=3)
    ap.add_argument("--executor-runs", type=int, default=1)
    ap.add_argument("--rerun-kinds", nargs="+", choices=("offline", "llm"), default=["offline", "llm"])
    ap.add_argument("--only", nargs="+", choices=("imports", "rerun", "llm", "executor"),
                    default=["imports", "rerun", "llm", "executor"])
    args = ap.parse_args(argv)
    trees: dict[str, Path] = {}
    for t in args.tree:  # LABEL=DIR or LABEL=DIR,VAR=VALUE,… (environment of that tree's runs, e.g. KURA_REUSE=0)
        label, _, rest = t.partition("=")
        directory, *assignments = rest.split(",")
        trees[label] = Path(directory).resolve()
        TREE_ENV[trees[label]] = dict(a.split("=", 1) for a in assignments)
    trees = trees or {"after": ROOT}
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    load_start = load()
    for label, code in trees.items():
        results.setdefault(label, {})["meta"] = {
            "when": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "code": str(code),
            "python": f"{platform.python_implementation()} {platform.python_version()}", "cpus": os.cpu_count(),
            "load_start": load_start, "runs": args.runs, "llm_runs": args.llm_runs}

    def save(section: str, by_label: dict[str, dict]) -> None:
        for label, value in by_label.items():
            results[label][section] = value
            results[label]["meta"]["load_end"] = load()
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_JSON.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        RESULTS_MD.write_text(report(results), encoding="utf-8")

    server = Server(DELAY)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            from kura_dagster.pipeline.demo_data import demo_conversations

            conversations = Path(tmp) / "conversations.jsonl"
            conversations.write_text("".join(c.model_dump_json() + "\n" for c in demo_conversations(LLM_CONVERSATIONS)))
            if "imports" in args.only:
                print("imports …", file=sys.stderr)
                save("imports", measure_imports(trees, args.runs))
            if "rerun" in args.only:
                print("reruns …", file=sys.stderr)
                measured = measure_rerun(trees, args.runs, server, tuple(args.rerun_kinds))
                save("rerun", {label: {**results.get(label, {}).get("rerun", {}), **value}
                               for label, value in measured.items()})
            if "llm" in args.only:
                print("LLM end to end …", file=sys.stderr)
                save("llm", measure_llm(trees, args.llm_runs, server, conversations))
            if "executor" in args.only:
                print("executors …", file=sys.stderr)
                label = "after" if "after" in trees else next(iter(trees))
                save("executor", {label: measure_executor(trees[label], args.executor_runs)})
    finally:
        server.stop()
    print(RESULTS_MD.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
