"""A taxonomy that stays put: ten incremental days against a full rebuild on the same conversations.

For each corpus the conversations arrive in a seeded random order: two thirds on day 0 (a full build), the rest over
``--days`` days, each day updating the stored taxonomy (``pipeline/taxonomy.py``: nearest cluster within its
radius, the rest clustered anew, drift → rebuild). At the end the incremental base clusters are compared with a
full rebuild on the same conversations and embeddings (AMI), and both with the corpus' own labels (NMI).
Offline models (the fitted TF-IDF+LSA embedding stays fixed after day 0), thresholds at their defaults.

    python benchmarks/taxonomy_days.py [--days 10] [--corpora mixed mtbench] [--out benchmarks/results/taxonomy.md]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _labels(clusters, chat_ids) -> list[int]:
    of = {cid: i for i, c in enumerate(clusters) for cid in c.chat_ids}
    return [of[c] for c in chat_ids]


def simulate(conversations, truth, *, days: int = 10, first_share: float = 0.5, seed: int = 0,
             min_conversations: int = 10, assign_quantile: float = 0.95) -> dict:
    """Incremental days vs a full rebuild. ``truth``: a label per conversation (same order)."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    from kura_dagster.checkpoints.columnar import SummaryColumns
    from kura_dagster.pipeline.models.local import LocalClusterNamingModel, LocalEmbeddingModel, LocalSummaryModel
    from kura_dagster.pipeline.settings import PipelineSettings
    from kura_dagster.pipeline.summarise import summarise_conversations
    from kura_dagster.pipeline.taxonomy import (TaxonomyOptions, TaxonomyReport, base_state, render_base,
                                                settings_key, update_base_clusters)
    from kura_dagster.pipeline.thresholds import Thresholds, base_clusters_with_thresholds

    settings, thresholds = PipelineSettings(seed=seed), Thresholds(min_conversations=min_conversations)
    options = TaxonomyOptions(assign_quantile=assign_quantile)
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    convs = [conversations[i] for i in order]
    label_of = {conversations[i].chat_id: truth[i] for i in order}
    first = int(len(convs) * first_share)
    cuts = [first + round((len(convs) - first) * d / days) for d in range(days + 1)]
    embedder = LocalEmbeddingModel(dims=settings.embedding_dims, seed=seed)  # fitted on day 0, then fixed
    namer = LocalClusterNamingModel(seed=seed)
    summaries = summarise_conversations(convs[:first], LocalSummaryModel(), embedder)
    columns = SummaryColumns.coerce(summaries)

    def full(cols):
        return base_clusters_with_thresholds(cols, namer, settings, thresholds)

    key = settings_key(settings, thresholds, columns.dim)
    t0 = time.perf_counter()
    state = base_state(columns, full(columns), key, options, 1)
    kept_ids = {c.id for c in render_base(state)}
    rebuilds, assigned, new_clusters, renamed, incremental_s = 0, 0, 0, 0, 0.0
    for d in range(days):
        summaries += summarise_conversations(convs[cuts[d]:cuts[d + 1]], LocalSummaryModel(), embedder)
        columns = SummaryColumns.coerce(summaries)
        report = TaxonomyReport()
        t = time.perf_counter()
        clusters, new_state = update_base_clusters(columns, state, namer, settings, thresholds, key, options,
                                                   new_clusters=full, report=report)
        if new_state is None:  # drift: a full build
            rebuilds += 1
            new_state = base_state(columns, full(columns), key, options, int(state.params["generation"]) + 1)
            clusters = render_base(new_state)
        incremental_s += time.perf_counter() - t
        state = new_state
        assigned += report.assigned_to_existing
        new_clusters += len(report.new_cluster_ids)
        renamed += len(report.renamed_cluster_ids)
    build_s = time.perf_counter() - t0 - incremental_s
    chat_ids = [s.chat_id for s in summaries]
    inc = _labels(clusters, chat_ids)
    rebuilt = _labels(full(columns), chat_ids)
    # the noise floor: two full rebuilds that differ only in the k-means seed
    other_seed = _labels(base_clusters_with_thresholds(columns, namer, PipelineSettings(seed=seed + 1), thresholds),
                         chat_ids)
    true = [label_of[c] for c in chat_ids]
    new_total = len(convs) - first
    return {"n": len(convs), "first": first, "days": days, "k_incremental": len(clusters),
            "k_rebuild": len(set(rebuilt)), "ami_vs_rebuild": adjusted_mutual_info_score(rebuilt, inc),
            "ami_rebuild_vs_reseeded": adjusted_mutual_info_score(rebuilt, other_seed),
            "nmi_incremental": normalized_mutual_info_score(true, inc),
            "nmi_rebuild": normalized_mutual_info_score(true, rebuilt),
            "assigned_share": assigned / max(new_total, 1), "new_clusters": new_clusters, "renamed": renamed,
            "rebuilds": rebuilds, "day0_ids_kept": len(kept_ids & {c.id for c in clusters}) / max(len(kept_ids), 1),
            "incremental_seconds": incremental_s, "build_seconds": build_s}


