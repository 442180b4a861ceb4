"""Every exchange in the order it was scored, paged: what a retrain replays to rebuild
the per-user and conversation state the features read (``hitl retrain --recompute``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from sqlalchemy import Connection, and_, or_, select

from feedback_store.engine import Store
from feedback_store.rows import ExchangeRow
from feedback_store.tables import exchange_t

__all__ = ["exchanges_in_order"]

_ex = exchange_t.c


def _page(conn: Connection, after: tuple[float, str] | None, limit: int) -> list[ExchangeRow]:
    query = select(exchange_t).order_by(_ex.created_at, _ex.id).limit(limit)
    if after is not None:
        at, reply_id = after
        query = query.where(or_(_ex.created_at > at, and_(_ex.created_at == at, _ex.id > reply_id)))
    return [ExchangeRow.from_row(row) for row in conn.execute(query)]


async def exchanges_in_order(store: Store, *, page: int = 1000) -> AsyncIterator[list[ExchangeRow]]:
    """Pages of every exchange, oldest first (``created_at``, then ``id``)."""
    after: tuple[float, str] | None = None
    while rows := await store.read(partial(_page, after=after, limit=page)):
        yield rows
        if len(rows) < page:
            return
        after = (rows[-1].created_at, rows[-1].id)
