"""A million conversations on this machine: daily partitions, single-run backfills, then the unpartitioned stages.

    python benchmarks/scale.py                               # 100k, 300k and 1M; writes benchmarks/results/scale.md
    python benchmarks/scale.py --sizes 100000 --chunk-days 5 # any sizes (multiples of 10,000), any backfill chunk
    python benchmarks/scale.py --sizes 100000 --lengths realistic --out /tmp/real.md --json /tmp/real.json

Input: the demo generator (``kura_dagster.pipeline.demo_data``), 10,000 conversations per UTC day written straight
to day files ``logs/<date>.jsonl`` (one day's conversations in memory at a time; each day has its own seed and its
own chat ids, ``created_at`` spread over the day). A size of ``n`` uses the first ``n / 10,000`` days; the day after
them is "the new day". The files are shared by all sizes (generated once, not timed).

``--lengths realistic`` (files in ``<workdir>/logs_realistic``, see :func:`generate_realistic_day`): real chat logs
average about 7 KB per conversation with a long tail of pasted code and documents; this mode draws each
conversation's total length from a log-normal with that mean (clipped to 200 KB) around requests from six
generators (the demo topics, a RAG support assistant, the quality corpora's templated RAG, debugging chats with
pasted code, six languages, "You are …" role-play prompts), with extra turns, pasted code or documents and long
replies of prose and code. The report's header gives the generated lengths' mean, median and p99. The default,
``--lengths demo``, keeps earlier results comparable.

The pipeline is ``build_kura_defs("scale", conversations="logs/{date}.jsonl", partitions="daily", formats=[parquet])``
with the offline models, each size with its own checkpoint directory and Dagster instance (``DAGSTER_HOME``):

1. backfill: the days in single-run backfills of ``--chunk-days`` days each (``conversations`` + ``summaries``, tags
   ``dagster/asset_partition_range_start``/``_end``, exactly what ``--partition-range`` sends);
2. ``clusters``, ``meta_clusters``, ``projected_clusters``, one run each;
3. the new day, as the daily schedule (``build_partitioned_refresh_schedule``) and the README's
   ``--select '*' --partition DAY`` run it: one run of the day's partition and the three unpartitioned stages
   (incremental taxonomy), with its checks; the table splits it by steps (start-up counts in its total only).
   Results before 2026-12-04 ran it as four processes (partition, then one per stage);
4. the rebuild: one run of the three unpartitioned stages with ``rebuild_taxonomy`` set (what the
   ``<prefix>_rebuild_taxonomy`` job runs), from scratch over every summary.

Every run is its own subprocess (``execute_in_process`` against the size's instance), pinned to two cores with
BLAS/OpenMP threads capped at two, so each process's peak RSS is its own: a thread samples RSS and CPU time every
20 ms, and each step's wall time, CPU time and peak come from the samples between its STEP_START and its
STEP_SUCCESS events in the run's event log (the kernel's high-water mark ``ru_maxrss`` is reported per process
too). "start-up" is everything in a process outside its steps: imports, building the definitions, run bookkeeping.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from pipeline import THREAD_VARS, _maxrss_bytes, run_pinned_child  # benchmarks/pipeline.py, beside this script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scale.md"
CHUNKS = HERE / "results" / "scale_chunks.json"
PER_DAY = 10_000
START = date(2026, 7, 1)
PREFIX = "scale"
TARGET_SECONDS, TARGET_GB = 30 * 60, 6.0
UNPARTITIONED = ("clusters", "meta_clusters", "projected_clusters")


def day_key(i: int) -> str:
    return (START + timedelta(days=i)).isoformat()


# --- input ------------------------------------------------------------------------------------------------


def generate_day(logs: Path, i: int) -> Path:
    """Day ``i``'s 10,000 conversations as ``logs/<date>.jsonl`` (atomic; kept when it already exists)."""
    from kura_dagster.pipeline.demo_data import demo_conversations

    path = logs / f"{day_key(i)}.jsonl"
    if path.exists():
        return path
    midnight = datetime.combine(START + timedelta(days=i), datetime.min.time(), tzinfo=timezone.utc)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for j, c in enumerate(demo_conversations(PER_DAY, seed=1_000 + i)):
            created = midnight + timedelta(seconds=j * 86_400 // PER_DAY)
            delta = created - c.created_at
            fh.write(c.model_copy(update={
                "chat_id": f"{day_key(i)}-{j:05d}",
                "created_at": created,
                "messages": [m.model_copy(update={"created_at": m.created_at + delta}) for m in c.messages],
            }).model_dump_json())
            fh.write("\n")
    os.replace(tmp, path)
    return path


# --- realistic lengths (--lengths realistic) ----------------------------------------------------------------

REAL_MEAN_CHARS = 7_000
"""Target mean characters of message content per conversation (real chat logs average about 7 KB)."""
REAL_SIGMA = 1.3
"""Log-normal shape of the total length: median ~3 KB, ~1.5% of conversations above 50 KB."""
REAL_MIN_CHARS, REAL_MAX_CHARS = 200, 200_000
"""Lengths are clipped to this range (the tail is pasted code and documents of up to 200 KB)."""
REAL_SHAPES = {"demo": 0.25, "support": 0.15, "rag": 0.15, "code": 0.15, "multilingual": 0.12, "roleplay": 0.18}
"""Which generator a conversation's requests come from: the demo topics, a W&B-like RAG support assistant, the
quality corpora's templated RAG, debugging chats, six languages and "You are …" role-play prompts."""
REAL_BASES = 1_500
"""Base conversations per shape (their requests and follow-ups; the padding makes every conversation distinct)."""
_LANG_NAMES = {"en": "english", "es": "spanish", "fr": "french", "de": "german", "pt": "portuguese", "it": "italian"}


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[^\W\d_][\w'-]*", text)


@functools.lru_cache(maxsize=1)
def _real_pools() -> dict:
    """Base conversations per shape, prose vocabularies (per language, Zipf-weighted: the words of the
    generators' own texts and the ``stop-words`` package's function words) and a pool of code lines."""
    import random

    import numpy as np
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    from stop_words import get_stop_words

    from kura_dagster.pipeline.demo_data import demo_conversations

    sys.path.insert(0, str(HERE.parent))
    from kura_dagster_tests import quality_corpora as qc
    from kura_dagster_tests.support_data import support_conversations

    bases: dict[str, list] = {
        "demo": demo_conversations(REAL_BASES, seed=11),
        "support": [c for s in range(3) for c in support_conversations(REAL_BASES // 3, seed=20 + s)],
    }
    langs: dict[str, list[str]] = {}
    for name in ("rag", "code", "multilingual", "roleplay"):
        convs, labels = qc.CORPORA[name](REAL_BASES, seed=30)
        bases[name] = convs
        for c, label in zip(convs, labels):
            lang = label[-3:-1] if name == "multilingual" and label.endswith(")") else "en"
            langs.setdefault(lang, []).extend(m.content for m in c.messages)
    for name in ("demo", "support"):
        langs["en"].extend(m.content for c in bases[name] for m in c.messages)
    rng = random.Random(5)
    vocab: dict[str, tuple] = {}
    for lang, texts in langs.items():
        words = sorted({w.lower() for t in texts if "```" not in t for w in _words(t) if w.isalpha()})
        stops = sorted({w.lower() for w in (ENGLISH_STOP_WORDS if lang == "en" else get_stop_words(_LANG_NAMES[lang]))
                        if w.isalpha()})
        rng.shuffle(words)
        rng.shuffle(stops)
        # Zipf-like: function words most frequent, then content words by a random rank
        tokens = stops[:60] + words
        p = 1.0 / np.arange(1, len(tokens) + 1) ** 0.9
        vocab[lang] = (np.array([t + " " for t in tokens], dtype=object),
                       np.array([t + ". " for t in tokens], dtype=object),
                       np.array([t + ".\n\n" for t in tokens], dtype=object), p / p.sum())
    code_lines: list[str] = []
    languages = ("python", "javascript", "go", "rust")
    for b in range(6_000):  # ~500k lines: a line recurs in few conversations of a template-learning sample
        block = qc._code_block(rng, languages[b % 4], rng.randrange(40, 120))
        code_lines.extend(block.split("\n")[1:-1])
    cum = np.cumsum([len(x) + 1 for x in code_lines])
    turns = {name: [[(m.role, m.content) for m in c.messages] for c in convs] for name, convs in bases.items()}
    base_lang = {name: [(c.metadata.get("label", "")[-3:-1] if name == "multilingual" else "en") for c in convs]
                 for name, convs in bases.items()}
    return {"turns": turns, "lang": base_lang, "vocab": vocab, "code": code_lines, "code_cum": cum}


def _prose(rng, vocab: tuple, chars: int) -> str:
    """About ``chars`` characters of words drawn from ``vocab`` (sentences of ~14 words, paragraphs of ~5)."""
    if chars <= 0:
        return ""
    plain, stop, para, p = vocab
    n = max(1, chars // 7)
    idx = rng.choice(len(p), size=n, p=p)
    kind = rng.random(n)
    out = np.where(kind < 1 / 70, para[idx], np.where(kind < 1 / 14, stop[idx], plain[idx]))
    return "".join(out.tolist()).strip()


def _code(rng, pools: dict, chars: int, fenced: bool) -> str:
    """A contiguous run of ``chars`` characters of the code-line pool (fenced or pasted bare)."""
    cum, lines = pools["code_cum"], pools["code"]
    chars = min(chars, int(cum[-1]) - 1)
    start = int(rng.integers(0, int(np.searchsorted(cum, cum[-1] - chars)) + 1))
    end = int(np.searchsorted(cum, cum[start] + chars)) + 1
    body = "\n".join(lines[start:end])
    if not fenced:
        return body
    return f"```{('python', 'javascript', 'go', 'rust', '')[int(rng.integers(0, 5))]}\n{body}\n```"


def generate_realistic_day(logs: Path, i: int) -> Path:
    """Day ``i``'s 10,000 conversations of realistic lengths as ``logs/<date>.jsonl`` (atomic; kept when it
    exists) and their content lengths as ``logs/<date>.lengths.json``.

    Per conversation (numpy, seeded by the day): a base conversation of a shape (:data:`REAL_SHAPES`: its
    request turns as the generator wrote them), a target length from a log-normal (:data:`REAL_MEAN_CHARS`,
    :data:`REAL_SIGMA`, clipped to :data:`REAL_MIN_CHARS`-:data:`REAL_MAX_CHARS`), 0-4 extra turns (the base's
    follow-ups again or "continue"-like asks), and the rest of the length as pasted material and long replies:
    a share of the conversations paste code (fenced or bare) or a document into the first user message (before
    or after the question), and the replies carry prose in the base's language with code blocks."""
    import numpy as np

    path = logs / f"{day_key(i)}.jsonl"
    lengths_path = logs / f"{day_key(i)}.lengths.json"
    if path.exists() and lengths_path.exists():
        return path
    pools = _real_pools()
    rng = np.random.default_rng(50_000 + i)
    names = list(REAL_SHAPES)
    shape = rng.choice(len(names), size=PER_DAY, p=np.array(list(REAL_SHAPES.values())) / sum(REAL_SHAPES.values()))
    mu = math.log(REAL_MEAN_CHARS) - REAL_SIGMA ** 2 / 2
    target = np.clip(rng.lognormal(mu, REAL_SIGMA, PER_DAY), REAL_MIN_CHARS, REAL_MAX_CHARS).astype(np.int64)
    base = rng.integers(0, 1 << 30, PER_DAY)
    extra_turns = rng.choice(5, size=PER_DAY, p=[0.45, 0.25, 0.15, 0.1, 0.05])
    paste = rng.random(PER_DAY)  # < 0.25 code, < 0.4 document, else none
    user_share = np.where(paste < 0.4, rng.uniform(0.5, 0.95, PER_DAY), rng.uniform(0.05, 0.3, PER_DAY))
    layout = rng.integers(0, 4, PER_DAY)
    midnight = datetime.combine(START + timedelta(days=i), datetime.min.time(), tzinfo=timezone.utc)
    lengths = []
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for j in range(PER_DAY):
            name = names[shape[j]]
            k = int(base[j] % len(pools["turns"][name]))
            turns = [list(t) for t in pools["turns"][name][k]]
            vocab = pools["vocab"][pools["lang"][name][k]]
            users = [t for t in turns if t[0] == "user"]
            for e in range(int(extra_turns[j])):  # more turns: the base's follow-ups again, or short asks
                ask = users[-1][1] if users[-1][1] != users[0][1] and e % 2 else _prose(rng, vocab, 60)
                turns += [["user", ask], ["assistant", ""]]
            have = sum(len(t[1]) for t in turns)
            left = max(0, int(target[j]) - have)
            pasted = int(left * user_share[j])
            if paste[j] < 0.4 and pasted > 0:
                first = turns[0] if turns[0][0] == "user" else ["user", ""]
                material = _code(rng, pools, pasted, fenced=layout[j] != 3) if paste[j] < 0.25 \
                    else _prose(rng, vocab, pasted)
                first[1] = f"{material}\n\n{first[1]}" if layout[j] % 2 else f"{first[1]}\n\n{material}"
            else:
                pasted = 0
            replies = [t for t in turns if t[0] == "assistant"]
            share = (left - pasted) // max(1, len(replies))
            for t in replies:
                text = _prose(rng, vocab, share)
                if share > 1_500 and rng.random() < 0.4:  # a code block in the middle of a long reply
                    cut = len(text) // 2
                    text = f"{text[:cut]}\n\n{_code(rng, pools, share // 3, fenced=True)}\n\n{text[cut:]}"
                t[1] = (t[1] + "\n\n" + text).strip() if t[1] else text
            created = midnight + timedelta(seconds=j * 86_400 // PER_DAY)
            msgs = ",".join(
                f'{{"created_at":"{(created + timedelta(seconds=20 * m)).isoformat()}","role":"{r}",'
                f'"content":{json.dumps(c, ensure_ascii=False)}}}' for m, (r, c) in enumerate(turns))
            fh.write(f'{{"chat_id":"{day_key(i)}-{j:05d}","created_at":"{created.isoformat()}","messages":[{msgs}],'
                     f'"metadata":{{"shape":"{name}"}}}}\n')
            lengths.append(sum(len(c) for _, c in turns))
    lengths_path.write_text(json.dumps(lengths))
    os.replace(tmp, path)
    return path


# --- one measured process ---------------------------------------------------------------------------------


class Sampler:
    """(time, RSS bytes, CPU seconds) of this process every ``interval`` seconds, in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        cpu = self._proc.cpu_times()
        self.samples.append((time.time(), self._proc.memory_info().rss, cpu.user + cpu.system))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def window(self, t0: float, t1: float) -> dict:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        before = [s for s in self.samples if s[0] <= t0]
        after = [s for s in self.samples if s[0] >= t1]
        cpu0 = before[-1][2] if before else (inside[0][2] if inside else 0.0)
        cpu1 = after[0][2] if after else (inside[-1][2] if inside else cpu0)
        peak = max([s[1] for s in inside] + ([before[-1][1]] if before else []) + ([after[0][1]] if after else []))
        return {"seconds": t1 - t0, "cpu_seconds": cpu1 - cpu0, "peak_bytes": peak}


def child_run(spec: dict) -> dict:
    """One Dagster run of ``spec['select']`` (and a partition range), measured step by step."""
    started = time.time()
    sampler = Sampler()
    import dagster as dg

    from kura_dagster import build_kura_defs

    defs = build_kura_defs(PREFIX, conversations=str(Path(spec["logs"]) / "{date}.jsonl"), partitions="daily",
                           partition_start=START.isoformat(), checkpoint_dir=spec["ckpt"], formats=["parquet"],
                           sensor=False, **({"rebuild_taxonomy": True} if spec.get("rebuild") else {}))
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey([PREFIX, s]) for s in spec["select"]})
    tags = {}
    if spec.get("range"):
        tags = {"dagster/asset_partition_range_start": spec["range"][0],
                "dagster/asset_partition_range_end": spec["range"][1]}
    instance = dg.DagsterInstance.get()
    if spec.get("partition"):  # one run of partitioned and unpartitioned assets, as the daily schedule launches
        result = job.execute_in_process(instance=instance, partition_key=spec["partition"])
    else:
        result = job.execute_in_process(instance=instance, tags=tags)
    sampler.stop()
    if not result.success:
        raise SystemExit(f"run of {spec['select']} failed")
    starts: dict[str, float] = {}
    steps: dict[str, dict] = {}
    for entry in instance.all_logs(result.run_id):
        ev = entry.dagster_event
        if ev is None or ev.step_key is None:
            continue
        stage = ev.step_key.split("__")[-1]
        if ev.event_type_value == "STEP_START":
            starts[stage] = entry.timestamp
        elif ev.event_type_value == "STEP_SUCCESS":
            steps[stage] = sampler.window(starts[stage], entry.timestamp)
    metadata: dict[str, dict] = {}
    for mat in result.get_asset_materialization_events():
        m = mat.materialization
        stage = m.asset_key.path[-1]
        keep = ("summaries_read", "partitions_read", "dagster/row_count", "clusters", "conversations", "summaries")
        metadata.setdefault(stage, {}).update({k: v.value for k, v in m.metadata.items()
                                               if k in keep and isinstance(v.value, (int, float, str))})
    ended = time.time()
    whole = sampler.window(started, ended)
    return {"seconds": ended - started, "cpu_seconds": whole["cpu_seconds"], "peak_bytes": max(whole["peak_bytes"],
            _maxrss_bytes()), "max_rss_bytes": _maxrss_bytes(), "steps": steps, "metadata": metadata}


def run_child(args: list[str], env: dict[str, str]) -> dict:
    return run_pinned_child(__file__, args, env, str(args[:2]))


# --- one size ---------------------------------------------------------------------------------------------


def run_size(n: int, root: Path, logs: Path, chunk_days: int, log, previous: dict | None = None,
             phases: tuple[str, ...] = ("backfill", "stages")) -> dict:
    """``phases``: ``backfill`` (from scratch) and/or ``stages`` (the unpartitioned stages and the new day, on the
    checkpoints a backfill left; ``previous`` holds that backfill's measurements)."""
    days = n // PER_DAY
    work = root / f"n{n}"
    home = work / "dagster_home"
    if "backfill" in phases:
        shutil.rmtree(work, ignore_errors=True)
        home.mkdir(parents=True)
    env = dict(os.environ, DAGSTER_HOME=str(home), **{v: "2" for v in THREAD_VARS})

    def run(select: tuple[str, ...], first: int | None = None, last: int | None = None,
            rebuild: bool = False, partition: int | None = None) -> dict:
        spec = {"logs": str(logs), "ckpt": str(work / "ckpt"), "select": list(select),
                "range": [day_key(first), day_key(last)] if first is not None else None, "rebuild": rebuild,
                "partition": day_key(partition) if partition is not None else None}
        t0 = time.time()
        out = run_child(["--child", json.dumps(spec)], env)
        what = f"{select[0]}…{select[-1]}" + (f" {day_key(first)}…{day_key(last)}" if first is not None else "") \
            + (f" partition {day_key(partition)}" if partition is not None else "") \
            + (" (rebuild_taxonomy)" if rebuild else "")
        log(f"  n={n:,} {what}: {time.time() - t0:.1f} s, peak {out['peak_bytes'] / 2**30:.2f} GB")
        return out

    load = [os.getloadavg()[0]]
    backfill: list[dict] = []
    if "backfill" not in phases:
        backfill, chunk_days, load = previous["backfill"], previous["chunk_days"], previous["load"]
        for stage in ("conversations", "summaries"):  # an earlier run's new day: not part of the backfill
            for f in (work / "ckpt" / stage).glob(f"*{day_key(days)}*"):
                shutil.rmtree(f) if f.is_dir() else f.unlink()
    else:
        for first in range(0, days, chunk_days):
            backfill.append(run(("conversations", "summaries"), first, min(first + chunk_days, days) - 1))
            load.append(os.getloadavg()[0])
    if "stages" not in phases:
        return {"n": n, "days": days, "chunk_days": chunk_days, "backfill": backfill, "load": load}
    stages = {s: run((s,)) for s in UNPARTITIONED}
    load.append(os.getloadavg()[0])
    # the new day as the daily schedule runs it (and the README's `--select '*' --partition DAY`): one run of the
    # day's partition and the three stages after it
    new_day = [run(("conversations", "summaries", *UNPARTITIONED), partition=days)]
    load.append(os.getloadavg()[0])
    # the <prefix>_rebuild_taxonomy job after the new day: one run of the three stages with rebuild_taxonomy
    rebuild = [run(UNPARTITIONED, rebuild=True)]
    load.append(os.getloadavg()[0])
    return {"n": n, "days": days, "chunk_days": chunk_days, "backfill": backfill, "stages": stages,
            "new_day": new_day, "rebuild": rebuild, "load": load,
            "finished": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"}


# --- the report -------------------------------------------------------------------------------------------


def _mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def summarise(r: dict) -> dict:
    """Per-row (seconds, CPU seconds, peak bytes) of one size's table column."""
    rows: dict[str, tuple[float, float, float]] = {}
    bf = r["backfill"]
    for stage in ("conversations", "summaries"):
        steps = [b["steps"][stage] for b in bf]
        rows[stage] = (sum(s["seconds"] for s in steps), sum(s["cpu_seconds"] for s in steps),
                       max(s["peak_bytes"] for s in steps))
    for stage in UNPARTITIONED:
        s = r["stages"][stage]["steps"][stage]
        rows[stage] = (s["seconds"], s["cpu_seconds"], s["peak_bytes"])
    procs = bf + [r["stages"][s] for s in UNPARTITIONED]
    checks = [s for p in procs for name, s in p["steps"].items() if name not in ("conversations", "summaries",
                                                                                   *UNPARTITIONED)]
    rows["asset checks"] = (sum(s["seconds"] for s in checks), sum(s["cpu_seconds"] for s in checks),
                            max((s["peak_bytes"] for s in checks), default=float("nan")))
    in_steps = sum(s["seconds"] for p in procs for s in p["steps"].values())
    total = sum(p["seconds"] for p in procs)
    rows["start-up"] = (total - in_steps, float("nan"), float("nan"))
    rows["end to end"] = (total, sum(p["cpu_seconds"] for p in procs), max(p["peak_bytes"] for p in procs))
    new = r["new_day"]
    if len(new) == 1:  # one run (since 2026-12-04): split its steps; start-up goes into the total only
        steps = new[0]["steps"]
        part = [s for k, s in steps.items() if k in ("conversations", "summaries") or k.startswith("summaries_")]
        rest = [s for k, s in steps.items() if not (k in ("conversations", "summaries") or k.startswith("summaries_"))]
        for key, group in (("new day: its partition", part), ("new day: clusters → projected", rest)):
            rows[key] = (sum(s["seconds"] for s in group), sum(s["cpu_seconds"] for s in group),
                         max((s["peak_bytes"] for s in group), default=float("nan")))
    else:  # one process per stage
        rows["new day: its partition"] = (new[0]["seconds"], new[0]["cpu_seconds"], new[0]["peak_bytes"])
        rows["new day: clusters → projected"] = (sum(p["seconds"] for p in new[1:]),
                                                 sum(p["cpu_seconds"] for p in new[1:]),
                                                 max(p["peak_bytes"] for p in new[1:]))
    new_total = sum(p["seconds"] for p in new)
    rows["new day: total"] = (new_total, sum(p["cpu_seconds"] for p in new), max(p["peak_bytes"] for p in new))
    nan = float("nan")
    rb = r.get("rebuild") or []  # runs before the rebuild row existed have none
    rows["rebuild"] = (sum(p["seconds"] for p in rb), sum(p["cpu_seconds"] for p in rb),
                       max(p["peak_bytes"] for p in rb)) if rb else (nan, nan, nan)
    return {"rows": rows, "fraction": new_total / total if total else float("nan")}


ROW_LABELS = {
    "conversations": "conversations (backfill: read day files, write Parquet)",
    "summaries": "summaries (backfill: local summary + embedding models)",
    "clusters": "clusters (read every partition, k-means, naming)",
    "meta_clusters": "meta_clusters",
    "projected_clusters": "projected_clusters",
    "asset checks": "asset checks (blocking; summaries per partition, clusters, tree, projection)",
    "start-up": "process start-up + Dagster bookkeeping (outside steps)",
    "end to end": "**end to end** (backfill + 3 stages; peak = highest process)",
    "new day: its partition": "new day: its partition (conversations + summaries)",
    "new day: clusters → projected": "new day: clusters → meta_clusters → projected_clusters",
    "new day: total": "**new day: total** (one run since 2026-12-04: start-up included once)",
    "rebuild": "rebuild after the new day: clusters → meta_clusters → projected_clusters with rebuild_taxonomy "
               "(the `_rebuild_taxonomy` job's stages with their checks; one run since 2026-12-04, 3 before)",
}


def table(results: list[dict]) -> str:
    sums = [summarise(r) for r in results]
    head = "| stage | " + " | ".join(f"{r['n']:,}: wall s | {r['n']:,}: CPU s | {r['n']:,}: peak MB"
                                     for r in results) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(results)]
    for key, label in ROW_LABELS.items():
        cells = []
        for s in sums:
            sec, cpu, peak = s["rows"][key]
            bold = "**" if label.startswith("**") else ""
            cells += ["—" if math.isnan(sec) else f"{bold}{sec:,.1f}{bold}",
                      "—" if math.isnan(cpu) else f"{cpu:,.1f}",
                      "—" if math.isnan(peak) else f"{bold}{_mb(peak)}{bold}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| new day as a fraction of the full run | " + " | ".join(
        f"**{s['fraction']:.1%}** | | " for s in sums) + "|")
    lines.append("| *Kura 0.5.4: only loading 100k summaries × 1536-d as models (see below)* | " + " | ".join(
        "— | — | *≈ 6,000–10,000*" if r["n"] == 100_000 else "— | — | —" for r in results) + " |")
    return "\n".join(lines)


def details(results: list[dict]) -> str:
    lines = ["| conversations | days | backfill runs | summaries read by clusters | base clusters | all clusters | "
             "highest process RSS (ru_maxrss) | load average (min–max during the size) |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        md = r["stages"]["clusters"]["metadata"].get("clusters", {})
        meta = r["stages"]["meta_clusters"]["metadata"].get("meta_clusters", {})
        procs = r["backfill"] + [r["stages"][s] for s in UNPARTITIONED] + r["new_day"] + r.get("rebuild", [])
        lines.append(f"| {r['n']:,} | {r['days']} | {len(r['backfill'])} × {r['chunk_days']} days | "
                     f"{md.get('summaries_read', '?'):,} | {md.get('dagster/row_count', '?'):,} | "
                     f"{meta.get('dagster/row_count', '?'):,} | {_mb(max(p['max_rss_bytes'] for p in procs))} MB | "
                     f"{min(r['load']):.1f}–{max(r['load']):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    ap.add_argument("--chunk-days", type=int, default=10, help="days per single-run backfill")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/kura-scale"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--json", type=Path, default=HERE / "results" / "scale.json",
                    help="the raw measurements (read back by --phases stages and --report)")
    ap.add_argument("--phases", nargs="+", choices=("backfill", "stages"), default=["backfill", "stages"],
                    help="'stages' alone reuses the checkpoints and measurements of an earlier backfill")
    ap.add_argument("--report", action="store_true", help="only write the table from --json")
    ap.add_argument("--chunk-study", type=int, nargs="+", metavar=("N", "DAYS"),
                    help="backfill N conversations once per chunk size DAYS… (into results/scale_chunks.json)")
    ap.add_argument("--lengths", choices=("demo", "realistic"), default="demo",
                    help="demo: the demo generator's short conversations (default; comparable with earlier results); "
                         "realistic: long-tailed lengths averaging ~7 KB with pasted code and documents "
                         "(day files in <workdir>/logs_realistic)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--generate", type=int, nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logs = args.workdir / ("logs" if args.lengths == "demo" else "logs_realistic")
    if args.child is not None:
        print(json.dumps(child_run(json.loads(args.child))))
        return 0
    if args.generate is not None:
        for i in range(*args.generate):
            (generate_day if args.lengths == "demo" else generate_realistic_day)(logs, i)
        print(json.dumps({}))
        return 0
    if any(n % PER_DAY for n in args.sizes):
        raise SystemExit(f"sizes must be multiples of {PER_DAY:,}")

    def log(msg: str) -> None:
        print(f"{datetime.now(timezone.utc):%H:%M:%S} {msg}", file=sys.stderr, flush=True)

    if args.chunk_study:
        n, sizes = args.chunk_study[0], args.chunk_study[1:]
        study = []
        for days in sizes:
            r = run_size(n, args.workdir / "chunks", logs, days, lambda m: print(m, file=sys.stderr, flush=True),
                         phases=("backfill",))
            study.append({"n": n, "chunk_days": days, "runs": len(r["backfill"]),
                          "seconds": sum(b["seconds"] for b in r["backfill"]),
                          "cpu_seconds": sum(b["cpu_seconds"] for b in r["backfill"]),
                          "peak_bytes": max(b["peak_bytes"] for b in r["backfill"]), "load": r["load"]})
        CHUNKS.write_text(json.dumps(study, indent=1))
        return 0
    saved = {r["n"]: r for r in json.loads(args.json.read_text())} if args.json.exists() else {}
    if args.report:
        done = [saved[n] for n in sorted(saved) if "stages" in saved[n]]
        if any(r.get("lengths") == "realistic" for r in done):  # the length files sit with the realistic day files
            logs = args.workdir / "logs_realistic"
        write_report(done, args.out, logs)
        return 0
    days = max(args.sizes) // PER_DAY + 1
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    halves = [(0, days // 2), (days // 2, days)]  # two generator processes (not timed)
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--workdir", str(args.workdir),
                               "--lengths", args.lengths, "--generate", str(a), str(b)], stdout=subprocess.DEVNULL)
             for a, b in halves]
    if any(p.wait() for p in procs):
        raise SystemExit("generating the day files failed")
    log(f"{days} day files of {PER_DAY:,} conversations in {logs} ({time.time() - t0:.0f} s)")
    for n in args.sizes:
        log(f"n={n:,}")
        saved[n] = run_size(n, args.workdir, logs, args.chunk_days, log, saved.get(n), tuple(args.phases))
        saved[n]["lengths"] = args.lengths
        args.json.write_text(json.dumps([saved[k] for k in sorted(saved)], indent=1))
    write_report([saved[n] for n in sorted(saved) if "stages" in saved[n]], args.out, logs)
    return 0


KURA_LOAD = (
    "**Kura 0.5.4 for comparison:** loading 100k summaries with 1536-d embeddings as models takes **≈ 6–10 GB** "
    "before any clustering starts: measured at 10k×1536 in [checkpoint_formats.md](checkpoint_formats.md), Kura's "
    "peak RSS is 787 MB (JSONL), 845 MB (HF) and 1,238 MB (Parquet), and it grows linearly with rows (×10 for "
    "100k). Our columnar path reads the same 100k×1536 as a matrix in 805 MB (Parquet) or 810 MB (HF, zero-copy) "
    "(same file, measured). Here, with 256-d offline embeddings, `clusters` reads **all** the summaries in one "
    "process at every size in the table above."
)


FIXES = """**What broke at 1M, and the fixes** (measured once while building this benchmark, 2026-11-29: the check
in a full 1M run that already had the other fixes; the others per row or per component, scaled to 1M):

- *The clusters check loaded every summary as a model.* `every_summary_in_one_cluster` (a blocking asset check,
  so it runs in the clusters run) needs only chat ids but loaded all 1M summaries with their embeddings as lists of
  Python floats: **13.4 GB** peak in the clusters run. It now reads the summaries through the columnar path
  (chat ids + float32 matrix): 3.7 GB, the run's peak is `clusters` itself.
- *`clusters` built a model for every summary* (`columns.to_models()`: ~3 KB and ~77 µs per row, 3 GB and over a
  minute at 1M, plus every partition's text columns at once). Each base cluster is now named from a seeded sample
  of at most 10 members (chosen by a hash of seed and chat id, so a cluster's sample does not depend on the other
  clusters; Kura's `clusters_per_group` is 10, so a typical cluster is read whole), and `SummaryColumns.models_for`
  builds models only for those rows, reading only the generated-summary columns, one partition at a time.
- *Two copies of the vectors:* `SummaryColumns.concat` kept every partition's matrix beside the concatenated one;
  the parts are now views of it (1 GB held once at 1M×256).
- *k-means copied the matrix to float64* (2 GB at 1M×256) *and kept every distinct row's bytes as a dict key*
  (a second copy): it now stays float32 and tells rows apart by a 128-bit digest (16 bytes per row).
- *O(n·k) k-means:* k = ceil(n / 10) = 100k base clusters at 1M. The two-level path made sqrt(k) = 317 coarse
  groups with ~316 clusters each (cost ~n·317); above 128² clusters it now makes k/128 groups (782 at 1M), so no
  k-means has more than ~128 clusters (cost ~n·128). The MT-Bench NMI test and the k-means tests pass unchanged.
- *JSON serialised twice for data versions:* measured, not a problem: `content_version` (pydantic-core's Rust
  serializer) takes 0.14 s for the 101k base clusters, 0.29 s for the 112k meta clusters and 0.33 s for the
  projected ones, a quarter of the Parquet save and under 1% of each stage; a backfill run covering several
  partitions records no data version at all. Left as it is.

**An earlier run under load.** The same three sizes while other engineers' tests kept the load average at 4–10
(backfill 04:21–04:39 UTC, the unpartitioned stages again at 05:04–05:14 after the check fix): 1M end to end
1,095 s wall / 449 s CPU, highest process 3.7 GB; 300k 254 s; 100k 99 s. The CPU times match this run's.

**Backfill size.** A 10-day single-run backfill (100k conversations) peaks at 3.6 GB, most of it the
per-partition summaries check holding the run's conversations and summaries as models, and the peak grows with
the days per run. In the study below, 10-day runs are the fastest within 6 GB: one run per day takes twice as
long (each run pays process start-up and Dagster bookkeeping), 5-day runs cost 6% more, and 20-day runs are no
faster than 10-day ones but reach 7 GB.
"""


def chunk_table() -> str:
    """The backfill of one size with several run sizes (``--chunk-study``), when it was measured."""
    if not CHUNKS.exists():
        return ""
    study = json.loads(CHUNKS.read_text())
    lines = [f"Measured with `--chunk-study`: the backfill of {study[0]['n']:,} conversations with runs of different "
             "sizes (each run a process: start-up, steps, checks).", "",
             "| days per run | runs | wall s | CPU s | peak MB (highest run) | load average |",
             "|---:|---:|---:|---:|---:|---|"]
    for r in study:
        lines.append(f"| {r['chunk_days']} | {r['runs']} | {r['seconds']:,.1f} | {r['cpu_seconds']:,.1f} | "
                     f"{_mb(r['peak_bytes'])} | {min(r['load']):.1f}–{max(r['load']):.1f} |")
    return "\n".join(lines) + "\n"


def analysis(results: list[dict]) -> str:
    """Where the time and memory go at the largest size, and how they grow with size (computed from the runs)."""
    sums = {r["n"]: summarise(r)["rows"] for r in results}
    big = max(sums)
    rows = sums[big]
    total, cpu_total = rows["end to end"][0], rows["end to end"][1]
    lines = [f"**Where the time goes at {big:,}** (share of end-to-end wall / of end-to-end CPU):"]
    for key in ("conversations", "summaries", "clusters", "meta_clusters", "projected_clusters", "asset checks",
                "start-up"):
        sec, cpu, peak = rows[key]
        cpu_share = "" if math.isnan(cpu) else f" / {cpu / cpu_total:.0%} CPU"
        mem = "" if math.isnan(peak) else f", peak {_mb(peak)} MB"
        lines.append(f"- {key}: {sec:,.0f} s wall ({sec / total:.0%}{cpu_share}){mem}")
    ordered = sorted(sums)
    if len(ordered) > 1:
        lines += ["", "**Growth with size** (each size over the one before it: conversations ×, wall ×, CPU ×, "
                  "peak ×):"]
        for a, b in zip(ordered, ordered[1:]):
            ra, rb = sums[a], sums[b]
            parts = []
            for key in ("summaries", "clusters", "meta_clusters", "projected_clusters", "end to end"):
                parts.append(f"{key} wall ×{rb[key][0] / ra[key][0]:.1f}, CPU ×{rb[key][1] / ra[key][1]:.1f}, "
                             f"peak ×{rb[key][2] / ra[key][2]:.1f}")
            lines.append(f"- {a:,} → {b:,} (×{b / a:.1f}): " + "; ".join(parts))
    return "\n".join(lines)


def length_stats(results: list[dict], logs: Path) -> str:
    """The realistic day files' content lengths (characters of message content per conversation) over the
    days of the largest size: what the run actually read."""
    if not any(r.get("lengths") == "realistic" for r in results):
        return ("Input: the demo generator's conversations (`--lengths demo`: short, one topic each, a few "
                "hundred characters).")
    days = max(r["days"] for r in results)
    files = [logs / f"{day_key(i)}.lengths.json" for i in range(days)]
    if not all(f.exists() for f in files):
        return f"Input: realistic lengths (`--lengths realistic`); the length files in {logs} are missing."
    lengths = np.concatenate([np.array(json.loads(f.read_text()), dtype=np.int64) for f in files])
    return (f"Input: realistic lengths (`--lengths realistic`, {len(lengths):,} conversations): characters of "
            f"message content per conversation mean **{lengths.mean():,.0f}**, median {np.median(lengths):,.0f}, "
            f"p90 {np.percentile(lengths, 90):,.0f}, p99 {np.percentile(lengths, 99):,.0f}, max {lengths.max():,}; "
            f"{(lengths > 50_000).mean():.1%} above 50,000 (pasted code and documents); "
            f"{lengths.sum() / 1e9:.2f} GB of text.")


def write_report(results: list[dict], out: Path, logs: Path | None = None) -> None:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    when = ", ".join(f"{r['n']:,} finished {r['finished']}" for r in results if r.get("finished"))
    md = "\n".join([
        "# A million conversations: partitioned backfill and the unpartitioned stages",
        "",
        f"`python benchmarks/scale.py` — {when or datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; Python "
        f"{platform.python_version()}, {platform.machine()}, {min(cpus or 1, 2)} cores (pinned), BLAS/OpenMP "
        f"threads = 2, offline models, Parquet checkpoints. Targets at 1M: ≤ {TARGET_SECONDS // 60} min end to end, "
        f"≤ {TARGET_GB:g} GB peak RSS in every process.",
        "",
        length_stats(results, logs) if logs is not None else "",
        "",
        table(results),
        "",
        details(results),
        "",
        analysis(results),
        "",
        KURA_LOAD,
        "",
        FIXES,
        chunk_table(),
        "Wall time is shared-machine wall time: other engineers' tests ran on the same two cores (load averages in "
        "the second table; above 2 means this benchmark got less than the whole machine). CPU s is the process's own "
        "user+system time, which the load does not inflate as much. Peak MB per stage is the highest RSS sampled "
        "during that step (it includes what the process held before the step); the end-to-end peak is the highest "
        "of all processes.",
        "",
    ])
    print(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
