"""The single writer of the brain: restore, learn every committed label, snapshot.

The store's labels are the truth; the brain (``middleware.learning.brain``) is a cache
of having learned them in order. ``Learner`` is the only code that mutates it: on start
it loads the newest snapshot and replays the labels after it (before the port opens);
then it is woken on every committed label, scores the label against the prediction
stored at reply time (progressive validation), learns it, watches the error stream for
drift, and snapshots now and then and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from feedback_store import Store, StoreError
from middleware.learning.brain import Brain, DriftEvent

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
    ) -> None:
        self.store = store
        self.brain = brain
        self.snapshot_every_labels = snapshot_every_labels
        self.snapshot_interval_s = snapshot_interval_s
        self.poll_s = poll_s
        self.on_drift = on_drift
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._snapshot_labels = 0
        self._snapshot_at = clock()
        self._idle = asyncio.Event()
        self._idle.set()

    def wake(self) -> None:
        self._wake.set()
        self._idle.clear()

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
        replayed = await self.step()
        self._snapshot_labels = self.brain.labels
        if replayed:
            await self.snapshot()
        return replayed

    async def step(self) -> int:
        """Learn every committed label not yet learned; returns how many."""
        learned = 0
        while True:
            rows = await self.store.labels_after(self.brain.last_label_id, limit=1000)
            for row in rows:
                event = self.brain.learn_label(row, now=self.clock())
                learned += 1
                if event is not None:
                    await self._record_drift(event)
            if len(rows) < 1000:
                break
        self.brain.absorb_unlabelled()
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
        await self.store.save_snapshot(
            self.brain.to_bytes(), last_label_id=self.brain.last_label_id, labels=self.brain.labels
        )
        self._snapshot_labels = self.brain.labels
        self._snapshot_at = self.clock()

    async def _maybe_snapshot(self) -> None:
        due_labels = self.brain.labels - self._snapshot_labels >= self.snapshot_every_labels
        due_time = (
            self.brain.labels > self._snapshot_labels
            and self.clock() - self._snapshot_at >= self.snapshot_interval_s
        )
        if due_labels or due_time:
            await self.snapshot()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.step()
                await self._maybe_snapshot()
            except StoreError as exc:
                log.error("learner could not read or write the store (%s); retrying", exc)
                await asyncio.sleep(self.poll_s)
            finally:
                if not self._wake.is_set():
                    self._idle.set()

    async def idle(self) -> None:
        """Wait until every label committed so far has been learned (for tests, replay)."""
        await self._idle.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="hitl-learner")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StoreError):
            await self.step()
            if self.brain.labels != self._snapshot_labels:
                await self.snapshot()
