"""The store: an async API over SQLAlchemy Core, and the one thing callers hold.

``Store`` owns the engine, the reader threads and the writer (``writer.py``: every
write goes through one writer, grouped into few commits). Its query methods are thin:
the SQL lives in ``exchanges.py``, ``escalations.py`` and ``reviews.py`` as plain functions of a
connection, and what comes back is a frozen row from ``rows.py``.

Reads run on a small thread pool: database work crosses to a thread once per batch
or read, not once per statement as with the async drivers.

Every read, write and start goes through ``_mapped``: database errors become
``StoreError`` there and nowhere else, so nothing above the store handles them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from feedback_store import escalations, exchanges, queue, reviews
from feedback_store.connect import Sync, create_store_engine
from feedback_store.errors import OPEN, READ, WRITE, StoreError, describe
from feedback_store.queue import QueuedItem
from feedback_store.rows import (
    EscalationRow,
    EventRow,
    ExchangeRow,
    FeedbackRow,
    LabelRow,
    NewEscalation,
    NewExchange,
    ReviewCounts,
    ReviewResult,
    ReviewVoteRow,
    SnapshotRow,
    StoreGauges,
    VoteResult,
)
from feedback_store.schema import ensure_schema_async
from feedback_store.urls import is_sqlite, redact_url
from feedback_store.writer import Writer

T = TypeVar("T")

NOT_STARTED = "the store is not started (call Store.start() in the lifespan)"


class Store:
    def __init__(
        self,
        url: str,
        *,
        commit_batch: int = 256,
        config_hint: str = "config.toml",
        sync: Sync = "full",
    ):
        """``sync``: what a commit waits for (``connect.Sync``). With "off" (throwaway
        SQLite stores such as ``hitl replay``'s) the statements run on the event loop."""
        self.url = url
        self.sync = sync
        self.commit_batch = commit_batch
        self.config_hint = config_hint
        self._engine: Engine | None = None
        self._writer: Writer | None = None
        self._read_threads: ThreadPoolExecutor | None = None
        #: SQLite only: the connection ``ping`` asks on the event loop
        self._pinger: Any = None

    def __repr__(self) -> str:
        return f"Store({redact_url(self.url)!r})"

    # -- the error boundary --------------------------------------------------------

    @contextlib.contextmanager
    def _mapped(self, action: str) -> Iterator[None]:
        """Database errors inside become ``StoreError``, saying what failed and what to do."""
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(describe(exc, action, self.url, self.config_hint)) from exc

    # -- lifecycle ---------------------------------------------------------------

    async def start(self, *, migrate: bool = True) -> None:
        with self._mapped(OPEN):
            if migrate:
                await ensure_schema_async(self.url, config_hint=self.config_hint)
            self._engine = create_store_engine(self.url, self.sync)
        self._read_threads = ThreadPoolExecutor(4, thread_name_prefix="hitl-store-reader")
        self._writer = Writer(
            self._engine, commit_batch=self.commit_batch, threaded=self.sync != "off"
        )

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        if self._read_threads is not None:
            self._read_threads.shutdown(wait=True)
            self._read_threads = None
        if self._pinger is not None:
            self._pinger.close()
            self._pinger = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StoreError(NOT_STARTED)
        return self._engine

    # -- reading and writing -----------------------------------------------------

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` on a reader thread; database errors become ``StoreError``."""
        if self._read_threads is None:
            raise StoreError(NOT_STARTED)
        engine = self.engine

        def run() -> T:
            try:
                with engine.connect() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            # A pooled connection the database dropped (a restart): a read is safe to
            # run again, on a fresh one.
            with engine.connect() as conn:
                return fn(conn)

        with self._mapped(READ):
            if self.sync == "off":
                return run()
            return await asyncio.get_running_loop().run_in_executor(self._read_threads, run)

    async def write(self, job: Callable[[Connection], T]) -> T:
        """Run ``job(conn)`` in the writer's next transaction; return once it is committed.

        Database errors become ``StoreError``; any other exception of the job is its own.
        """
        if self._writer is None or not self._writer.running:
            raise StoreError("the store writer is not running")
        with self._mapped(WRITE):
            return await self._writer.submit(job)

    async def ping(self) -> bool:
        """Whether the database answers (asked before every stream starts). SQLite, a
        file, on the loop on a connection of its own: no thread hop, no pool checkout."""
        if is_sqlite(self.url) and self._engine is not None:
            try:
                with self._mapped(READ):  # a plain SELECT opens no transaction in sqlite3
                    self._pinger = self._pinger or self._engine.raw_connection()
                    self._pinger.cursor().execute("SELECT 1").fetchone()
                return True
            except StoreError:
                return False
        try:
            async with asyncio.timeout(2.0):
                await self.read(lambda conn: conn.execute(text("SELECT 1")).scalar())
            return True
        except (TimeoutError, StoreError):
            return False

    # -- exchanges, votes, labels (exchanges.py) ---------------------------------

    async def record_exchange(
        self, exchange: NewExchange, escalation: NewEscalation | None = None
    ) -> None:
        """Commit one exchange (and its escalation, the outbox row) together."""
        await self.write(exchanges.record(exchange, escalation))

    async def get_exchange(self, reply_id: str) -> ExchangeRow | None:
        return await self.read(lambda conn: exchanges.get(conn, reply_id))

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
        vote = exchanges.Vote(
            reply_id=reply_id,
            rating=rating,
            reason=reason,
            comment=comment,
            correction=correction,
            weight=weight,
            at=time.time() if now is None else now,
        )
        return await self.write(lambda conn: exchanges.vote(conn, vote, voter))

    async def feedback_for(self, reply_id: str) -> FeedbackRow | None:
        """The newest vote on a reply, or None."""
        return await self.read(lambda conn: exchanges.newest_feedback(conn, reply_id))

    async def labels_after(self, label_id: int, limit: int = 1000) -> list[LabelRow]:
        """Labels newer than ``label_id``, oldest first, with what was predicted."""
        return await self.read(lambda conn: exchanges.labels_after(conn, label_id, limit))

    async def save_snapshot(
        self, blob: bytes, *, last_label_id: int, labels: int, meta: dict[str, Any] | None = None
    ) -> bool:
        """False when a newer ``meta["generation"]`` (a promotion) is stored: not written."""
        return await self.write(
            lambda conn: exchanges.save_snapshot(
                conn, blob, last_label_id=last_label_id, labels=labels, at=time.time(), meta=meta
            )
        )

    async def latest_snapshot(self) -> SnapshotRow | None:
        return await self.read(exchanges.latest_snapshot)

    async def latest_snapshot_id(self) -> int | None:
        return await self.read(exchanges.latest_snapshot_id)

    async def add_event(self, kind: str, data: dict[str, Any], *, at: float | None = None) -> None:
        when = time.time() if at is None else at
        data_json = json.dumps(data)
        await self.write(lambda conn: exchanges.add_event(conn, kind, data_json, at=when))

    async def events(self, kind: str | None = None) -> list[EventRow]:
        return await self.read(lambda conn: exchanges.events(conn, kind))

    async def claim_announcements(
        self, kind: str, *, now: float, limit: int = 20
    ) -> list[EventRow]:
        """Events of ``kind`` not yet announced in the review channel, marked announced
        at ``now`` (claimed: no other dispatcher gets them); oldest first."""
        return await self.write(lambda conn: exchanges.claim_announcements(conn, kind, now, limit))

    async def unclaim_announcement(self, event_id: int) -> None:
        """The announcement failed: the event is due again."""
        await self.write(lambda conn: exchanges.unclaim_announcement(conn, event_id))

    async def get_or_create_value(self, key: str, factory: Callable[[], str]) -> str:
        """The stored value for ``key``; the first caller's ``factory()`` wins."""
        return await self.write(lambda conn: exchanges.get_or_create_value(conn, key, factory))

    async def value(self, key: str) -> str | None:
        """The stored value for ``key``, or None."""
        return await self.read(lambda conn: exchanges.value(conn, key))

    async def put_value(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing what was there."""
        await self.write(lambda conn: exchanges.put_value(conn, key, value))

    async def count_rows(self, model: type[Any]) -> int:
        return await self.read(lambda conn: exchanges.count_rows(conn, model.__table__))

    # -- escalations, the outbox (escalations.py), reviews (reviews.py) ----------

    async def escalation_for(self, reply_id: str) -> EscalationRow | None:
        """The newest escalation of a reply, or None."""
        return await self.read(lambda conn: escalations.newest(conn, reply_id))

    async def add_escalation(self, escalation: NewEscalation) -> int:
        return await self.write(lambda conn: escalations.add(conn, escalation))

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
        votes_required: int = 1,
    ) -> ReviewResult | None:
        """Commit one reviewer's vote (``state``: the verdict as the state it leaves) on
        the reply's newest escalation, with its label; it decides the item when its side
        reaches ``votes_required`` (``reviews.py``). Nothing is stored when the item is
        decided or this reviewer voted on it already; None when the reply is unknown;
        ``ReplayedReply`` for one ``hitl replay`` stored.
        """
        ballot = reviews.Ballot.of_state(
            state,
            reviewer=reviewer,
            reason=reason,
            correction=correction,
            value=value,
            weight=weight,
            at=now,
            votes_required=votes_required,
        )
        return await self.write(lambda conn: reviews.record_review(conn, reply_id, ballot))

    async def review_votes(self, reply_id: str) -> list[ReviewVoteRow]:
        """The votes on the reply's newest escalation, oldest first."""
        return await self.read(lambda conn: reviews.votes(conn, reply_id))

    async def record_release(
        self, reply_id: str, *, released: str, at: float, timed_out: bool
    ) -> None:
        """What a hold released (original, correction or fallback), on the reply's newest
        escalation; the first release is the one on record."""
        await self.write(
            lambda conn: reviews.record_release(
                conn, reply_id, released=released, at=at, timed_out=timed_out
            )
        )

    async def open_review(self, reply_id: str, *, trigger: str, now: float) -> int | None:
        """Queue a review of ``reply_id`` unless it has one; the new escalation's id or None.

        An undecided card already in the channel is marked stale instead, so it is redrawn
        with what changed (a user's complaint).
        """
        return await self.write(lambda conn: escalations.open_review(conn, reply_id, trigger, now))

    async def claim_escalations(
        self, *, now: float, lease_s: float, limit: int, keep_due: bool = False
    ) -> list[EscalationRow]:
        """Due outbox rows (to post, or cards to redraw), leased to this caller for ``lease_s``.

        The lease is a conditional update, so two dispatchers never take the same row.
        ``keep_due``: rows keep the ``next_attempt_at`` they were due at (not the lease's end).
        """
        job = escalations.lease if keep_due else escalations.claim
        return await self.write(lambda conn: job(conn, now=now, until=now + lease_s, limit=limit))

    async def mark_posted(self, escalation_id: int, *, channel: str, ts: str, now: float) -> None:
        """The card is in the channel. Decided meanwhile: keep the verdict, redraw the card."""
        await self.write(
            lambda conn: escalations.mark_posted(conn, escalation_id, channel, ts, now)
        )

    async def mark_card_current(self, escalation_id: int) -> None:
        await self.write(lambda conn: escalations.mark_card_current(conn, escalation_id))

    async def retry_escalation(
        self, escalation_id: int, *, attempts: int, at: float, error: str
    ) -> None:
        await self.write(
            lambda conn: escalations.retry(
                conn, escalation_id, attempts=attempts, at=at, error=error
            )
        )

    async def defer_escalations(self, escalation_ids: Sequence[int], *, at: float) -> None:
        """Move rows to ``at`` without counting an attempt (channel-wide pauses, parking)."""
        if escalation_ids:
            ids = list(escalation_ids)
            await self.write(lambda conn: escalations.defer(conn, ids, at))

    async def dead_letter(
        self, escalation: EscalationRow, *, error: str, now: float, card_only: bool
    ) -> None:
        """A permanent channel error: the post goes to state ``failed`` (or, for a card
        redraw, the card is left as it is), with an ``review_dead_letter`` event."""
        await self.write(
            lambda conn: escalations.dead_letter(conn, escalation, error, now, card_only)
        )

    async def unpark_escalations(self, *, parked_from: float, now: float) -> int:
        """Pending rows parked at or after ``parked_from`` become due now; how many."""
        return await self.write(lambda conn: escalations.unpark(conn, parked_from, now))

    async def next_escalation_due(self) -> float | None:
        """When the outbox next has work (a time, maybe past), or None when it is empty."""
        return await self.read(escalations.next_due)

    async def open_reviews(
        self, limit: int = 200, states: tuple[str, ...] = queue.OPEN_STATES
    ) -> list[QueuedItem]:
        """Review items in ``states`` (default: undecided), held first, then oldest first."""
        return await self.read(lambda conn: queue.open_items(conn, limit, states))

    async def review_counts(self) -> ReviewCounts:
        """Escalations per state."""
        return await self.read(escalations.counts)

    async def gauges(self, *, auc_window: int) -> StoreGauges:
        """The outbox backlog and the model's ROC AUC over the newest ``auc_window`` labels."""
        return await self.read(lambda conn: escalations.gauges(conn, auc_window))
