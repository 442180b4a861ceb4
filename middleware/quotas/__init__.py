"""Counters a fleet of gateways shares: the hourly review cap, each end user's asks,
each client's votes per minute, held whichever process answers.

``take(name, key, limit=, window_s=)`` counts one use of ``key`` if that keeps it within
``limit`` in the sliding window, else says how many seconds until one is free
(``port.py``). Where the counts live is chosen in ``build_parts``:

| backend | counts in | when |
| --- | --- | --- |
| ``MemoryQuotas`` | this process | the store is SQLite (one process) |
| ``StoreQuotas`` | PostgreSQL, table ``quota_hit`` | the store is PostgreSQL, no Redis |
| ``RedisQuotas`` | Redis, limits' moving window | ``[store] redis_url`` is set |

A remote backend sits behind ``Guarded``: a bounded wait, an outage logged once, and a
refused key answered in the process until its wait has passed. What a failure means is
the caller's: ``FleetCaps`` refuses (fewer reviews and asks, never more); the feedback
rate limit lets the vote through (``http/ratelimit.py``).
"""

from middleware.quotas.caps import FleetCaps
from middleware.quotas.guard import Guarded
from middleware.quotas.memory import MemoryQuotas
from middleware.quotas.port import Quotas, whole_seconds
from middleware.quotas.postgres import StoreQuotas

__all__ = ["FleetCaps", "Guarded", "MemoryQuotas", "Quotas", "StoreQuotas", "whole_seconds"]
