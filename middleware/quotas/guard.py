"""A remote backend as the request path sees it: a bounded wait, an outage told once,
refusals remembered."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from middleware.errors import QuotaUnavailable
from middleware.quotas.port import Quotas, whole_seconds

log = logging.getLogger("hitl.quotas")


class Guarded:
    """``backend``'s takes, each answered within ``timeout_s`` or failed.

    A take that fails or has no answer in time raises ``QuotaUnavailable``; what that
    means is the caller's (fewer reviews and asks, votes let through). The first failure
    of an outage is logged; for ``pause_s`` after a failure takes fail at once, without
    asking, so an outage makes no request wait; the first take that works again says so.

    A refusal is remembered: the key is refused here, without asking, until the wait it
    was told has passed. A client flooding votes, or a process whose every decision would
    escalate past the spent cap, costs the shared counters one round trip per wait, not
    one per request. (The wait is whole seconds, rounded up: a key may be refused here up
    to a second longer than its window strictly says; never shorter.)
    """

    def __init__(
        self,
        backend: Quotas,
        *,
        where: str,
        timeout_s: float = 1.0,
        pause_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_refusals: int = 10_000,
    ) -> None:
        self.backend = backend
        self.where = where
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.clock = clock
        self.max_refusals = max_refusals
        self._paused_until = float("-inf")
        #: (name, key) -> until when it is known to be used up
        self._refused: dict[tuple[str, str], float] = {}
        #: takes failed since the counters last answered (0: they answer)
        self.failures = 0

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        now = self.clock()
        until = self._refused.get((name, key))
        if until is not None:
            if now < until:
                return whole_seconds(until - now)
            del self._refused[(name, key)]
        if now < self._paused_until:
            self.failures += 1
            raise QuotaUnavailable(f"{self.where} failed moments ago; not asked again yet")
        try:
            async with asyncio.timeout(self.timeout_s):
                wait = await self.backend.take(name, key, limit=limit, window_s=window_s)
        except (QuotaUnavailable, TimeoutError) as exc:
            reason = str(exc) or f"{self.where} gave no answer within {self.timeout_s:g} s"
            self._failed(reason)
            raise QuotaUnavailable(reason) from exc
        if self.failures:
            log.warning(
                "shared limits: %s answers again (%d takes refused meanwhile)",
                self.where,
                self.failures,
            )
            self.failures = 0
        if wait is not None:
            self._remember(name, key, wait)
        return wait

    def _remember(self, name: str, key: str, wait: int) -> None:
        now = self.clock()
        if len(self._refused) >= self.max_refusals:
            # Bounded: forget what has passed, then the oldest (a forgotten refusal only
            # costs one more round trip).
            self._refused = {k: t for k, t in self._refused.items() if t > now}
            while len(self._refused) >= self.max_refusals:
                self._refused.pop(next(iter(self._refused)))
        self._refused[(name, key)] = now + wait

    def _failed(self, reason: str) -> None:
        self._paused_until = self.clock() + self.pause_s
        self.failures += 1
        if self.failures == 1:
            log.error(
                "shared limits unavailable: %s. Until they answer, no reply is escalated or "
                "asked about (holds go on) and votes are not rate limited",
                reason.rstrip(". "),
            )

    async def aclose(self) -> None:
        await self.backend.aclose()
