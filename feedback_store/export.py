"""Exports for machines: labelled exchanges, corrected answers for fine-tuning, and the
review audit (who voted what on which reply, and what a hold released).

The queries page through the store (keyset on creation time and id) so an export of
a large store never holds it all in memory; turning rows into records is pure.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Connection, and_, or_, select

from feedback_store.engine import Store
from feedback_store.report.metrics import iso
from feedback_store.rows import (
    Columns,
    EscalationRow,
    ExchangeRow,
    FeedbackRow,
    LabelRow,
    ReviewVoteRow,
)
from feedback_store.tables import escalation_t, exchange_t, feedback_t, label_t, review_vote_t

PAGE = 500
R = TypeVar("R", bound=Columns)
G = TypeVar("G", LabelRow, FeedbackRow, EscalationRow)


def request_messages(request_json: str) -> list[dict[str, Any]] | None:
    """The messages of a stored chat request, or None when there are none to reuse."""
    try:
        payload = json.loads(request_json or "{}")
    except ValueError:
        return None
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list) or not messages:
        return None
    if not all(isinstance(m, dict) and "role" in m for m in messages):
        return None
    return messages


def final_label(labels: Sequence[LabelRow]) -> tuple[int, str] | None:
    """(value, source) the exchange is known by: the newest reviewer verdict, else the user's."""
    reviewer = [lb for lb in labels if lb.source == "reviewer"]
    chosen = reviewer[-1] if reviewer else (labels[0] if labels else None)
    return None if chosen is None else (int(chosen.value), str(chosen.source))


def labelled_record(
    exchange: ExchangeRow,
    labels: Sequence[LabelRow],
    votes: Sequence[FeedbackRow],
    reviews: Sequence[EscalationRow],
) -> dict[str, Any] | None:
    label = final_label(labels)
    if label is None:
        return None
    review = reviews[-1] if reviews else None
    try:
        meta = json.loads(exchange.meta_json or "{}")
    except ValueError:
        meta = {}
    return {
        "reply_id": exchange.id,
        "created_at": iso(exchange.created_at),
        "model": exchange.model,
        "route": exchange.route,
        "messages": request_messages(exchange.request_json) or [],
        "question": exchange.question,
        "reply": exchange.reply_text,
        "confidence": exchange.confidence,
        "decision": exchange.decision,
        "label": label[0],
        "label_source": label[1],
        "labels": [
            {"source": lb.source, "value": lb.value, "weight": lb.weight, "at": iso(lb.created_at)}
            for lb in labels
        ],
        "votes": [
            {
                "rating": v.rating,
                "reason": v.reason,
                "comment": v.comment,
                "correction": v.correction,
            }
            for v in votes
        ],
        "review": None
        if review is None
        else {
            "state": review.state,
            "by": review.decided_by,
            "at": iso(review.decided_at),
            "reason": review.decision_reason,
            "correction": review.correction,
        },
        "meta": meta if isinstance(meta, dict) else {},
    }


def correction_record(request_json: str, corrected: str) -> dict[str, Any] | None:
    """One OpenAI fine-tuning example: the original messages, then the corrected answer."""
    messages = request_messages(request_json)
    if messages is None or not corrected.strip():
        return None
    return {"messages": [*messages, {"role": "assistant", "content": corrected}]}


async def _pages(
    store: Store, where: list[Any], since: float | None, until: float | None
) -> AsyncIterator[list[ExchangeRow]]:
    ex = exchange_t.c
    conditions = list(where)
    if since is not None:
        conditions.append(ex.created_at >= since)
    if until is not None:
        conditions.append(ex.created_at < until)
    after: tuple[float, str] | None = None
    while True:
        page_conditions = list(conditions)
        if after is not None:
            page_conditions.append(
                or_(ex.created_at > after[0], and_(ex.created_at == after[0], ex.id > after[1]))
            )
        query = select(exchange_t).where(*page_conditions).order_by(ex.created_at, ex.id)
        page = await store.read(partial(_all, query=query.limit(PAGE), row=ExchangeRow))
        if not page:
            return
        yield page
        after = (page[-1].created_at, page[-1].id)


def _all(conn: Connection, query: Any, row: type[R]) -> list[R]:
    return [row.from_row(r) for r in conn.execute(query).all()]


_LABELS = (
    select(*label_t.c, exchange_t.c.confidence, exchange_t.c.features_json, exchange_t.c.end_user)
    .join(exchange_t, exchange_t.c.id == label_t.c.reply_id)
    .order_by(label_t.c.id)
)


class _Related(NamedTuple):
    labels: dict[str, list[LabelRow]]
    votes: dict[str, list[FeedbackRow]]
    reviews: dict[str, list[EscalationRow]]


async def _related(store: Store, ids: list[str], *, labels: bool, votes: bool) -> _Related:
    """The page's labels, votes and reviews per reply id, oldest first, in one read."""

    def grouped(conn: Connection, query: Any, row: type[G]) -> dict[str, list[G]]:
        found: dict[str, list[G]] = defaultdict(list)
        for r in _all(conn, query, row):
            found[r.reply_id].append(r)
        return found

    def of(table: Any) -> Any:
        return select(table).where(table.c.reply_id.in_(ids)).order_by(table.c.id)

    def read(conn: Connection) -> _Related:
        return _Related(
            grouped(conn, _LABELS.where(label_t.c.reply_id.in_(ids)), LabelRow) if labels else {},
            grouped(conn, of(feedback_t), FeedbackRow) if votes else {},
            grouped(conn, of(escalation_t), EscalationRow),
        )

    return await store.read(read)


