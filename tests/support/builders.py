"""Rows as the gateway writes them, for tests that fill a store directly."""

from __future__ import annotations

import json
import time
from typing import Any

from feedback_store import NewEscalation, NewExchange


def exchange_row(reply_id: str, **values: Any) -> NewExchange:
    row: dict[str, Any] = {
        "id": reply_id,
        "created_at": time.time(),
        "model": "json",
        "request_json": json.dumps({"messages": [{"role": "user", "content": "q?"}]}),
        "question": "q?",
        "reply_text": "a.",
        "confidence": 0.2,
        "decision": "escalate",
        "features_json": "{}",
        "reasons_json": json.dumps(["confidence 0.20 < 0.3"]),
        "meta_json": "{}",
    }
    row.update(values)
    return NewExchange(**row)


def escalation_row(reply_id: str, **values: Any) -> NewEscalation:
    now = time.time()
    row = {"reply_id": reply_id, "state": "pending", "created_at": now, "next_attempt_at": now}
    row.update(values)
    return NewEscalation(**row)
