"""A remote backend behind a bounded wait, with an outage told once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from middleware.errors import QuotaUnavailable
from middleware.quotas.port import Quotas

log = logging.getLogger("hitl.quotas")


class Guarded:
    """``backend``'s takes, each answered within ``timeout_s`` or failed.

    A take that fails or has no answer in time raises ``QuotaUnavailable``; what that
    means is the caller's (fewer reviews and asks, votes let through). The first failure
    of an outage is logged; for ``pause_s`` after a failure takes fail at once, without
    asking, so an outage makes no request wait; the first take that works again says so.
    """

    def __init__(
        self,
        backend: Quotas,
        *,
        where: str,
        timeout_s: float = 0.5,
        pause_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.where = where
        self.timeout_s = timeout_s
        self.pause_s = pause_s
        self.clock = clock
        self._paused_until = float("-inf")
        #: takes failed since the counters last answered (0: they answer)
        self.failures = 0

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        if self.clock() < self._paused_until:
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
        return wait

    def _failed(self, reason: str) -> None:
        self._paused_until = self.clock() + self.pause_s
        self.failures += 1
        if self.failures == 1:
            log.error(
                "shared limits unavailable: %s; until they answer no reply is escalated or "
                "asked about (holds go on) and votes are not rate limited",
                reason,
            )

    async def aclose(self) -> None:
        await self.backend.aclose()
