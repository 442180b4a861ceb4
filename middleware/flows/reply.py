"""Turning a finished exchange into store rows, and committing them before the reply ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from feedback_store import Store, StoreError
from middleware.errors import StoreUnavailable
from middleware.scoring.completion import ReplySummary
from middleware.scoring.scorer import Assessment


class Recorder:
    def __init__(
        self,
        store: Store,
        *,
        on_escalation: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.on_escalation = on_escalation
        self.clock = clock

    async def __call__(
        self,
        *,
        reply_id: str,
        payload: dict[str, Any],
        question: str,
        summary: ReplySummary,
        assessment: Assessment,
        end_user: str | None,
        stream: bool,
        status: str,
        upstream_status: int,
        upstream_ms: float,
        total_ms: float,
    ) -> None:
        now = self.clock()
        meta = payload.get("metadata")
        row = {
            "id": reply_id,
            "created_at": now,
            "model": str(payload.get("model") or "")[:200],
            "route": "chat",
            "end_user": end_user,
            "stream": stream,
            "request_json": orjson.dumps(payload).decode(),
            "question": question,
            "reply_text": summary.text,
            "finish_reason": (summary.finish_reason or None) and str(summary.finish_reason)[:40],
            "status": status,
            "upstream_status": upstream_status,
            "upstream_ms": upstream_ms,
            "total_ms": total_ms,
            "confidence": assessment.confidence,
            "decision": assessment.decision.kind,
            "ask_feedback": assessment.decision.ask_feedback,
            "outlier": assessment.outlier,
            "features_json": orjson.dumps(assessment.features).decode(),
            "reasons_json": orjson.dumps(assessment.reasons).decode(),
            "meta_json": orjson.dumps(meta if isinstance(meta, dict) else {}).decode(),
        }
        escalation = None
        if assessment.decision.reviewed:
            escalation = {
                "reply_id": reply_id,
                "state": "pending",
                "hold": assessment.decision.kind == "hold",
                "trigger": "outlier"
                if assessment.outlier and assessment.confidence >= 0.5
                else "policy",
                "created_at": now,
                "next_attempt_at": now,
            }
        try:
            await self.store.record_exchange(row, escalation)
        except StoreError as exc:
            raise StoreUnavailable(
                f"the exchange could not be stored ({exc}); the reply was not delivered"
            ) from exc
        if escalation is not None and self.on_escalation is not None:
            self.on_escalation()
