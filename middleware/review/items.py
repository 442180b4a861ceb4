"""Review items: what a reviewer sees of one reply, built from the stored rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import orjson

from feedback_store import EscalationRow, ExchangeRow, FeedbackRow, ReviewVoteRow, Store
from middleware.ports import ReviewItem, ReviewVote
from middleware.scoring.completion import read_conversation


def _loads(text: str | None, default: Any) -> Any:
    try:
        return orjson.loads(text) if text else default
    except orjson.JSONDecodeError:
        return default


def build_item(
    escalation: EscalationRow | None,
    exchange: ExchangeRow,
    feedback: FeedbackRow | None,
    *,
    threshold: float,
) -> ReviewItem:
    """A review item from the stored rows (pure). No escalation: a bare, unreviewed item."""
    request = _loads(exchange.request_json, {})
    messages = request.get("messages") if isinstance(request, dict) else None
    history: tuple[tuple[str, str], ...] = ()
    if isinstance(messages, list):
        history = read_conversation(messages, history_turns=2).history
    reasons = [str(r) for r in _loads(exchange.reasons_json, []) if r]
    complaint = None
    if feedback is not None and feedback.rating == "down":
        parts = [p for p in (feedback.reason, feedback.comment) if p]
        complaint = ": ".join(str(p) for p in parts) or "thumbs down"
        reasons.append("the user gave it a thumbs-down")
    bare = ReviewItem(
        reply_id=exchange.id,
        question=exchange.question or "",
        answer=exchange.reply_text or "",
        confidence=float(exchange.confidence or 0.0),
        threshold=threshold,
        history=history,
        reasons=tuple(reasons),
        model=exchange.model or "",
        complaint=complaint,
        created_at=exchange.created_at or 0.0,
        state="none",
    )
    if escalation is None:
        return bare
    return replace(
        bare,
        trigger=escalation.trigger or "policy",
        hold=bool(escalation.hold),
        created_at=float(escalation.created_at or exchange.created_at or 0.0),
        state=escalation.state or "pending",
        decided_by=escalation.decided_by,
        decided_at=escalation.decided_at,
        decision_reason=escalation.decision_reason,
        correction=escalation.correction,
    )


def model_input(exchange: ExchangeRow) -> dict[str, Any]:
    """The features a reply was scored with, its texts put back (as the learner does)."""
    x = _loads(exchange.features_json, {})
    if not isinstance(x, dict):
        x = {}
    x.setdefault("reply", exchange.reply_text)
    x.setdefault("question", exchange.question)
    return x


def votes_of(rows: Sequence[ReviewVoteRow]) -> tuple[ReviewVote, ...]:
    return tuple(ReviewVote(r.reviewer, r.verdict, r.reason, r.created_at) for r in rows)


class ReviewItems:
    """Loads review items from the store (the outbox and the channels draw cards from them)."""

    def __init__(self, *, store: Store, threshold: float, votes_required: int = 1) -> None:
        self.store = store
        self.threshold = threshold
        self.votes_required = votes_required

    async def for_escalation(self, escalation: EscalationRow) -> ReviewItem | None:
        """The item for an escalation row, or None if its exchange is gone."""
        return await self._load(escalation.reply_id, escalation)

    async def for_reply(self, reply_id: str) -> ReviewItem | None:
        """The item for a reply's newest escalation (a bare one when it has none)."""
        escalation = await self.store.escalation_for(reply_id)
        return await self._load(reply_id, escalation)

    async def _load(self, reply_id: str, escalation: EscalationRow | None) -> ReviewItem | None:
        exchange = await self.store.get_exchange(reply_id)
        if exchange is None:
            return None
        feedback = await self.store.feedback_for(reply_id)
        item = build_item(escalation, exchange, feedback, threshold=self.threshold)
        if escalation is None:
            return item
        votes = await self.store.review_votes(reply_id)
        return replace(
            item,
            votes=votes_of(votes),
            votes_required=self.votes_required,
        )
