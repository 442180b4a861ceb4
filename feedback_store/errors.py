"""The store's exceptions. The gateway maps them onto its own tree at its edge."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, OperationalError

from feedback_store.urls import redact, redact_url

#: what failed, as the error messages say it
OPEN, READ, WRITE = "could not be opened", "could not be read", "refused a write"


class StoreError(Exception):
    """The database could not be reached or refused a write."""


class SchemaError(StoreError):
    """The database schema is not at the revision this code needs."""


class ReplayedReply(Exception):
    """A verdict named a reply ``hitl replay`` stored (route "replay"): nothing is
    written; its label came with the recorded stream."""


def describe(exc: BaseException, action: str, url: str, config_hint: str) -> str:
    """What failed, for a ``StoreError``: the driver's first line (secrets masked) and
    what to do about it."""
    lines = str(exc).strip().splitlines()
    # SQLAlchemy's first line is the driver's message; the rest quotes the SQL and its
    # parameters, which may hold users' text or a secret.
    detail = redact(lines[0] if lines else type(exc).__name__, url)
    reachable = "check that the database is running and that [store] url points at it"
    current = f"that its schema is current (`hitl db upgrade --config {config_hint}`)"
    if isinstance(exc, OSError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        advice = reachable
    elif isinstance(exc, OperationalError):  # SQLite says "no such table" this way too
        advice = f"{reachable}, and {current}"
    elif action == WRITE:
        advice = "nothing of that write was stored"
    else:
        advice = f"check {current}"
    return f"the database at {redact_url(url)} {action} ({detail}); {advice}"
