"""A small store with known contents, written through the store's own API, for the
report, export and metrics tests. The figures each test expects are worked out by
hand in the comments below."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, insert

from feedback_store import NewEscalation, NewExchange, Store
from feedback_store.tables import feedback_t

T0 = 1_700_000_000.0
SYSTEM = {"role": "system", "content": "Answer briefly."}

#  id   offset model decision  conf  question                               meta
EXCHANGES = [
    ("e1", 0, "a", "deliver", 0.90, "how do I reset my password", {"locale": "en"}),
    ("e2", 60, "a", "ask", 0.55, "password reset email never arrived", {"locale": "en"}),
    ("e3", 120, "b", "escalate", 0.20, "my password reset link is broken", {"locale": "fr"}),
    ("e4", 180, "b", "escalate", 0.25, "refund for a cancelled order", {"locale": "fr"}),
    ("e5", 240, "a", "hold", 0.10, "where is my refund", {"locale": "de"}),
    ("e6", 300, "a", "deliver", 0.80, "what are your opening hours", {"locale": "en"}),
    ("e7", 360, "b", "escalate", 0.28, "refund never arrived", {}),
    ("e8", 420, "a", "deliver", 0.70, "hello", {}),
]
# Escalation rows committed with their exchange: (state, hold)
ESCALATED = {
    "e3": ("posted", False),
    "e4": ("posted", False),
    "e5": ("posted", True),
    "e7": ("failed", False),
}
CORRECTION = "Refunds take five working days."


def exchange_row(
    reply_id: str,
    offset: float,
    model: str,
    decision: str,
    confidence: float,
    question: str,
    meta: dict[str, Any],
    index: int,
) -> NewExchange:
    messages = [SYSTEM, {"role": "user", "content": question}]
    return NewExchange(
        id=reply_id,
        created_at=T0 + offset,
        model=model,
        route="chat",
        end_user=f"u{index}",
        stream=False,
        request_json=json.dumps({"model": model, "messages": messages}),
        question=question,
        reply_text=f"answer to {question}",
        finish_reason="stop",
        status="complete",
        upstream_status=200,
        upstream_ms=100.0 + index,
        total_ms=102.0 + index,
        confidence=confidence,
        decision=decision,
        ask_feedback=decision == "ask",
        outlier=False,
        features_json="{}",
        reasons_json="[]",
        # request_id differs on every exchange: an id, not a segment
        meta_json=json.dumps({**meta, "request_id": f"req-{index}"}),
    )


async def user_vote(store: Store, reply_id: str, rating: str, at: float, **kw: Any) -> None:
    args: dict[str, Any] = {"reason": None, "comment": None, "correction": None}
    args.update(kw)
    await store.vote(
        reply_id=reply_id,
        voter=lambda end_user: f"user:{end_user}",
        rating=rating,
        weight=1.0,
        now=at,
        **args,
    )


async def reviewer_vote(store: Store, reply_id: str, reviewer: str, rating: str, at: float) -> None:
    """A second reviewer's verdict, as a reviewer-sourced vote (several reviewers per item)."""

    def job(conn: Connection) -> None:
        conn.execute(
            insert(feedback_t).values(
                reply_id=reply_id,
                voter=f"reviewer:{reviewer}",
                rating=rating,
                created_at=at,
                updated_at=at,
                changes=0,
            )
        )

    await store.write(job)


