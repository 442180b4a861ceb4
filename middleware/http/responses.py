"""Errors in the OpenAI shape: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import orjson
from starlette.responses import Response

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_timeout",
}


#: what a 503 tells clients to wait before they retry (a database or a restart coming back)
RETRY_AFTER_S = 2


def error_body(status: int, message: str, code: str, *, param: str | None = None) -> bytes:
    error: dict[str, str | None] = {
        "message": message,
        "type": _TYPES.get(status, "server_error"),
        "code": code,
    }
    if param is not None:
        error["param"] = param
    return orjson.dumps({"error": error})


def error_response(
    status: int,
    message: str,
    code: str,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    if status == 503 and not (headers and "retry-after" in {k.lower() for k in headers}):
        # Every 503 is "try again soon" (store down, shutting down): say when.
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
    return Response(
        error_body(status, message, code, param=param),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def json_response(
    data: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )
