"""Two gateways on one PostgreSQL database (two apps from ``create_app``, each served on
127.0.0.1 by its own uvicorn): the hourly review cap, a user's asks and a client's votes
per minute hold for the pair, whichever gateway answers. Counted in PostgreSQL, and in
Redis (``[store] redis_url``; under a key prefix of the test's own)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from feedback_store.urls import sync_url
from middleware.app import create_app
from middleware.quotas import Guarded
from middleware.quotas.redis import RedisQuotas
from tests.conftest import gateway_settings
from tests.support.servers import ServerThread

POLICY = {
    "escalate_below": 1.0,  # every reply is a candidate...
    "review_budget": 1.0,  # ... that the share allows: only the hourly cap limits them
    "max_reviews_per_hour": 3,
    "ask_per_user_per_hour": 2,
    "ask_sample_rate": 0.0,
}


@pytest.fixture(params=["postgres", "redis"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> Iterator[tuple[list[ServerThread], str]]:
    """Two gateways sharing ``postgres_url`` (and Redis, for that variant); the URL."""
    server: dict[str, Any] = {"feedback_per_minute": 3, "trusted_proxies": ["127.0.0.1"]}
    store: dict[str, Any] = {"url": postgres_url}
    if request.param == "redis":
        store["redis_url"] = request.getfixturevalue("redis_url")
    settings = gateway_settings(tmp_path, None, store=store, server=server, policy=POLICY)
    started: list[ServerThread] = []
    try:
        for _ in range(2):
            overrides: dict[str, Any] = {}
            if request.param == "redis":
                prefix = request.getfixturevalue("redis_prefix")
                redis = RedisQuotas(settings.store.redis_url, prefix=prefix)
                overrides["quotas"] = Guarded(redis, where=redis.where)
            app = create_app(settings, environ={}, **overrides)
            # One after the other: the first migrates the empty database.
            started.append(ServerThread(app).start())
        yield started, postgres_url
    finally:
        for gateway in started:
            gateway.stop()


def stored(url: str, query: str) -> Any:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(text(query)).scalar()
    finally:
        engine.dispose()


async def replies(gateways: list[ServerThread], n: int, user: str | None = None) -> list[Any]:
    """``n`` chat replies at once, spread over both gateways: their ``hitl`` objects."""
    body: dict[str, Any] = {"model": "local", "messages": [{"role": "user", "content": "Hi?"}]}
    if user is not None:
        body["user"] = user
    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(gateways[i % 2].url + "/v1/chat/completions", json=body)
                for i in range(n)
            )
        )
    assert {r.status_code for r in answers} == {200}, [r.text for r in answers]
    return [r.json()["hitl"] for r in answers]


async def votes(gateways: list[ServerThread], n: int, client_address: str) -> list[int]:
    """``n`` votes at once from one client (named by the trusted proxy, 127.0.0.1),
    spread over both gateways; an empty body is a 422 once past the limit's check."""
    headers = {"X-Forwarded-For": client_address}
    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(
            *(
                client.post(gateways[i % 2].url + "/v1/feedback", json={}, headers=headers)
                for i in range(n)
            )
        )
    return [r.status_code for r in answers]


async def test_the_pair_holds_the_fleets_limits(pair: tuple[list[ServerThread], str]) -> None:
    gateways, url = pair
    # The hourly review cap: exactly 3 escalations for the pair, in the answers and stored.
    hitl = await replies(gateways, 12)
    assert [h["decision"] for h in hitl].count("escalate") == 3
    assert stored(url, "SELECT count(*) FROM escalation") == 3
    assert stored(url, "SELECT count(*) FROM exchange WHERE decision = 'escalate'") == 3
    # The cap is spent: a user is asked instead, twice in the hour, whichever gateway.
    alice = f"alice-{secrets.token_hex(4)}"
    asked = await replies(gateways, 6, user=alice)
    assert [h["ask_feedback"] for h in asked].count(True) == 2
    assert {h["decision"] for h in asked} <= {"ask", "deliver"}
    # A client's votes per minute: 3 for the pair, the rest told when to come back.
    client = f"198.51.100.{secrets.randbelow(250) + 1}"
    statuses = await votes(gateways, 8, client)
    assert sorted(statuses) == [422] * 3 + [429] * 5, statuses
    # Another client has a minute of its own.
    assert await votes(gateways, 2, f"2001:db8::{secrets.token_hex(2)}") == [422, 422]


async def test_counters_that_are_down_cost_reviews_and_asks_never_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis refuses every connection: chat replies still answer 200 (escalating
    nothing, asking no named user), holds are still held, votes go through unlimited, and
    the log says so once, without the password."""
    caplog.set_level(logging.INFO)
    settings = gateway_settings(
        tmp_path,
        None,
        store={"redis_url": "redis://:hunter2-pw@127.0.0.1:1/0"},
        server={"feedback_per_minute": 1},
        # A held reply times out at once (nobody reviews here) and releases the fallback.
        policy={**POLICY, "hold_below": 0.6, "risky_models": ["risky"], "hold_timeout_s": 0.5},
    )
    with ServerThread(create_app(settings, environ={})) as gateway:
        gateways = [gateway, gateway]
        hitl = await replies(gateways, 4, user="dora")
        assert [(h["decision"], h["ask_feedback"]) for h in hitl] == [("deliver", False)] * 4
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": "risky", "messages": [{"role": "user", "content": "Refund?"}]}
            held = await client.post(gateway.url + "/v1/chat/completions", json=body)
        assert held.status_code == 200
        assert held.json()["hitl"]["decision"] == "hold"
        assert held.json()["hitl"]["released"] == "fallback"
        assert await votes(gateways, 3, "198.51.100.9") == [422, 422, 422]
    errors = [r for r in caplog.records if r.name == "hitl.quotas" and r.levelname == "ERROR"]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "Redis at redis://:***@127.0.0.1:1/0" in errors[0].getMessage()
    assert all("hunter2-pw" not in r.getMessage() for r in caplog.records)
