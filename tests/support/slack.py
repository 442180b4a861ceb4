"""Slack as reviewers use it: signed payloads built the way Slack signs them,
the cards the stand-in received, clicks and the correction form."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier

from tests.support.servers import ServerThread
from tests.support.slack_standin import CHANNEL, SlackStandin

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"

ADMIN = "admin-token-for-tests-0123456789"

ESCALATE_ALL = {"escalate_below": 1.0, "review_budget": 1.0, "max_reviews_per_hour": 1000}


def rows(tmp_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        return conn.execute(sql, params).fetchall()


def ask(gw: ServerThread, text: str = "How do I reset my password?") -> dict[str, Any]:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": text}]},
    )
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    assert hitl["decision"] == "escalate"
    return hitl


def card_for(standin: SlackStandin, reply_id: str) -> dict[str, Any]:
    """The chat.postMessage call that posted ``reply_id``'s card (waits for it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for call in standin.calls_to("chat.postMessage", ok_only=True):
            if call.args["metadata"]["event_payload"]["reply_id"] == reply_id:
                return {**call.args, "ts": standin_ts(standin, call.args)}
        time.sleep(0.02)
    raise AssertionError(f"no card for {reply_id} was posted")


def standin_ts(standin: SlackStandin, args: dict[str, Any]) -> str:
    for ts, message in standin.messages[CHANNEL].items():
        if message.get("metadata") == args["metadata"]:
            return ts
    raise AssertionError("posted message not found")


def elements(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        el["action_id"]: {**el, "block_id": block["block_id"]}
        for block in card["blocks"]
        if block["type"] == "actions"
        for el in block["elements"]
    }


def user(uid: str) -> dict[str, str]:
    return {"id": uid, "name": uid.lower(), "username": uid.lower(), "team_id": "TSTANDIN"}


def action_payload(card: dict[str, Any], action: dict[str, Any], uid: str) -> dict[str, Any]:
    return {
        "type": "block_actions",
        "team": {"id": "TSTANDIN", "domain": "standin"},
        "user": user(uid),
        "api_app_id": "ASTANDIN",
        "token": "legacy-verification-token",
        "trigger_id": "1337.42.abcdef",
        "container": {
            "type": "message",
            "message_ts": card["ts"],
            "channel_id": CHANNEL,
            "is_ephemeral": False,
        },
        "channel": {"id": CHANNEL, "name": "reviews"},
        "message": {"type": "message", "ts": card["ts"], "text": card["text"]},
        "actions": [{**action, "action_ts": str(time.time())}],
    }


def signed(body: str, *, secret: str = SECRET, ts: str | None = None) -> dict[str, str]:
    stamp = str(int(time.time())) if ts is None else ts
    signature = SignatureVerifier(secret).generate_signature(timestamp=stamp, body=body) or ""
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def send(gw: ServerThread, payload: dict[str, Any], **sign: Any) -> httpx.Response:
    body = urlencode({"payload": json.dumps(payload)})
    return httpx.post(gw.url + "/slack/events", content=body, headers=signed(body, **sign))


def click_payload(
    card: dict[str, Any], action_id: str, uid: str = "UREVIEWER1", reason: str | None = None
) -> dict[str, Any]:
    """The block_actions payload of a click on ``card``'s button (or reason menu)."""
    action = elements(card)[action_id]
    if reason is not None:
        option = next(o for o in action["options"] if o["value"].endswith("|" + reason))
        action = {**action, "selected_option": option}
    return action_payload(card, action, uid)


def click(
    gw: ServerThread,
    card: dict[str, Any],
    action_id: str,
    uid: str = "UREVIEWER1",
    reason: str | None = None,
) -> httpx.Response:
    return send(gw, click_payload(card, action_id, uid, reason))


def submit_correction(
    gw: ServerThread, view: dict[str, Any], text: str, uid: str = "UREVIEWER1"
) -> httpx.Response:
    return send(gw, correction_payload(view, text, uid))


def correction_payload(view: dict[str, Any], text: str, uid: str = "UREVIEWER1") -> dict[str, Any]:
    """The view_submission payload of the correction form ``view`` holding ``text``."""
    return {
        "type": "view_submission",
        "team": {"id": "TSTANDIN", "domain": "standin"},
        "user": user(uid),
        "api_app_id": "ASTANDIN",
        "token": "legacy-verification-token",
        "trigger_id": "1338.42.abcdef",
        "view": {
            **view,
            "id": "VSTANDIN",
            "state": {
                "values": {"correction": {"text": {"type": "plain_text_input", "value": text}}}
            },
        },
    }


def ephemerals_to(standin: SlackStandin, uid: str, count: int = 1) -> list[str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = [
            c.args["text"] for c in standin.calls_to("chat.postEphemeral") if c.args["user"] == uid
        ]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no private answer to {uid}")


def card_update(standin: SlackStandin, ts: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        updates = [
            c.args for c in standin.calls_to("chat.update", ok_only=True) if c.args["ts"] == ts
        ]
        if updates:
            return updates[-1]
        time.sleep(0.02)
    raise AssertionError(f"card {ts} was never updated")
