"""Reading request bodies: under a limit (also when the client sends them chunked), as
strict JSON, as a validated model, as a chat request the gateway can score and record.

Strict JSON is what every endpoint parses, so that what the gateway reads is what it
records and what the upstream reads: UTF-8, no ``NaN``/``Infinity``, numbers a double
can hold, no key twice in one object, at most ``MAX_JSON_DEPTH`` levels deep, and no
NUL in text that is stored (PostgreSQL cannot store it; ``Text`` in a model).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from middleware.http.responses import error_response
from middleware.vocabulary import REASONS

M = TypeVar("M", bound=BaseModel)

#: How deeply a request's JSON may nest (the body itself is level 1). Real OpenAI
#: payloads, nested tool schemas included, stay far below it; orjson, which records
#: each exchange, cannot write past 254 levels.
MAX_JSON_DEPTH = 64


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")
        self.limit = limit


class InvalidJSON(ValueError):
    """The body is not strict JSON; ``param`` names the field to blame, when one is."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        parts.append(chunk)
    return b"".join(parts)


def parse_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH, nul: bool = False) -> Any:
    """``body`` as strict JSON (see the module's docstring), or ``InvalidJSON``; NUL is
    refused anywhere unless ``nul`` (a model then refuses it in what it stores: ``Text``)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(_not_json(body, exc, max_depth)) from None
    colons = _walk(data, max_depth)
    # orjson keeps the last of two equal keys. Outside strings, each ':' of the body ends
    # one key, so without a key twice the body holds exactly ``colons`` of them (keys
    # plus the colons inside strings); only a \u003a escape spells a colon without one.
    if body.count(b":") != colons or b"\\u003" in body:
        try:
            json.loads(body, object_pairs_hook=_unique)
        except InvalidJSON:
            raise
        except ValueError as exc:  # orjson read it; the stdlib should, but never a 500
            raise InvalidJSON(f"the request body is not valid JSON ({exc})") from None
    if not nul and b"\\u0000" in body:  # the only way JSON spells NUL
        _refuse_nul(data)
    return data


def _not_json(body: bytes, exc: orjson.JSONDecodeError, max_depth: int) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"the request body is not UTF-8 (byte {body[bad.start]:#04x} at offset "
            f"{bad.start}): send JSON encoded as UTF-8"
        )
    if "depth limit" in str(exc):
        return _too_deep(max_depth)
    if not body.strip():
        return "the request body is empty: send a JSON object"
    return f"the request body is not valid JSON ({exc})"


def _too_deep(max_depth: int) -> str:
    return f"the request body nests JSON more than {max_depth} levels deep"


_CONTAINERS = (dict, list)
_NESTED = (str, dict, list)  # tuples: isinstance is several times faster than with X | Y


def _walk(data: Any, max_depth: int) -> int:
    """The number of keys plus the colons inside strings; ``InvalidJSON`` naming the
    top-level field where the JSON nests deeper than ``max_depth``."""
    colons = 0
    stack: list[tuple[Any, int, str | None]] = [(data, 1, None)]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, str):
            colons += value.count(":")
            continue
        if not isinstance(value, _CONTAINERS):
            continue
        if depth > max_depth:
            raise InvalidJSON(_too_deep(max_depth), param=field)
        if isinstance(value, dict):
            colons += len(value)
            for key, item in value.items():
                colons += key.count(":")
                if isinstance(item, _NESTED):
                    stack.append((item, depth + 1, key if field is None else field))
        else:
            for item in value:
                if isinstance(item, _NESTED):
                    stack.append((item, depth + 1, field))
    return colons


def _refuse_nul(data: Any) -> None:
    stack: list[tuple[Any, str | None]] = [(data, None)]
    while stack:
        value, field = stack.pop()
        if isinstance(value, str) and "\x00" in value:
            raise InvalidJSON(
                "text in the request must not contain NUL (\\u0000) characters", param=field
            )
        if isinstance(value, dict):
            for key, item in value.items():
                top = key if field is None else field
                stack += [(key, top), (item, top)]
        elif isinstance(value, list):
            stack += [(item, field) for item in value]


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise InvalidJSON(f"the key '{key}' appears twice in one object", param=key)
        seen[key] = value
    return seen


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return text


#: a model's text field that is stored
Text = Annotated[str, AfterValidator(_no_nul)]


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
    if name == "body" and first["type"] in ("model_type", "dict_type"):
        return name, "the request body must be a JSON object"
    # One phrasing for every text length (on a ``Text``, checked after its validator,
    # pydantic's own reads "items").
    if first["type"] in ("too_short", "string_too_short") and isinstance(first.get("input"), str):
        least = (first.get("ctx") or {}).get("min_length", 1)
        if least <= 1:
            return name, f"'{name}' must not be empty"
        return name, f"'{name}' must be at least {least} characters"
    if first["type"] in ("too_long", "string_too_long") and isinstance(first.get("input"), str):
        most = (first.get("ctx") or {}).get("max_length")
        return name, f"'{name}' must be at most {most} characters"
    return name, f"'{name}': {first['msg'].removeprefix('Value error, ')}"


async def read_model(request: Request, model: type[M], limit: int) -> M | Response:
    """The body validated as ``model``, or the error to answer: 413, 400 or 422."""
    try:
        body = await read_body(request, limit)
    except BodyTooLarge as exc:
        return error_response(413, str(exc), "body_too_large")
    try:
        data = parse_json(body, nul=True)
    except InvalidJSON as exc:
        return error_response(400, str(exc), "invalid_json", param=exc.param)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = validation_message(exc)
        return error_response(422, message, "invalid_field", param=field)


#: Top-level chat fields the gateway reads itself, and the JSON types each may have.
_CHAT_FIELDS: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
    ("model", str, "a string"),
    ("stream", (bool, type(None)), "true, false or null"),
    ("user", (str, type(None)), "a string or null"),
    ("metadata", (dict, type(None)), "an object or null"),
    ("stream_options", (dict, type(None)), "an object or null"),
)


def chat_problem(payload: dict[str, Any]) -> tuple[str, str] | None:
    """(field, why) of the first field of a chat request the gateway cannot score or
    record as sent, or None (pure)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages", "'messages' must be a non-empty array of messages"
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return where, f"'{where}' must be an object with a 'role'"
        if not isinstance(message.get("role"), str):
            return f"{where}.role", f"'{where}.role' must be a string"
        content = message.get("content")
        parts_ok = isinstance(content, list) and all(isinstance(p, dict) for p in content)
        if not (content is None or isinstance(content, str) or parts_ok):
            return (
                f"{where}.content",
                f"'{where}.content' must be a string, an array of content parts, or null",
            )
    for name, types, kind in _CHAT_FIELDS:
        if name in payload and not isinstance(payload[name], types):
            return name, f"'{name}' must be {kind}"
    return None


def chat_payload(body: bytes) -> dict[str, Any] | Response:
    """A chat request's body, checked before anything goes upstream, or the 400 to answer."""
    try:
        payload = parse_json(body)
    except InvalidJSON as exc:
        return error_response(400, str(exc), "invalid_json", param=exc.param)
    if not isinstance(payload, dict):
        return error_response(400, "the request body must be a JSON object", "invalid_request")
    problem = chat_problem(payload)
    if problem is not None:
        field, message = problem
        return error_response(400, message, "invalid_request", param=field)
    return payload
