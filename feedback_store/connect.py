"""The store's database engine: pool, timeouts and the durability of a commit.

``Sync`` is what a commit waits for before the gateway acknowledges anything:

- ``"full"`` (the default): the commit is on disk (SQLite ``synchronous=FULL`` in WAL
  mode, one fsync per commit; PostgreSQL's own default, ``synchronous_commit=on``).
  Nothing acknowledged is lost to a crash of the gateway, the OS or the power.
- ``"normal"`` (``[store] lose_recent_on_power_loss = true``): the commit is handed to
  the OS, not forced to disk (SQLite ``synchronous=NORMAL``; PostgreSQL
  ``synchronous_commit=off``). A crash of the gateway still loses nothing; a power cut
  or an OS crash may lose the last commits (SQLite: since its last checkpoint;
  PostgreSQL: up to three times ``wal_writer_delay``, 600 ms by default). The database
  stays consistent either way.
- ``"off"`` (SQLite only): no fsync at all, for throwaway stores (``hitl replay``'s).
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event

from feedback_store.urls import is_sqlite, sync_url

Sync = Literal["full", "normal", "off"]


def create_store_engine(url: str, sync: Sync = "full") -> Engine:
    kwargs: dict[str, Any] = {"pool_size": 6, "max_overflow": 10}
    if is_sqlite(url):
        kwargs["connect_args"] = {"check_same_thread": False}
    else:
        # A database host that does not answer must not hold a request for minutes.
        kwargs["pool_pre_ping"] = True
        kwargs["connect_args"] = {"connect_timeout": 5}
    engine = create_engine(sync_url(url), **kwargs)
    if is_sqlite(url):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={sync.upper()}")
            cursor.execute("PRAGMA busy_timeout=10000")
            # Freed space is zeroed, so text that is purged leaves the file too.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

    elif sync != "full":

        @event.listens_for(engine, "connect")
        def _asynchronous_commit(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit TO off")
            dbapi_connection.commit()

    return engine
