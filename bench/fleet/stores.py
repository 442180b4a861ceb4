"""The benchmark's bookkeeping in the gateway's store: a PostgreSQL database of its own
(created and dropped per run), and row counts in PostgreSQL or a SQLite file."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from overhead_procs import BenchError


class Postgres:
    """The benchmark's own database on the PostgreSQL at ``admin_url``."""

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.admin_url = admin_url
        self.name = f"hitl_fleet_bench_{os.getpid()}"
        try:
            self.conn = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise BenchError(f"cannot connect to PostgreSQL at {admin_url}: {exc}") from None

    def url(self) -> str:
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(
            ("postgresql+psycopg", parts.netloc, f"/{self.name}", "", "")
        )

    def create(self) -> None:
        self.drop()
        self.conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self.conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def backends(self) -> list[int]:
        rows = self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ).fetchall()
        return [row[0] for row in rows]

    def commits(self) -> int:
        """Transactions committed on the database (PostgreSQL's statistics, which lag
        by up to a second)."""
        row = self.conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.name,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def counts(self, queries: Sequence[str]) -> list[int]:
        import psycopg

        url = urllib.parse.urlsplit(self.admin_url)._replace(path=f"/{self.name}")
        with psycopg.connect(urllib.parse.urlunsplit(url), autocommit=True) as conn:
            return [_count(conn.execute(q).fetchone()) for q in queries]

    def close(self) -> None:
        with suppress(Exception):
            self.drop()
        self.conn.close()


def sqlite_counts(path: Path, queries: Sequence[str]) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [_count(conn.execute(q).fetchone()) for q in queries]
    finally:
        conn.close()


def _count(row: Any) -> int:
    return int(row[0])
