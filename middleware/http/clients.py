"""Who the client is: the peer that connected, unless that peer is a trusted proxy, in
which case the address the proxy says it forwarded for.

``X-Forwarded-For`` and ``Forwarded`` (RFC 7239) are anyone's to write: they are read
only when the connection comes from ``[server] trusted_proxies``, and then walked from
the nearest hop back, stopping at the first address that is not a trusted proxy (a
client can prepend what it likes, but not what the proxies appended after it). When a
request carries both, ``X-Forwarded-For`` counts: it is what proxies append to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    """A set of IP networks; ``host in proxies`` for a textual address."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        try:
            address: Address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _host(hop: str) -> str:
    """The address of one hop: ``1.2.3.4:80`` -> ``1.2.3.4``, ``[::1]:80`` -> ``::1``."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        return hop[1 : hop.find("]")] if "]" in hop else hop
    if hop.count(":") == 1:
        return hop.split(":", 1)[0]
    return hop


def forwarded_hops(headers: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """The hops the request says it passed, nearest last: ``X-Forwarded-For`` if present,
    else the ``for=`` of each ``Forwarded`` element."""
    xff = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
    if xff:
        return [_host(hop) for hop in ",".join(xff).split(",") if hop.strip()]
    hops: list[str] = []
    for name, value in headers:
        if name != b"forwarded":
            continue
        for element in value.decode("latin-1").split(","):
            for pair in element.split(";"):
                key, _, val = pair.partition("=")
                if key.strip().lower() == "for" and val.strip():
                    hops.append(_host(val))
    return hops


def client_host(peer: str | None, hops: Sequence[str], trusted: TrustedProxies) -> str | None:
    """The client's address: ``peer`` unless it is trusted, then the nearest hop that is
    not (or the farthest, when every hop is a trusted proxy)."""
    if peer not in trusted or not hops:
        return peer
    for hop in reversed(hops):
        if hop not in trusted:
            return hop
    return hops[0]


class ClientAddressMiddleware:
    """Sets ``scope["client"]`` to the real client, for the rate limits and the logs.

    Also right behind uvicorn's own proxy handling (which ``hitl serve`` configures with
    the same list): applied to its answer, the walk gives the same address again.
    """

    def __init__(self, app: ASGIApp, *, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = scope.get("client")
            if peer and peer[0] in self.trusted:
                host = client_host(peer[0], forwarded_hops(scope["headers"]), self.trusted)
                if host and host != peer[0]:
                    scope = {**scope, "client": (host, 0)}
        await self.app(scope, receive, send)
