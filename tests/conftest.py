"""Shared fixtures: a real fake upstream, and gateways served on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from feedback_store import Store
from middleware.app import create_app
from middleware.settings import Settings, settings_from_mapping
from tests.support.fake_openai import make_app
from tests.support.servers import ServerThread
from tests.support.slack_standin import SlackStandin


@pytest.fixture(scope="session")
def upstream_server() -> Iterator[ServerThread]:
    with ServerThread(make_app(slow_s=3.0)) as server:
        yield server


@pytest.fixture
def upstream_requests(upstream_server: ServerThread) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = upstream_server.config.app.state.requests  # type: ignore[attr-defined]
    requests.clear()
    return requests


def gateway_settings(
    tmp_path: Path, upstream_url: str | None, **sections: dict[str, Any]
) -> Settings:
    data: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp_path / 'hitl.db'}"},
        "upstream": {"kind": "local"}
        if upstream_url is None
        else {"kind": "openai", "base_url": upstream_url + "/v1", "timeout_s": 1.5},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return settings_from_mapping(data, source="test")


GatewayFactory = Callable[..., ServerThread]


@pytest.fixture
def gateway_factory(tmp_path: Path, upstream_server: ServerThread) -> Iterator[GatewayFactory]:
    """Start a gateway (real uvicorn on 127.0.0.1) over the fake upstream.

    ``gateway_factory(environ={...}, local=False, **sections)``; stopped at teardown.
    """
    started: list[ServerThread] = []

    def start(
        *, environ: dict[str, str] | None = None, local: bool = False, **sections: dict[str, Any]
    ) -> ServerThread:
        settings = gateway_settings(tmp_path, None if local else upstream_server.url, **sections)
        app = create_app(settings, environ=environ or {})
        server = ServerThread(app).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


POSTGRES_ENV = "HITL_TEST_POSTGRES_URL"


@contextlib.contextmanager
def _postgres_database() -> Iterator[str]:
    """Create a database named ``hitl_test_<random>`` on ``$HITL_TEST_POSTGRES_URL``'s
    server (e.g. ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``), yield its
    URL, drop it afterwards; skip when the variable is unset."""
    import psycopg
    from sqlalchemy.engine import make_url

    server = os.environ.get(POSTGRES_ENV)
    if not server:
        pytest.skip(
            f"${POSTGRES_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1/postgres)"
        )
    url = make_url(server)
    name = f"hitl_test_{secrets.token_hex(6)}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with _postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_run_url() -> Iterator[str]:
    """One PostgreSQL database for the whole test run, dropped at its end. Tests that
    share it empty its tables first (see ``test_store_contract.py``)."""
    with _postgres_database() as url:
        yield url


REDIS_ENV = "HITL_TEST_REDIS_URL"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis the shared-counter tests use: ``$HITL_TEST_REDIS_URL``, else the one on
    127.0.0.1:6379; skipped, saying why, when it does not answer."""
    import redis

    url = os.environ.get(REDIS_ENV) or "redis://127.0.0.1:6379/0"
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis answers at {url} ({exc}); start one or set ${REDIS_ENV}")
    return url


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own (runs sharing one Redis never meet); its keys are
    deleted afterwards."""
    import redis

    prefix = f"hitl-test-{secrets.token_hex(6)}"
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for ``module_gateway``'s SQLite file (``module_tmp / "hitl.db"``)."""
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="module")
def module_gateway(module_tmp: Path, upstream_server: ServerThread) -> Iterator[ServerThread]:
    """One gateway over the fake upstream, shared by a module's tests that need no settings
    of their own (defaults, but no feedback rate limit). Tests must not assume it is empty."""
    settings = gateway_settings(module_tmp, upstream_server.url, server={"feedback_per_minute": 0})
    with ServerThread(create_app(settings, environ={})) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A started store on SQLite and on PostgreSQL (skipped, saying why, without its URL)."""
    url = (
        f"sqlite:///{tmp_path / 'store.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = Store(url)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A started, empty store in a SQLite file of the test's own."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def known_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A SQLite store filled with the report tests' known figures (tests/report_data.py)."""
    from tests.support.report_data import fill_known_store

    store = Store(f"sqlite:///{tmp_path / 'known.db'}", config_hint="test.toml")
    await store.start()
    await fill_known_store(store)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def standin() -> Iterator[SlackStandin]:
    """The stand-in Slack Web API on 127.0.0.1 (tests/slack_standin.py)."""
    with SlackStandin() as server:
        yield server
