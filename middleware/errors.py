"""The gateway's exceptions, one tree.

    HITLError
    ├── ConfigError            a setting is missing or wrong; start-up stops
    ├── StoreUnavailable       the database cannot be reached or written (503)
    ├── SchemaOutdated         the database is at an older schema revision
    ├── QuotaUnavailable       the fleet's shared counters (PostgreSQL, Redis) did not
    │                          answer in time; each caller says what that means
    ├── Refused                a client's request cannot be carried out (4xx)
    │   ├── InvalidSignature       a signed request's signature does not verify (401)
    │   ├── InvalidToken           the feedback token does not match the reply (403)
    │   ├── UnknownReply           no reply with that id (404)
    │   └── InvalidVerdict         a reviewer's decision is incomplete or wrong (422)
    ├── UpstreamError          the chat model failed us
    │   ├── UpstreamUnavailable    refused connection, 5xx, unparseable answer (502)
    │   └── UpstreamTimeout        no answer in time (504)
    └── ReviewChannelError     the reviewer channel (Slack) failed
        ├── ReviewChannelRetryable  try again later (rate limit, 5xx, network)
        │   └── ReviewChannelAmbiguous  ... and the call may have taken effect (the
        │                               answer was lost): look before posting again
        └── ReviewChannelPermanent  will never succeed as configured (dead letter)

Third-party exceptions (aiohttp, slack_sdk) are mapped to these at the adapter where
they occur, with ``raise Ours(msg) from exc``. The store maps SQLAlchemy's errors to
its own ``feedback_store.StoreError`` at its edge; a flow turns that into
``StoreUnavailable`` with ``store_errors(...)``, saying what could not be done. The
HTTP exception handlers in ``middleware.app.asgi`` answer every ``HITLError`` in the
OpenAI error shape, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from feedback_store import StoreError


class HITLError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(HITLError):
    pass


class StoreUnavailable(HITLError):
    """The message names the store's error for the log; ``public`` is what a client is
    told (no database detail leaves the gateway)."""

    status_code = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, public: str = "the store is unavailable; retry") -> None:
        super().__init__(message)
        self.public = public


class SchemaOutdated(HITLError):
    """The database's schema is not this code's: older (upgrade it) or newer (run the
    version that migrated it)."""


class QuotaUnavailable(HITLError):
    """A shared counter could not be read or counted (``middleware.quotas``): reviews
    and asks are then refused (fail closed), votes let through."""


class Refused(HITLError):
    """A request the gateway understood and will not carry out; the message says why."""

    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidSignature(Refused):
    status_code = 401
    code = "invalid_signature"


class InvalidToken(Refused):
    status_code = 403
    code = "invalid_token"


class UnknownReply(Refused):
    status_code = 404
    code = "unknown_reply"

    def __init__(self, reply_id: str, *, param: str | None = None) -> None:
        super().__init__(f"no reply with id {reply_id!r}", param=param)
        self.reply_id = reply_id


class NotReviewable(Refused):
    """A verdict on a reply that was replayed from a recorded stream, not served."""

    status_code = 409
    code = "replayed"

    def __init__(self, reply_id: str) -> None:
        super().__init__(
            f"reply {reply_id!r} was replayed from a recorded stream (hitl replay), not "
            "served to anyone: nobody waits for its review, and its label came with the "
            "stream"
        )
        self.reply_id = reply_id


class InvalidVerdict(Refused):
    status_code = 422
    code = "invalid_field"


class UpstreamError(HITLError):
    status_code = 502
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 502
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class ReviewChannelError(HITLError):
    pass


class ReviewChannelRetryable(ReviewChannelError):
    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReviewChannelAmbiguous(ReviewChannelRetryable):
    """The request may have reached the channel, but its answer never came (a timeout, a
    connection lost after sending, an error Slack says may follow a partial success)."""


class ReviewChannelPermanent(ReviewChannelError):
    pass


@contextlib.contextmanager
def store_errors(failed: str) -> Iterator[None]:
    """Turn the store's failure into ``StoreUnavailable``: "<failed>; retry" for clients,
    with the store's reason for the log."""
    try:
        yield
    except StoreError as exc:
        raise StoreUnavailable(f"{failed}: {exc}", public=f"{failed}; retry") from exc
