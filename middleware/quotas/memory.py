"""Sliding windows in this process's memory: one process, or a test."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

from middleware.quotas.port import whole_seconds


class MemoryQuotas:
    """Exact sliding windows, counted as ``ReviewBudget`` and ``AskLimiter`` count: a use
    leaves its window ``window_s`` seconds after it was counted.

    A key is forgotten once its window has passed (swept whenever the keys have doubled),
    never to make room: a flood of new keys costs memory for one window but resets no
    one's count.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        #: per (name, key): when each live use leaves its window, soonest first
        self._uses: dict[tuple[str, str], list[float]] = {}
        self._sweep_at = 1024

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        now = self.clock()
        uses = self._uses.setdefault((name, key), [])
        del uses[: bisect.bisect_right(uses, now)]
        if len(uses) >= limit:
            return whole_seconds(uses[0] - now if uses else window_s)
        bisect.insort(uses, now + window_s)
        if len(self._uses) >= self._sweep_at:
            self._sweep(now)
        return None

    def _sweep(self, now: float) -> None:
        self._uses = {k: uses for k, uses in self._uses.items() if uses and uses[-1] > now}
        self._sweep_at = max(1024, 2 * len(self._uses))

    @property
    def keys(self) -> int:
        """How many keys are remembered (live, or not swept yet)."""
        return len(self._uses)

    async def aclose(self) -> None:
        return None
