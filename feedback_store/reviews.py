"""Reviewers' votes, the decisions they reach, and holds' releases.

Plain functions of a connection, run as ``Store.write`` jobs (``votes`` also by
``Store.read``). A reviewer's call is one vote on the reply's newest escalation. Every
vote is kept in ``review_vote`` and learned (a label); the escalation is decided by the
vote that brings its side to the votes required. Approve is one side; reject and correct
are the other (a correction counts as a rejection plus its text).

Two processes voting on one item at once: the job first takes the escalation's row
with a conditional update (a row lock on PostgreSQL, the write lock on SQLite) that
matches only an undecided item, so the second voter waits, then sees the first one's
vote and decision. An item is never decided twice, and no vote is lost; the unique
(escalation, reviewer) constraint refuses a second vote by one reviewer even so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, insert, select, update
from sqlalchemy.exc import IntegrityError

from feedback_store.errors import ReplayedReply
from feedback_store.escalations import add, newest_state
from feedback_store.rows import EscalationRow, NewEscalation, ReviewResult, ReviewVoteRow
from feedback_store.tables import escalation_t, exchange_t, label_t, review_vote_t
from feedback_store.vocabulary import (
    DECIDED_STATES,
    RELEASES,
    REPLAY_ROUTE,
    VERDICT_OF,
    VERDICTS,
)

esc = escalation_t.c
rv = review_vote_t.c


@dataclass(frozen=True, slots=True, kw_only=True)
class Ballot:
    """One reviewer's vote as ``Store.record_review`` takes it, and what it teaches."""

    reviewer: str
    verdict: str  # approve | reject | correct
    reason: str | None
    correction: str | None
    value: int  # the label: 1 helpful, 0 not
    weight: float
    at: float
    votes_required: int = 1

    @classmethod
    def of_state(cls, state: str, **values: Any) -> Ballot:
        """The vote a decided state stands for (approved: approve, and so on)."""
        if state not in VERDICT_OF:
            raise ValueError(f"a review state must be one of {', '.join(DECIDED_STATES)}")
        return cls(verdict=VERDICT_OF[state], **values)


def side(verdict: str) -> str:
    """approve, or reject (for reject and correct alike)."""
    return "approve" if verdict == "approve" else "reject"


def decision(
    votes: Sequence[ReviewVoteRow], deciding: ReviewVoteRow, votes_required: int
) -> dict[str, Any] | None:
    """The escalation's decided columns once ``deciding`` brings its side to
    ``votes_required`` votes, else None (pure; ``votes`` oldest first)."""
    mine = [v for v in votes if side(v.verdict) == side(deciding.verdict)]
    if len(mine) < votes_required:
        return None
    state, reason, correction = "approved", deciding.reason, None
    if side(deciding.verdict) == "reject":
        state = "rejected"
        corrected = next((v for v in mine if v.correction is not None), None)
        if corrected is not None:
            state, correction = "corrected", corrected.correction
            if corrected.reason is not None:
                reason = corrected.reason
    return {
        "state": state,
        "decided_by": deciding.reviewer,
        "decided_at": deciding.created_at,
        "decision_reason": reason,
        "correction": correction,
    }


def _votes_on(conn: Connection, escalation_id: int) -> list[ReviewVoteRow]:
    query = (
        select(review_vote_t)
        .where(rv.escalation_id == escalation_id)
        .order_by(rv.created_at, rv.id)
    )
    return [ReviewVoteRow.from_row(row) for row in conn.execute(query).all()]


def votes(conn: Connection, reply_id: str) -> list[ReviewVoteRow]:
    """The votes on a reply's newest escalation, oldest first."""
    row = newest_state(conn, reply_id)
    return [] if row is None else _votes_on(conn, row.id)


def _result(
    conn: Connection,
    escalation_id: int,
    *,
    label_id: int | None = None,
    decided: bool = False,
) -> ReviewResult:
    current = conn.execute(select(escalation_t).where(esc.id == escalation_id)).one()
    return ReviewResult(
        applied=label_id is not None,
        label_id=label_id,
        escalation=EscalationRow.from_row(current),
        decided=decided,
        votes=tuple(_votes_on(conn, escalation_id)),
    )


