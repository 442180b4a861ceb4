"""A per-key sliding-window limit (requests per minute), bounded in memory."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        *,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self.clock = clock
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def _window(self, key: str) -> deque[float]:
        now = self.clock()
        hits = self._hits.get(key)
        if hits is None:
            hits = deque()
            self._hits[key] = hits
            if len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
        while hits and hits[0] <= now - 60.0:
            hits.popleft()
        return hits

    def allow(self, key: str) -> bool:
        """Count one request for ``key``; False when it is over the limit (0: no limit)."""
        if self.per_minute <= 0:
            return True
        hits = self._window(key)
        if len(hits) >= self.per_minute:
            return False
        hits.append(self.clock())
        return True

    def retry_after(self, key: str) -> int:
        hits = self._window(key)
        if not hits:
            return 0
        return max(1, math.ceil(hits[0] + 60.0 - self.clock()))
