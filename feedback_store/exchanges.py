"""Exchanges, votes, labels, snapshots, events and small values: the SQL, as plain
functions of a connection (run by ``Store.read`` or as ``Store.write`` jobs).

The statements on the request and learning paths are built once, at import: SQLAlchemy
then skips rebuilding and re-keying them per call, which costs more than SQLite's own
work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, insert, select, update

from feedback_store.rows import (
    EventRow,
    ExchangeRow,
    FeedbackRow,
    LabelRow,
    NewEscalation,
    NewExchange,
    SnapshotRow,
    VoteResult,
)
from feedback_store.tables import (
    escalation_t,
    event_t,
    exchange_t,
    feedback_t,
    kv_t,
    label_t,
    snapshot_t,
)
from feedback_store.writer import Inserts

_INSERT_EXCHANGE = insert(exchange_t)
_INSERT_ESCALATION = insert(escalation_t)
_EXCHANGE = select(exchange_t).where(exchange_t.c.id == bindparam("reply_id"))
# A reply's end user, whether a user label was learned, and its votes so far (one row
# per voter, or one row of nulls): everything a vote needs, in one statement.
_VOTE_CONTEXT = (
    select(
        exchange_t.c.end_user,
        select(label_t.c.id)
        .where(label_t.c.reply_id == exchange_t.c.id, label_t.c.source == "user")
        .exists()
        .label("learned"),
        feedback_t.c.id.label("feedback_id"),
        feedback_t.c.voter,
        feedback_t.c.rating,
        feedback_t.c.reason,
        feedback_t.c.comment,
        feedback_t.c.correction,
    )
    .select_from(exchange_t.outerjoin(feedback_t, feedback_t.c.reply_id == exchange_t.c.id))
    .where(exchange_t.c.id == bindparam("reply_id"))
)
_UPDATE_VOTE = (
    update(feedback_t)
    .where(feedback_t.c.id == bindparam("feedback_id"))
    .values(
        rating=bindparam("rating"),
        reason=bindparam("reason"),
        comment=bindparam("comment"),
        correction=bindparam("correction"),
        updated_at=bindparam("updated_at"),
        changes=feedback_t.c.changes + 1,
    )
)
_INSERT_VOTE = insert(feedback_t)
_INSERT_LABEL = insert(label_t)
_LABELS_AFTER = (
    select(
        label_t.c.id,
        label_t.c.reply_id,
        label_t.c.source,
        label_t.c.value,
        label_t.c.weight,
        label_t.c.created_at,
        exchange_t.c.confidence,
        exchange_t.c.features_json,
        exchange_t.c.features_version,
        exchange_t.c.end_user,
        exchange_t.c.reply_text,
        exchange_t.c.question,
    )
    .join(exchange_t, exchange_t.c.id == label_t.c.reply_id)
    .where(label_t.c.id > bindparam("after"))
    .order_by(label_t.c.id)
    .limit(bindparam("limit"))
)


# -- exchanges -----------------------------------------------------------------------


def record(exchange: NewExchange, escalation: NewEscalation | None) -> Inserts:
    """The write job committing an exchange and its escalation (the outbox row) together;
    an ``Inserts`` job, which the writer batches with other exchanges' into executemany."""
    rows = [(_INSERT_EXCHANGE, exchange.values())]
    if escalation is not None:
        rows.append((_INSERT_ESCALATION, escalation.values()))
    return Inserts(rows)


def get(conn: Connection, reply_id: str) -> ExchangeRow | None:
    row = conn.execute(_EXCHANGE, {"reply_id": reply_id}).first()
    return None if row is None else ExchangeRow.from_row(row)


# -- votes and labels ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    reply_id: str
    rating: str
    reason: str | None
    comment: str | None
    correction: str | None
    weight: float
    at: float


def vote(conn: Connection, vote: Vote, voter: Callable[[str | None], str]) -> VoteResult:
    """Store a vote (last vote wins); only the first end-user vote of a reply is learned.

    A changed or repeated vote replaces the rating but not the words the voter already
    wrote: a comment or correction is replaced only by a new one, and the reason is kept
    while the rating stays the same (a thumbs-down, then its comment, then the same
    thumb clicked again must not erase the comment)."""
    rows = conn.execute(_VOTE_CONTEXT, {"reply_id": vote.reply_id}).all()
    if not rows:
        return VoteResult(created=False, label_id=None, previous_rating=None, found=False)
    exchange = rows[0]
    voter_id = voter(exchange.end_user)
    existing = next((row for row in rows if row.voter == voter_id), None)
    values = {
        "rating": vote.rating,
        "reason": vote.reason,
        "comment": vote.comment,
        "correction": vote.correction,
        "updated_at": vote.at,
    }
    if existing is not None:
        kept = {
            "reason": vote.reason
            if vote.reason is not None or vote.rating != existing.rating
            else existing.reason,
            "comment": vote.comment if vote.comment is not None else existing.comment,
            "correction": vote.correction if vote.correction is not None else existing.correction,
        }
        conn.execute(_UPDATE_VOTE, {**values, **kept, "feedback_id": existing.feedback_id})
        return VoteResult(created=False, label_id=None, previous_rating=existing.rating)
    conn.execute(
        _INSERT_VOTE,
        {
            **values,
            "reply_id": vote.reply_id,
            "voter": voter_id,
            "created_at": vote.at,
            "changes": 0,
        },
    )
    if exchange.learned:
        return VoteResult(created=True, label_id=None, previous_rating=None)
    result = conn.execute(
        _INSERT_LABEL,
        {
            "reply_id": vote.reply_id,
            "source": "user",
            "value": 1 if vote.rating == "up" else 0,
            "weight": vote.weight,
            "created_at": vote.at,
        },
    )
    label_id = int(result.inserted_primary_key[0])  # type: ignore[index]
    return VoteResult(created=True, label_id=label_id, previous_rating=None)