async def fill_known_store(store: Store) -> None:
    """Expected figures:

    feedback: up e1 e6, down e2 (incomplete) e3 (incorrect): helpful 0.5
    decisions: deliver 3, ask 1, escalate 3, hold 1
    reviews: 4 escalated (1 hold); e3 rejected by U1 after 300 s, e4 corrected by U2
      after 600 s (median 450, p90 570); e5 waiting; e7 dead letter
    agreement: e3 U1 reject vs U2 down (agree), e4 U2 correct vs U1 up (disagree):
      pairs (0,0), (0,1): observed 0.5, chance 0.5, kappa 0.0
    labels in order: e1 1@.9, e2 0@.55, e3 0@.2, e3 0@.2 (reviewer), e4 0@.25
      (reviewer), e6 1@.8: every helpful one above every unhelpful one, AUC 1.0
    drift: one event at T0 + 200
    """
    for index, (reply_id, offset, model, decision, conf, question, meta) in enumerate(EXCHANGES):
        row = exchange_row(reply_id, offset, model, decision, conf, question, meta, index)
        escalation = None
        if reply_id in ESCALATED:
            state, hold = ESCALATED[reply_id]
            at = T0 + offset
            escalation = NewEscalation(
                reply_id=reply_id,
                state=state,
                hold=hold,
                trigger="policy",
                created_at=at,
                next_attempt_at=at,
            )
        await store.record_exchange(row, escalation)
    await user_vote(store, "e1", "up", T0 + 30)
    await user_vote(store, "e2", "down", T0 + 90, reason="incomplete", comment="no email came")
    await user_vote(store, "e3", "down", T0 + 150, reason="incorrect")
    await store.record_review(
        reply_id="e3",
        state="rejected",
        reviewer="U1",
        reason="incorrect",
        correction=None,
        value=0,
        weight=3.0,
        now=T0 + 120 + 300,
    )
    await store.record_review(
        reply_id="e4",
        state="corrected",
        reviewer="U2",
        reason=None,
        correction=CORRECTION,
        value=0,
        weight=3.0,
        now=T0 + 180 + 600,
    )
    await user_vote(store, "e6", "up", T0 + 330, correction="Open 9 to 5.")
    await reviewer_vote(store, "e3", "U2", "down", T0 + 900)
    await reviewer_vote(store, "e4", "U1", "up", T0 + 950)
    await store.add_event("drift", {"error_before": 0.3, "error_after": 0.6}, at=T0 + 200)


# -- several reviewers, holds ----------------------------------------------------------------

#: a reviewer whose name must be escaped wherever it is shown
ANN = "<i>Ann</i>"
HOLD_CORRECTION = "Refunds take five working days; write to billing."


async def review_vote(
    store: Store,
    reply_id: str,
    reviewer: str,
    state: str,
    at: float,
    reason: str | None = None,
    correction: str | None = None,
) -> None:
    await store.record_review(
        reply_id=reply_id,
        state=state,
        reviewer=reviewer,
        reason=reason,
        correction=correction,
        value=1 if state == "approved" else 0,
        weight=3.0,
        now=at,
        votes_required=2,
    )


async def fill_voted_store(store: Store) -> None:
    """Two votes decide (votes_required = 2). Expected figures:

    h1 (hold): U1 approve, Ann approve -> approved by Ann, released the original
    h2 (hold): U1 reject (incorrect), Ann correct -> corrected by Ann, released the
      correction
    e3 (escalate): U1 approve, Ann reject (tone) -> split, still waiting
    h4 (hold): nobody voted; released the fallback when the hold timed out
    e5: delivered, never reviewed: not in the audit

    U1 and Ann share h1 (1,1), h2 (0,0), e3 (1,0): observed 2/3, chance 4/9, kappa 0.4;
    one disagreement (e3). Each agreed with both decisions they voted on: 1.0.
    """
    rows = [("h1", "hold"), ("h2", "hold"), ("e3", "escalate"), ("h4", "hold"), ("e5", "deliver")]
    for index, (reply_id, decision) in enumerate(rows):
        offset = 60.0 * index
        row = exchange_row(reply_id, offset, "a", decision, 0.1, f"question {reply_id}", {}, index)
        escalation = None
        if decision != "deliver":
            escalation = NewEscalation(
                reply_id=reply_id,
                hold=decision == "hold",
                created_at=T0 + offset,
                next_attempt_at=T0 + offset,
            )
        await store.record_exchange(row, escalation)
    await review_vote(store, "h1", "U1", "approved", T0 + 10)
    await review_vote(store, "h1", ANN, "approved", T0 + 20)
    await store.record_release("h1", released="original", at=T0 + 21, timed_out=False)
    await review_vote(store, "h2", "U1", "rejected", T0 + 70, reason="incorrect")
    await review_vote(store, "h2", ANN, "corrected", T0 + 80, correction=HOLD_CORRECTION)
    await store.record_release("h2", released="correction", at=T0 + 81, timed_out=False)
    await review_vote(store, "e3", "U1", "approved", T0 + 130)
    await review_vote(store, "e3", ANN, "rejected", T0 + 140, reason="tone")
    await store.record_release("h4", released="fallback", at=T0 + 300, timed_out=True)
