"""Reviewer verdicts: the one path every review tool takes (Slack clicks, the review API).

A verdict is committed together with its label (approve is 1, reject and correct are 0,
weighted as a reviewer's) in one store job; the first verdict on a reply wins and later
ones learn who was first. After the commit the learner is woken, and so is the outbox,
which redraws the card in the channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from feedback_store import Store
from middleware.scoring.completion import read_conversation
from middleware.settings import REASONS

log = logging.getLogger("hitl.review")

Verdict = Literal["approve", "reject", "correct"]
VERDICTS: tuple[Verdict, ...] = ("approve", "reject", "correct")
STATE_OF: dict[str, str] = {"approve": "approved", "reject": "rejected", "correct": "corrected"}
LABEL_OF: dict[str, int] = {"approve": 1, "reject": 0, "correct": 0}
DECIDED = frozenset(STATE_OF.values())
MAX_CORRECTION = 32_000


def check_verdict(
    decision: str, reason: str | None, correction: str | None
) -> tuple[str | None, str | None]:
    """The (reason, correction) to store for a verdict, or ValueError saying what is wrong."""
    if decision not in VERDICTS:
        raise ValueError("'decision' must be one of approve, reject, correct")
    if reason is not None and reason not in REASONS:
        raise ValueError("'reason' must be one of " + ", ".join(REASONS))
    correction = correction.strip() if correction is not None else None
    if decision == "approve":
        return reason, None
    if decision == "reject":
        if reason is None:
            raise ValueError("'reason' is required to reject: one of " + ", ".join(REASONS))
        return reason, None
    if not correction:
        raise ValueError("'correction' (the corrected answer) is required to correct")
    if len(correction) > MAX_CORRECTION:
        raise ValueError(f"'correction' is longer than {MAX_CORRECTION} characters")
    return reason, correction


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    reply_id: str
    #: this call's verdict was committed; False: ``decided_by`` was first
    applied: bool
    state: str
    decided_by: str | None
    decided_at: float | None
    reason: str | None
    correction: str | None
    label_id: int | None = None
    channel: str | None = None
    message_ts: str | None = None
    #: when the escalation was opened (time to decision = decided_at - created_at)
    created_at: float | None = None

    @property
    def message(self) -> str:
        if self.applied:
            return f"{self.state} by {self.decided_by}"
        return f"already decided by {self.decided_by} ({self.state})"


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """What a reviewer needs to judge one reply: the values a review card is drawn from."""

    reply_id: str
    question: str
    answer: str
    confidence: float
    #: replies are reviewed below this confidence
    threshold: float
    history: tuple[tuple[str, str], ...] = ()
    #: why it was flagged, most telling first
    reasons: tuple[str, ...] = ()
    trigger: str = "policy"
    model: str = ""
    hold: bool = False
    #: the end user's thumbs-down reason and comment, when there is one
    complaint: str | None = None
    created_at: float = 0.0
    state: str = "pending"
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    correction: str | None = None

    @property
    def decided(self) -> bool:
        return self.state in DECIDED


def _loads(text: str | None, default: Any) -> Any:
    try:
        return orjson.loads(text) if text else default
    except orjson.JSONDecodeError:
        return default


def build_item(
    escalation: Mapping[str, Any],
    exchange: Mapping[str, Any],
    feedback: Mapping[str, Any] | None,
    *,
    threshold: float,
) -> ReviewItem:
    """A review item from the stored rows (pure)."""
    request = _loads(exchange.get("request_json"), {})
    messages = request.get("messages") if isinstance(request, dict) else None
    history: tuple[tuple[str, str], ...] = ()
    if isinstance(messages, list):
        history = read_conversation(messages, history_turns=2).history
    reasons = [str(r) for r in _loads(exchange.get("reasons_json"), []) if r]
    complaint = None
    if feedback is not None and feedback.get("rating") == "down":
        parts = [p for p in (feedback.get("reason"), feedback.get("comment")) if p]
        complaint = ": ".join(str(p) for p in parts) or "thumbs down"
        reasons.append("the user gave it a thumbs-down")
    return ReviewItem(
        reply_id=str(exchange["id"]),
        question=str(exchange.get("question") or ""),
        answer=str(exchange.get("reply_text") or ""),
        confidence=float(exchange.get("confidence") or 0.0),
        threshold=threshold,
        history=history,
        reasons=tuple(reasons),
        trigger=str(escalation.get("trigger") or "policy"),
        model=str(exchange.get("model") or ""),
        hold=bool(escalation.get("hold")),
        complaint=complaint,
        created_at=float(escalation.get("created_at") or exchange.get("created_at") or 0.0),
        state=str(escalation.get("state") or "pending"),
        decided_by=escalation.get("decided_by"),
        decided_at=escalation.get("decided_at"),
        decision_reason=escalation.get("decision_reason"),
        correction=escalation.get("correction"),
    )


@dataclass
class ReviewService:
    """Commits verdicts; tells listeners (learner, outbox, holds) once they are durable."""

    store: Store
    reviewer_weight: float
    threshold: float
    clock: Callable[[], float] = time.time
    #: called (no arguments, must not block) after a verdict is committed: wakes the outbox
    on_decided: Callable[[], None] | None = None
    _listeners: list[Callable[[ReviewOutcome], None]] = field(default_factory=list)

    def on_decision(self, listener: Callable[[ReviewOutcome], None]) -> None:
        """Call ``listener(outcome)`` after each committed verdict (held replies wait on it)."""
        self._listeners.append(listener)

    async def decide(
        self,
        reply_id: str,
        decision: str,
        reviewer: str,
        reason: str | None = None,
        correction: str | None = None,
    ) -> ReviewOutcome | None:
        """Commit a verdict (first one wins). None when the reply is unknown.

        Raises ValueError for an invalid verdict and ``StoreError`` when it could not be
        committed: then nothing changed.
        """
        reason, correction = check_verdict(decision, reason, correction)
        result = await self.store.record_review(
            reply_id=reply_id,
            state=STATE_OF[decision],
            reviewer=reviewer,
            reason=reason,
            correction=correction,
            value=LABEL_OF[decision],
            weight=self.reviewer_weight,
            now=self.clock(),
        )
        if result is None:
            return None
        row = result.escalation
        outcome = ReviewOutcome(
            reply_id=reply_id,
            applied=result.applied,
            state=str(row["state"]),
            decided_by=row["decided_by"],
            decided_at=row["decided_at"],
            reason=row["decision_reason"],
            correction=row["correction"],
            label_id=result.label_id,
            channel=row["channel"],
            message_ts=row["message_ts"],
            created_at=row["created_at"],
        )
        if result.applied:
            log.info("review %s: %s by %s", reply_id, outcome.state, reviewer)
            self.store.notify_label()
            if self.on_decided is not None:
                self.on_decided()
            for listener in self._listeners:
                listener(outcome)
        return outcome

    async def item(self, escalation: Mapping[str, Any]) -> ReviewItem | None:
        """The review item for an escalation row, or None if its exchange is gone."""
        reply_id = str(escalation["reply_id"])
        exchange = await self.store.get_exchange(reply_id)
        if exchange is None:
            return None
        feedback = await self.store.feedback_for(reply_id)
        return build_item(escalation, exchange, feedback, threshold=self.threshold)

    async def item_for(self, reply_id: str) -> ReviewItem | None:
        """The review item for a reply's newest escalation (a bare one when it has none)."""
        escalation = await self.store.escalation_for(reply_id)
        return await self.item(escalation or {"reply_id": reply_id, "state": "none"})
