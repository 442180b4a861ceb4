"""Which request headers reach the upstream: a pure function, so it is tested as a table."""

from __future__ import annotations

from collections.abc import Iterable

# RFC 9110 7.6.1 hop-by-hop headers, plus what the transport sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
    }
)


def forward_headers(
    client_headers: Iterable[tuple[str, str]],
    *,
    api_key: str | None,
    forward_client_auth: bool,
) -> list[tuple[str, str]]:
    """The headers to send upstream for a client request.

    The client's ``Authorization`` is never forwarded unless ``forward_client_auth``:
    it may be this gateway's own client key. The configured key is sent instead.
    """
    headers = [(k.lower(), v) for k, v in client_headers]
    named_by_connection = {
        token.strip().lower()
        for k, v in headers
        if k == "connection"
        for token in v.split(",")
        if token.strip()
    }
    out: list[tuple[str, str]] = []
    client_auth: str | None = None
    for name, value in headers:
        if name in HOP_BY_HOP or name in named_by_connection or name.startswith("x-hitl-"):
            continue
        if name == "authorization":
            client_auth = value
            continue
        out.append((name, value))
    if forward_client_auth and client_auth is not None:
        out.append(("authorization", client_auth))
    elif api_key:
        out.append(("authorization", f"Bearer {api_key}"))
    return out