def newest_feedback(conn: Connection, reply_id: str) -> FeedbackRow | None:
    row = conn.execute(
        select(feedback_t)
        .where(feedback_t.c.reply_id == reply_id)
        .order_by(feedback_t.c.updated_at.desc())
        .limit(1)
    ).first()
    return None if row is None else FeedbackRow.from_row(row)


def labels_after(conn: Connection, label_id: int, limit: int) -> list[LabelRow]:
    rows = conn.execute(_LABELS_AFTER, {"after": label_id, "limit": limit}).all()
    return [LabelRow.from_row(row) for row in rows]


# -- model snapshots -------------------------------------------------------------------


def save_snapshot(
    conn: Connection,
    blob: bytes,
    *,
    last_label_id: int,
    labels: int,
    at: float,
    meta: Mapping[str, Any] | None = None,
) -> bool:
    """Insert a snapshot unless a newer generation is stored (a promotion or rollback the
    writer has not adopted yet): False then, and nothing is written."""
    meta = dict(meta or {})
    generation = int(meta.get("generation", 0))
    newest = conn.execute(select(func.max(snapshot_t.c.generation))).scalar()
    if newest is not None and newest > generation:
        return False
    conn.execute(
        insert(snapshot_t).values(
            created_at=at, last_label_id=last_label_id, labels=labels, blob=blob, **meta
        )
    )
    # Snapshots are a cache: keep the newest few (what went live is kept in model_version).
    keep = select(snapshot_t.c.id).order_by(*_NEWEST_SNAPSHOT).limit(3).scalar_subquery()
    conn.execute(snapshot_t.delete().where(snapshot_t.c.id.not_in(keep)))
    return True


#: the live snapshot: of the newest generation, the newest
_NEWEST_SNAPSHOT = (snapshot_t.c.generation.desc(), snapshot_t.c.id.desc())


def latest_snapshot(conn: Connection) -> SnapshotRow | None:
    row = conn.execute(select(snapshot_t).order_by(*_NEWEST_SNAPSHOT).limit(1)).first()
    return None if row is None else SnapshotRow.from_row(row)


# -- events and small values -----------------------------------------------------------


def add_event(conn: Connection, kind: str, data_json: str, *, at: float) -> None:
    conn.execute(insert(event_t).values(created_at=at, kind=kind, data_json=data_json))


def events(conn: Connection, kind: str | None) -> list[EventRow]:
    query = select(event_t).order_by(event_t.c.id)
    if kind is not None:
        query = query.where(event_t.c.kind == kind)
    return [EventRow.from_row(row) for row in conn.execute(query).all()]


def claim_announcements(conn: Connection, kind: str, now: float, limit: int) -> list[EventRow]:
    """Events of ``kind`` not yet announced, each marked announced by a conditional
    update, so two dispatchers never announce one event twice."""
    query = (
        select(event_t)
        .where(event_t.c.kind == kind, event_t.c.announced_at.is_(None))
        .order_by(event_t.c.id)
        .limit(limit)
    )
    claimed = []
    for row in conn.execute(query).all():
        taken = conn.execute(
            update(event_t)
            .where(event_t.c.id == row.id, event_t.c.announced_at.is_(None))
            .values(announced_at=now)
        ).rowcount
        if taken == 1:
            claimed.append(EventRow.from_row({**row._mapping, "announced_at": now}))
    return claimed


def unclaim_announcement(conn: Connection, event_id: int) -> None:
    conn.execute(update(event_t).where(event_t.c.id == event_id).values(announced_at=None))


def get_or_create_value(conn: Connection, key: str, factory: Callable[[], str]) -> str:
    row = conn.execute(select(kv_t.c.value).where(kv_t.c.key == key)).first()
    if row is not None:
        return str(row[0])
    value = factory()
    conn.execute(insert(kv_t).values(key=key, value=value))
    return value


def value(conn: Connection, key: str) -> str | None:
    return conn.execute(select(kv_t.c.value).where(kv_t.c.key == key)).scalar()


def put_value(conn: Connection, key: str, value: str) -> None:
    """Set ``key`` to ``value`` (the last writer wins)."""
    if conn.execute(update(kv_t).where(kv_t.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(insert(kv_t).values(key=key, value=value))


def count_rows(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def latest_snapshot_id(conn: Connection) -> int | None:
    """The newest snapshot's id, without its blob: what a follower polls."""
    query = select(snapshot_t.c.id).order_by(*_NEWEST_SNAPSHOT).limit(1)
    return conn.execute(query).scalar()
