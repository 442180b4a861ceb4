"""Who is reviewing: personal reviewer tokens and the admin token.

``[review] reviewer_tokens_env`` names a variable of comma-separated ``name:token``
pairs; a reviewer sends their token as ``Authorization: Bearer <token>``, or as the
password of HTTP Basic (any user name) so that a browser can open the review page. Each
decision is then recorded under the token's name. The admin token also works (the
decision then names the reviewer the request gives).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import Response

from middleware.errors import ConfigError
from middleware.http.auth import presented_token
from middleware.http.responses import error_response

#: the name a request signed in with the admin token goes by
ADMIN = "admin"
MIN_TOKEN = 16


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed-in reviewer: the token's name, or ``admin``."""

    name: str

    @property
    def admin(self) -> bool:
        return self.name == ADMIN


def parse_tokens(raw: str | None, *, variable: str) -> dict[str, str]:
    """``"ann:tok1,bob:tok2"`` as ``{token: name}``; a bad entry stops start-up, saying
    which (never the token itself)."""
    tokens: dict[str, str] = {}
    names: set[str] = set()
    for n, entry in enumerate((raw or "").split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, token = entry.partition(":")
        name, token = name.strip(), token.strip()
        where = f"${variable}, entry {n}"
        if not sep or not name or not token:
            raise ConfigError(f"{where}: expected NAME:TOKEN (comma-separated pairs)")
        if name == ADMIN:
            raise ConfigError(f"{where}: the name {ADMIN!r} is the admin token's; pick another")
        if len(token) < MIN_TOKEN:
            raise ConfigError(f"{where}: {name}'s token is shorter than {MIN_TOKEN} characters")
        if name in names or token in tokens:
            raise ConfigError(f"{where}: {name} or its token is listed twice")
        names.add(name)
        tokens[token] = name
    return tokens


class Reviewers:
    """Signs requests in: ``identify`` names the reviewer, or None."""

    def __init__(
        self,
        tokens: dict[str, str],
        admin_token: str | None,
        *,
        tokens_env: str = "HITL_REVIEWER_TOKENS",
        admin_env: str = "HITL_ADMIN_TOKEN",
    ) -> None:
        self.tokens = tokens
        self.admin_token = admin_token
        self.tokens_env = tokens_env
        self.admin_env = admin_env

    def sign_in(self, headers: Headers, *, what: str, challenge: str) -> Signed | Response:
        """The reviewer behind a request, or the answer to give: 403 when no token is
        configured at all, 401 (with ``challenge`` as WWW-Authenticate) for a wrong one."""
        if not self.enabled:
            return error_response(
                403,
                f"{what} is off: set ${self.tokens_env} (reviewers' NAME:TOKEN pairs) or "
                f"${self.admin_env} (the admin token)",
                "admin_token_unset",
            )
        signed = self.identify(headers)
        if signed is None:
            return error_response(
                401,
                f"send your reviewer token (from ${self.tokens_env}) or the admin token "
                f"(${self.admin_env}) as 'Authorization: Bearer <token>', or as the password "
                "of HTTP Basic",
                "invalid_admin_token",
                headers={"www-authenticate": challenge},
            )
        return signed

    @property
    def enabled(self) -> bool:
        return bool(self.tokens) or self.admin_token is not None

    def identify(self, headers: Headers) -> Signed | None:
        token = presented_token(headers)
        if token is None:
            return None
        found: str | None = None
        # Compare with every token, so timing tells nothing of which one is close.
        for known, name in self.tokens.items():
            if hmac.compare_digest(token.encode(), known.encode()):
                found = name
        if self.admin_token is not None and hmac.compare_digest(
            token.encode(), self.admin_token.encode()
        ):
            found = ADMIN
        return None if found is None else Signed(found)
