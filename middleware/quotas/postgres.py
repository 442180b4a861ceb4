"""Sliding windows in the PostgreSQL store, for a fleet without Redis."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from feedback_store import Store, StoreError, quotas
from feedback_store.urls import is_sqlite
from middleware.errors import QuotaUnavailable
from middleware.quotas.port import whole_seconds

log = logging.getLogger("hitl.quotas")


class StoreQuotas:
    """Every gateway on the database counts in the same rows (``feedback_store.quotas``).

    A take is one short transaction of its own on one of the store's reader connections,
    beside the writer's group commits, so a key's lock is held for a few statements, not
    for a batch. Expired uses are pruned every ``prune_every_s`` by the take that finds it
    due.
    """

    def __init__(
        self,
        store: Store,
        *,
        prune_every_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if is_sqlite(store.url):
            raise ValueError("StoreQuotas needs PostgreSQL; one SQLite process counts in memory")
        self.store = store
        self.prune_every_s = prune_every_s
        self.clock = clock
        self._prune_at = 0.0

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        now = self.clock()
        job = functools.partial(
            quotas.take, name=name, key=key, limit=limit, window_s=window_s, now=now
        )
        try:
            left = await self.store.read(job)
        except StoreError as exc:
            raise QuotaUnavailable(f"the shared counters in the store: {exc}") from exc
        if now >= self._prune_at:
            await self._prune(now)
        return None if left is None else whole_seconds(left)

    async def _prune(self, now: float) -> None:
        self._prune_at = now + self.prune_every_s
        try:
            await self.store.read(functools.partial(quotas.prune, now=now))
        except StoreError as exc:
            # Only tidying: what is left is pruned next time, and counts stay right.
            log.warning("expired shared counts not pruned yet: %s", exc)

    async def aclose(self) -> None:
        return None  # the store is its owner's to close
