"""The shared counters: one battery over every backend (this process's memory, Redis,
PostgreSQL), concurrent takers in two "processes" (threads, each with its own event loop
and its own backend, as two gateways would have), the exact windows, and failures.

Redis is the local one (``$HITL_TEST_REDIS_URL``), each test under a key prefix of its
own; PostgreSQL a database of the test's own. Either skips, saying why, when absent.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from feedback_store import QuotaHit, Store, ensure_schema, quotas
from feedback_store.urls import sync_url
from middleware.app.parts import build_quotas
from middleware.errors import ConfigError, QuotaUnavailable
from middleware.http.ratelimit import MovingWindow
from middleware.quotas import FleetCaps, Guarded, MemoryQuotas, Quotas, StoreQuotas
from middleware.quotas.redis import RedisQuotas
from middleware.settings import settings_from_mapping

Opener = Callable[[], Awaitable[tuple[Quotas, Callable[[], Awaitable[None]]]]]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def opener(kind: str, request: pytest.FixtureRequest) -> Opener:
    """How to open one more backend on the counts under test (and how to close it)."""
    if kind == "memory":
        shared = MemoryQuotas()

        async def memory() -> tuple[Quotas, Callable[[], Awaitable[None]]]:
            return shared, shared.aclose

        return memory
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")

        async def redis() -> tuple[Quotas, Callable[[], Awaitable[None]]]:
            backend = RedisQuotas(url, prefix=prefix)
            return backend, backend.aclose

        return redis
    pg: str = request.getfixturevalue("postgres_url")
    # The schema first, once: gateways of a fleet start on a migrated database.
    ensure_schema(pg)

    async def postgres() -> tuple[Quotas, Callable[[], Awaitable[None]]]:
        store = Store(pg)
        await store.start()
        return StoreQuotas(store), store.close

    return postgres


@pytest.fixture(params=["memory", "redis", "postgres"])
def open_quotas(request: pytest.FixtureRequest) -> Opener:
    return opener(request.param, request)


@pytest.fixture(params=["redis", "postgres"])
def open_shared(request: pytest.FixtureRequest) -> Opener:
    """Backends that two processes share."""
    return opener(request.param, request)


@pytest.fixture
async def counters(open_quotas: Opener) -> AsyncIterator[Quotas]:
    backend, close = await open_quotas()
    try:
        yield backend
    finally:
        await close()


# -- the contract ------------------------------------------------------------------------


async def test_counts_up_to_the_limit_then_says_when_to_come_back(counters: Quotas) -> None:
    answers = [await counters.take("votes", "a", limit=3, window_s=60) for _ in range(5)]
    assert answers[:3] == [None, None, None]
    assert all(isinstance(wait, int) and 1 <= wait <= 60 for wait in answers[3:]), answers


async def test_names_and_keys_count_apart(counters: Quotas) -> None:
    assert await counters.take("votes", "a", limit=1, window_s=60) is None
    assert await counters.take("votes", "a", limit=1, window_s=60) is not None
    assert await counters.take("votes", "b", limit=1, window_s=60) is None
    assert await counters.take("asks", "a", limit=1, window_s=60) is None
    # Keys are taken as they are: an address with colons, a user id with slashes.
    assert await counters.take("votes", "2001:db8::1", limit=1, window_s=60) is None
    assert await counters.take("asks", "a/b", limit=1, window_s=60) is None
    assert await counters.take("asks", "a/b", limit=1, window_s=60) is not None


async def test_a_limit_of_zero_grants_nothing(counters: Quotas) -> None:
    assert await counters.take("reviews", "fleet", limit=0, window_s=3600) == 3600
    assert await counters.take("reviews", "fleet", limit=1, window_s=3600) is None


async def test_a_use_leaves_its_window_and_refusals_are_not_counted(counters: Quotas) -> None:
    assert await counters.take("votes", "w", limit=1, window_s=1) is None
    refusals = 0
    deadline = time.monotonic() + 10
    while (wait := await counters.take("votes", "w", limit=1, window_s=1)) is not None:
        assert wait == 1
        refusals += 1
        assert time.monotonic() < deadline, "the use never left its 1 s window"
        await asyncio.sleep(0.05)
    # However many were refused meanwhile, the window holds exactly one use again.
    assert refusals >= 1
    assert await counters.take("votes", "w", limit=1, window_s=1) == 1


async def test_concurrent_takers_never_exceed_the_limit(counters: Quotas) -> None:
    answers = await asyncio.gather(
        *(counters.take("reviews", "fleet", limit=37, window_s=3600) for _ in range(200))
    )
    assert sum(answer is None for answer in answers) == 37


def _taker_process(open_backend: Opener, takers: int, start: threading.Barrier) -> list[bool]:
    """One "process": its own thread, event loop and backend, ``takers`` at once."""

    async def run() -> list[bool]:
        backend, close = await open_backend()
        try:
            await asyncio.to_thread(start.wait, 30)
            answers = await asyncio.gather(
                *(backend.take("reviews", "fleet", limit=37, window_s=3600) for _ in range(takers)),
                return_exceptions=True,  # every taker done before the backend closes
            )
        finally:
            await close()
        failed = [answer for answer in answers if isinstance(answer, BaseException)]
        assert failed == []
        return [answer is None for answer in answers]

    return asyncio.run(run())


async def test_two_processes_never_grant_beyond_the_limit(open_shared: Opener) -> None:
    start = threading.Barrier(2)
    granted = await asyncio.gather(
        asyncio.to_thread(_taker_process, open_shared, 100, start),
        asyncio.to_thread(_taker_process, open_shared, 100, start),
    )
    assert sum(sum(mine) for mine in granted) == 37
    # Both took part: neither process was starved of every slot by the other's head start.
    assert all(len(mine) == 100 for mine in granted)


# -- exact windows (backends that take a clock) ------------------------------------------


@pytest.fixture(params=["memory", "postgres"])
async def clocked(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Quotas, Clock]]:
    clock = Clock()
    if request.param == "memory":
        yield MemoryQuotas(clock=clock), clock
        return
    store = Store(request.getfixturevalue("postgres_url"))
    await store.start()
    try:
        yield StoreQuotas(store, clock=clock), clock
    finally:
        await store.close()


async def test_windows_are_exact_as_the_policy_counts_them(
    clocked: tuple[Quotas, Clock],
) -> None:
    """A use counted at t leaves the window at t + window_s exactly, as ``ReviewBudget``'s
    hourly cap has it (``<= now - 3600``)."""
    backend, clock = clocked
    for t in (1000.0, 1000.0, 1010.0):
        clock.now = t
        assert await backend.take("reviews", "fleet", limit=3, window_s=3600) is None
    clock.now = 1500.0
    assert await backend.take("reviews", "fleet", limit=3, window_s=3600) == 3100
    clock.now = 4599.5
    assert await backend.take("reviews", "fleet", limit=3, window_s=3600) == 1
    clock.now = 4600.0  # both uses of t = 1000 leave now
    assert await backend.take("reviews", "fleet", limit=3, window_s=3600) is None
    assert await backend.take("reviews", "fleet", limit=3, window_s=3600) is None
    assert await backend.take("reviews", "fleet", limit=3, window_s=3600) == 10


async def test_memory_forgets_keys_whose_window_passed_but_evicts_no_live_one() -> None:
    clock = Clock()
    backend = MemoryQuotas(clock=clock)
    assert await backend.take("votes", "victim", limit=1, window_s=60) is None
    for i in range(5000):
        clock.now = 1000.0 + i * 0.01
        await backend.take("votes", f"10.0.{i >> 8}.{i & 255}", limit=1, window_s=60)
    assert await backend.take("votes", "victim", limit=1, window_s=60) is not None
    clock.now = 2000.0
    for i in range(5000):
        await backend.take("votes", f"10.1.{i >> 8}.{i & 255}", limit=1, window_s=60)
    # Swept as the keys doubled: the first flood's and the victim's are gone (their
    # minute passed), the second flood's are all there.
    assert backend.keys == 5000


# -- PostgreSQL: its rows ----------------------------------------------------------------


def _rows(url: str) -> int:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(QuotaHit)).scalar_one())
    finally:
        engine.dispose()


async def test_postgres_prunes_uses_whose_window_passed(postgres_url: str) -> None:
    clock = Clock()
    store = Store(postgres_url)
    await store.start()
    try:
        backend = StoreQuotas(store, prune_every_s=60.0, clock=clock)
        for i in range(20):
            await backend.take("votes", f"client-{i}", limit=5, window_s=60)
        assert await store.count_rows(QuotaHit) == 20
        clock.now += 61  # every window passed; the next take finds the prune due
        assert await backend.take("votes", "client-0", limit=5, window_s=60) is None
        assert await store.count_rows(QuotaHit) == 1
    finally:
        await store.close()


async def test_a_held_lock_is_a_bounded_wait_not_a_hang(postgres_url: str) -> None:
    store = Store(postgres_url)
    await store.start()
    engine = create_engine(sync_url(postgres_url))
    try:
        guarded = Guarded(StoreQuotas(store), where="the test store", timeout_s=0.3, pause_s=0.0)
        with engine.connect() as other:  # another taker of the key, stuck mid-transaction
            other.begin()
            lock = func.pg_advisory_xact_lock(quotas.LOCK_CLASS, quotas.lock_key("reviews", "k"))
            other.execute(select(lock))
            with pytest.raises(QuotaUnavailable, match=r"no answer within 0\.3 s"):
                await guarded.take("reviews", "k", limit=3, window_s=3600)
            other.rollback()
        # The lock let go: the key counts again (the stuck take timed out in the database).
        deadline = time.monotonic() + 10
        while True:
            try:
                assert await guarded.take("reviews", "k", limit=3, window_s=3600) is None
                break
            except QuotaUnavailable:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
    finally:
        engine.dispose()
        await store.close()


# -- failures ----------------------------------------------------------------------------


async def test_an_unreachable_redis_is_quota_unavailable_without_its_password() -> None:
    backend = RedisQuotas("redis://:s3cret-pw@127.0.0.1:1/0", timeout_s=0.5)
    try:
        with pytest.raises(QuotaUnavailable) as info:
            await backend.take("votes", "a", limit=3, window_s=60)
    finally:
        await backend.aclose()
    assert "Redis at redis://:***@127.0.0.1:1/0" in str(info.value)
    assert "s3cret-pw" not in str(info.value)


async def test_a_closed_store_is_quota_unavailable(tmp_path: Path) -> None:
    store = Store("postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(QuotaUnavailable, match="not started"):
        await StoreQuotas(store).take("votes", "a", limit=3, window_s=60)
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        StoreQuotas(Store(f"sqlite:///{tmp_path / 'x.db'}"))


class Failing:
    """A backend that fails (or, with ``hang``, never answers) until ``healthy``."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.healthy = False
        self.calls = 0

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        self.calls += 1
        if self.healthy:
            return None
        if self.hang:
            await asyncio.Event().wait()
        raise QuotaUnavailable("the counters are down")

    async def aclose(self) -> None:
        return None


