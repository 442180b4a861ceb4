"""Schema revisions through Alembic: ``hitl db upgrade`` and the start-up check.

Alembic runs on a synchronous engine in a worker thread: it happens once, at start-up
or from the command line, never on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from feedback_store.errors import SchemaError
from feedback_store.urls import is_sqlite, redact_url, sync_url

MIGRATIONS = Path(__file__).with_name("migrations")
#: the advisory lock that lets one process at a time migrate a PostgreSQL database
MIGRATION_LOCK = 0x6869746C_6D696772  # "hitlmigr"


@contextlib.contextmanager
def migrating(url: str) -> Iterator[None]:
    """One migrator at a time: processes of a fleet starting together on an empty
    PostgreSQL database would otherwise run the same DDL at once and block each other.
    (SQLite's write lock already serialises them.)"""
    if is_sqlite(url):
        yield
        return
    engine = create_engine(sync_url(url))
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    finally:
        engine.dispose()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise SchemaError("no migrations found in the package; reinstall hitl-gateway")
    return head


def current_revision(url: str) -> str | None:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _has_tables(url: str) -> bool:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def upgrade(url: str) -> str:
    """Bring the database to the newest revision; returns it."""
    with migrating(url):
        current = current_revision(url)
        if current is not None and not _known(current):
            raise SchemaError(_unknown(current, head_revision()))
        command.upgrade(alembic_config(url), "head")
    return head_revision()


def ensure_schema(url: str, *, config_hint: str = "config.toml") -> None:
    """Create the schema on an empty database; refuse one at an older revision."""
    head = head_revision()
    if current_revision(url) == head:
        return
    with migrating(url):
        # Another process may have migrated while we waited for the lock.
        _create_or_refuse(url, head, current_revision(url), config_hint)


def _create_or_refuse(url: str, head: str, current: str | None, config_hint: str) -> None:
    if current == head:
        return
    if current is None:
        if _has_tables(url):
            raise SchemaError(
                f"the database at {redact_url(url)} has tables but no schema revision; "
                "point [store] url at an empty database or one made by hitl"
            )
        command.upgrade(alembic_config(url), "head")
        return
    if not _known(current):
        # A newer hitl-gateway migrated it (a rolling upgrade in progress, or this host
        # was left behind): upgrading from here cannot help.
        raise SchemaError(_unknown(current, head))
    raise SchemaError(
        f"the database is at schema revision {current}, this version needs {head}: "
        f"run `hitl db upgrade --config {config_hint}`"
    )


def _unknown(current: str, head: str) -> str:
    return (
        f"the database is at schema revision {current}, which this version of "
        f"hitl-gateway does not know (it needs {head}; a newer version migrated the "
        "database): run that version here too"
    )


def _known(revision: str) -> bool:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return any(script.revision == revision for script in scripts.walk_revisions())


async def ensure_schema_async(url: str, *, config_hint: str = "config.toml") -> None:
    await asyncio.to_thread(ensure_schema, url, config_hint=config_hint)
