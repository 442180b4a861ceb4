"""What ``/slack/events`` lets through to bolt: a body signed over its exact bytes that
holds an interactivity payload the gateway handles, in the shape bolt and the listeners
read (pure functions).

Bolt parses the body before it checks the signature, and answers 500 to what it cannot
read, so these checks come first: a forged request stays a 401, and a malformed signed
one is a 400 (``Refused``) naming what is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qsl

import orjson

from middleware.errors import InvalidSignature, Refused

#: the payload types the gateway's listeners take (card buttons, the correction modal)
HANDLED = ("block_actions", "view_submission")
#: real interactivity payloads (a card's blocks inside ``message``) nest about 10 deep
MAX_DEPTH = 64


def check_signature(secret: str, timestamp: str, signature: str, body: bytes) -> None:
    """``InvalidSignature`` unless ``signature`` is Slack's ``v0`` HMAC of ``body``."""
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise InvalidSignature(
            "X-Slack-Signature does not match the body (is $SLACK_SIGNING_SECRET the app's?)"
        )


def read_payload(body: bytes, content_type: str | None) -> dict[str, Any]:
    """The payload bolt will read from ``body`` (parsed as bolt parses it), checked."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("the Slack request body is not UTF-8", param="body") from None
    if (content_type or "").split(";")[0] == "application/json" or text.startswith("{"):
        raw, where = text, "body"
    else:
        form = dict(parse_qsl(text, keep_blank_values=True)) if "payload" in text else {}
        if "payload" not in form:
            raise Refused(
                "the Slack request is not an interactivity payload (a form with payload=<JSON>)",
                param="payload",
            )
        raw, where = form["payload"], "payload"
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(f"the Slack {where} is not valid JSON ({exc})", param=where) from None
    if not isinstance(payload, dict):
        raise Refused(f"the Slack {where} must be a JSON object", param=where)
    _check_depth(payload, where)
    _check_shape(payload)
    return payload


def _check_depth(data: Any, where: str) -> None:
    stack: list[tuple[Any, int]] = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise Refused(f"the Slack {where} nests more than {MAX_DEPTH} levels", param=where)
        children = value.values() if isinstance(value, dict) else value
        stack += [(child, depth + 1) for child in children if isinstance(child, dict | list)]


def _field(payload: dict[str, Any], name: str, kinds: tuple[type, ...], what: str) -> None:
    if payload.get(name) is not None and not isinstance(payload[name], kinds):
        raise Refused(f"'{name}' must be {what}", param=name)


def _check_shape(payload: dict[str, Any]) -> None:
    kind = payload.get("type")
    if not isinstance(kind, str):
        raise Refused("'type' must be a string naming the payload's type", param="type")
    if kind not in HANDLED:
        raise Refused(
            f"the gateway takes only {' and '.join(HANDLED)} payloads, not {kind[:60]!r}",
            param="type",
        )
    # What bolt reads to build its context, and the listeners to answer.
    for name in ("enterprise", "team"):
        _field(payload, name, (str, dict), "a string or an object")
        value = payload.get(name)
        if isinstance(value, dict) and not isinstance(value.get("id", ""), str):
            raise Refused(f"'{name}.id' must be a string", param=f"{name}.id")
    for name in ("channel", "container"):
        _field(payload, name, (dict,), "an object")
    for name in ("authorizations", "response_urls"):
        value = payload.get(name)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(item, dict) for item in value)
        ):
            raise Refused(f"'{name}' must be an array of objects", param=name)
    user = payload.get("user")
    if not isinstance(user, dict) or not isinstance(user.get("id"), str):
        raise Refused("'user' must be an object with the user's 'id'", param="user")
    if kind == "block_actions":
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions:
            raise Refused("'actions' must be a non-empty array of actions", param="actions")
        for i, action in enumerate(actions):
            if not isinstance(action, dict) or not isinstance(action.get("action_id"), str):
                raise Refused(
                    f"'actions[{i}]' must be an object with an 'action_id' string",
                    param=f"actions[{i}]",
                )
        return
    view = payload.get("view")
    view = view if isinstance(view, dict) else {}
    # Bolt reads both: the callback id to match, the type to tell a workflow step.
    if not (isinstance(view.get("type"), str) and isinstance(view.get("callback_id"), str)):
        raise Refused("'view' must be an object with 'type' and 'callback_id'", param="view")
    _check_metadata(view.get("private_metadata", ""))


def _check_metadata(metadata: Any) -> None:
    """The modal's ``private_metadata``: a string the listener reads as JSON (the stdlib
    parser recurses, so deep nesting must not reach it)."""
    where = "view.private_metadata"
    if not isinstance(metadata, str):
        raise Refused(f"'{where}' must be a string", param=where)
    if metadata.count("[") + metadata.count("{") <= MAX_DEPTH:
        return
    try:
        parsed = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        raise Refused(f"'{where}' is not the gateway's (not JSON)", param=where) from None
    _check_depth(parsed, where)
