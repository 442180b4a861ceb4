"""The report's own rows, and the one read that loads them.

``load_rows(store, since=, until=)`` is the only I/O of the report. Everything else is
a pure function of these plain rows (the columns a report needs, parsed: ``meta`` is a
dict, not JSON), so a test can hand in a few rows it wrote itself.

A period selects exchanges by their creation time; votes, labels and reviews follow
their exchange (a vote cast on Tuesday for Monday's reply counts for Monday), and
events (drift, promotions) are selected by their own time, with the learner's mode
running when the period began.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, or_, select

from feedback_store.tables import (
    escalation_t,
    event_t,
    exchange_t,
    feedback_t,
    kv_t,
    label_t,
    review_vote_t,
)

T = TypeVar("T")

#: where the deeper look saves its rolling figures beside the live model's (JSON)
DEEP_FIGURES_KEY = "deep_figures"


class Reader(Protocol):
    """What the report reads through: ``Store.read``."""

    async def read(self, fn: Callable[[Connection], T]) -> T: ...


@dataclass(frozen=True, slots=True)
class ExchangeRow:
    id: str
    created_at: float
    model: str = ""
    route: str = "chat"
    decision: str = "deliver"
    confidence: float = 0.5
    question: str = ""
    status: str = "complete"
    upstream_ms: float = 0.0
    total_ms: float = 0.0
    outlier: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VoteRow:
    """A current vote (last vote wins). Voters named ``reviewer:...`` are reviewers."""

    reply_id: str
    rating: str  # up | down
    voter: str = "user"
    reason: str | None = None
    comment: str | None = None
    correction: str | None = None
    updated_at: float = 0.0

    @property
    def by_reviewer(self) -> bool:
        return self.voter.startswith("reviewer")


@dataclass(frozen=True, slots=True)
class LabelPoint:
    """A learning event with the confidence predicted at reply time (before learning it)."""

    id: int
    reply_id: str
    value: int
    confidence: float
    created_at: float
    source: str = "user"


@dataclass(frozen=True, slots=True)
class ReviewRow:
    id: int
    reply_id: str
    state: str
    created_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    reason: str | None = None
    correction: str | None = None
    hold: bool = False
    trigger: str = "policy"


@dataclass(frozen=True, slots=True)
class BallotRow:
    """One reviewer's vote on one escalation (``review_vote``)."""

    escalation_id: int
    reply_id: str
    reviewer: str
    verdict: str  # approve | reject | correct
    at: float

    @property
    def value(self) -> int:
        """1 helpful (approve), 0 not (reject, correct)."""
        return 1 if self.verdict == "approve" else 0


