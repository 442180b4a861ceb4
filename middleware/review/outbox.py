"""The review outbox: a dispatcher that gets escalations into the reviewer channel.

The escalation row is committed with the exchange; this task, woken on commit, posts
it, redraws cards after a verdict, and retries with exponential backoff and jitter
(honouring a rate limit's Retry-After). A permanent error dead-letters the row (state
``failed``, an event). All state is in the database, so a restart picks up where the
last process stopped, and a row is leased before it is posted, so two dispatchers
never post it twice.

A post whose answer was lost (``ReviewChannelAmbiguous``), or a row another process
leased, retried or deferred (it may have died after Slack accepted the post, before the
commit), may already have its card in the channel: such a row is looked up first
(``ReviewChannel.find``) and the card found is adopted, never posted again. Copies left
by older versions are deleted, the oldest kept: the row records one message, so that is
the only card a verdict can redraw.

The decisions are pure functions, in ``retry.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field

from feedback_store import EscalationRow, Store, StoreError
from middleware.errors import (
    ReviewChannelAmbiguous,
    ReviewChannelPermanent,
    ReviewChannelRetryable,
)
from middleware.ports import PostedCard, ReviewChannel, ReviewItem
from middleware.review.retry import RetryPolicy, may_be_in_channel, retry_delay
from middleware.tasks import cancelled

log = logging.getLogger("hitl.outbox")

#: ``next_attempt_at`` of rows waiting for a channel that only logs; far in the future,
#: and brought back to "now" when a real channel starts
PARKED_AT = 1e15
#: a lookup reads the channel back to this long before the escalation was opened
#: (Slack's clock and ours may disagree a little)
LOOKUP_MARGIN_S = 300.0


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
        why = "; ".join(item.reasons) or item.trigger
        if "confidence" not in why:  # most reasons name it already
            why += f", confidence {item.confidence:.2f}"
        log.warning(
            "reply %s needs review (%s): no reviewer channel is configured; decide with "
            "POST /v1/reviews/%s",
            item.reply_id,
            why,
            item.reply_id,
        )
        return None

    async def update(self, card: PostedCard, item: ReviewItem) -> None:
        return None

    async def find(
        self, reply_ids: Collection[str], *, since: float
    ) -> dict[str, list[PostedCard]]:
        return {}

    async def delete(self, card: PostedCard) -> None:
        return None

    async def announce(self, text: str) -> None:
        log.warning("%s", text)


class _LeaseEnding(Exception):
    """Half the lease is gone, or the dispatcher is stopping: the rest of the pass goes
    back to the queue."""


@dataclass(slots=True)
class _Pass:
    """One pass over the leased rows: which are known not to be in the channel, and what
    the lookups found (one ``find`` for all the rows that need it)."""

    rows: Sequence[EscalationRow]
    give_back_at: float
    clean: set[int]
    found: dict[str, list[PostedCard]] = field(default_factory=dict)


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
        #: rows this process put back knowing no card was posted: id -> (attempts, due at)
        self._clean: dict[int, tuple[int, float]] = {}
        #: after a retryable failure the channel rests until then (rate limits are per app)
        self._paused_until = 0.0
        self._stopping = False

    def wake(self) -> None:
        """Something was committed: look at the outbox now (must be called on the loop)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="hitl-review-outbox")

    async def stop(self) -> None:
        """End the dispatcher, giving back the rows it leased.

        Left leased, they would wait out the lease (a minute) before the next process or
        another dispatcher could post them. The pass in progress ends after the row in
        hand (``stop_grace_s`` at most, then it is cancelled and gives back the rest).
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        await asyncio.wait({task}, timeout=self.policy.stop_grace_s)
        await cancelled(task)

    async def _run(self) -> None:
        while not self._stopping:
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
            now=now, lease_s=policy.lease_s, limit=policy.batch, keep_due=True
        )
        clean = {
            r.id
            for r in rows
            if r.state == "pending" and not may_be_in_channel(r, self._clean.pop(r.id, None))
        }
        if len(self._clean) > 10_000:  # rows other processes took since: forget them
            self._clean.clear()
        run = _Pass(rows=rows, give_back_at=now + policy.lease_s / 2, clean=clean)
        for index, row in enumerate(rows):
            try:
                self._check_lease(run)
                await self._deliver(row, run)
            except _LeaseEnding:
                await self._give_back(run, rows[index:])
                return 0.0
            except asyncio.CancelledError:
                # Stopped with a Slack call or a write in flight: that row may be in the
                # channel now, so it goes back unclean and is looked up before a post.
                await self._give_back(run, rows[index:])
                raise
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
                if row.id in run.clean:
                    self._clean[row.id] = (attempts, at)
                # The channel is unwell, not the row: everything else waits as long.
                await self._put_back(run, rows[index + 1 :], at=at)
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

    def _check_lease(self, run: _Pass) -> None:
        # Past half the lease another dispatcher may take a row soon: post none after that.
        if self._stopping or self.clock() > run.give_back_at:
            raise _LeaseEnding

    async def _put_back(self, run: _Pass, rows: Sequence[EscalationRow], *, at: float) -> None:
        await self.store.defer_escalations([r.id for r in rows], at=at)
        self._clean.update({r.id: (r.attempts, at) for r in rows if r.id in run.clean})

    async def _give_back(self, run: _Pass, rows: Sequence[EscalationRow]) -> None:
        """Rows of the pass it will not finish become due again at once. One known not
        to be in the channel gets back the due time it was leased at, so whoever takes it
        next sees it as this process found it (never touched: no lookup before the post);
        any other is due now, a time no clean row has, so it is looked up first."""
        now = self.clock()
        back = [(r, r.next_attempt_at if r.id in run.clean else now) for r in rows]
        try:
            await asyncio.gather(*(self.store.defer_escalations([r.id], at=at) for r, at in back))
        except StoreError as exc:
            log.warning(
                "review outbox: %d leased rows not given back (%s); they are posted once "
                "their lease runs out",
                len(rows),
                exc,
            )
            return
        self._clean.update({r.id: (r.attempts, at) for r, at in back if r.id in run.clean})

    async def _deliver(self, row: EscalationRow, run: _Pass) -> None:
        item = await self.load_item(row)
        if item is None:
            raise ReviewChannelPermanent(f"the exchange of reply {row.reply_id} is gone")
        if row.state != "pending":
            await self.channel.update(PostedCard(str(row.channel), str(row.message_ts)), item)
            await self.store.mark_card_current(row.id)
            return
        card = self._unrecorded.pop(row.id, None)
        if card is None and row.id not in run.clean:
            card = await self._adopt(row, item, await self._lookup(row, run))
        if card is None:
            card = await self._post(row, item, run)
            if card is None:
                await self.store.defer_escalations([row.id], at=PARKED_AT)
                return
        try:
            await self.store.mark_posted(row.id, channel=card.channel, ts=card.ts, now=self.clock())
        except StoreError:
            self._unrecorded[row.id] = card
            raise
        log.info("review card for %s posted", row.reply_id)

    async def _post(self, row: EscalationRow, item: ReviewItem, run: _Pass) -> PostedCard | None:
        self._check_lease(run)
        run.clean.discard(row.id)  # from now until Slack answers, the card may be there
        try:
            return await self.channel.post(item)
        except ReviewChannelAmbiguous:
            raise
        except ReviewChannelRetryable:
            run.clean.add(row.id)  # Slack said no, or never heard us
            raise

    async def _lookup(self, row: EscalationRow, run: _Pass) -> list[PostedCard]:
        """The cards of ``row`` in the channel; one ``find`` for every row of the pass that
        needs it."""
        if row.reply_id not in run.found:
            wanted = [
                r
                for r in run.rows
                if r.state == "pending" and r.id not in run.clean and r.reply_id not in run.found
            ]
            since = min(r.created_at for r in wanted) - LOOKUP_MARGIN_S
            found = await self.channel.find([r.reply_id for r in wanted], since=since)
            for r in wanted:
                run.found[r.reply_id] = found.get(r.reply_id, [])
                if not run.found[r.reply_id]:
                    run.clean.add(r.id)
        return run.found[row.reply_id]

    async def _adopt(
        self, row: EscalationRow, item: ReviewItem, cards: list[PostedCard]
    ) -> PostedCard | None:
        """The oldest card found becomes the row's, redrawn as the item is now (votes may
        have come since); the other copies are deleted. None: nothing was found."""
        if not cards:
            return None
        first, *extras = cards
        for extra in extras:
            try:
                await self.channel.delete(extra)
            except ReviewChannelPermanent as exc:
                log.warning(
                    "a second review card for %s (%s) could not be deleted (%s); a click on "
                    "it still decides, but only the first is redrawn",
                    row.reply_id,
                    extra.ts,
                    exc,
                )
        try:
            await self.channel.update(first, item)
        except ReviewChannelPermanent as exc:
            log.warning("review card for %s not redrawn on adoption: %s", row.reply_id, exc)
        log.info(
            "review card for %s was in the channel already (%s): adopted, not posted again%s",
            row.reply_id,
            first.ts,
            f"; {len(extras)} later copies deleted" if extras else "",
        )
        return first

    async def _announce(self, now: float) -> None:
        """Say in the channel, once, that the model drifted. An event is claimed before it
        is posted, so several dispatchers never announce it twice; the ones this pass
        does not get to are given back, to be announced later rather than never."""
        drifts = await self.store.claim_announcements("drift", now=now)
        for index, drift in enumerate(drifts):
            try:
                await self.channel.announce(drift_text(drift.data_json))
            except ReviewChannelRetryable as exc:
                log.warning("drift announcement not posted (%s); retrying later", exc)
                await self._unclaim([d.id for d in drifts[index:]])
                return
            except asyncio.CancelledError:
                # Stopped mid-call: maybe posted, maybe not; said twice beats never.
                await self._unclaim([d.id for d in drifts[index:]])
                raise
            except ReviewChannelPermanent as exc:
                log.error("drift announcement not posted: %s", exc)

    async def _unclaim(self, event_ids: list[int]) -> None:
        try:
            await asyncio.gather(*(self.store.unclaim_announcement(i) for i in event_ids))
        except StoreError as exc:
            log.error("%d drift announcements not given back (%s)", len(event_ids), exc)

    async def unpark(self) -> int:
        """Rows parked by a log-only channel become due (a real channel is here now)."""
        return await self.store.unpark_escalations(parked_from=PARKED_AT, now=self.clock())
