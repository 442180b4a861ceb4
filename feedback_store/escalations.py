"""Escalations: the review outbox, and the gauges read from it.

Plain functions of a connection, run by ``Store.read`` or as ``Store.write`` jobs. The
outbox's state is all here, in the database: a row is leased by a conditional update
before it is posted, so two dispatchers never take the same row. Reviewers' votes and
the decisions they reach are in ``reviews.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update

from feedback_store.report.metrics import roc_auc
from feedback_store.rows import (
    EscalationRow,
    NewEscalation,
    ReviewCounts,
    StoreGauges,
)
from feedback_store.tables import escalation_t, event_t, exchange_t, label_t

esc = escalation_t.c

#: due for the outbox: to post, or a card in the channel to redraw
_DUE = or_(esc.state == "pending", and_(esc.card_stale.is_(True), esc.message_ts.is_not(None)))
_NEWEST = select(escalation_t).where(esc.reply_id == bindparam("reply_id"))
_GAUGE_STATES = (
    select(esc.state, func.count(), func.min(esc.created_at))
    .where(esc.state.in_(("pending", "posted", "failed")))
    .group_by(esc.state)
)
_RECENT_LABELS = (
    select(label_t.c.id, label_t.c.value, exchange_t.c.confidence)
    .join(exchange_t, exchange_t.c.id == label_t.c.reply_id)
    .order_by(label_t.c.id.desc())
    .limit(bindparam("limit"))
)


def newest(conn: Connection, reply_id: str) -> EscalationRow | None:
    query = _NEWEST.order_by(esc.id.desc()).limit(1)
    row = conn.execute(query, {"reply_id": reply_id}).first()
    return None if row is None else EscalationRow.from_row(row)


def add(conn: Connection, escalation: NewEscalation) -> int:
    query = insert(escalation_t).values(**escalation.values()).returning(esc.id)
    return int(conn.execute(query).scalar_one())


def newest_state(conn: Connection, reply_id: str) -> Any:
    """(id, state, message_ts) of a reply's newest escalation, or None."""
    query = select(esc.id, esc.state, esc.message_ts).where(esc.reply_id == reply_id)
    return conn.execute(query.order_by(esc.id.desc()).limit(1)).first()


def open_review(conn: Connection, reply_id: str, trigger: str, now: float) -> int | None:
    row = newest_state(conn, reply_id)
    if row is None:
        opened = NewEscalation(
            reply_id=reply_id, trigger=trigger, created_at=now, next_attempt_at=now
        )
        return add(conn, opened)
    if row.state == "posted" and row.message_ts is not None:
        conn.execute(
            update(escalation_t)
            .where(esc.id == row.id)
            .values(card_stale=True, next_attempt_at=now)
        )
    return None


# -- the outbox ----------------------------------------------------------------------


def claim(conn: Connection, *, now: float, until: float, limit: int) -> list[EscalationRow]:
    rows = lease(conn, now=now, until=until, limit=limit)
    return [dataclasses.replace(row, next_attempt_at=until) for row in rows]


def lease(conn: Connection, *, now: float, until: float, limit: int) -> list[EscalationRow]:
    """``claim``, but each row keeps the ``next_attempt_at`` it was due at: a row due at
    its ``created_at`` with no attempts was never touched since it was queued."""
    query = (
        select(escalation_t)
        .where(_DUE, esc.next_attempt_at <= now)
        .order_by(esc.next_attempt_at, esc.id)
        .limit(limit)
    )
    leased = []
    for row in conn.execute(query).all():
        taken = conn.execute(
            update(escalation_t)
            .where(esc.id == row.id, esc.next_attempt_at == row.next_attempt_at)
            .values(next_attempt_at=until)
        ).rowcount
        if taken == 1:
            leased.append(EscalationRow.from_row(row))
    return leased


def mark_posted(conn: Connection, escalation_id: int, channel: str, ts: str, now: float) -> None:
    where = {"channel": channel, "message_ts": ts, "posted_at": now, "last_error": None}
    posted = conn.execute(
        update(escalation_t)
        .where(esc.id == escalation_id, esc.state == "pending")
        .values(state="posted", **where)
    ).rowcount
    if not posted:
        conn.execute(
            update(escalation_t)
            .where(esc.id == escalation_id)
            .values(card_stale=True, next_attempt_at=now, **where)
        )


def _set(conn: Connection, escalation_id: int, **values: Any) -> None:
    conn.execute(update(escalation_t).where(esc.id == escalation_id).values(**values))


def mark_card_current(conn: Connection, escalation_id: int) -> None:
    _set(conn, escalation_id, card_stale=False, last_error=None)


def retry(conn: Connection, escalation_id: int, *, attempts: int, at: float, error: str) -> None:
    _set(conn, escalation_id, attempts=attempts, next_attempt_at=at, last_error=error[:2000])


def defer(conn: Connection, escalation_ids: Sequence[int], at: float) -> None:
    conn.execute(
        update(escalation_t).where(esc.id.in_(list(escalation_ids))).values(next_attempt_at=at)
    )


def dead_letter(
    conn: Connection, escalation: EscalationRow, error: str, now: float, card_only: bool
) -> None:
    data = {
        "escalation_id": escalation.id,
        "reply_id": escalation.reply_id,
        "what": "update" if card_only else "post",
        "error": error[:2000],
    }
    if card_only:
        _set(conn, escalation.id, last_error=error[:2000], card_stale=False)
    else:
        conn.execute(
            update(escalation_t)
            .where(esc.id == escalation.id, esc.state == "pending")
            .values(state="failed", last_error=error[:2000])
        )
    conn.execute(
        insert(event_t).values(
            created_at=now, kind="review_dead_letter", data_json=json.dumps(data)
        )
    )


def unpark(conn: Connection, parked_from: float, now: float) -> int:
    return int(
        conn.execute(
            update(escalation_t)
            .where(esc.state == "pending", esc.next_attempt_at >= parked_from)
            .values(next_attempt_at=now)
        ).rowcount
    )


def next_due(conn: Connection) -> float | None:
    value = conn.execute(select(func.min(esc.next_attempt_at)).where(_DUE)).scalar()
    return None if value is None else float(value)


# -- counts and gauges -----------------------------------------------------------------


def counts(conn: Connection) -> ReviewCounts:
    rows = conn.execute(select(esc.state, func.count()).group_by(esc.state)).all()
    known = ReviewCounts.__dataclass_fields__
    return ReviewCounts(**{str(state): int(n) for state, n in rows if state in known})


def gauges(conn: Connection, auc_window: int) -> StoreGauges:
    """One read, one moment: the outbox backlog and the newest labels' ROC AUC."""
    by_state = {row[0]: (int(row[1]), float(row[2])) for row in conn.execute(_GAUGE_STATES)}
    labels = conn.execute(_RECENT_LABELS, {"limit": auc_window}).all()
    unposted = by_state.get("pending")
    return StoreGauges(
        unposted=unposted[0] if unposted else 0,
        posted=by_state.get("posted", (0, 0.0))[0],
        failed=by_state.get("failed", (0, 0.0))[0],
        oldest_unposted_at=unposted[1] if unposted else None,
        newest_label_id=int(labels[0][0]) if labels else None,
        recent_roc_auc=roc_auc([int(r[1]) for r in labels], [float(r[2]) for r in labels]),
    )
