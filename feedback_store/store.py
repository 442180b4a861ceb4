"""The store: an async API over SQLAlchemy Core, with every write through one writer.

Writes are *jobs* (``def job(conn: Connection) -> result``, plain synchronous code)
queued to a single writer. The writer takes every job waiting in the queue, runs them
in one transaction on its own thread and commits once (group commit), then resolves
each job's future on the event loop. A caller's ``await`` returns only after its job
is durable, so a 2xx is never sent for something not yet committed. If a grouped
transaction fails, the writer rolls back and reruns each job alone, so one bad job
fails only its own caller.

Reads run on a small thread pool. Database work crosses to a thread once per batch
or read rather than once per statement, which is what the async drivers cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from feedback_store.errors import StoreError
from feedback_store.schema import ensure_schema_async, redact_url
from feedback_store.tables import (
    Escalation,
    Event,
    Exchange,
    Feedback,
    KeyValue,
    Label,
    ModelSnapshot,
)
from feedback_store.urls import is_sqlite, sync_url

T = TypeVar("T")
Job = Callable[[Connection], Any]

exchange_t = Exchange.__table__  # type: ignore[attr-defined]
feedback_t = Feedback.__table__  # type: ignore[attr-defined]
label_t = Label.__table__  # type: ignore[attr-defined]
escalation_t = Escalation.__table__  # type: ignore[attr-defined]
snapshot_t = ModelSnapshot.__table__  # type: ignore[attr-defined]
event_t = Event.__table__  # type: ignore[attr-defined]
kv_t = KeyValue.__table__  # type: ignore[attr-defined]

# The statements on the request and learning paths, built once: SQLAlchemy then skips
# rebuilding and re-keying them per call, which costs more than SQLite's own work.
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
        exchange_t.c.end_user,
    )
    .join(exchange_t, exchange_t.c.id == label_t.c.reply_id)
    .where(label_t.c.id > bindparam("after"))
    .order_by(label_t.c.id)
    .limit(bindparam("limit"))
)


class Inserts:
    """A write job that only inserts rows: the writer batches these into executemany."""

    __slots__ = ("rows",)

    def __init__(self, rows: list[tuple[Any, dict[str, Any]]]) -> None:
        self.rows = rows

    def __call__(self, conn: Connection) -> None:
        for statement, row in self.rows:
            conn.execute(statement, row)


def _broken(exc: SQLAlchemyError) -> bool:
    """Whether the connection itself failed (then the writer opens a new one)."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


@dataclass(frozen=True, slots=True)
class VoteResult:
    created: bool  # a new vote (201) rather than a changed or repeated one (200)
    label_id: int | None  # the Label appended for the learner, if this vote is learned
    previous_rating: str | None
    found: bool = True  # False: no exchange with that reply id; nothing was stored


@dataclass(frozen=True, slots=True)
class ReviewResult:
    applied: bool  # this verdict was committed (False: another reviewer decided first)
    label_id: int | None  # the Label appended for the learner, when applied
    escalation: dict[str, Any]  # the escalation row after the call


