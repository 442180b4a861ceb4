"""Exchanges in the order they were scored: every one, paged, for what a retrain replays
to rebuild the per-user and conversation state the features read (``hitl retrain
--recompute``); the newest decisions, for the review budget a starting process resumes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from sqlalchemy import Connection, and_, or_, select

from feedback_store.engine import Store
from feedback_store.rows import ExchangeRow
from feedback_store.tables import exchange_t
from feedback_store.vocabulary import REPLAY_ROUTE

__all__ = ["exchanges_in_order", "recent_decisions"]

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


def _recent(conn: Connection, limit: int) -> list[tuple[float, str, float]]:
    query = (
        select(_ex.confidence, _ex.decision, _ex.created_at)
        .where(_ex.route != REPLAY_ROUTE)
        .order_by(_ex.created_at.desc(), _ex.id.desc())
        .limit(limit)
    )
    return [(row.confidence, row.decision, row.created_at) for row in conn.execute(query)][::-1]


async def recent_decisions(store: Store, limit: int) -> list[tuple[float, str, float]]:
    """(confidence, decision, created_at) of the newest ``limit`` served exchanges (not
    replayed ones), oldest first."""
    return await store.read(partial(_recent, limit=limit))
