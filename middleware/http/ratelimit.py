"""Per-client request limits behind one small interface.

``RateLimit.hit(key)`` counts one request and says whether it may go on. The one
implementation is ``limits``' moving window (a true sliding minute: no burst at a window
edge) over a storage the composition root picks: in memory for one process; ``limits``
also has a Redis storage (``limits.aio.storage.RedisStorage``), for a fleet that must
share its counts. Keys are never evicted to make room: a flood of new addresses costs
memory for a minute (each key expires with its last hit) but resets no one's window.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter


class RateLimit(Protocol):
    async def hit(self, key: str) -> int | None:
        """Count one request for ``key``: None when it may go on, else the whole seconds
        to wait before the next one would (for ``Retry-After``)."""
        ...


class Unlimited:
    async def hit(self, key: str) -> int | None:
        return None


class MovingWindow:
    """At most ``per_minute`` requests per key in any 60 seconds."""

    def __init__(self, per_minute: int, *, name: str, storage: Storage | None = None) -> None:
        self.item = RateLimitItemPerMinute(per_minute, namespace="hitl")
        self.name = name
        self.limiter = MovingWindowRateLimiter(storage or MemoryStorage())

    async def hit(self, key: str) -> int | None:
        if await self.limiter.hit(self.item, self.name, key):
            return None
        stats = await self.limiter.get_window_stats(self.item, self.name, key)
        return max(1, math.ceil(stats.reset_time - time.time()))


def per_minute(limit: int, *, name: str, storage: Storage | None = None) -> RateLimit:
    """``limit`` requests per key per minute (0: no limit), counted under ``name``."""
    return Unlimited() if limit <= 0 else MovingWindow(limit, name=name, storage=storage)