def insert_vote(conn: Connection, escalation_id: int, reply_id: str, ballot: Ballot) -> bool:
    """Insert the vote; False when this reviewer voted on the escalation already.

    A refused duplicate leaves the rest of the transaction (and the other jobs grouped
    into it) as it was: SQLite undoes just the statement; PostgreSQL would abort the
    whole transaction, so there the insert runs in a savepoint. (Not on SQLite, where
    pysqlite's SAVEPOINT before the transaction's first write would commit on release.)
    """
    values = {
        "escalation_id": escalation_id,
        "reply_id": reply_id,
        "reviewer": ballot.reviewer,
        "verdict": ballot.verdict,
        "reason": ballot.reason,
        "correction": ballot.correction,
        "created_at": ballot.at,
    }
    statement = insert(review_vote_t).values(**values)
    try:
        if conn.dialect.name == "sqlite":
            conn.execute(statement)
        else:
            with conn.begin_nested():
                conn.execute(statement)
    except IntegrityError:
        return False
    return True


def record_review(conn: Connection, reply_id: str, ballot: Ballot) -> ReviewResult | None:
    """Store one reviewer's vote and its label; decide the item if the vote's side has
    the votes required. None when the reply is unknown."""
    if ballot.verdict not in VERDICTS:
        raise ValueError(f"a verdict must be one of {', '.join(VERDICTS)}")
    if ballot.votes_required < 1:
        raise ValueError("votes_required must be at least 1")
    exchange = conn.execute(select(exchange_t.c.route).where(exchange_t.c.id == reply_id)).first()
    if exchange is None:
        return None
    if exchange.route == REPLAY_ROUTE:
        raise ReplayedReply(reply_id)
    now = ballot.at
    row = newest_state(conn, reply_id)
    if row is None:
        # A reply nobody escalated: its verdict opens the review item.
        opened = NewEscalation(
            reply_id=reply_id, trigger="api", created_at=now, next_attempt_at=now
        )
        escalation_id = add(conn, opened)
    else:
        escalation_id = row.id
    undecided = esc.state.not_in(DECIDED_STATES)
    # Take the item: concurrent voters queue here, and a decided item is left alone.
    taken = conn.execute(
        update(escalation_t).where(esc.id == escalation_id, undecided).values(state=esc.state)
    ).rowcount
    if taken != 1:
        return _result(conn, escalation_id)
    earlier = _votes_on(conn, escalation_id)
    if any(v.reviewer == ballot.reviewer for v in earlier):
        return _result(conn, escalation_id)
    if not insert_vote(conn, escalation_id, reply_id, ballot):
        return _result(conn, escalation_id)
    label = {
        "reply_id": reply_id,
        "source": "reviewer",
        "value": ballot.value,
        "weight": ballot.weight,
        "created_at": now,
    }
    label_id = int(
        conn.execute(insert(label_t).values(**label).returning(label_t.c.id)).scalar_one()
    )
    now_votes = _votes_on(conn, escalation_id)
    mine = next(v for v in now_votes if v.reviewer == ballot.reviewer)
    decided = decision(now_votes, mine, ballot.votes_required)
    posted = esc.message_ts.is_not(None)
    # Decided or not, a card in the channel is redrawn (the verdict, or the tally). A card
    # not yet posted keeps its place in the outbox: it is drawn with the votes it has then.
    values: dict[str, Any] = {
        "card_stale": posted,
        "next_attempt_at": case((posted, now), else_=esc.next_attempt_at),
    }
    if decided is not None:
        values = {**values, **decided, "next_attempt_at": now}
    conn.execute(update(escalation_t).where(esc.id == escalation_id, undecided).values(**values))
    return _result(conn, escalation_id, label_id=label_id, decided=decided is not None)


def record_release(
    conn: Connection, reply_id: str, *, released: str, at: float, timed_out: bool
) -> None:
    """Set what a hold released on the reply's newest escalation; the first one stays."""
    if released not in RELEASES:
        raise ValueError(f"released must be one of {', '.join(RELEASES)}")
    row = newest_state(conn, reply_id)
    if row is None:
        return
    conn.execute(
        update(escalation_t)
        .where(esc.id == row.id, esc.released.is_(None))
        .values(released=released, released_at=at, timed_out=timed_out)
    )
