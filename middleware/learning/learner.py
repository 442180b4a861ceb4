"""The single writer of the brain: restore, learn every committed label, snapshot.

The store's labels are the truth; the brain (``middleware.learning.brain``) is a cache
of having learned them in order. ``Learner`` is the only code that mutates it: on start
it loads the newest snapshot and replays the labels after it (before the port opens);
then it is woken on every committed label (and polls, for labels other processes
commit), scores the label against the prediction stored at reply time (progressive
validation), learns it, watches the error stream for drift, and snapshots now and then
and on shutdown.

In a fleet, many processes may run a ``Learner`` but only the one holding the
``Leadership`` learns; the others follow (``Follower``: they serve the newest snapshot,
which the leader publishes every ``publish_s`` while labels arrive) and take over when
the leader goes away, restoring from the newest snapshot and replaying what came after
it, so no label is learned twice or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from feedback_store import Store, StoreError
from feedback_store.leadership import Leadership, SoleLeader
from feedback_store.versions import ModelVersions
from middleware.learning.brain import Brain, DriftEvent
from middleware.learning.retrain import retired
from middleware.learning.versions import mismatch
from middleware.tasks import cancelled

log = logging.getLogger("hitl.learner")


class Learner:
    """The single writer of the brain."""

    def __init__(
        self,
        store: Store,
        brain: Brain,
        *,
        snapshot_every_labels: int = 200,
        snapshot_interval_s: float = 60.0,
        poll_s: float = 1.0,
        on_drift: Callable[[DriftEvent], Any] | None = None,
        clock: Callable[[], float] = time.time,
        leadership: Leadership | None = None,
        publish_s: float = 0.0,
        lead_check_s: float = 1.0,
        gap_grace_s: float = 10.0,
        mode: str = "online",
        batch_every_s: float = 3600.0,
        configured: dict[str, object] | None = None,
        on_learned: Callable[[], None] | None = None,
        on_snapshot: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``on_learned``: labels were learned (the deeper look learns them after the live
        model); ``on_snapshot``: the live model was snapshotted (so is the deeper look)."""
        self.store = store
        self.on_learned = on_learned
        self.on_snapshot = on_snapshot
        self.versions = ModelVersions(store)
        #: online: learn each label as it commits; batch: every ``batch_every_s``
        self.mode = mode
        self.batch_every_s = batch_every_s
        #: the settings this process would build a model with (``versions.built_with``)
        self.configured = configured
        self._generation_at = -math.inf
        self._batch_at = clock()
        self.brain = brain
        self.leadership = leadership or SoleLeader()
        #: > 0: while labels arrive, a snapshot at most this often, for the followers
        self.publish_s = publish_s
        self.lead_check_s = lead_check_s
        self.gap_grace_s = gap_grace_s
        self.follower = Follower(store, brain)
        #: whether this process is the one learning (else it follows)
        self.leading = False
        self._checked_at = -math.inf
        self.snapshot_every_labels = snapshot_every_labels
        self.snapshot_interval_s = snapshot_interval_s
        self.poll_s = poll_s
        self.on_drift = on_drift
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._snapshot_labels = 0
        self._snapshot_at = clock()

    def wake(self) -> None:
        if not self.leading or self.mode == "batch":
            return  # a follower's model comes from the leader's snapshots, on its poll
        self._wake.set()

    async def begin(self) -> int:
        """At start, before the port opens: lead and catch up (returns the labels
        replayed), or follow the leader's newest snapshot."""
        if await self._leads():
            self.leading = True
            replayed = await self.restore()
            await self._record_mode()
        else:
            await self.follower.step()
            log.info("another process is the fleet's learner; serving its newest model")
            replayed = 0
        if self.mismatch:
            log.warning("%s", self.mismatch)
        return replayed

    @property
    def mismatch(self) -> str | None:
        """Why the model served was built with other settings than configured (or None).
        Of the model served now: it changes with every promotion, rollback or snapshot
        this process adopts, as leader or as follower."""
        if self.configured is None:
            return None
        return mismatch(self.brain.built_with, self.configured)

    async def _record_mode(self) -> None:
        """An event when the learning mode differs from the last one recorded (the report
        shows which mode ran when)."""
        modes = await self.store.events("learner_mode")
        now = {"mode": self.mode, "batch_every_s": self.batch_every_s}
        if not modes or orjson.loads(modes[-1].data_json) != now:
            await self.store.add_event("learner_mode", now, at=self.clock())

    async def _leads(self, *, now: float | None = None) -> bool:
        """Whether we lead, checking the lock at most every ``lead_check_s``."""
        now = time.monotonic() if now is None else now
        if self.leading and now - self._checked_at < self.lead_check_s:
            return True
        self._checked_at = now
        return await self.leadership.hold()

    async def tick(self) -> None:
        """One pass: take over, or step down, then learn (leader) or follow."""
        leads = await self._leads()
        if leads and not self.leading:
            self.leading = True
            replayed = await self.restore()
            log.info("took over as the fleet's learner (%d labels replayed)", replayed)
        elif not leads and self.leading:
            self.leading = False
            log.warning("no longer the fleet's learner; following the newest snapshot")
        if self.leading:
            await self._adopt_promoted()
            if self.mode == "online":
                await self.step()
            elif self.clock() - self._batch_at >= self.batch_every_s:
                self._batch_at = self.clock()
                learned = await self.step()
                log.info("batch: %d labels learned", learned)
                if learned:
                    await self.snapshot()
            await self._maybe_snapshot()
        else:
            await self.follower.step()

    async def restore(self) -> int:
        """Load the newest snapshot and replay the labels after it; returns labels replayed."""
        snapshot = await self.store.latest_snapshot()
        if snapshot is not None:
            try:
                brain = Brain.from_bytes(snapshot.blob)
            except Exception as exc:  # a cache we cannot read is rebuilt from the labels
                log.warning(
                    "model snapshot %s unreadable (%s); relearning all labels", snapshot.id, exc
                )
            else:
                self.brain.__dict__.update(brain.__dict__)
                self.brain.generation, self.brain.version = snapshot.generation, snapshot.version
        # In batch mode every batch ends in a snapshot: labels after it wait for the next.
        replayed = await self.step() if self.mode == "online" else 0
        self._snapshot_labels = self.brain.labels
        if replayed:
            await self.snapshot()
        self.follower.snapshot_id = None
        return replayed

    async def step(self) -> int:
        """Learn every committed label not yet learned, in id order; returns how many.

        Label ids are handed out when a vote's transaction starts, so with several
        writers (a fleet) label 8 may commit after label 9: the learner stops at such a
        gap and takes it up on its next pass, rather than passing 8 by for good. A gap
        still open ``gap_grace_s`` after the label behind it was written is a vote that
        rolled back (its id is never used): the learner goes on past it.
        """
        learned = 0
        while True:
            rows = await self.store.labels_after(self.brain.last_label_id, limit=1000)
            now = self.clock()
            for row in rows:
                if (
                    row.id != self.brain.last_label_id + 1
                    and row.created_at > now - self.gap_grace_s
                ):
                    self.brain.absorb_unlabelled()
                    return learned  # an earlier label is still being committed
                event = self.brain.learn_label(row, now=now)
                learned += 1
                if event is not None:
                    await self._record_drift(event)
            if len(rows) < 1000:
                break
        self.brain.absorb_unlabelled()
        if learned and self.on_learned is not None:
            self.on_learned()
        return learned

    async def _record_drift(self, event: DriftEvent) -> None:
        log.warning(
            "drift detected after %d labels: error rate %.3f -> %.3f",
            event.labels,
            event.error_before,
            event.error_after,
        )
        await self.store.add_event(
            "drift",
            {
                "labels": event.labels,
                "error_before": event.error_before,
                "error_after": event.error_after,
            },
            at=event.at,
        )
        if self.on_drift is not None:
            result = self.on_drift(event)
            if asyncio.iscoroutine(result):
                await result

    async def snapshot(self) -> None:
        brain = self.brain
        meta = {
            "generation": brain.generation,
            "version": brain.version,
            "fingerprint": brain.fingerprint,
        }
        saved = await self.store.save_snapshot(
            brain.to_bytes(), last_label_id=brain.last_label_id, labels=brain.labels, meta=meta
        )
        if not saved:  # a promotion or rollback came first: adopt it on the next pass
            self._generation_at = -math.inf
        self._snapshot_labels = brain.labels
        self._snapshot_at = self.clock()
        if self.on_snapshot is not None:
            await self.on_snapshot()

    async def _adopt_promoted(self, *, now: float | None = None) -> bool:
        """Adopt a model a promotion or rollback made live (a newer generation), keeping
        this model's exact state under its version for a rollback; checked at most every
        ``lead_check_s``. The labels after the new model's are then learned as usual."""
        now = time.monotonic() if now is None else now
        if now - self._generation_at < self.lead_check_s:
            return False
        self._generation_at = now
        if await self.versions.live_generation() <= self.brain.generation:
            return False
        snapshot = await self.store.latest_snapshot()
        if snapshot is None or snapshot.generation <= self.brain.generation:
            return False
        brain = await asyncio.to_thread(Brain.from_bytes, snapshot.blob)
        old = self.brain
        await self.versions.keep(retired(old, version=old.version, blob=old.to_bytes()))
        self.brain.adopt(brain)
        self.brain.generation, self.brain.version = snapshot.generation, snapshot.version
        self.follower.snapshot_id = snapshot.id
        self._snapshot_labels = self.brain.labels
        log.warning(
            "model version %d is live (generation %d): learning on from it",
            snapshot.version,
            snapshot.generation,
        )
        return True

    async def _maybe_snapshot(self) -> None:
        due_labels = self.brain.labels - self._snapshot_labels >= self.snapshot_every_labels
        due_time = (
            self.brain.labels > self._snapshot_labels
            and self.clock() - self._snapshot_at >= self.snapshot_interval_s
        )
        due_publish = (
            self.publish_s > 0
            and self.brain.labels > self._snapshot_labels
            and self.clock() - self._snapshot_at >= self.publish_s
        )
        if due_labels or due_time or due_publish:
            await self.snapshot()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick()
            except StoreError as exc:
                log.error("learner could not read or write the store (%s); retrying", exc)
                await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="hitl-learner")

    async def close(self) -> None:
        await cancelled(self._task)
        self._task = None
        if self.leading:
            with contextlib.suppress(StoreError):
                if self.mode == "online":
                    await self.step()
                if self.brain.labels != self._snapshot_labels:
                    await self.snapshot()
        self.leading = False
        await self.leadership.release()


class Follower:
    """Serves the fleet learner's newest snapshot in a process that does not learn."""

    def __init__(self, store: Store, brain: Brain) -> None:
        self.store = store
        self.brain = brain
        #: the snapshot served now (None: none adopted yet)
        self.snapshot_id: int | None = None

    async def step(self) -> bool:
        """Adopt the newest snapshot if it is new; True when it was."""
        # The outlier detector learns from this process's own traffic.
        self.brain.absorb_unlabelled()
        newest = await self.store.latest_snapshot_id()
        if newest is None or newest == self.snapshot_id:
            return False
        snapshot = await self.store.latest_snapshot()
        if snapshot is None:
            return False
        try:
            brain = await asyncio.to_thread(Brain.from_bytes, snapshot.blob)
        except Exception as exc:  # a cache we cannot read: keep serving what we have
            log.warning("model snapshot %s unreadable (%s); keeping the model", snapshot.id, exc)
            self.snapshot_id = snapshot.id
            return False
        self.brain.adopt(brain)
        self.brain.generation, self.brain.version = snapshot.generation, snapshot.version
        self.snapshot_id = snapshot.id
        return True