async def labelled_exchanges(
    store: Store, *, since: float | None = None, until: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every exchange with at least one label, oldest first, as one JSON-ready record."""
    has_label = exchange_t.c.id.in_(select(label_t.c.reply_id))
    async for page in _pages(store, [has_label], since, until):
        related = await _related(store, [row.id for row in page], labels=True, votes=True)
        for row in page:
            user_votes = [
                v for v in related.votes.get(row.id, []) if not v.voter.startswith("reviewer")
            ]
            record = labelled_record(
                row, related.labels.get(row.id, []), user_votes, related.reviews.get(row.id, [])
            )
            if record is not None:
                yield record


async def corrections(
    store: Store,
    *,
    include_users: bool = False,
    since: float | None = None,
    until: float | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Corrected answers in the OpenAI fine-tuning chat format, oldest first.

    Reviewer corrections always; end users' corrections only with ``include_users``:
    anyone holding a reply's token can send one, so they are unvetted and could
    poison the training set. A reviewer's correction wins over a user's for one reply.
    """
    es = escalation_t.c
    reviewed = and_(es.state == "corrected", es.correction.is_not(None))
    where: list[Any] = [exchange_t.c.id.in_(select(es.reply_id).where(reviewed))]
    if include_users:
        fb = feedback_t.c
        from_users = and_(fb.correction.is_not(None), fb.voter.not_like("reviewer%"))
        where = [or_(where[0], exchange_t.c.id.in_(select(fb.reply_id).where(from_users)))]
    async for page in _pages(store, where, since, until):
        related = await _related(store, [row.id for row in page], labels=False, votes=include_users)
        for row in page:
            corrected = _chosen_correction(
                related.reviews.get(row.id, []), related.votes.get(row.id, [])
            )
            if corrected is None:
                continue
            record = correction_record(row.request_json, corrected)
            if record is not None:
                yield record


def _chosen_correction(
    reviews: Sequence[EscalationRow], votes: Sequence[FeedbackRow]
) -> str | None:
    done = [r for r in reviews if r.state == "corrected" and r.correction]
    if done:
        newest = max(done, key=lambda r: r.decided_at or r.created_at)
        return str(newest.correction)
    mine = [v for v in votes if v.correction and not v.voter.startswith("reviewer")]
    if mine:
        return str(max(mine, key=lambda v: v.updated_at).correction)
    return None


# -- the review audit ------------------------------------------------------------------


def text_sha256(text: str) -> str | None:
    """The SHA-256 (hex) of a stored text, or None when there is none (purged)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text else None


def audit_record(
    exchange: ExchangeRow, review: EscalationRow, votes: Sequence[ReviewVoteRow]
) -> dict[str, Any]:
    """One reviewed reply's audit: its review item, every vote, and what a hold released.

    It names no message text: the reply is known by its hash, a correction only as given,
    so the record stays whole (and shareable) after the exchange's text is purged.
    """
    return {
        "reply_id": exchange.id,
        "created_at": iso(exchange.created_at),
        "model": exchange.model,
        "hold": review.hold,
        "trigger": review.trigger,
        "opened_at": iso(review.created_at),
        "state": review.state,
        "decided_by": review.decided_by,
        "decided_at": iso(review.decided_at),
        "votes": [
            {
                "reviewer": v.reviewer,
                "verdict": v.verdict,
                "reason": v.reason,
                "correction_given": v.correction is not None,
                "at": iso(v.created_at),
            }
            for v in votes
        ],
        "released": review.released,
        "released_at": iso(review.released_at),
        "timed_out": review.timed_out,
        "original_sha256": text_sha256(exchange.reply_text),
    }


async def audit_records(
    store: Store, *, since: float | None = None, until: float | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every reviewed reply (one with an escalation), oldest first, as its audit record:
    the reply's newest escalation and the votes on it, oldest first."""
    es, rv = escalation_t.c, review_vote_t.c

    def read(
        conn: Connection, ids: list[str]
    ) -> tuple[dict[str, EscalationRow], dict[int, list[ReviewVoteRow]]]:
        newest: dict[str, EscalationRow] = {}
        for row in _all(conn, select(escalation_t).where(es.reply_id.in_(ids)), EscalationRow):
            if row.reply_id not in newest or row.id > newest[row.reply_id].id:
                newest[row.reply_id] = row
        voted = [row.id for row in newest.values()]
        query = select(review_vote_t).where(rv.escalation_id.in_(voted))
        votes: dict[int, list[ReviewVoteRow]] = defaultdict(list)
        for vote in _all(conn, query.order_by(rv.created_at, rv.id), ReviewVoteRow):
            votes[vote.escalation_id].append(vote)
        return newest, votes

    reviewed = exchange_t.c.id.in_(select(es.reply_id))
    async for page in _pages(store, [reviewed], since, until):
        ids = [row.id for row in page]
        newest, votes = await store.read(partial(read, ids=ids))
        for row in page:
            review = newest.get(row.id)
            if review is not None:
                yield audit_record(row, review, votes.get(review.id, []))
