"""Bearer-key checks: client keys on ``/v1/*``, the admin token on admin routes."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from middleware.http.responses import error_response


def bearer(headers: Headers) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def presented_token(headers: Headers) -> str | None:
    """The token of ``Bearer <token>``, or the password of HTTP Basic credentials."""
    token = bearer(headers)
    if token is not None:
        return token
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _, sep, password = decoded.partition(":")
    return password if sep and password else None


def matches_any(token: str | None, keys: Iterable[str]) -> bool:
    if token is None:
        return False
    # Compare against every key so timing says nothing about which one is close.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found


def exempt_path(path: str, exempt: Iterable[str]) -> bool:
    """Whether ``path`` is an exempt route: an entry exactly, or one segment below an entry
    that ends in ``/``. Exact on purpose: ``/v1/feedback/../chat/completions`` must not pass,
    as the passthrough would forward it (normalised) with the upstream key."""
    for entry in exempt:
        if entry.endswith("/"):
            rest = path[len(entry) :] if path.startswith(entry) else ""
            if rest and "/" not in rest and rest not in (".", ".."):
                return True
        elif path == entry:
            return True
    return False


class ClientKeyMiddleware:
    """When client keys are configured, ``/v1/*`` needs ``Authorization: Bearer <key>``.

    Feedback and reply lookups carry their own per-reply token and are exempt, so a
    browser can vote without holding an API key; reviews carry the admin token.
    """

    exempt = ("/v1/feedback", "/v1/replies/", "/v1/reviews/")

    def __init__(self, app: ASGIApp, *, keys: frozenset[str]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if scope["method"] == "OPTIONS" or exempt_path(path, self.exempt):
            await self.app(scope, receive, send)
            return
        if matches_any(bearer(Headers(scope=scope)), self.keys):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "missing or unknown API key: send 'Authorization: Bearer <key>' with one of "
            "the gateway's client keys",
            "invalid_api_key",
            headers={"www-authenticate": "Bearer"},
        )
        await response(scope, receive, send)
