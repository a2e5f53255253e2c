"""The project's own asset: support chats as rows, in the project's own column names."""

import dagster as dg


@dg.asset(group_name="warehouse", io_manager_key="warehouse_io_manager")
def raw_chats() -> list[dict]:
    topics = ["reset my password", "export my invoices as CSV", "cancel my subscription", "change the billing email"]
    rows = []
    for i in range(24):
        topic = topics[i % len(topics)]
        rows.append({
            "id": f"support-{i}",
            "ts": f"2026-11-{1 + i % 20:02d}T09:{i % 60:02d}:00",
            "turns": [
                {"role": "user", "content": f"Hi, how do I {topic}? (ticket {i})", "created_at": "2026-11-01T09:00:00"},
                {"role": "assistant", "content": f"To {topic}, open Settings and follow the steps.", "created_at": "2026-11-01T09:00:05"},
            ],
            "plan": ["free", "pro"][i % 2],
        })
    return rows


defs = dg.Definitions(
    assets=[raw_chats],
    # The project's own IO managers, which the Kura pipelines leave alone (they use <prefix>_io_manager).
    resources={"io_manager": dg.InMemoryIOManager(), "warehouse_io_manager": dg.InMemoryIOManager()},
)
