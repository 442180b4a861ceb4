"""The review queue: undecided items, held ones first, then oldest first.

One read, three queries (the escalations, their exchanges, their newest votes), however
long the queue: what the review page shows in one go.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select

from feedback_store.rows import EscalationRow, ExchangeRow, FeedbackRow
from feedback_store.tables import escalation_t, exchange_t, feedback_t

esc = escalation_t.c
#: the states of an item still waiting for a reviewer (posted: its card is in Slack)
OPEN_STATES = ("pending", "posted")


@dataclass(frozen=True, slots=True)
class QueuedItem:
    escalation: EscalationRow
    exchange: ExchangeRow
    feedback: FeedbackRow | None


def open_items(
    conn: Connection, limit: int, states: tuple[str, ...] = OPEN_STATES
) -> list[QueuedItem]:
    """Items in ``states`` (default: waiting), held first, then oldest first."""
    rows = conn.execute(
        select(escalation_t)
        .where(esc.state.in_(states))
        .order_by(esc.hold.desc(), esc.created_at, esc.id)
        .limit(limit)
    ).all()
    escalations = [EscalationRow.from_row(row) for row in rows]
    ids = list({e.reply_id for e in escalations})
    if not ids:
        return []
    exchanges = {
        row.id: ExchangeRow.from_row(row)
        for row in conn.execute(select(exchange_t).where(exchange_t.c.id.in_(ids))).all()
    }
    newest: dict[str, FeedbackRow] = {}
    query = (
        select(feedback_t).where(feedback_t.c.reply_id.in_(ids)).order_by(feedback_t.c.updated_at)
    )
    for row in conn.execute(query).all():
        newest[row.reply_id] = FeedbackRow.from_row(row)  # the last one read is the newest
    seen: set[str] = set()
    items = []
    for escalation in escalations:
        exchange = exchanges.get(escalation.reply_id)
        # One entry per reply (its oldest open escalation); none for a reply purged away.
        if exchange is None or escalation.reply_id in seen:
            continue
        seen.add(escalation.reply_id)
        items.append(QueuedItem(escalation, exchange, newest.get(escalation.reply_id)))
    return items