def corpora(names):
    from quality import load_corpora

    out = {}
    for name, (convs, labelings) in load_corpora(names).items():
        label = "question_id" if "question_id" in labelings else "intent"
        out[name] = (convs, labelings[label], label)
    return out


def markdown(rows: list[dict], argv) -> str:
    lines = ["# A taxonomy that stays put: incremental days vs a full rebuild", "",
             f"`python benchmarks/taxonomy_days.py {' '.join(argv)}` (offline models; two thirds of the corpus on day "
             "0 unless --first-share says otherwise, the rest over the days; the machine was shared with other sessions: seconds are indicative).", "",
             "| corpus | labels | min_conversations | n | days | k incremental / rebuild | AMI incremental vs rebuild "
             "| AMI rebuild vs rebuild (other seed) | NMI vs labels "
             "incremental / rebuild | new conversations assigned | new clusters | renamed | drift rebuilds | "
             "day-0 ids kept | seconds (all days) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['label']} | {r['min_conversations']} | {r['n']:,} | {r['days']} | "
                     f"{r['k_incremental']} / {r['k_rebuild']} | **{r['ami_vs_rebuild']:.3f}** | "
                     f"{r['ami_rebuild_vs_reseeded']:.3f} | {r['nmi_incremental']:.3f} / "
                     f"{r['nmi_rebuild']:.3f} | {r['assigned_share']:.1%} | {r['new_clusters']} | {r['renamed']} | "
                     f"{r['rebuilds']} | {r['day0_ids_kept']:.1%} | {r['incremental_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--first-share", type=float, default=2 / 3,
                        help="share of the corpus on day 0 (2/3: +5%% a day for ten days, as 1,000 then 50 a day)")
    parser.add_argument("--corpora", nargs="+", default=["mixed", "mtbench"])
    parser.add_argument("--min-conversations", type=int, nargs="+", default=[10, 1],
                        help="the privacy threshold (10: the default; 1: Kura's own clusters, no threshold)")
    parser.add_argument("--out", default=str(HERE / "results" / "taxonomy.md"))
    args = parser.parse_args(argv)
    rows = []
    for (name, (convs, truth, label)), mc in [(item, mc) for item in corpora(args.corpora).items()
                                              for mc in args.min_conversations]:
        r = simulate(convs, truth, days=args.days, min_conversations=mc, first_share=args.first_share)
        rows.append({"corpus": name, "label": label, "min_conversations": mc, **r})
        print(f"{name}: AMI vs rebuild {r['ami_vs_rebuild']:.3f}, NMI {r['nmi_incremental']:.3f} "
              f"(rebuild {r['nmi_rebuild']:.3f}), assigned {r['assigned_share']:.1%}, rebuilds {r['rebuilds']}")
    text = markdown(rows, argv if argv is not None else sys.argv[1:])
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
