"""Who is the fleet's one learner: a PostgreSQL advisory lock held on its own connection.

The lock lives as long as the session that took it, so a learner that dies (kill -9,
a lost host, a database restart) lets go of it without doing anything; a standby that
tries again every second takes over within about that. On SQLite there is no fleet
(``hitl serve --workers`` is refused there) and the one process always leads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from feedback_store.engine import Store
from feedback_store.urls import is_sqlite

log = logging.getLogger("hitl.store")

#: the advisory lock's key: any 64-bit number the gateway's database uses for nothing else
LEARNER_LOCK = 0x6869746C_6C656172  # "hitllear"


class Leadership(Protocol):
    async def hold(self) -> bool:
        """Take the lead if it is free, or confirm it is still ours; True while we lead."""
        ...

    async def release(self) -> None: ...


class SoleLeader:
    """One process, one learner: it always leads."""

    async def hold(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class AdvisoryLock:
    """``pg_try_advisory_lock`` on a connection kept out of the pool for as long as we lead."""

    def __init__(self, store: Store, *, key: int = LEARNER_LOCK, timeout_s: float = 5.0) -> None:
        self.store = store
        self.key = key
        self.timeout_s = timeout_s
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def _try(self) -> bool:
        if self._conn is not None:
            # Still ours while the session that took it lives.
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except SQLAlchemyError:
                self._drop()
                log.warning("lost the learner lock: its database connection broke")
                return False
        conn = self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}).scalar()
            )
        except BaseException:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()
                conn.close()
            except SQLAlchemyError:
                pass

    async def hold(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.to_thread(self._try)
        except (TimeoutError, SQLAlchemyError, OSError):
            # A database we cannot reach: whoever leads, it is not us now.
            await asyncio.to_thread(self._drop)
            return False

    def _release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self._conn.close()
        except SQLAlchemyError:
            self._drop()
        self._conn = None

    async def release(self) -> None:
        await asyncio.to_thread(self._release)


class NeverLeader:
    """A serving process of a fleet (``hitl serve --workers`` or ``--no-learner``):
    it only follows, whatever the lock's state."""

    async def hold(self) -> bool:
        return False

    async def release(self) -> None:
        return None


def leadership_for(store: Store, *, learns: bool = True) -> Leadership:
    """Who may learn: nobody in a serving-only process, the one process on SQLite, and
    whoever holds the lock on PostgreSQL."""
    if not learns:
        return NeverLeader()
    return SoleLeader() if is_sqlite(store.url) else AdvisoryLock(store)