async def test_a_backend_that_never_answers_fails_within_the_timeout() -> None:
    guarded = Guarded(Failing(hang=True), where="a stuck Redis", timeout_s=0.05)
    with pytest.raises(QuotaUnavailable, match=r"a stuck Redis gave no answer within 0\.05 s"):
        await guarded.take("votes", "a", limit=1, window_s=60)


async def test_an_outage_is_logged_once_and_asked_again_only_after_a_pause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(0.0)
    backend = Failing()
    guarded = Guarded(backend, where="Redis", pause_s=5.0, clock=clock)
    caplog.set_level(logging.INFO, logger="hitl.quotas")
    for t in (0.0, 1.0, 2.0, 5.0, 9.0):
        clock.now = t
        with pytest.raises(QuotaUnavailable):
            await guarded.take("votes", "a", limit=1, window_s=60)
    # Asked at 0, then not until the pause ended (5), then not until 10.
    assert backend.calls == 2
    backend.healthy = True
    clock.now = 10.0
    assert await guarded.take("votes", "a", limit=1, window_s=60) is None
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0][0] == "ERROR" and "the counters are down" in messages[0][1]
    assert "no reply is escalated or asked about (holds go on)" in messages[0][1]
    recovered = "shared limits: Redis answers again (5 takes refused meanwhile)"
    assert messages[1] == ("WARNING", recovered)
    # The next outage is told again.
    backend.healthy = False
    clock.now = 20.0
    with pytest.raises(QuotaUnavailable):
        await guarded.take("votes", "a", limit=1, window_s=60)
    assert len(caplog.records) == 3


