"""Per-client request limits behind one small interface.

``RateLimit.hit(key)`` counts one request and says whether it may go on. The one
implementation is a true sliding minute (no burst at a window edge) over the shared
counters the composition root picks (``middleware.quotas``): this process's memory on
SQLite; PostgreSQL or Redis for a fleet, so a client's minute is the same whichever
process answers. Keys are never evicted to make room: a flood of new addresses costs
memory (or rows) for a minute but resets no one's window.

When the shared counters cannot answer, the vote goes on unlimited (logged once per
outage): the limit protects the store from floods, and a vote the store cannot take
fails on its own with a 503; refusing every vote while Redis is down would lose them.
"""

from __future__ import annotations

from typing import Protocol

from middleware.errors import QuotaUnavailable
from middleware.quotas import MemoryQuotas, Quotas


class RateLimit(Protocol):
    async def hit(self, key: str) -> int | None:
        """Count one request for ``key``: None when it may go on, else the whole seconds
        to wait before the next one would (for ``Retry-After``)."""
        ...


class Unlimited:
    async def hit(self, key: str) -> int | None:
        return None


class MovingWindow:
    """At most ``per_minute`` requests per key in any 60 seconds, counted under ``name``."""

    def __init__(self, per_minute: int, *, name: str, quotas: Quotas | None = None) -> None:
        self.per_minute = per_minute
        self.name = name
        self.quotas = quotas or MemoryQuotas()

    async def hit(self, key: str) -> int | None:
        try:
            return await self.quotas.take(self.name, key, limit=self.per_minute, window_s=60)
        except QuotaUnavailable:
            return None  # fail open: see the module's docstring


def per_minute(limit: int, *, name: str, quotas: Quotas | None = None) -> RateLimit:
    """``limit`` requests per key per minute (0: no limit), counted under ``name``."""
    return Unlimited() if limit <= 0 else MovingWindow(limit, name=name, quotas=quotas)
