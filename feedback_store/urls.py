"""Database URLs: the one a user writes, the drivers we use for it, and how to show it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import make_url


def sync_url(url: str) -> str:
    if url.startswith("sqlite+aiosqlite://"):
        return "sqlite://" + url[len("sqlite+aiosqlite://") :]
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return make_url(sync_url(url)).render_as_string(hide_password=True)


def redact(text: str, url: str) -> str:
    """``text`` with the URL's password, should a driver quote it, masked."""
    password = make_url(sync_url(url)).password
    return text.replace(str(password), "***") if password else text


def describe_url(url: str) -> str:
    """Where the store is, for the start-up line: a SQLite file's absolute path, or the
    URL without its password."""
    parsed = make_url(sync_url(url))
    if is_sqlite(url) and parsed.database and parsed.database != ":memory:":
        return f"SQLite file {Path(parsed.database).resolve()}"
    return redact_url(url)