class Counted(MemoryQuotas):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.calls = 0

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        self.calls += 1
        return await super().take(name, key, limit=limit, window_s=window_s)


async def test_a_refusal_is_remembered_until_its_wait_has_passed() -> None:
    clock = Clock(0.0)
    backend = Counted(clock)
    guarded = Guarded(backend, where="Redis", clock=clock, max_refusals=2)

    async def take(key: str) -> int | None:
        return await guarded.take("votes", key, limit=1, window_s=60)

    assert await take("a") is None
    assert await take("a") == 60  # asked, and refused
    clock.now = 30.0
    assert await take("a") == 30  # refused here, without asking
    assert backend.calls == 2
    assert await take("b") is None  # other keys are asked as ever
    clock.now = 60.0
    assert await take("a") is None  # its use left the window: asked, and granted
    assert backend.calls == 4
    # Bounded: past ``max_refusals`` keys the oldest refusal is forgotten (asked again).
    clock.now = 70.0
    for key in ("c", "d", "e"):
        assert await take(key) is None
        assert await take(key) == 60
    calls = backend.calls
    assert [await take(key) for key in ("d", "e")] == [60, 60]
    assert backend.calls == calls
    assert await take("c") == 60
    assert backend.calls == calls + 1


async def test_claims_fail_closed_and_votes_fail_open() -> None:
    caps = FleetCaps(Failing(), reviews_per_hour=100, asks_per_user_per_hour=100)
    assert await caps.review() is False
    assert await caps.ask("alice") is False
    assert await MovingWindow(3, name="feedback", quotas=Failing()).hit("198.51.100.7") is None


