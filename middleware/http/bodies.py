"""Reading request bodies under a limit, also when the client sends them chunked."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from middleware.http.responses import error_response
from middleware.vocabulary import REASONS

M = TypeVar("M", bound=BaseModel)


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


def validation_message(exc: ValidationError) -> tuple[str, str]:
    """(field, message) of the first problem, phrased for a person."""
    first = exc.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "missing":
        return name, f"'{name}' is required"
    if first["type"] == "extra_forbidden":
        return name, f"'{name}' is not a field of this request"
    if first["type"] == "literal_error" and name == "reason":
        return name, "'reason' must be one of " + ", ".join(REASONS)
    return name, f"'{name}': {first['msg']}"


async def read_model(request: Request, model: type[M], limit: int) -> M | Response:
    """The body validated as ``model``, or the error to answer: 413, 400 or 422."""
    try:
        body = await read_body(request, limit)
    except BodyTooLarge as exc:
        return error_response(413, str(exc), "body_too_large")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"the request body is not valid JSON ({exc})", "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = validation_message(exc)
        return error_response(422, message, "invalid_field", param=field)
