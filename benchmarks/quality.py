"""How well the offline default tells a person what users ask for (issue 18, item 6).

    python benchmarks/quality.py                 # every corpus; writes benchmarks/results/quality.md
    python benchmarks/quality.py --corpora rag   # some of them
    python benchmarks/quality.py --min-conversations 10 --out benchmarks/results/quality_thresholds.md
                                                 # with the privacy thresholds, as the clusters asset applies them

Runs the real stage functions with the offline models (summaries -> base clusters -> meta clusters) on:

* MT-Bench: Kura's 1,000 conversations in ``../shared/data/kura-mtbench-1000/`` (skipped when absent),
  scored against ``question_id`` and against MT-Bench's category, which its question ids determine
  (81-90 writing, 91-100 roleplay, 101-110 reasoning, 111-120 math, 121-130 coding, 131-140 extraction,
  141-150 STEM, 151-160 humanities);
* four generated corpora of different shapes (``kura_dagster_tests/quality_corpora.py``: templated RAG, multi-turn
  with long pasted code, six languages, "You are …" role-play prompts), and ``mixed``, all of them together
  (plus MT-Bench when present), which is where one root swallowing the corpus shows.

Per corpus it reports AMI, NMI and ARI (scikit-learn) of the base clusters against the labels, beside the
baseline: TF-IDF (sublinear tf) + k-means on the raw first user message with the same ``k``; the share of
base-cluster names and of summaries with first- or second-person words (I, me, my, mine, myself, we, us,
our, you, your, … anywhere in the name or summary, quotes included: a summary describes the user in the
third person); and the largest root cluster's share of the conversations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the corpora live with the tests (kura_dagster_tests/quality_corpora.py)
RESULTS = HERE / "results" / "quality.md"
MTBENCH = Path(os.environ.get("KURA_SHARED_DATA", HERE.parent.parent / "shared" / "data" / "kura-mtbench-1000"))

PERSON = re.compile(r"(?<![\w'’])(?:i|i'm|i’m|i've|i'd|i'll|me|my|mine|myself|we|we're|our|ours|us|you|you're|"
                    r"you’re|you've|your|yours|yourself|yourselves)(?![\w'’])", re.I)
"""First- and second-person words (English; "US" in capitals is the country, not "us")."""


def has_person(text: str) -> bool:
    return any(m.group(0) != "US" for m in PERSON.finditer(text))


MTBENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


def mtbench_category(question_id: int) -> str:
    return MTBENCH_CATEGORIES[(int(question_id) - 81) // 10]


def run_offline(conversations, settings, min_conversations: int = 0):
    """The offline pipeline, stage by stage, as the assets run it: (summaries, base clusters, all clusters).
    ``min_conversations``: the privacy thresholds (``pipeline/thresholds.py``) as the clusters asset applies them
    (0: off, Kura's plain k-means and naming)."""
    import numpy as np

    from kura_dagster.pipeline import generate_base_clusters, reduce_clusters, summarise_conversations
    from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel, LocalSummaryModel

    embedder = LocalEmbeddingModel(dims=settings.embedding_dims, seed=settings.seed)  # fits on what it embeds first
    namer = LocalClusterNamingModel(seed=settings.seed)
    summaries = summarise_conversations(conversations, LocalSummaryModel(), embedder)
    if min_conversations:
        from kura_dagster.checkpoints.columnar import SummaryColumns
        from kura_dagster.pipeline.privacy import ScrubbingNamer
        from kura_dagster.pipeline.thresholds import Thresholds, base_clusters_with_thresholds

        namer = ScrubbingNamer(namer)  # as the assets: parents named without their "Other requests" children
        clusters = base_clusters_with_thresholds(SummaryColumns.coerce(summaries), namer, settings,
                                                 Thresholds(min_conversations=min_conversations))
    else:
        clusters = generate_base_clusters(summaries, namer, settings)
    try:  # as the meta_clusters asset does: group in the base clusters' own embedding space
        from kura_dagster.pipeline.meta_cluster import cluster_centroids
    except ImportError:
        centroids = None
    else:
        matrix = np.asarray([s.embedding for s in summaries], dtype=np.float32)
        centroids = cluster_centroids(clusters, [s.chat_id for s in summaries], matrix)
    meta = reduce_clusters(clusters, namer, embedder, settings, **({"centroids": centroids} if centroids else {}))
    return summaries, clusters, meta


def baseline_labels(conversations, k: int, seed: int) -> list[int]:
    """TF-IDF (sublinear tf) + k-means on the raw first user message."""
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import TfidfVectorizer

    first = [next((m.content for m in c.messages if m.role == "user"), "") for c in conversations]
    x = TfidfVectorizer(sublinear_tf=True).fit_transform(first)
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(x).tolist()


def scores(truth: Sequence, pred: Sequence) -> dict[str, float]:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    return {"ami": adjusted_mutual_info_score(truth, pred), "nmi": normalized_mutual_info_score(truth, pred),
            "ari": adjusted_rand_score(truth, pred)}


def evaluate(name: str, conversations, labelings: dict[str, list], seed: int = 0, min_conversations: int = 0
             ) -> dict:
    from kura_dagster.pipeline import PipelineSettings

    settings = PipelineSettings(seed=seed)
    t0 = time.perf_counter()
    summaries, clusters, meta = run_offline(conversations, settings, min_conversations)
    seconds = time.perf_counter() - t0
    of = {cid: i for i, c in enumerate(clusters) for cid in c.chat_ids}
    pred = [of[c.chat_id] for c in conversations]
    base = baseline_labels(conversations, len(clusters), seed)
    roots = [c for c in meta if c.parent_id is None]
    n = len(conversations)
    person_summaries = [s for s in summaries if has_person(s.summary)]
    person_names = [c for c in clusters if has_person(c.name)]
    return {
        "corpus": name, "n": n, "k": len(clusters), "roots": len(roots), "seconds": seconds,
        "labels": {lab: {"n_labels": len(set(t)), "ours": scores(t, pred), "baseline": scores(t, base)}
                   for lab, t in labelings.items()},
        "person_summaries": len(person_summaries) / n, "person_names": len(person_names) / max(len(clusters), 1),
        "largest_root": max((len(r.chat_ids) for r in roots), default=0) / n,
        "largest_root_name": max(roots, key=lambda r: len(r.chat_ids)).name if roots else "",
        "in_other": sum(len(c.chat_ids) for c in clusters if c.name == "Other requests") / n,
        "examples": {
            "summaries": [s.summary for s in summaries[:: max(1, n // 4)][:4]],
            "person_summaries": [s.summary for s in person_summaries[:3]],
            "names": [c.name for c in sorted(clusters, key=lambda c: -len(c.chat_ids))[:6]],
            "person_names": [c.name for c in person_names[:3]],
            "roots": [f"{r.name} ({len(r.chat_ids) / n:.0%})" for r in sorted(roots, key=lambda r: -len(r.chat_ids))],
        },
    }


def load_corpora(names: Sequence[str]) -> dict[str, tuple[list, dict[str, list]]]:
    from kura_dagster_tests.quality_corpora import CORPORA

    out: dict[str, tuple[list, dict[str, list]]] = {}
    if "mtbench" in names:
        path = MTBENCH / "conversations.jsonl"
        if path.exists():
            from kura_dagster.pipeline import read_conversations

            convs = read_conversations(path).conversations
            qids = [c.metadata["question_id"] for c in convs]
            out["mtbench"] = (convs, {"question_id": qids, "category": [mtbench_category(q) for q in qids]})
        else:
            print(f"MT-Bench skipped: {path} not found", file=sys.stderr)
    for name, gen in CORPORA.items():
        if name in names or "mixed" in names:
            convs, labels = gen()
            if name in names:
                out[name] = (convs, {"intent": labels})
    if "mixed" in names:
        convs, labels = [], []
        for name, gen in CORPORA.items():
            c, lab = gen()
            convs += c
            labels += [f"{name}: {x}" for x in lab]
        if "mtbench" in out:
            c, lab = out["mtbench"]
            convs += c
            labels += [f"mtbench: {q}" for q in lab["question_id"]]
        out["mixed"] = (convs, {"intent": labels})
    return out


def _f(x: float) -> str:
    return f"{x:.3f}"


def markdown(results: list[dict], argv: Sequence[str]) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "n/a"
    lines = [
        "# Offline quality benchmark", "",
        f"`python benchmarks/quality.py{' ' + ' '.join(argv) if argv else ''}` — {when}; load average {load}.",
        "Base clusters of the offline pipeline (ours) against the labels, beside the baseline: TF-IDF (sublinear tf) "
        "+ k-means on the raw first user message with the same k. \"1st/2nd person\" is the share of summaries / "
        "base-cluster names containing I, me, my, we, our, you, your, … (targets: ≤ 5% / ≤ 2%). "
        "\"largest root\" is the biggest root cluster's share of the conversations (target on a mixed corpus: ≤ 35%).",
        "",
        "| corpus | labels | n | k | ours AMI | ours NMI | ours ARI | baseline AMI | baseline NMI | baseline ARI "
        "| summaries 1st/2nd person | names 1st/2nd person | largest root | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for lab, s in r["labels"].items():
            o, b = s["ours"], s["baseline"]
            lines.append(
                f"| {r['corpus']} | {lab} ({s['n_labels']}) | {r['n']:,} | {r['k']} | **{_f(o['ami'])}** | {_f(o['nmi'])} "
                f"| {_f(o['ari'])} | {_f(b['ami'])} | {_f(b['nmi'])} | {_f(b['ari'])} | {r['person_summaries']:.1%} "
                f"| {r['person_names']:.1%} | {r['largest_root']:.1%} | {r['seconds']:.1f} |")
    lines += ["", "Share of the conversations in \"Other requests\" base clusters (the privacy thresholds' pools; "
              "0 when they are off): " + ", ".join(f"{r['corpus']} {r.get('in_other', 0):.1%}" for r in results)]
    lines += ["", "## Examples", ""]
    for r in results:
        ex = r["examples"]
        lines += [f"### {r['corpus']}", "",
                  "- summaries: " + " · ".join(f"“{s}”" for s in ex["summaries"]),
                  "- largest base clusters: " + " · ".join(f"“{s}”" for s in ex["names"]),
                  "- roots: " + " · ".join(f"“{s}”" for s in ex["roots"])]
        if ex["person_summaries"]:
            lines.append("- summaries with 1st/2nd person: " + " · ".join(f"“{s}”" for s in ex["person_summaries"]))
        if ex["person_names"]:
            lines.append("- names with 1st/2nd person: " + " · ".join(f"“{s}”" for s in ex["person_names"]))
        lines.append("")
    return "\n".join(lines)


ALL = ("mtbench", "rag", "code", "multilingual", "roleplay", "mixed")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpora", nargs="+", choices=ALL, default=list(ALL))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--min-conversations", type=int, default=0,
                    help="apply the privacy thresholds as the clusters asset does (its default: 10); 0: off")
    args = ap.parse_args(argv)
    results = []
    for name, (convs, labelings) in load_corpora(args.corpora).items():
        print(f"{name}: {len(convs):,} conversations …", file=sys.stderr, flush=True)
        r = evaluate(name, convs, labelings, args.seed, args.min_conversations)
        results.append(r)
        for lab, s in r["labels"].items():
            print(f"  {lab}: ours AMI {s['ours']['ami']:.3f} NMI {s['ours']['nmi']:.3f} | baseline AMI "
                  f"{s['baseline']['ami']:.3f} | 1st/2nd person: summaries {r['person_summaries']:.1%} names "
                  f"{r['person_names']:.1%} | largest root {r['largest_root']:.1%} | in Other "
                  f"{r['in_other']:.1%}", file=sys.stderr, flush=True)
    md = markdown(results, argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
