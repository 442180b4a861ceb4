"""The store: one async engine, reads on any connection, writes through one writer.

Writes are *jobs* (``async def job(conn) -> result``) queued to a single writer task.
The writer runs every job waiting in the queue inside one transaction and commits
once (group commit), then resolves each job's future. A caller's ``await`` returns
only after its job is durable, so a 2xx is never sent for something not yet committed.
If a grouped transaction fails, the writer rolls back and reruns each job alone, so
one bad job fails only its own caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .errors import StoreError
from .models import Escalation, Event, Exchange, Feedback, KeyValue, Label, ModelSnapshot
from .schema import ensure_schema_async, redact_url
from .urls import async_url, is_sqlite

T = TypeVar("T")
Job = Callable[[AsyncConnection], Awaitable[Any]]

exchange_t = Exchange.__table__  # type: ignore[attr-defined]
feedback_t = Feedback.__table__  # type: ignore[attr-defined]
label_t = Label.__table__  # type: ignore[attr-defined]
escalation_t = Escalation.__table__  # type: ignore[attr-defined]
snapshot_t = ModelSnapshot.__table__  # type: ignore[attr-defined]
event_t = Event.__table__  # type: ignore[attr-defined]
kv_t = KeyValue.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class VoteResult:
    created: bool  # a new vote (201) rather than a changed or repeated one (200)
    label_id: int | None  # the Label appended for the learner, if this vote is learned
    previous_rating: str | None


@dataclass(frozen=True, slots=True)
class LabelRow:
    id: int
    reply_id: str
    source: str
    value: int
    weight: float
    created_at: float
    confidence: float
    features_json: str
    end_user: str | None


class Store:
    def __init__(self, url: str, *, commit_batch: int = 256, config_hint: str = "config.toml"):
        self.url = url
        self.commit_batch = commit_batch
        self.config_hint = config_hint
        self._engine: AsyncEngine | None = None
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"Store({redact_url(self.url)!r})"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, *, migrate: bool = True) -> None:
        if migrate:
            await ensure_schema_async(self.url, config_hint=self.config_hint)
        kwargs: dict[str, Any] = {}
        if not is_sqlite(self.url):
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        engine = create_async_engine(async_url(self.url), **kwargs)
        if is_sqlite(self.url):

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit is on disk before we acknowledge it, even on power loss.
                cursor.execute("PRAGMA synchronous=FULL")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

        self._engine = engine
        self._writer = asyncio.create_task(self._write_loop(), name="hitl-store-writer")

    async def close(self) -> None:
        if self._writer is not None:
            # Let queued jobs finish: they were promised durability.
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the store is not started (call Store.start() in the lifespan)")
        return self._engine

    def on_label(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments, must not block) after a label is committed."""
        self._listeners.append(listener)

    def notify_label(self) -> None:
        for listener in self._listeners:
            listener()

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2.0), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except (SQLAlchemyError, OSError, TimeoutError, StoreError):
            return False

    # -- the writer --------------------------------------------------------------

    async def write(self, job: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``job`` in the writer's next transaction; return once it is committed."""
        if self._writer is None or self._writer.done():
            raise StoreError("the store writer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.commit_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._run_batch(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _run_batch(self, batch: list[tuple[Job, asyncio.Future[Any]]]) -> None:
        live = [(job, fut) for job, fut in batch if not fut.cancelled()]
        if not live:
            return
        try:
            async with self.engine.begin() as conn:
                results = [await job(conn) for job, _ in live]
        except Exception:
            if len(live) == 1:
                await self._run_alone(*live[0])
            else:
                for job, fut in live:
                    await self._run_alone(job, fut)
            return
        for (_, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def _run_alone(self, job: Job, fut: asyncio.Future[Any]) -> None:
        try:
            async with self.engine.begin() as conn:
                result = await job(conn)
        except SQLAlchemyError as exc:
            if not fut.done():
                fut.set_exception(StoreError(f"the database refused a write: {exc}"))
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
        else:
            if not fut.done():
                fut.set_result(result)

    # -- exchanges ---------------------------------------------------------------

    async def record_exchange(
        self, exchange: dict[str, Any], escalation: dict[str, Any] | None = None
    ) -> None:
        """Commit one exchange (and its escalation, the outbox row) together."""

        async def job(conn: AsyncConnection) -> None:
            await conn.execute(insert(exchange_t), [exchange])
            if escalation is not None:
                await conn.execute(insert(escalation_t), [escalation])

        await self.write(job)

    async def get_exchange(self, reply_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(exchange_t).where(exchange_t.c.id == reply_id))
            ).first()
        return dict(row._mapping) if row is not None else None

    async def exchange_exists(self, reply_id: str) -> bool:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(exchange_t.c.id).where(exchange_t.c.id == reply_id))
            ).first()
        return row is not None

    # -- feedback and labels -----------------------------------------------------

    async def vote(
        self,
        *,
        reply_id: str,
        voter: str,
        rating: str,
        reason: str | None,
        comment: str | None,
        correction: str | None,
        weight: float,
        now: float | None = None,
    ) -> VoteResult:
        """Store a vote (last vote wins). The first vote on a reply becomes a label."""
        at = time.time() if now is None else now
        value = 1 if rating == "up" else 0

        async def job(conn: AsyncConnection) -> VoteResult:
            existing = (
                await conn.execute(
                    select(feedback_t.c.id, feedback_t.c.rating).where(
                        feedback_t.c.reply_id == reply_id, feedback_t.c.voter == voter
                    )
                )
            ).first()
            if existing is not None:
                await conn.execute(
                    update(feedback_t)
                    .where(feedback_t.c.id == existing.id)
                    .values(
                        rating=rating,
                        reason=reason,
                        comment=comment,
                        correction=correction,
                        updated_at=at,
                        changes=feedback_t.c.changes + 1,
                    )
                )
                return VoteResult(created=False, label_id=None, previous_rating=existing.rating)
            await conn.execute(
                insert(feedback_t).values(
                    reply_id=reply_id,
                    voter=voter,
                    rating=rating,
                    reason=reason,
                    comment=comment,
                    correction=correction,
                    created_at=at,
                    updated_at=at,
                    changes=0,
                )
            )
            # Only the first end-user label of a reply is learned.
            learned = (
                await conn.execute(
                    select(func.count())
                    .select_from(label_t)
                    .where(label_t.c.reply_id == reply_id, label_t.c.source == "user")
                )
            ).scalar_one()
            label_id = None
            if not learned:
                result = await conn.execute(
                    insert(label_t)
                    .values(reply_id=reply_id, source="user", value=value, weight=weight, created_at=at)
                    .returning(label_t.c.id)
                )
                label_id = int(result.scalar_one())
            return VoteResult(created=True, label_id=label_id, previous_rating=None)

        result = await self.write(job)
        if result.label_id is not None:
            self.notify_label()
        return result

    async def feedback_for(self, reply_id: str) -> dict[str, Any] | None:
        """The newest end-user vote on a reply, or None."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(feedback_t)
                    .where(feedback_t.c.reply_id == reply_id)
                    .order_by(feedback_t.c.updated_at.desc())
                    .limit(1)
                )
            ).first()
        return dict(row._mapping) if row is not None else None

    async def labels_after(self, label_id: int, limit: int = 1000) -> list[LabelRow]:
        """Labels newer than ``label_id``, oldest first, with what was predicted."""
        query = (
            select(
                label_t.c.id,
                label_t.c.reply_id,
                label_t.c.source,
                label_t.c.value,
                label_t.c.weight,
                label_t.c.created_at,
                exchange_t.c.confidence,
                exchange_t.c.features_json,
                exchange_t.c.end_user,
            )
            .join(exchange_t, exchange_t.c.id == label_t.c.reply_id)
            .where(label_t.c.id > label_id)
            .order_by(label_t.c.id)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [LabelRow(**row._mapping) for row in rows]

    async def user_label_counts(self) -> dict[str, tuple[int, int]]:
        """(helpful, total) end-user labels per end user, to rebuild running rates."""
        query = (
            select(exchange_t.c.end_user, func.sum(label_t.c.value), func.count())
            .join(exchange_t, exchange_t.c.id == label_t.c.reply_id)
            .where(label_t.c.source == "user", exchange_t.c.end_user.is_not(None))
            .group_by(exchange_t.c.end_user)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {row[0]: (int(row[1] or 0), int(row[2])) for row in rows}

    # -- model snapshots ---------------------------------------------------------

    async def save_snapshot(self, blob: bytes, *, last_label_id: int, labels: int) -> None:
        async def job(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(snapshot_t).values(
                    created_at=time.time(), last_label_id=last_label_id, labels=labels, blob=blob
                )
            )
            # Snapshots are a cache: keep the newest few.
            keep = (
                select(snapshot_t.c.id).order_by(snapshot_t.c.id.desc()).limit(3).scalar_subquery()
            )
            await conn.execute(snapshot_t.delete().where(snapshot_t.c.id.not_in(keep)))

        await self.write(job)

    async def latest_snapshot(self) -> ModelSnapshot | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(snapshot_t).order_by(snapshot_t.c.id.desc()).limit(1))
            ).first()
        return ModelSnapshot(**row._mapping) if row is not None else None

    # -- events and small values -------------------------------------------------

    async def add_event(self, kind: str, data: dict[str, Any], *, at: float | None = None) -> None:
        values = {
            "created_at": time.time() if at is None else at,
            "kind": kind,
            "data_json": json.dumps(data),
        }

        async def job(conn: AsyncConnection) -> None:
            await conn.execute(insert(event_t).values(**values))

        await self.write(job)

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(event_t).order_by(event_t.c.id)
        if kind is not None:
            query = query.where(event_t.c.kind == kind)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [dict(row._mapping) for row in rows]

    async def get_or_create_value(self, key: str, factory: Callable[[], str]) -> str:
        """The stored value for ``key``; the first caller's ``factory()`` wins."""

        async def job(conn: AsyncConnection) -> str:
            row = (await conn.execute(select(kv_t.c.value).where(kv_t.c.key == key))).first()
            if row is not None:
                return str(row[0])
            value = factory()
            await conn.execute(insert(kv_t).values(key=key, value=value))
            return value

        return await self.write(job)

    # -- escalations (the outbox) --------------------------------------------------

    async def escalation_for(self, reply_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(escalation_t)
                    .where(escalation_t.c.reply_id == reply_id)
                    .order_by(escalation_t.c.id.desc())
                    .limit(1)
                )
            ).first()
        return dict(row._mapping) if row is not None else None

    async def add_escalation(self, values: dict[str, Any]) -> int:
        async def job(conn: AsyncConnection) -> int:
            result = await conn.execute(
                insert(escalation_t).values(**values).returning(escalation_t.c.id)
            )
            return int(result.scalar_one())

        return await self.write(job)

    async def count_rows(self, model: type[Any]) -> int:
        table = model.__table__
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    async def fetch_all(self, query: Any) -> Sequence[Any]:
        """Run a read-only query (for reports and tests)."""
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).all()
