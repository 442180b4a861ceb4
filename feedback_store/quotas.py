"""Sliding windows a fleet shares, on PostgreSQL: the hourly review cap, each user's asks,
each client's votes, when several gateways share one database and no Redis.

One row per counted use (``quota_hit``: the limit's name, the key it counts for, and
when the use leaves the window). ``take`` runs under a transaction-scoped advisory lock
on (name, key): takers of one key count one at a time, in whichever process, and each
counts after the one before it committed, so none is granted beyond the limit.

Each function commits a short transaction of its own, on a connection ``Store.read``
lends it, never inside the writer's group commit: there a key's lock would be held for a
whole batch, and two batches taking two keys in opposite orders would deadlock. One lock
per transaction waits for no other, so takers never deadlock; ``prune`` deletes expired
rows with ``SKIP LOCKED``, so it waits for no one either.

The counters are short-lived, so their commits skip the wait for the disk
(``synchronous_commit = off``): a database crash may forget the last moment's uses.
PostgreSQL only (SQLite is one process: the gateway counts in memory there).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, Float, String, and_, bindparam, delete, func, insert, select

from feedback_store.tables import quota_hit_t

hit = quota_hit_t.c

#: the advisory locks' class (the first of their two keys): "quot"
LOCK_CLASS = 0x71756F74
#: a take waits at most this long for another taker of its key
LOCK_TIMEOUT = "2s"

_LIVE = and_(
    hit.name == bindparam("name"),
    hit.key == bindparam("key"),
    hit.expires_at > bindparam("now"),
)
# Counted only while the key's live uses stay under the limit: one statement, run after
# the lock, so it sees every use committed before.
_USE = select(
    bindparam("name", type_=String),
    bindparam("key", type_=String),
    bindparam("expires_at", type_=Float),
)
_UNDER_LIMIT = select(func.count()).where(_LIVE).scalar_subquery() < bindparam("limit")
_COLUMNS = ["name", "key", "expires_at"]
_TAKE = insert(quota_hit_t).from_select(_COLUMNS, _USE.where(_UNDER_LIMIT)).returning(hit.id)
_FREE_AT = select(func.min(hit.expires_at)).where(_LIVE)


def lock_key(name: str, key: str) -> int:
    """The advisory lock's second key: 32 bits of a hash of (name, key). Two keys that
    share one only take turns."""
    digest = hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def take(
    conn: Connection, name: str, key: str, *, limit: int, window_s: float, now: float
) -> float | None:
    """Count one use of ``key`` under ``name`` if that keeps its uses in the last
    ``window_s`` seconds within ``limit``: None when counted, else the seconds until one
    leaves the window. Commits its own transaction."""
    params = {"name": name, "key": key, "now": now, "limit": limit, "expires_at": now + window_s}
    with conn.begin():
        conn.execute(
            select(
                func.set_config("synchronous_commit", "off", True),
                func.set_config("lock_timeout", LOCK_TIMEOUT, True),
                func.pg_advisory_xact_lock(LOCK_CLASS, lock_key(name, key)),
            )
        )
        if conn.execute(_TAKE, params).first() is not None:
            return None
        free_at = conn.execute(_FREE_AT, params).scalar()
    # No live use but a limit of 0: nothing will ever be free sooner than a window.
    return window_s if free_at is None else max(0.0, float(free_at) - now)


def prune(conn: Connection, *, now: float, batch: int = 5000) -> int:
    """Delete up to ``batch`` uses whose window has passed (skipping rows another prune
    is deleting); how many. Commits its own transaction."""
    expired = (
        select(hit.id).where(hit.expires_at <= now).limit(batch).with_for_update(skip_locked=True)
    )
    with conn.begin():
        conn.execute(select(func.set_config("synchronous_commit", "off", True)))
        return conn.execute(delete(quota_hit_t).where(hit.id.in_(expired))).rowcount
