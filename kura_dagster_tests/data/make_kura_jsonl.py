"""Write ``kura054/jsonl/*.jsonl`` with Kura 0.5.4's own ``JSONLCheckpointManager`` (run with a Kura venv's python).

These are the bytes Kura writes, kept in the repository so that byte-identity of our JSONL with Kura's is tested on
a fresh clone (``test_types.py``, ``test_jsonl_checkpoints.py``). A throwaway virtual environment is enough:

    python3 -m venv /tmp/kura054-venv && /tmp/kura054-venv/bin/pip install kura==0.5.4
    /tmp/kura054-venv/bin/python kura_dagster_tests/data/make_kura_jsonl.py

Rows: the 12 source rows of each stage beside this script (``kura054/<name>.source.jsonl``, our own demo data), and
for conversations and summaries a few hand-made rows Kura builds here itself: timestamps in +05:30, -08:00, UTC and
naive, text that JSON must escape (quotes, backslashes, newlines, control characters, non-ASCII, emoji), metadata of
every type Kura allows, and embeddings whose float repr is not trivial.
"""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kura.checkpoints import JSONLCheckpointManager
from kura.types import Cluster, Conversation, ConversationSummary, Message
from kura.types.dimensionality import ProjectedCluster

HERE = Path(__file__).resolve().parent / "kura054"
OUT = HERE / "jsonl"
IST, PST = timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))


def edge_conversations() -> list[Conversation]:
    ist = datetime(2024, 3, 11, 5, 0, 0, 250000, tzinfo=IST)
    pst = datetime(2024, 3, 10, 23, 59, 59, tzinfo=PST)
    naive = datetime(2024, 3, 10, 23, 30, 0, 123456)
    return [
        Conversation(chat_id="edge-ist", created_at=ist, metadata={"lang": "hi", "turns": 2, "ok": True},
                     messages=[Message(created_at=ist, role="user", content='Say "namaste" \\ in Hindi: नमस्ते? ✓'),
                               Message(created_at=ist + timedelta(seconds=3), role="assistant",
                                       content="नमस्ते 🙏\nLine two\twith a tab and a bell \u0007.")]),
        Conversation(chat_id="edge-pst", created_at=pst,
                     metadata={"score": 0.1, "tiny": 1e-07, "big": 12345678901234567, "tags": ["a", "é"],
                               "ids": [1, 2, 3], "weights": [0.5, 1.0 / 3.0]},
                     messages=[Message(created_at=pst, role="user", content="Café crème — 3€ </script>")]),
        Conversation(chat_id="edge-naive", created_at=naive, metadata={},
                     messages=[Message(created_at=naive, role="user", content="naive time, empty metadata"),
                               Message(created_at=naive, role="assistant", content="")]),
    ]


def edge_summaries() -> list[ConversationSummary]:
    return [
        ConversationSummary(chat_id="edge-ist", summary="Greets in Hindi: नमस्ते ✓", request="say \"namaste\"",
                            topic=None, languages=["hindi", "english"], task="translate", concerning_score=1,
                            user_frustration=2, assistant_errors=[], metadata={"conversation_turns": 2, "ok": True},
                            embedding=[0.1, -0.0, 1e-07, 1.0 / 3.0, -123456.789, 2.5e-310, 1e22, 3.0]),
        ConversationSummary(chat_id="edge-pst", summary="Prices a café crème.", metadata={"score": 0.1},
                            embedding=None),
    ]


OUT.mkdir(parents=True, exist_ok=True)
jl = JSONLCheckpointManager(str(OUT))
for name, cls in [("conversations", Conversation), ("summaries", ConversationSummary), ("clusters", Cluster),
                  ("meta_clusters", Cluster), ("dimensionality", ProjectedCluster)]:
    items = [cls.model_validate_json(line) for line in (HERE / f"{name}.source.jsonl").read_text().splitlines()]
    items += {"conversations": edge_conversations, "summaries": edge_summaries}.get(name, list)()
    jl.save_checkpoint(name, items)  # Kura adds the .jsonl
print(json.dumps(sorted(p.name for p in OUT.iterdir()), indent=1))
