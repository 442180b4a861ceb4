"""The review outbox: a dispatcher that gets escalations into the reviewer channel.

The escalation row is committed with the exchange; this task, woken on commit, posts
it, redraws cards after a verdict, and retries with exponential backoff and jitter
(honouring a rate limit's Retry-After). A permanent error dead-letters the row (state
``failed``, an event). All state is in the database, so a restart picks up where the
last process stopped, and a row is leased before it is posted, so two dispatchers
never post it twice.

The retry decisions are pure functions (``backoff_delay``, ``retry_delay``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from feedback_store import EscalationRow, Store, StoreError
from middleware.errors import ReviewChannelPermanent, ReviewChannelRetryable
from middleware.ports import PostedCard, ReviewChannel, ReviewItem

log = logging.getLogger("hitl.outbox")

#: ``next_attempt_at`` of rows waiting for a channel that only logs; far in the future,
#: and brought back to "now" when a real channel starts
PARKED_AT = 1e15


def drift_text(data_json: str) -> str:
    """The channel's drift announcement, from the event's figures (pure)."""
    try:
        data = json.loads(data_json)
        before, after = float(data["error_before"]), float(data["error_after"])
        labels = int(data.get("labels", 0))
    except (ValueError, KeyError, TypeError):
        return "The model's error rate has drifted; its recent scores may be less reliable."
    return (
        f"Drift: after {labels} labels the model's error rate moved from {before:.1%} to "
        f"{after:.1%}. Its recent scores may be less reliable; your reviews now teach it most."
    )


class LogChannel:
    """No reviewer channel configured: say once that a reply waits for the review API."""

    async def post(self, item: ReviewItem) -> PostedCard | None:
        log.warning(
            "reply %s needs review (%s, confidence %.2f): no reviewer channel is configured; "
            "decide with POST /v1/reviews/%s",
            item.reply_id,
            "; ".join(item.reasons) or item.trigger,
            item.confidence,
            item.reply_id,
        )
        return None

    async def update(self, card: PostedCard, item: ReviewItem) -> None:
        return None

    async def announce(self, text: str) -> None:
        log.warning("%s", text)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 300.0
    #: share of each delay that is random (0: none, 1: "full jitter")
    jitter: float = 0.5
    #: how long a claimed row is ours before another dispatcher may take it
    lease_s: float = 60.0
    #: look at the table at least this often, for rows other processes committed
    poll_s: float = 30.0
    batch: int = 20


def backoff_delay(attempt: int, policy: RetryPolicy, rand: float) -> float:
    """Seconds before retry number ``attempt`` (1, 2, ...): doubling, capped, jittered.

    ``rand`` in [0, 1) picks the point within the jitter band.
    """
    raw = min(policy.cap_s, policy.base_s * 2.0 ** max(0, attempt - 1))
    return raw * (1.0 - policy.jitter) + raw * policy.jitter * rand


def retry_delay(attempt: int, retry_after: float | None, policy: RetryPolicy, rand: float) -> float:
    """A rate limit says how long to wait: never less than that, plus a little jitter so
    queued cards don't all return at once; other failures back off."""
    if retry_after is not None and retry_after >= 0:
        return retry_after + 0.1 * policy.base_s * rand
    return backoff_delay(attempt, policy, rand)


ItemLoader = Callable[[EscalationRow], Awaitable[ReviewItem | None]]


class Outbox:
    def __init__(
        self,
        *,
        store: Store,
        channel: ReviewChannel,
        load_item: ItemLoader,
        policy: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.channel = channel
        self.load_item = load_item
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: cards in the channel whose row could not be updated yet: never post those again
        self._unrecorded: dict[int, PostedCard] = {}
        #: after a retryable failure the channel rests until then (rate limits are per app)
        self._paused_until = 0.0

    def wake(self) -> None:
        """Something was committed: look at the outbox now (must be called on the loop)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hitl-review-outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            # Cleared before the pass: a commit during it wakes the next one at once.
            self._wake.clear()
            try:
                wait = await self.run_once()
            except StoreError as exc:
                log.error("review outbox: the store failed (%s); retrying", exc)
                wait = self.policy.base_s
            except Exception:
                log.exception("review outbox: unexpected error; retrying")
                wait = self.policy.base_s
            timeout = (
                self.policy.poll_s if wait is None else min(max(wait, 0.0), self.policy.poll_s)
            )
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    async def run_once(self) -> float | None:
        """One pass over the due rows; seconds until the next is due (None: nothing queued)."""
        policy = self.policy
        now = self.clock()
        if now < self._paused_until:
            return self._paused_until - now
        await self._announce(now)
        rows = await self.store.claim_escalations(
            now=now, lease_s=policy.lease_s, limit=policy.batch
        )
        for index, row in enumerate(rows):
            try:
                await self._deliver(row)
            except ReviewChannelRetryable as exc:
                attempts = row.attempts + 1
                delay = retry_delay(attempts, exc.retry_after, policy, self.rng.random())
                at = self.clock() + delay
                self._paused_until = at
                log.warning(
                    "review card for %s not delivered (%s); retry %d in %.1fs",
                    row.reply_id,
                    exc,
                    attempts,
                    delay,
                )
                await self.store.retry_escalation(row.id, attempts=attempts, at=at, error=str(exc))
                # The channel is unwell, not the row: everything else waits as long.
                await self.store.defer_escalations([r.id for r in rows[index + 1 :]], at=at)
                return delay
            except ReviewChannelPermanent as exc:
                card_only = row.state != "pending"
                log.error(
                    "review card for %s %s: %s (dead letter; fix the channel settings)",
                    row.reply_id,
                    "could not be updated" if card_only else "could not be posted",
                    exc,
                )
                await self.store.dead_letter(
                    row, error=str(exc), now=self.clock(), card_only=card_only
                )
        if len(rows) == policy.batch:
            return 0.0
        due = await self.store.next_escalation_due()
        return None if due is None else due - self.clock()

    async def _deliver(self, row: EscalationRow) -> None:
        item = await self.load_item(row)
        if item is None:
            raise ReviewChannelPermanent(f"the exchange of reply {row.reply_id} is gone")
        if row.state == "pending":
            card = self._unrecorded.pop(row.id, None) or await self.channel.post(item)
            if card is None:
                await self.store.defer_escalations([row.id], at=PARKED_AT)
                return
            try:
                await self.store.mark_posted(
                    row.id, channel=card.channel, ts=card.ts, now=self.clock()
                )
            except StoreError:
                self._unrecorded[row.id] = card
                raise
            log.info("review card for %s posted", row.reply_id)
            return
        await self.channel.update(PostedCard(str(row.channel), str(row.message_ts)), item)
        await self.store.mark_card_current(row.id)

    async def _announce(self, now: float) -> None:
        """Say in the channel, once, that the model drifted. An event is claimed before it
        is posted, so several dispatchers never announce it twice."""
        for drift in await self.store.claim_announcements("drift", now=now):
            try:
                await self.channel.announce(drift_text(drift.data_json))
            except ReviewChannelRetryable as exc:
                log.warning("drift announcement not posted (%s); retrying later", exc)
                await self.store.unclaim_announcement(drift.id)
                return
            except ReviewChannelPermanent as exc:
                log.error("drift announcement not posted: %s", exc)

    async def unpark(self) -> int:
        """Rows parked by a log-only channel become due (a real channel is here now)."""
        return await self.store.unpark_escalations(parked_from=PARKED_AT, now=self.clock())
