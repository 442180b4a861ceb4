"""Sliding windows in Redis (``[store] redis_url``): limits' moving window over redis-py."""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from middleware.errors import QuotaUnavailable
from middleware.quotas.port import whole_seconds
from middleware.settings import hide_password


def limits_uri(url: str) -> str:
    """``redis://``, ``rediss://`` or ``unix://`` as limits' async storage names it."""
    return "async+redis+" + url if url.startswith("unix://") else "async+" + url


class RedisQuotas:
    """Every gateway on that Redis counts in the same lists: one Lua script per take,
    atomic on the server (limits' moving window: at most ``limit`` uses in any
    ``window_s`` seconds, each counted at its caller's clock).

    ``prefix`` keeps two deployments on one Redis apart (as does a database number in the
    URL). The pool is ours: building opens nothing, ``aclose`` closes its connections.
    """

    def __init__(
        self, url: str, *, prefix: str = "hitl", timeout_s: float = 1.0, max_connections: int = 32
    ) -> None:
        self.where = f"Redis at {hide_password(url)}"
        # Bounded: beyond ``max_connections`` takes at once, a take waits for a connection
        # (at most ``timeout_s``) rather than opening more.
        self.pool: aioredis.ConnectionPool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        storage = RedisStorage(
            limits_uri(url),
            implementation="redispy",
            key_prefix=prefix,
            wrap_exceptions=True,
            connection_pool=self.pool,  # type: ignore[arg-type]
        )
        self.limiter = MovingWindowRateLimiter(storage)
        self._items: dict[tuple[int, int], RateLimitItem] = {}

    def _item(self, limit: int, window_s: int) -> RateLimitItem:
        item = self._items.get((limit, window_s))
        if item is None:
            item = RateLimitItemPerSecond(limit, window_s, namespace="quota")
            self._items[(limit, window_s)] = item
        return item

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        if limit <= 0:
            return whole_seconds(window_s)
        item = self._item(limit, window_s)
        try:
            if await self.limiter.hit(item, name, key):
                return None
            stats = await self.limiter.get_window_stats(item, name, key)
        except StorageError as exc:
            raise QuotaUnavailable(f"the shared counters in {self.where}: {exc}") from exc
        return whole_seconds(stats.reset_time - time.time())

    async def aclose(self) -> None:
        await self.pool.aclose()