async def test_fleet_caps_count_reviews_for_the_fleet_and_asks_per_user() -> None:
    caps = FleetCaps(MemoryQuotas(), reviews_per_hour=2, asks_per_user_per_hour=1)
    assert [await caps.review() for _ in range(3)] == [True, True, False]
    assert [await caps.ask("alice"), await caps.ask("alice"), await caps.ask("bob")] == [
        True,
        False,
        True,
    ]


# -- configuration and selection ---------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://127.0.0.1:6379",
        "redis://:pw@cache.internal:6380/2",
        "rediss://user:pw@cache.example.com/0",
        "unix:///run/redis/redis.sock?db=1",
    ],
)
def test_redis_urls_that_are_taken(url: str) -> None:
    assert settings_from_mapping({"store": {"redis_url": url}}).store.redis_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:6379", "must be empty or a redis://HOST[:PORT][/DB]"),
        ("http://127.0.0.1:6379", "must be empty or a redis://HOST[:PORT][/DB]"),
        ("redis://", "must be empty or a redis://HOST[:PORT][/DB]"),
        ("redis://127.0.0.1:99999", "is not a valid URL"),
    ],
)
def test_redis_urls_that_are_refused_say_what_is_expected(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"store\.redis_url = .*" + message.replace("[", r"\[")):
        settings_from_mapping({"store": {"redis_url": url}})


def test_the_redis_password_is_never_printed_with_the_settings() -> None:
    settings = settings_from_mapping({"store": {"redis_url": "redis://:pw-123@h:6379/0"}})
    assert "pw-123" not in repr(settings) and "pw-123" not in str(settings.store)
    assert "redis://:***@h:6379/0" in repr(settings.store)
    with pytest.raises(ConfigError) as info:
        settings_from_mapping({"store": {"redis_url": "http://:pw-123@h:6379"}})
    assert "pw-123" not in str(info.value)


@pytest.mark.parametrize(
    ("store", "redis", "picked"),
    [
        ("sqlite:///{tmp}/a.db", "", MemoryQuotas),
        ("postgresql+psycopg://u@127.0.0.1/db", "", StoreQuotas),
        ("postgresql+psycopg://u@127.0.0.1/db", "redis://127.0.0.1:6379/0", RedisQuotas),
        ("sqlite:///{tmp}/a.db", "redis://127.0.0.1:6379/0", RedisQuotas),
    ],
)
async def test_the_composition_root_picks_where_counts_live(
    tmp_path: Path, store: str, redis: str, picked: type
) -> None:
    settings = settings_from_mapping(
        {"store": {"url": store.format(tmp=tmp_path), "redis_url": redis}}
    )
    chosen = build_quotas(settings, Store(settings.store.url))  # builds; opens nothing
    try:
        backend = chosen.backend if isinstance(chosen, Guarded) else chosen
        assert isinstance(backend, picked)
        # Remote counts go behind the guard; memory cannot fail.
        assert isinstance(chosen, Guarded) is (picked is not MemoryQuotas)
    finally:
        await chosen.aclose()
