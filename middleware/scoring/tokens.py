"""Feedback tokens: an HMAC of the reply id under the server's secret.

Only whoever received a reply holds its token, so only they can rate it. The secret
comes from an environment variable, or is generated once and kept in the store so
tokens stay valid across restarts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def new_reply_id() -> str:
    return "hitl-" + secrets.token_hex(12)


class TokenSigner:
    """Signs reply ids. The key is set once at start-up (it may live in the store)."""

    def __init__(self, secret: str | None = None) -> None:
        self._key: bytes | None = None
        if secret is not None:
            self.set_secret(secret)

    def set_secret(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the feedback token secret must be at least 16 characters long")
        self._key = secret.encode()

    def __repr__(self) -> str:
        return "TokenSigner(<secret>)"

    def sign(self, reply_id: str) -> str:
        if self._key is None:
            raise RuntimeError("TokenSigner has no secret yet (set in the lifespan)")
        # Any str signs (a lone surrogate from a decoded path too); none of it is trusted.
        digest = hmac.new(
            self._key, reply_id.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def verify(self, reply_id: str, token: str) -> bool:
        """Whether ``token`` is ``reply_id``'s. Any string is safe to pass: a token is
        URL-safe base64, so one with other characters simply does not match."""
        if not token.isascii():
            return False  # compare_digest refuses non-ASCII str
        return hmac.compare_digest(self.sign(reply_id).encode(), token.encode())
