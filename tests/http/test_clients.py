"""Clients are who they are: rate limits key on the peer unless it is a trusted proxy,
a flood of new addresses resets no one's window, and a 429 says when to come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from middleware.cli.main import server_options
from middleware.http.clients import TrustedProxies, client_host, forwarded_hops
from middleware.http.ratelimit import MovingWindow, Unlimited, per_minute
from middleware.settings import settings_from_mapping
from tests.support.fleet import serving
from tests.support.processes import GatewayProcess

# -- the pure parts ------------------------------------------------------------------------

PROXIES = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8:1::/48"])


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        ("127.0.0.1", True),
        ("10.20.30.40", True),
        ("2001:db8:1::7", True),
        ("127.0.0.2", False),
        ("11.0.0.1", False),
        ("2001:db8:2::7", False),
        ("unknown", False),
        ("", False),
        (None, False),
    ],
)
def test_trusted_proxies_are_addresses_and_networks(host: str | None, trusted: bool) -> None:
    assert (host in PROXIES) is trusted


@pytest.mark.parametrize(
    ("headers", "hops"),
    [
        ([(b"x-forwarded-for", b"198.51.100.7")], ["198.51.100.7"]),
        (
            [(b"x-forwarded-for", b"6.6.6.6, 198.51.100.7 , 10.0.0.2")],
            ["6.6.6.6", "198.51.100.7", "10.0.0.2"],
        ),
        # Two header lines are one list, in order.
        (
            [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")],
            ["1.1.1.1", "2.2.2.2"],
        ),
        (
            [(b"x-forwarded-for", b"198.51.100.7:4711, [2001:db8::1]:80")],
            ["198.51.100.7", "2001:db8::1"],
        ),
        (
            [
                (
                    b"forwarded",
                    b'for=192.0.2.60;proto=http;by=203.0.113.43, for="[2001:db8:cafe::17]:4711"',
                )
            ],
            ["192.0.2.60", "2001:db8:cafe::17"],
        ),
        ([(b"forwarded", b"For=192.0.2.61")], ["192.0.2.61"]),
        # Both: X-Forwarded-For is what proxies append to.
        ([(b"forwarded", b"for=9.9.9.9"), (b"x-forwarded-for", b"198.51.100.7")], ["198.51.100.7"]),
        ([(b"forwarded", b"proto=https")], []),
        ([], []),
    ],
)
def test_forwarded_hops(headers: list[tuple[bytes, bytes]], hops: list[str]) -> None:
    assert forwarded_hops(headers) == hops


@pytest.mark.parametrize(
    ("peer", "hops", "client"),
    [
        # An untrusted peer is the client, whatever it says.
        ("198.51.100.9", ["1.2.3.4"], "198.51.100.9"),
        ("127.0.0.2", ["1.2.3.4"], "127.0.0.2"),
        # A trusted peer: the nearest hop that is not a proxy.
        ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", ["6.6.6.6", "198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", ["6.6.6.6", "198.51.100.7", "10.1.1.1"], "198.51.100.7"),
        # Every hop a proxy: the farthest.
        ("127.0.0.1", ["10.0.0.5", "10.0.0.6"], "10.0.0.5"),
        # A trusted peer that says nothing is the client.
        ("127.0.0.1", [], "127.0.0.1"),
        (None, ["1.2.3.4"], None),
    ],
)
def test_client_host(peer: str | None, hops: list[str], client: str | None) -> None:
    assert client_host(peer, hops, PROXIES) == client


def test_nothing_is_trusted_by_default() -> None:
    settings = settings_from_mapping({})
    assert settings.server.trusted_proxies == []
    assert not TrustedProxies(settings.server.trusted_proxies)
    assert client_host("127.0.0.1", ["1.2.3.4"], TrustedProxies([])) == "127.0.0.1"


def test_uvicorn_believes_forwarded_headers_only_from_the_listed_proxies() -> None:
    # Left to itself uvicorn believes X-Forwarded-For from 127.0.0.1.
    default = server_options(settings_from_mapping({}))
    assert default["proxy_headers"] is False
    assert default["forwarded_allow_ips"] == []
    listed = server_options(
        settings_from_mapping({"server": {"trusted_proxies": ["10.0.0.0/8", "127.0.0.1"]}})
    )
    assert listed["proxy_headers"] is True
    assert listed["forwarded_allow_ips"] == ["10.0.0.0/8", "127.0.0.1"]


async def test_the_moving_window_evicts_no_one() -> None:
    """60,000 new keys (more than the old hand-written limiter's 50,000 cap, which evicted
    the oldest key, the victim, to make room) leave the victim's window as it was."""
    limit = MovingWindow(3, name="test")
    assert [await limit.hit("victim") for _ in range(3)] == [None, None, None]
    wait = await limit.hit("victim")
    assert wait is not None and 1 <= wait <= 60
    for i in range(60_000):
        await limit.hit(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
    assert await limit.hit("victim") is not None
    assert await limit.hit("somebody else") is None


async def test_zero_is_no_limit() -> None:
    limit = per_minute(0, name="test")
    assert isinstance(limit, Unlimited)
    assert {await limit.hit("a") for _ in range(1000)} == {None}


# -- a real gateway process ------------------------------------------------------------------


def config(tmp_path: Path, trusted: list[str]) -> str:
    listed = ", ".join(f'"{t}"' for t in trusted)
    return f"""
[server]
feedback_per_minute = 3
trusted_proxies = [{listed}]

[store]
url = "sqlite:///{tmp_path / "hitl.db"}"
"""


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("untrusted")
    with serving(tmp, config(tmp, [])) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("behind-proxy")
    with serving(tmp, config(tmp, ["127.0.0.1"])) as gateway:
        yield gateway


def vote(gw: GatewayProcess, **headers: str) -> httpx.Response:
    # An empty body: past the limit it is a 422, which is all these tests need.
    return httpx.post(gw.url + "/v1/feedback", json={}, headers=headers)


def assert_limited(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_spoofed_forwarding_headers_from_an_untrusted_peer_get_no_fresh_window(
    untrusted: GatewayProcess,
) -> None:
    statuses = [
        vote(
            untrusted,
            **{"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=203.0.113.{i}"},
        ).status_code
        for i in range(3)
    ]
    assert statuses == [422, 422, 422]
    assert_limited(vote(untrusted, **{"X-Forwarded-For": "198.51.100.99"}))
    assert_limited(vote(untrusted, Forwarded='for="[2001:db8::99]"'))
    assert_limited(vote(untrusted))


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_window(
    behind_proxy: GatewayProcess,
) -> None:
    alice = {"X-Forwarded-For": "198.51.100.7"}
    assert [vote(behind_proxy, **alice).status_code for _ in range(3)] == [422] * 3
    assert_limited(vote(behind_proxy, **alice))
    # Alice prepending an address of her choice is still Alice: the proxy appended her.
    assert_limited(vote(behind_proxy, **{"X-Forwarded-For": "6.6.6.6, 198.51.100.7"}))
    # Bob, behind the same proxy, is someone else.
    assert vote(behind_proxy, **{"X-Forwarded-For": "198.51.100.8"}).status_code == 422
    # RFC 7239 Forwarded names clients too.
    carol = {"Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https'}
    assert [vote(behind_proxy, **carol).status_code for _ in range(3)] == [422] * 3
    assert_limited(vote(behind_proxy, **carol))


def flood(gw: GatewayProcess, addresses: range) -> dict[int, int]:
    """One feedback request from each of ``addresses`` (as 10.x.y.z), 32 at a time."""

    async def run() -> dict[int, int]:
        counts: dict[int, int] = {}
        queue = iter(addresses)
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:

            async def worker() -> None:
                for i in queue:
                    forwarded = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
                    r = await client.post(
                        "/v1/feedback", json={}, headers={"X-Forwarded-For": forwarded}
                    )
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1

            await asyncio.gather(*(worker() for _ in range(32)))
        return counts

    return asyncio.run(run())


@pytest.mark.slow
def test_ten_thousand_new_addresses_do_not_reset_a_window(behind_proxy: GatewayProcess) -> None:
    victim = {"X-Forwarded-For": "192.0.2.200"}

    def exhaust() -> float:
        started = time.monotonic()
        assert [vote(behind_proxy, **victim).status_code for _ in range(3)] == [422] * 3
        assert_limited(vote(behind_proxy, **victim))
        return started

    window_from = exhaust()
    verified, fresh = 0, iter(range(0, 1 << 20, 1000))
    # 1,000 new addresses at a time, the victim checked after each batch. On a loaded
    # machine the victim's own minute may end first: then that batch proves nothing, and
    # the victim's window starts again (empty first) with fresh addresses.
    while verified < 10_000:
        first = next(fresh)
        assert flood(behind_proxy, range(first, first + 1000)) == {422: 1000}
        if time.monotonic() - window_from < 55:
            assert_limited(vote(behind_proxy, **victim))
            verified += 1000
        else:
            time.sleep(max(0.0, window_from + 62 - time.monotonic()))
            window_from = exhaust()
