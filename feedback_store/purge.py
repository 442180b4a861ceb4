"""Purging message text (``hitl purge``, ``[privacy] retain_days``): the text goes, the
facts stay.

What goes: an exchange's question, reply and request (``request_json`` becomes
``PURGED_REQUEST``, the mark of a purged exchange), and what people wrote about it:
feedback comments and corrections, reviewers' corrections (on the escalation and on each
vote). A purged comment or correction becomes "" rather than NULL, so whether one was
given still reads as before (the report's counts, the audit's ``correction_given``).
What stays: labels, confidence, decision, timings, model, route, end user, and the
review audit trail (states, votes, releases); ``original_sha256`` then reads null.

The caller says what the text leaves behind (``keep``): the row's new ``features_json``
and ``reasons_json``, computed from it before its text goes, so that a model relearned
from the labels learns what it would have learned from the text.

Rows are found on a reader thread and each write job updates at most ``BATCH`` of them
by primary key, so the writer, which the request path waits on, is never held long.
Running it twice, or in several processes at once, is harmless: every update is
conditional on the text still being there.

SQLite zeroes the space the old text leaves (the store sets ``secure_delete``) and the
purge truncates the write-ahead log afterwards, so the text leaves the files too.
PostgreSQL keeps dead row versions until they are vacuumed (autovacuum, or ``VACUUM``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update

from feedback_store.engine import Store
from feedback_store.rows import ExchangeRow
from feedback_store.tables import escalation_t, exchange_t, feedback_t, review_vote_t
from feedback_store.urls import is_sqlite

#: what a purged exchange's ``request_json`` holds: its mark
PURGED_REQUEST = '{"purged": true}'
#: exchanges per write job (and rows per related update)
BATCH = 200
#: what the text leaves behind: new ``features_json`` / ``reasons_json`` for a row
Keep = Callable[[ExchangeRow], Mapping[str, str]]

ex, fb, es, rv = exchange_t.c, feedback_t.c, escalation_t.c, review_vote_t.c
_UNPURGED = ex.request_json != PURGED_REQUEST
_KEPT = ("features_json", "reasons_json")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """The exchanges to purge: created before ``before`` (UNIX seconds), of
    ``end_user``, or both."""

    before: float | None = None
    end_user: str | None = None

    def __post_init__(self) -> None:
        if self.before is None and self.end_user is None:
            raise ValueError("a purge needs a scope: an age, an end user, or both")

    def where(self) -> list[Any]:
        conditions = []
        if self.before is not None:
            conditions.append(ex.created_at < self.before)
        if self.end_user is not None:
            conditions.append(ex.end_user == self.end_user)
        return conditions


@dataclass(frozen=True, slots=True)
class Purged:
    """What a purge removed (or, in a dry run, would remove)."""

    #: exchanges whose text went (purged before: not counted again)
    exchanges: int = 0
    #: feedback comments
    comments: int = 0
    #: corrections as given: end users' (feedback) and reviewers' (one per vote)
    corrections: int = 0

    def __add__(self, other: Purged) -> Purged:
        return Purged(
            self.exchanges + other.exchanges,
            self.comments + other.comments,
            self.corrections + other.corrections,
        )

    def __bool__(self) -> bool:
        return bool(self.exchanges or self.comments or self.corrections)


def is_purged(exchange: ExchangeRow) -> bool:
    return exchange.request_json == PURGED_REQUEST


# -- reading what is due -------------------------------------------------------------


def _due(
    conn: Connection, scope: Scope, after: tuple[float, str] | None, limit: int
) -> list[ExchangeRow]:
    """Unpurged exchanges in ``scope``, oldest first, after the keyset ``after``."""
    conditions = [*scope.where(), _UNPURGED]
    if after is not None:
        conditions.append(
            or_(ex.created_at > after[0], and_(ex.created_at == after[0], ex.id > after[1]))
        )
    query = select(exchange_t).where(*conditions).order_by(ex.created_at, ex.id).limit(limit)
    return [ExchangeRow.from_row(row) for row in conn.execute(query).all()]


#: one exchange to purge: its id, when it was created, and what it keeps
_Due = tuple[str, float, dict[str, str]]


def _prepared(
    conn: Connection, scope: Scope, after: tuple[float, str] | None, keep: Keep | None
) -> list[_Due]:
    """The next batch as update values (``keep`` applied here, on the reader thread)."""
    batch: list[_Due] = []
    for row in _due(conn, scope, after, BATCH):
        values = {"features_json": row.features_json, "reasons_json": row.reasons_json}
        if keep is not None:
            values.update((k, v) for k, v in keep(row).items() if k in _KEPT)
        batch.append((row.id, row.created_at, values))
    return batch


@dataclass(frozen=True, slots=True)
class _Related:
    """Ids of the rows about exchanges in scope that still hold text."""

    comments: list[int]
    feedback_corrections: list[int]
    vote_corrections: list[int]
    escalation_corrections: list[int]


def _related(conn: Connection, scope: Scope) -> _Related:
    inside = select(ex.id).where(*scope.where())

    def ids(table: Any, column: Any) -> list[int]:
        query = select(table.c.id).where(table.c.reply_id.in_(inside), column != "")
        return [int(i) for i in conn.execute(query.order_by(table.c.id)).scalars()]

    return _Related(
        ids(feedback_t, fb.comment),
        ids(feedback_t, fb.correction),
        ids(review_vote_t, rv.correction),
        ids(escalation_t, es.correction),
    )


def _count(conn: Connection, scope: Scope) -> tuple[int, _Related]:
    query = select(func.count()).select_from(exchange_t).where(*scope.where(), _UNPURGED)
    return int(conn.execute(query).scalar_one()), _related(conn, scope)


# -- the write jobs --------------------------------------------------------------------


def _purge_exchanges(conn: Connection, batch: Sequence[_Due]) -> int:
    purged = 0
    for reply_id, _created_at, values in batch:
        purged += conn.execute(
            update(exchange_t)
            .where(ex.id == reply_id, _UNPURGED)
            .values(question="", reply_text="", request_json=PURGED_REQUEST, **values)
        ).rowcount
    return purged


def _clear(conn: Connection, table: Any, column: str, ids: Sequence[int]) -> int:
    target = table.c[column]
    statement = update(table).where(table.c.id.in_(ids), target != "").values({column: ""})
    return int(conn.execute(statement).rowcount)


def _checkpoint(conn: Connection) -> None:
    # Old pages with the text may still be in the write-ahead log: copy it back and
    # truncate it (waits for readers, up to the busy timeout).
    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


# -- the purge ---------------------------------------------------------------------------


async def due_exchanges(store: Store, scope: Scope) -> AsyncIterator[ExchangeRow]:
    """The exchanges a purge of ``scope`` would take the text of, oldest first (paged)."""
    after: tuple[float, str] | None = None
    while True:
        page = await store.read(partial(_due, scope=scope, after=after, limit=500))
        for row in page:
            yield row
        if len(page) < 500:
            return
        after = (page[-1].created_at, page[-1].id)


async def purge_text(
    store: Store, scope: Scope, *, keep: Keep | None = None, dry_run: bool = False
) -> Purged:
    """Remove the message text of the exchanges in ``scope`` and of what was written about
    them; with ``dry_run``, count what would go and change nothing."""
    if dry_run:
        exchanges, related = await store.read(partial(_count, scope=scope))
        return Purged(
            exchanges,
            len(related.comments),
            len(related.feedback_corrections) + len(related.vote_corrections),
        )
    exchanges = 0
    after: tuple[float, str] | None = None
    while True:
        batch = await store.read(partial(_prepared, scope=scope, after=after, keep=keep))
        if not batch:
            break
        exchanges += await store.write(partial(_purge_exchanges, batch=batch))
        after = (batch[-1][1], batch[-1][0])
    related = await store.read(partial(_related, scope=scope))
    counts = {"comments": 0, "corrections": 0}
    for table, column, ids, counted in (
        (feedback_t, "comment", related.comments, "comments"),
        (feedback_t, "correction", related.feedback_corrections, "corrections"),
        (review_vote_t, "correction", related.vote_corrections, "corrections"),
        # the decided copy of a vote's correction: cleared, not counted again
        (escalation_t, "correction", related.escalation_corrections, None),
    ):
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            cleared = await store.write(partial(_clear, table=table, column=column, ids=chunk))
            if counted is not None:
                counts[counted] += cleared
    purged = Purged(exchanges, counts["comments"], counts["corrections"])
    if purged:
        await store.add_event(
            "purge",
            {
                "exchanges": purged.exchanges,
                "comments": purged.comments,
                "corrections": purged.corrections,
                "before": scope.before,
                # whose text it was is not kept: that would undo the purge
                "by_user": scope.end_user is not None,
            },
        )
        if is_sqlite(store.url):
            await store.read(_checkpoint)
    return purged