#: escalation states that hold a reviewer's verdict: the first one wins
DECIDED_STATES = ("approved", "rejected", "corrected")


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
    def __init__(
        self,
        url: str,
        *,
        commit_batch: int = 256,
        config_hint: str = "config.toml",
        durable: bool = True,
    ):
        """``durable=False`` (SQLite only) skips the fsync per commit and runs the
        statements on the event loop: for throwaway stores such as ``hitl replay``'s,
        never for a gateway's."""
        self.url = url
        self.durable = durable
        self.commit_batch = commit_batch
        self.config_hint = config_hint
        self._engine: Engine | None = None
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._write_thread: ThreadPoolExecutor | None = None
        self._writer_conn: Connection | None = None
        self._read_threads: ThreadPoolExecutor | None = None
        self._listeners: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"Store({redact_url(self.url)!r})"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, *, migrate: bool = True) -> None:
        if migrate:
            await ensure_schema_async(self.url, config_hint=self.config_hint)
        kwargs: dict[str, Any] = {"pool_size": 6, "max_overflow": 10}
        if is_sqlite(self.url):
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        engine = create_engine(sync_url(self.url), **kwargs)
        if is_sqlite(self.url):
            durable = self.durable

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                # FULL: a commit is on disk before we acknowledge it, even on power loss.
                cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

        self._engine = engine
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="hitl-store-writer")
        self._read_threads = ThreadPoolExecutor(4, thread_name_prefix="hitl-store-reader")
        self._writer = asyncio.create_task(self._write_loop(), name="hitl-store-writer")

    async def close(self) -> None:
        if self._writer is not None:
            # Let queued jobs finish: they were promised durability.
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None
        for pool in (self._write_thread, self._read_threads):
            if pool is not None:
                pool.shutdown(wait=True)
        self._write_thread = self._read_threads = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StoreError("the store is not started (call Store.start() in the lifespan)")
        return self._engine

    def on_label(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments, must not block) after a label is committed."""
        self._listeners.append(listener)

    def notify_label(self) -> None:
        for listener in self._listeners:
            listener()

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader thread; database errors become ``StoreError``."""
        if self._read_threads is None:
            raise StoreError("the store is not started (call Store.start() in the lifespan)")
        engine = self.engine

        def run() -> T:
            with engine.connect() as conn:
                return fn(conn)

        try:
            if not self.durable:
                return run()
            return await asyncio.get_running_loop().run_in_executor(self._read_threads, run)
        except SQLAlchemyError as exc:
            raise StoreError(f"the database could not be read: {exc}") from exc

    async def first(self, query: Any) -> Any:
        """The first row of a read-only query, or None."""
        return await self.read(lambda conn: conn.execute(query).first())

    async def all(self, query: Any) -> Sequence[Any]:
        """Every row of a read-only query."""
        return await self.read(lambda conn: conn.execute(query).all())

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                await self.read(lambda conn: conn.execute(text("SELECT 1")).scalar())
            return True
        except (OSError, TimeoutError, StoreError):
            return False

    # -- the writer --------------------------------------------------------------

    async def write(self, job: Callable[[Connection], T]) -> T:
        """Run ``job(conn)`` in the writer's next transaction; return once it is committed."""
        if self._writer is None or self._writer.done():
            raise StoreError("the store writer is not running")
        if not self.durable:
            # No fsync to wait for: the statements are microseconds of CPU, cheaper on
            # the loop than two thread hops (replay is sequential and pays each hop).
            ((ok, value),) = self._run_batch([job])
            if ok:
                return value
            raise value
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.commit_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                live = [(job, fut) for job, fut in batch if not fut.cancelled()]
                if live:
                    jobs = [job for job, _ in live]
                    outcomes = await loop.run_in_executor(self._write_thread, self._run_batch, jobs)
                    for (_, fut), (ok, value) in zip(live, outcomes, strict=True):
                        if fut.done():
                            continue
                        if ok:
                            fut.set_result(value)
                        else:
                            fut.set_exception(value)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _connection(self) -> Connection:
        """The writer's own connection, kept open: checking one out of the pool and
        resetting it on return costs more than a small transaction."""
        if self._writer_conn is None or self._writer_conn.closed:
            self._writer_conn = self.engine.connect()
        return self._writer_conn

    def _drop_connection(self) -> None:
        if self._writer_conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._writer_conn.invalidate()
                self._writer_conn.close()
            self._writer_conn = None

    def _run_batch(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        """On the writer thread: all jobs in one transaction, else each alone.

        Plain inserts (``Inserts`` jobs, one per recorded exchange) go first, one
        executemany per statement for the whole batch; nothing else in a batch can
        depend on them, since their ids reach clients only after this commit.
        """
        try:
            conn = self._connection()
            with conn.begin():
                grouped: dict[Any, list[dict[str, Any]]] = {}
                for job in jobs:
                    if isinstance(job, Inserts):
                        for statement, row in job.rows:
                            grouped.setdefault(statement, []).append(row)
                for statement, rows in grouped.items():
                    conn.execute(statement, rows)
                results = [None if isinstance(job, Inserts) else job(conn) for job in jobs]
            return [(True, result) for result in results]
        except SQLAlchemyError as exc:
            if _broken(exc):
                self._drop_connection()
        except Exception:
            pass
        return [self._run_alone(job) for job in jobs]

    def _run_alone(self, job: Job) -> tuple[bool, Any]:
        try:
            conn = self._connection()
            with conn.begin():
                return True, job(conn)
        except SQLAlchemyError as exc:
            if _broken(exc):
                self._drop_connection()
            return False, StoreError(f"the database refused a write: {exc}")
        except Exception as exc:
            return False, exc

    # -- exchanges ---------------------------------------------------------------

    async def record_exchange(
        self, exchange: dict[str, Any], escalation: dict[str, Any] | None = None
    ) -> None:
        """Commit one exchange (and its escalation, the outbox row) together."""

        rows = [(_INSERT_EXCHANGE, exchange)]
        if escalation is not None:
            rows.append((_INSERT_ESCALATION, escalation))
        await self.write(Inserts(rows))

    async def get_exchange(self, reply_id: str) -> dict[str, Any] | None:
        row = await self.read(lambda conn: conn.execute(_EXCHANGE, {"reply_id": reply_id}).first())
        return dict(row._mapping) if row is not None else None

    async def vote(
        self,
        *,
        reply_id: str,
        voter: Callable[[str | None], str],
        rating: str,
        reason: str | None,
        comment: str | None,
        correction: str | None,
        weight: float,
        now: float | None = None,
    ) -> VoteResult:
        """Store a vote (last vote wins). The first vote on a reply becomes a label.

        ``voter(end_user)`` names the voter from the exchange's end user, read in the
        same transaction, so a vote costs one round trip to the database.
        """
        at = time.time() if now is None else now
        value = 1 if rating == "up" else 0

        def job(conn: Connection) -> VoteResult:
            rows = conn.execute(_VOTE_CONTEXT, {"reply_id": reply_id}).all()
            if not rows:
                return VoteResult(created=False, label_id=None, previous_rating=None, found=False)
            exchange = rows[0]
            voter_id = voter(exchange.end_user)
            existing = next((row for row in rows if row.voter == voter_id), None)
            values = {
                "rating": rating,
                "reason": reason,
                "comment": comment,
                "correction": correction,
                "updated_at": at,
            }
            if existing is not None:
                conn.execute(_UPDATE_VOTE, {**values, "feedback_id": existing.feedback_id})
                return VoteResult(created=False, label_id=None, previous_rating=existing.rating)
            conn.execute(
                _INSERT_VOTE,
                {**values, "reply_id": reply_id, "voter": voter_id, "created_at": at, "changes": 0},
            )
            # Only the first end-user label of a reply is learned.
            if exchange.learned:
                return VoteResult(created=True, label_id=None, previous_rating=None)
            result = conn.execute(
                _INSERT_LABEL,
                {
                    "reply_id": reply_id,
                    "source": "user",
                    "value": value,
                    "weight": weight,
                    "created_at": at,
                },
            )
            label_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            return VoteResult(created=True, label_id=label_id, previous_rating=None)

        result = await self.write(job)
        if result.label_id is not None:
            self.notify_label()
        return result

    async def feedback_for(self, reply_id: str) -> dict[str, Any] | None:
        """The newest end-user vote on a reply, or None."""
        row = await self.first(
            select(feedback_t)
            .where(feedback_t.c.reply_id == reply_id)
            .order_by(feedback_t.c.updated_at.desc())
            .limit(1)
        )
        return dict(row._mapping) if row is not None else None

    async def labels_after(self, label_id: int, limit: int = 1000) -> list[LabelRow]:
        """Labels newer than ``label_id``, oldest first, with what was predicted."""
        params = {"after": label_id, "limit": limit}
        rows = await self.read(lambda conn: conn.execute(_LABELS_AFTER, params).all())
        return [LabelRow(**row._mapping) for row in rows]

    async def save_snapshot(self, blob: bytes, *, last_label_id: int, labels: int) -> None:
        def job(conn: Connection) -> None:
            conn.execute(
                insert(snapshot_t).values(
                    created_at=time.time(), last_label_id=last_label_id, labels=labels, blob=blob
                )
            )
            # Snapshots are a cache: keep the newest few.
            keep = (
                select(snapshot_t.c.id).order_by(snapshot_t.c.id.desc()).limit(3).scalar_subquery()
            )
            conn.execute(snapshot_t.delete().where(snapshot_t.c.id.not_in(keep)))

        await self.write(job)

    async def latest_snapshot(self) -> ModelSnapshot | None:
        row = await self.first(select(snapshot_t).order_by(snapshot_t.c.id.desc()).limit(1))
        return ModelSnapshot(**row._mapping) if row is not None else None

    # -- events and small values -------------------------------------------------

    async def add_event(self, kind: str, data: dict[str, Any], *, at: float | None = None) -> None:
        values = {
            "created_at": time.time() if at is None else at,
            "kind": kind,
            "data_json": json.dumps(data),
        }

        def job(conn: Connection) -> None:
            conn.execute(insert(event_t).values(**values))

        await self.write(job)

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(event_t).order_by(event_t.c.id)
        if kind is not None:
            query = query.where(event_t.c.kind == kind)
        rows = await self.all(query)
        return [dict(row._mapping) for row in rows]

    async def get_or_create_value(self, key: str, factory: Callable[[], str]) -> str:
        """The stored value for ``key``; the first caller's ``factory()`` wins."""

        def job(conn: Connection) -> str:
            row = (conn.execute(select(kv_t.c.value).where(kv_t.c.key == key))).first()
            if row is not None:
                return str(row[0])
            value = factory()
            conn.execute(insert(kv_t).values(key=key, value=value))
            return value

        return await self.write(job)

    # -- escalations (the outbox) --------------------------------------------------

    async def escalation_for(self, reply_id: str) -> dict[str, Any] | None:
        row = await self.first(
            select(escalation_t)
            .where(escalation_t.c.reply_id == reply_id)
            .order_by(escalation_t.c.id.desc())
            .limit(1)
        )
        return dict(row._mapping) if row is not None else None

    async def add_escalation(self, values: dict[str, Any]) -> int:
        def job(conn: Connection) -> int:
            result = conn.execute(
                insert(escalation_t).values(**values).returning(escalation_t.c.id)
            )
            return int(result.scalar_one())

        return await self.write(job)

    async def record_review(
        self,
        *,
        reply_id: str,
        state: str,
        reviewer: str,
        reason: str | None,
        correction: str | None,
        value: int,
        weight: float,
        now: float,
    ) -> ReviewResult | None:
        """Commit a reviewer's verdict and its label together; the first verdict wins.

        None when the reply is unknown. A reply that was never escalated gets an
        escalation row here (trigger "api"), so every verdict lives in one place.
        """
        esc = escalation_t.c
        verdict = {
            "state": state,
            "decided_by": reviewer,
            "decided_at": now,
            "decision_reason": reason,
            "correction": correction,
        }

        def job(conn: Connection) -> ReviewResult | None:
            if (
                conn.execute(select(exchange_t.c.id).where(exchange_t.c.id == reply_id)).first()
                is None
            ):
                return None
            row = conn.execute(
                select(esc.id).where(esc.reply_id == reply_id).order_by(esc.id.desc()).limit(1)
            ).first()
            if row is None:
                esc_id = conn.execute(
                    insert(escalation_t)
                    .values(
                        reply_id=reply_id,
                        trigger="api",
                        created_at=now,
                        next_attempt_at=now,
                        **verdict,
                    )
                    .returning(esc.id)
                ).scalar_one()
                applied = True
            else:
                esc_id = row.id
                # Conditional, so two processes racing on one item still get one winner.
                applied = (
                    conn.execute(
                        update(escalation_t)
                        .where(esc.id == esc_id, esc.state.not_in(DECIDED_STATES))
                        .values(
                            card_stale=esc.message_ts.is_not(None), next_attempt_at=now, **verdict
                        )
                    ).rowcount
                    == 1
                )
            label_id = None
            if applied:
                label_id = int(
                    conn.execute(
                        insert(label_t)
                        .values(
                            reply_id=reply_id,
                            source="reviewer",
                            value=value,
                            weight=weight,
                            created_at=now,
                        )
                        .returning(label_t.c.id)
                    ).scalar_one()
                )
            current = conn.execute(select(escalation_t).where(esc.id == esc_id)).one()
            return ReviewResult(applied, label_id, dict(current._mapping))

        return await self.write(job)

    async def open_review(self, reply_id: str, *, trigger: str, now: float) -> int | None:
        """Queue a review of ``reply_id`` unless it has one; the new escalation's id or None.

        An undecided card already in the channel is marked stale instead, so it is redrawn
        with what changed (a user's complaint).
        """
        esc = escalation_t.c

        def job(conn: Connection) -> int | None:
            row = conn.execute(
                select(esc.id, esc.state, esc.message_ts)
                .where(esc.reply_id == reply_id)
                .order_by(esc.id.desc())
                .limit(1)
            ).first()
            if row is None:
                return int(
                    conn.execute(
                        insert(escalation_t)
                        .values(
                            reply_id=reply_id,
                            state="pending",
                            trigger=trigger,
                            created_at=now,
                            next_attempt_at=now,
                        )
                        .returning(esc.id)
                    ).scalar_one()
                )
            if row.state == "posted" and row.message_ts is not None:
                conn.execute(
                    update(escalation_t)
                    .where(esc.id == row.id)
                    .values(card_stale=True, next_attempt_at=now)
                )
            return None

        return await self.write(job)

    @staticmethod
    def _outbox_due() -> Any:
        esc = escalation_t.c
        return or_(
            esc.state == "pending", and_(esc.card_stale.is_(True), esc.message_ts.is_not(None))
        )

    async def claim_escalations(
        self, *, now: float, lease_s: float, limit: int
    ) -> list[dict[str, Any]]:
        """Due outbox rows (to post, or cards to redraw), leased to this caller for ``lease_s``.

        The lease is a conditional update, so two dispatchers never take the same row.
        """
        esc = escalation_t.c
        query = (
            select(escalation_t)
            .where(self._outbox_due(), esc.next_attempt_at <= now)
            .order_by(esc.next_attempt_at, esc.id)
            .limit(limit)
        )
        until = now + lease_s

        def job(conn: Connection) -> list[dict[str, Any]]:
            claimed = []
            for row in conn.execute(query).all():
                taken = conn.execute(
                    update(escalation_t)
                    .where(esc.id == row.id, esc.next_attempt_at == row.next_attempt_at)
                    .values(next_attempt_at=until)
                ).rowcount
                if taken == 1:
                    claimed.append({**row._mapping, "next_attempt_at": until})
            return claimed

        return await self.write(job)

    async def mark_posted(self, escalation_id: int, *, channel: str, ts: str, now: float) -> None:
        """The card is in the channel. Decided meanwhile: keep the verdict, redraw the card."""
        esc = escalation_t.c
        where = {"channel": channel, "message_ts": ts, "posted_at": now, "last_error": None}

        def job(conn: Connection) -> None:
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

        await self.write(job)

    async def mark_card_current(self, escalation_id: int) -> None:
        esc = escalation_t.c

        def job(conn: Connection) -> None:
            conn.execute(
                update(escalation_t)
                .where(esc.id == escalation_id)
                .values(card_stale=False, last_error=None)
            )

        await self.write(job)

    async def retry_escalation(
        self, escalation_id: int, *, attempts: int, at: float, error: str
    ) -> None:
        esc = escalation_t.c

        def job(conn: Connection) -> None:
            conn.execute(
                update(escalation_t)
                .where(esc.id == escalation_id)
                .values(attempts=attempts, next_attempt_at=at, last_error=error[:2000])
            )

        await self.write(job)

    async def defer_escalations(self, escalation_ids: Sequence[int], *, at: float) -> None:
        """Move rows to ``at`` without counting an attempt (channel-wide pauses, parking)."""
        if not escalation_ids:
            return
        esc = escalation_t.c

        def job(conn: Connection) -> None:
            conn.execute(
                update(escalation_t)
                .where(esc.id.in_(list(escalation_ids)))
                .values(next_attempt_at=at)
            )

        await self.write(job)

    async def dead_letter(
        self, escalation: dict[str, Any], *, error: str, now: float, card_only: bool
    ) -> None:
        """A permanent channel error: the post goes to state ``failed`` (or, for a card
        redraw, the card is left as it is), with an ``review_dead_letter`` event."""
        esc = escalation_t.c
        data = {
            "escalation_id": escalation["id"],
            "reply_id": escalation["reply_id"],
            "what": "update" if card_only else "post",
            "error": error[:2000],
        }

        def job(conn: Connection) -> None:
            values: dict[str, Any] = {"last_error": error[:2000]}
            if card_only:
                values["card_stale"] = False
                conn.execute(
                    update(escalation_t).where(esc.id == escalation["id"]).values(**values)
                )
            else:
                conn.execute(
                    update(escalation_t)
                    .where(esc.id == escalation["id"], esc.state == "pending")
                    .values(state="failed", **values)
                )
            conn.execute(
                insert(event_t).values(
                    created_at=now, kind="review_dead_letter", data_json=json.dumps(data)
                )
            )

        await self.write(job)

    async def unpark_escalations(self, *, parked_from: float, now: float) -> int:
        """Pending rows parked at or after ``parked_from`` become due now; how many."""
        esc = escalation_t.c

        def job(conn: Connection) -> int:
            return int(
                conn.execute(
                    update(escalation_t)
                    .where(esc.state == "pending", esc.next_attempt_at >= parked_from)
                    .values(next_attempt_at=now)
                ).rowcount
            )

        return await self.write(job)

    async def next_escalation_due(self) -> float | None:
        """When the outbox next has work (a time, maybe past), or None when it is empty."""
        query = select(func.min(escalation_t.c.next_attempt_at)).where(self._outbox_due())
        value = await self.read(lambda conn: conn.execute(query).scalar())
        return None if value is None else float(value)

    async def review_counts(self) -> dict[str, int]:
        """Escalations per state (only states that have any)."""
        query = select(escalation_t.c.state, func.count()).group_by(escalation_t.c.state)
        rows = await self.all(query)
        return {str(row[0]): int(row[1]) for row in rows}

    async def count_rows(self, model: type[Any]) -> int:
        table = model.__table__
        query = select(func.count()).select_from(table)
        return int(await self.read(lambda conn: conn.execute(query).scalar_one()))

    async def fetch_all(self, query: Any) -> Sequence[Any]:
        """Run a read-only query (for reports and tests)."""
        return await self.all(query)
