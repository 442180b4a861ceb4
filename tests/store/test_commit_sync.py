"""What a commit waits for: on disk by default, on the OS only when asked, by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedback_store import Store
from middleware.app.parts import build_parts, startup_line
from middleware.settings import settings_from_mapping

# PRAGMA synchronous answers a number: 0 OFF, 1 NORMAL, 2 FULL.
SQLITE_LEVELS = {"off": 0, "normal": 1, "full": 2}


async def _sqlite_level(store: Store) -> int:
    """The level on the writer's own connection, the one every commit goes through."""
    return await store.write(lambda conn: conn.exec_driver_sql("PRAGMA synchronous").scalar())


@pytest.mark.parametrize("sync", ["full", "normal", "off"])
async def test_sqlite_commits_wait_for_what_was_asked(tmp_path: Path, sync: str) -> None:
    store = Store(f"sqlite:///{tmp_path / 'h.db'}", sync=sync)  # type: ignore[arg-type]
    await store.start()
    try:
        assert await _sqlite_level(store) == SQLITE_LEVELS[sync]
        # Reads use their own pooled connections: the same level there.
        level = await store.read(lambda conn: conn.exec_driver_sql("PRAGMA synchronous").scalar())
        assert level == SQLITE_LEVELS[sync]
    finally:
        await store.close()


async def test_postgresql_commits_skip_the_flush_only_when_asked(postgres_url: str) -> None:
    for sync, expected in (("full", "on"), ("normal", "off")):
        store = Store(postgres_url, sync=sync)  # type: ignore[arg-type]
        await store.start()
        try:
            shown = await store.write(
                lambda conn: conn.exec_driver_sql("SHOW synchronous_commit").scalar()
            )
            assert shown == expected
        finally:
            await store.close()


@pytest.mark.parametrize("risky", [False, True])
async def test_the_setting_reaches_the_store_and_the_startup_line(
    tmp_path: Path, risky: bool
) -> None:
    settings = settings_from_mapping(
        {
            "store": {
                "url": f"sqlite:///{tmp_path / 'h.db'}",
                "lose_recent_on_power_loss": risky,
            }
        },
        source="test",
    )
    parts = build_parts(settings, environ={})
    await parts.store.start()
    try:
        assert await _sqlite_level(parts.store) == (1 if risky else 2)
        said = "(commits not forced to disk)" in startup_line(parts)
        assert said is risky
    finally:
        await parts.store.close()


class _NoThreads:
    """An executor that fails the test if anything is handed to it."""

    def submit(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("the SQLite ping crossed to a reader thread")

    def shutdown(self, wait: bool = True) -> None:
        pass


async def test_a_sqlite_ping_answers_on_the_loop_without_a_thread(tmp_path: Path) -> None:
    # Every streamed reply pings before it starts: on SQLite that must cost no thread hop.
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    await store.start()
    real = store._read_threads
    store._read_threads = _NoThreads()  # type: ignore[assignment]
    try:
        assert await store.ping() is True
        assert await store.ping() is True  # the ping's own connection, reused
    finally:
        store._read_threads = real
        await store.close()
    assert await store.ping() is False  # closed: it says so rather than raising
