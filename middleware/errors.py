"""The gateway's exceptions, one tree.

    HITLError
    ├── ConfigError            a setting is missing or wrong; start-up stops
    ├── StoreUnavailable       the database cannot be reached or written
    ├── SchemaOutdated         the database is at an older schema revision
    ├── UpstreamError          the chat model failed us
    │   ├── UpstreamUnavailable    refused connection, 5xx, unparseable answer (502)
    │   └── UpstreamTimeout        no answer in time (504)
    └── ReviewChannelError     the reviewer channel (Slack) failed
        ├── ReviewChannelRetryable  try again later (rate limit, 5xx, network)
        └── ReviewChannelPermanent  will never succeed as configured (dead letter)

Third-party exceptions (httpx, aiohttp, SQLAlchemy, slack_sdk) are mapped to these
at the edge where they occur, with ``raise Ours(msg) from exc``.
"""

from __future__ import annotations


class HITLError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(HITLError):
    pass


class StoreUnavailable(HITLError):
    pass


class SchemaOutdated(HITLError):
    pass


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


class ReviewChannelPermanent(ReviewChannelError):
    pass
