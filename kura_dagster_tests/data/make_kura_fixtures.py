"""Write small checkpoints with Kura 0.5.4's own Parquet and HF managers (run with the Kura venv's python).

The source rows are our own: the demo pipeline's JSONL checkpoints (no third-party text is shipped):

    KURA_CHECKPOINT_DIR=/tmp/kura-src dagster asset materialize -m kura_dagster.definitions --select '*'
    benchmarks/.kura-venv/bin/python kura_dagster_tests/data/make_kura_fixtures.py /tmp/kura-src

Reads the first rows of those checkpoints and writes ``kura054/parquet/*.parquet`` and ``kura054/hf/*/``,
the source rows (``<name>.source.jsonl``) and what Kura loads back from each file (``<name>.kura_loaded.<fmt>.jsonl``).
Four summaries get an 8-d embedding so that the embedding columns hold real vectors.
"""

import json
import shutil
import sys
from pathlib import Path

from kura.checkpoints import HFDatasetCheckpointManager, ParquetCheckpointManager
from kura.types import Cluster, Conversation, ConversationSummary
from kura.types.dimensionality import ProjectedCluster

if len(sys.argv) != 2:
    sys.exit(__doc__)
SRC = Path(sys.argv[1])
OUT = Path(__file__).resolve().parent / "kura054"
N = 12

# What this script writes (jsonl/ and README.md are make_kura_jsonl.py's and the README's: kept; run that script after
# this one, since it reads the *.source.jsonl files written here)
for old in ("parquet", "hf"):
    shutil.rmtree(OUT / old, ignore_errors=True)
for old in OUT.glob("*.jsonl") if OUT.exists() else ():
    old.unlink()
pq, hf = ParquetCheckpointManager(str(OUT / "parquet")), HFDatasetCheckpointManager(str(OUT / "hf"))
for name, cls in [("conversations", Conversation), ("summaries", ConversationSummary), ("clusters", Cluster),
                  ("meta_clusters", Cluster), ("dimensionality", ProjectedCluster)]:
    lines = (SRC / f"{name}.jsonl").read_text().splitlines()[:N]
    items = [cls.model_validate_json(line) for line in lines]
    if cls is ConversationSummary:
        for i, s in enumerate(items):
            # Small embeddings on four rows (none elsewhere), and the score/error shapes Kura's LLM fills in,
            # so that Kura's lossy encodings (0 for None, [] for None, JSON strings) all appear in the files.
            s.embedding = [round(0.125 * (i + 1) * (j - 3.5), 6) for j in range(8)] if i < 4 else None
            if 4 <= i < 8:
                s.concerning_score, s.user_frustration = 1 + i % 5, 1 + (i + 2) % 5
                s.assistant_errors = [] if i % 2 else ["misread the question"]
    pq.save_checkpoint(name, items)
    hf.save_checkpoint(name, items)
    (OUT / f"{name}.source.jsonl").write_text("\n".join(m.model_dump_json() for m in items) + "\n")
    # What Kura itself loads back from each of its files (its decoding is lossy; ours must match it).
    for fmt, mgr in (("parquet", pq), ("hf", hf)):
        loaded = mgr.load_checkpoint(name, cls)
        (OUT / f"{name}.kura_loaded.{fmt}.jsonl").write_text("\n".join(m.model_dump_json() for m in loaded) + "\n")
print(json.dumps(sorted(str(p.relative_to(OUT)) for p in OUT.rglob("*") if p.is_file()), indent=1))
