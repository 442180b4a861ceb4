"""Hold a risky reply until a person decides: the waiting side of a hold.

A held reply's exchange and escalation are committed like any other; then the client's
request waits here. It is released as a reviewer decided (approve: the original reply;
correct: exactly the correction; reject: the fallback), or with the fallback when the
timeout passes, or when the gateway shuts down (``stop_waiting``, at the end of the
shutdown grace). It fails closed: nothing but a committed decision ever releases the
original text, a store that cannot be read keeps the client waiting until the timeout,
and a process that dies while a client waits releases nothing.

A decision taken in this process wakes the waiter at once (``decided``, a hook); one
taken by another process is found by reading the escalation every ``poll_s``.

A correction is released as the reviewer wrote it when the decision was taken in this
process (the store keeps it masked, ``[privacy] redact``); one taken elsewhere is
released as stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from feedback_store import EscalationRow, Store, StoreError
from middleware.ports import ReviewOutcome

log = logging.getLogger("hitl.hold")

Released = Literal["original", "correction", "fallback"]


@dataclass(frozen=True, slots=True)
class Release:
    """What a held client receives."""

    #: "original" (approved), "correction" (corrected) or "fallback"
    released: Released
    text: str
    #: the fallback was sent because nobody decided in time
    timed_out: bool = False
    #: the review state that decided it (None: timed out)
    state: str | None = None


def release_of(escalation: EscalationRow | None, original: str, fallback: str) -> Release | None:
    """What a hold releases once its escalation says so, or None while undecided (pure)."""
    if escalation is None:
        return None
    if escalation.state == "approved":
        return Release("original", original, state="approved")
    if escalation.state == "corrected" and escalation.correction:
        return Release("correction", escalation.correction, state="corrected")
    if escalation.state in ("rejected", "corrected"):
        return Release("fallback", fallback, state=escalation.state)
    return None


class Holds:
    """Clients waiting for a reviewer in this process, by reply id."""

    def __init__(
        self,
        *,
        store: Store,
        timeout_s: float,
        fallback: str,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s
        self.fallback = fallback
        self.poll_s = poll_s
        self.clock = clock
        self._waiting: dict[str, asyncio.Event] = {}
        #: corrections decided here, as written, for the clients waiting here
        self._written: dict[str, str] = {}
        #: shutting down: undecided holds get the fallback now, not at their timeout
        self._stopping = False

    def stop_waiting(self) -> None:
        """The gateway is shutting down: every client still waiting gets the fallback
        (after one last look for a decision), as do holds that begin from now on."""
        self._stopping = True
        if self._waiting:
            log.warning("shutting down: %d held clients get the fallback", len(self._waiting))
        for event in self._waiting.values():
            event.set()

    def decided(self, outcome: ReviewOutcome) -> None:
        """A verdict was committed here: its waiter (if it is ours) looks at once."""
        event = self._waiting.get(outcome.reply_id)
        if event is not None:
            if outcome.correction:
                self._written[outcome.reply_id] = outcome.correction
            event.set()

    async def wait(self, reply_id: str, original: str) -> Release:
        """Wait for the decision on ``reply_id``; never raises for a store failure."""
        event = self._waiting.setdefault(reply_id, asyncio.Event())
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                release = await self._look(reply_id, original)
                if release is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    release = Release("fallback", self.fallback, timed_out=True)
                    break
                event.clear()
                try:
                    async with asyncio.timeout(min(self.poll_s, remaining)):
                        await event.wait()
                except TimeoutError:
                    pass
        finally:
            self._waiting.pop(reply_id, None)
            self._written.pop(reply_id, None)
        await self._record(reply_id, release)
        return release

    async def _look(self, reply_id: str, original: str) -> Release | None:
        try:
            escalation = await self.store.escalation_for(reply_id)
        except StoreError as exc:
            # Fail closed: an unreadable decision is no decision.
            log.warning("hold %s: the store could not be read (%s); still waiting", reply_id, exc)
            return None
        release = release_of(escalation, original, self.fallback)
        written = self._written.get(reply_id)
        if release is not None and release.released == "correction" and written:
            return replace(release, text=written)
        return release

    async def _record(self, reply_id: str, release: Release) -> None:
        try:
            await self.store.record_release(
                reply_id,
                released=release.released,
                at=self.clock(),
                timed_out=release.timed_out,
            )
        except StoreError as exc:
            # The client still gets its answer; the audit trail misses when it was sent.
            log.error("hold %s: the release could not be recorded (%s)", reply_id, exc)
        log.info(
            "hold %s released: %s%s",
            reply_id,
            release.released,
            " (timed out)" if release.timed_out else "",
        )