@dataclass(frozen=True, slots=True)
class EventRow:
    created_at: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ReportRows:
    exchanges: list[ExchangeRow] = field(default_factory=list)
    #: the deeper look's rolling figures beside the live model's (``DEEP_FIGURES_KEY``)
    deep: dict[str, Any] | None = None
    votes: list[VoteRow] = field(default_factory=list)
    labels: list[LabelPoint] = field(default_factory=list)
    reviews: list[ReviewRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    ballots: list[BallotRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReviewerVote:
    reply_id: str
    reviewer: str
    value: int  # 1 helpful (approve), 0 not (reject, correct)
    at: float


# -- loading (the only I/O) --------------------------------------------------------


def _json_object(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _queries(since: float | None, until: float | None) -> list[Any]:
    period = []
    if since is not None:
        period.append(exchange_t.c.created_at >= since)
    if until is not None:
        period.append(exchange_t.c.created_at < until)
    in_period = select(exchange_t.c.id).where(*period)
    ex, fb, lb, es, ev = exchange_t.c, feedback_t.c, label_t.c, escalation_t.c, event_t.c
    exchanges = (
        select(
            ex.id,
            ex.created_at,
            ex.model,
            ex.route,
            ex.decision,
            ex.confidence,
            ex.question,
            ex.status,
            ex.upstream_ms,
            ex.total_ms,
            ex.outlier,
            ex.meta_json,
        )
        .where(*period)
        .order_by(ex.created_at, ex.id)
    )
    votes = select(
        fb.reply_id, fb.rating, fb.voter, fb.reason, fb.comment, fb.correction, fb.updated_at
    ).order_by(fb.id)
    labels = (
        select(lb.id, lb.reply_id, lb.value, ex.confidence, lb.created_at, lb.source)
        .join(exchange_t, ex.id == lb.reply_id)
        .where(*period)
        .order_by(lb.id)
    )
    reviews = select(
        es.id,
        es.reply_id,
        es.state,
        es.created_at,
        es.decided_by,
        es.decided_at,
        es.decision_reason,
        es.correction,
        es.hold,
        es.trigger,
    ).order_by(es.id)
    rv = review_vote_t.c
    ballots = select(
        rv.escalation_id, rv.reply_id, rv.reviewer, rv.verdict, rv.created_at
    ).order_by(rv.created_at, rv.id)
    if period:
        votes = votes.where(fb.reply_id.in_(in_period))
        reviews = reviews.where(es.reply_id.in_(in_period))
        ballots = ballots.where(rv.reply_id.in_(in_period))
    events = select(ev.created_at, ev.kind, ev.data_json).order_by(ev.created_at)
    if since is not None:
        # The learner's mode from before the period too: the one running when it began.
        events = events.where(or_(ev.created_at >= since, ev.kind == "learner_mode"))
    if until is not None:
        events = events.where(ev.created_at < until)
    return [exchanges, votes, labels, reviews, events, ballots]


def _read_rows(conn: Connection, queries: list[Any]) -> ReportRows:
    # One connection, one transaction: every table seen at the same moment.
    exchanges, votes, labels, reviews, events, ballots = (conn.execute(q).all() for q in queries)
    deep = conn.execute(select(kv_t.c.value).where(kv_t.c.key == DEEP_FIGURES_KEY)).scalar()
    return ReportRows(
        deep=_json_object(deep) or None,
        exchanges=[
            ExchangeRow(
                id=r.id,
                created_at=float(r.created_at),
                model=r.model or "",
                route=r.route or "",
                decision=r.decision,
                confidence=float(r.confidence),
                question=r.question or "",
                status=r.status,
                upstream_ms=float(r.upstream_ms or 0.0),
                total_ms=float(r.total_ms or 0.0),
                outlier=bool(r.outlier),
                meta=_json_object(r.meta_json),
            )
            for r in exchanges
        ],
        votes=[
            VoteRow(
                reply_id=r.reply_id,
                rating=r.rating,
                voter=r.voter,
                reason=r.reason,
                comment=r.comment,
                correction=r.correction,
                updated_at=float(r.updated_at),
            )
            for r in votes
        ],
        labels=[
            LabelPoint(
                id=int(r.id),
                reply_id=r.reply_id,
                value=int(r.value),
                confidence=float(r.confidence),
                created_at=float(r.created_at),
                source=r.source,
            )
            for r in labels
        ],
        reviews=[
            ReviewRow(
                id=int(r.id),
                reply_id=r.reply_id,
                state=r.state,
                created_at=float(r.created_at),
                decided_by=r.decided_by,
                decided_at=None if r.decided_at is None else float(r.decided_at),
                reason=r.decision_reason,
                correction=r.correction,
                hold=bool(r.hold),
                trigger=r.trigger,
            )
            for r in reviews
        ],
        events=[
            EventRow(created_at=float(r.created_at), kind=r.kind, data=_json_object(r.data_json))
            for r in events
        ],
        ballots=[
            BallotRow(
                escalation_id=int(r.escalation_id),
                reply_id=r.reply_id,
                reviewer=r.reviewer,
                verdict=r.verdict,
                at=float(r.created_at),
            )
            for r in ballots
        ],
    )


async def load_rows(
    store: Reader, *, since: float | None = None, until: float | None = None
) -> ReportRows:
    """Read what the report needs for exchanges created in ``[since, until)``."""
    queries = _queries(since, until)
    return await store.read(lambda conn: _read_rows(conn, queries))
