"""Holds that hold: a risky, uncertain reply reaches its client only as a person decided,
or as the fallback. Real gateways, the review API (Slack off) and a real upstream
stand-in; the Slack path is in test_slack_holds.py."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fleet import start_serve
from tests.support.holds import ADMIN, FALLBACK, HOLD_ALL, held_reply_id
from tests.support.processes import free_port
from tests.support.servers import ServerThread
from tests.support.waiting import wait_for

#: before learning, every reply scores the prior: 0.1 < hold_below on a risky route
pool = concurrent.futures.ThreadPoolExecutor(max_workers=4)


@pytest.fixture
def held(gateway_factory: Any) -> Any:
    def start(**policy: Any) -> ServerThread:
        gw: ServerThread = gateway_factory(
            environ={"HITL_ADMIN_TOKEN": ADMIN}, policy={**HOLD_ALL, **policy}
        )
        return gw

    return start


def chat(gw: ServerThread, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "json", "messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)


def decide(gw: ServerThread, reply_id: str, **verdict: Any) -> httpx.Response:
    return httpx.post(
        f"{gw.url}/v1/reviews/{reply_id}",
        json={"reviewer": "ann", **verdict},
        headers={"authorization": f"Bearer {ADMIN}"},
    )


def state(gw: ServerThread, reply_id: str, token: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/v1/replies/{reply_id}", headers={"x-hitl-feedback-token": token})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def content(response: httpx.Response) -> str:
    return str(response.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize(
    ("verdict", "released", "expected"),
    [
        ({"decision": "approve"}, "original", "reply: refund my order"),
        (
            {"decision": "correct", "correction": "  Refunds take 5 days; I started yours.  "},
            "correction",
            "Refunds take 5 days; I started yours.",
        ),
        ({"decision": "reject", "reason": "unsafe"}, "fallback", FALLBACK),
    ],
)
def test_a_held_json_reply_waits_for_the_decision(
    held: Any, tmp_path: Path, verdict: dict[str, Any], released: str, expected: str
) -> None:
    gw = held()
    waiting = pool.submit(chat, gw, "refund my order")
    reply_id = held_reply_id(tmp_path / "hitl.db", "refund my order")
    time.sleep(0.5)
    assert not waiting.done(), "the held client was answered before anyone decided"
    assert decide(gw, reply_id, **verdict).status_code == 200
    r = waiting.result(timeout=10)
    assert r.status_code == 200, r.text
    assert content(r) == expected
    assert r.headers["x-hitl-decision"] == "hold"
    hitl = r.json()["hitl"]
    assert (hitl["reply_id"], hitl["decision"], hitl["released"]) == (reply_id, "hold", released)
    # The audit trail, for whoever holds the token.
    body = state(gw, reply_id, hitl["feedback_token"])
    assert body["held"] is True
    assert body["released"]["as"] == released and body["released"]["timed_out"] is False
    assert [v["by"] for v in body["review"]["votes"]] == ["ann"]


def test_a_held_reply_times_out_to_the_fallback_then_a_late_answer(
    held: Any, tmp_path: Path
) -> None:
    gw = held(hold_timeout_s=1.5)
    started = time.monotonic()
    r = chat(gw, "is my card blocked")
    waited = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert content(r) == FALLBACK
    assert 1.5 <= waited < 2.5 + 1.0
    hitl = r.json()["hitl"]
    assert hitl["released"] == "fallback" and hitl["timed_out"] is True
    before = state(gw, hitl["reply_id"], hitl["feedback_token"])
    assert before["answer"] is None
    assert before["released"]["timed_out"] is True
    # A decision after the timeout is still a label, and readable as a late answer.
    late = decide(gw, hitl["reply_id"], decision="correct", correction="Your card is fine.")
    assert late.status_code == 200, late.text
    after = state(gw, hitl["reply_id"], hitl["feedback_token"])
    assert after["answer"] == {"text": "Your card is fine.", "source": "corrected"}
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        assert conn.execute("SELECT source, value FROM label").fetchall() == [("reviewer", 0)]


def read_stream(gw: ServerThread, text: str, into: list[bytes]) -> httpx.Response:
    body = {"model": "json", "messages": [{"role": "user", "content": text}], "stream": True}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30) as r:
        for piece in r.iter_raw():
            into.append(piece)
    return r


def sse_data(raw: bytes) -> list[Any]:
    events = []
    for block in raw.decode().split("\n\n"):
        data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
        if data:
            events.append("[DONE]" if data[0] == "[DONE]" else json.loads(data[0]))
    return events


def test_a_held_stream_sends_nothing_but_heartbeats_until_the_decision(
    held: Any, tmp_path: Path
) -> None:
    gw = held()
    received: list[bytes] = []
    waiting = pool.submit(read_stream, gw, "raise my credit limit", received)
    reply_id = held_reply_id(tmp_path / "hitl.db", "raise my credit limit")
    assert wait_for(lambda: b"waiting for a reviewer" in b"".join(received), timeout=5)
    before = b"".join(received)
    assert b"data:" not in before, before
    assert b"credit limit" not in before
    assert decide(gw, reply_id, decision="approve").status_code == 200
    r = waiting.result(timeout=10)
    assert r.headers["x-hitl-decision"] == "hold"
    assert r.headers["x-hitl-reply-id"] == reply_id
    events = sse_data(b"".join(received))
    assert events[-1] == "[DONE]"
    text = "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e.get("choices")
    )
    assert text == "reply: raise my credit limit"
    assert events[-2]["hitl"]["released"] == "original"


def test_a_rejected_stream_carries_only_the_fallback(held: Any, tmp_path: Path) -> None:
    gw = held()
    received: list[bytes] = []
    waiting = pool.submit(read_stream, gw, "diagnose my rash", received)
    reply_id = held_reply_id(tmp_path / "hitl.db", "diagnose my rash")
    assert decide(gw, reply_id, decision="reject", reason="unsafe").status_code == 200
    waiting.result(timeout=10)
    raw = b"".join(received)
    assert b"rash" not in raw  # the model's text never left
    events = sse_data(raw)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text == FALLBACK
    assert events[-2]["hitl"]["released"] == "fallback"


def test_a_risky_but_confident_reply_is_not_held(held: Any) -> None:
    gw = held(prior=0.9)
    r = chat(gw, "what are your opening hours")
    assert r.status_code == 200
    assert r.headers["x-hitl-decision"] != "hold"
    assert content(r) == "reply: what are your opening hours"


def test_the_risk_header_holds_any_model(held: Any, tmp_path: Path) -> None:
    gw = held(risky_models=[], hold_timeout_s=1.0)
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": "wire money"}]},
        headers={"x-hitl-risk": "high"},
        timeout=10,
    )
    assert r.status_code == 200
    assert content(r) == FALLBACK
    plain = chat(gw, "wire money")
    assert content(plain) == "reply: wire money"


def test_two_reviewers_must_agree_before_a_hold_is_released(
    gateway_factory: Any, tmp_path: Path
) -> None:
    gw: ServerThread = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN}, policy=HOLD_ALL, review={"votes_required": 2}
    )
    waiting = pool.submit(chat, gw, "close my account")
    reply_id = held_reply_id(tmp_path / "hitl.db", "close my account")
    first = decide(gw, reply_id, decision="approve")
    assert first.status_code == 200, first.text
    assert first.json()["review"]["state"] in ("pending", "posted")
    # The same reviewer cannot vote twice.
    assert decide(gw, reply_id, decision="approve").status_code == 409
    time.sleep(0.5)
    assert not waiting.done()
    # A disagreement: still undecided.
    other = httpx.post(
        f"{gw.url}/v1/reviews/{reply_id}",
        json={"reviewer": "bob", "decision": "reject", "reason": "incorrect"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert other.status_code == 200, other.text
    assert not waiting.done()
    third = httpx.post(
        f"{gw.url}/v1/reviews/{reply_id}",
        json={"reviewer": "cy", "decision": "approve"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert third.json()["review"]["state"] == "approved"
    r = waiting.result(timeout=10)
    assert content(r) == "reply: close my account"
    body = state(gw, reply_id, r.json()["hitl"]["feedback_token"])
    assert [(v["by"], v["decision"]) for v in body["review"]["votes"]] == [
        ("ann", "approve"),
        ("bob", "reject"),
        ("cy", "approve"),
    ]
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        # Every vote is a label.
        assert conn.execute("SELECT count(*) FROM label").fetchone() == (3,)


def test_a_restart_while_a_client_waits_releases_nothing(
    tmp_path: Path, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOLDS_TEST_ADMIN", ADMIN)
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[upstream]
kind = "openai"
base_url = "{upstream_server.url}/v1"
[store]
url = "sqlite:///{tmp_path / "hitl.db"}"
[policy]
prior = 0.1
hold_below = 0.2
risky_models = ["json"]
hold_fallback = "{FALLBACK}"
hold_heartbeat_s = 0.2
[report]
admin_token_env = "HOLDS_TEST_ADMIN"
"""
    )
    port = free_port()
    proc = start_serve(tmp_path, config.read_text(), port=port).process
    url = f"http://127.0.0.1:{port}"
    received: list[bytes] = []
    headers: dict[str, str] = {}

    def client() -> bytes:
        body = {
            "model": "json",
            "messages": [{"role": "user", "content": "refund now"}],
            "stream": True,
        }
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
                headers.update(r.headers)
                for piece in r.iter_raw():
                    received.append(piece)
        except httpx.HTTPError:
            pass  # the gateway died under it
        return b"".join(received)

    waiting = pool.submit(client)
    try:
        reply_id = held_reply_id(tmp_path / "hitl.db", "refund now")
        assert wait_for(lambda: b"waiting for a reviewer" in b"".join(received), timeout=5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        raw = waiting.result(timeout=10)
        assert b"refund now" not in raw and b"data:" not in raw
        with sqlite3.connect(tmp_path / "hitl.db") as conn:
            row = conn.execute(
                "SELECT state, released FROM escalation WHERE reply_id = ?", (reply_id,)
            ).fetchone()
        # Still waiting for a person, and nothing was released to anyone.
        assert row == ("pending", None)
        proc = start_serve(tmp_path, config.read_text(), port=port).process
        token = headers["x-hitl-feedback-token"]
        pending = httpx.get(
            f"{url}/v1/replies/{reply_id}", headers={"x-hitl-feedback-token": token}
        ).json()
        assert pending["answer"] is None and pending["review"]["state"] == "pending"
        approve = httpx.post(
            f"{url}/v1/reviews/{reply_id}",
            json={"reviewer": "ann", "decision": "approve"},
            headers={"authorization": f"Bearer {ADMIN}"},
        )
        assert approve.status_code == 200, approve.text
        late = httpx.get(
            f"{url}/v1/replies/{reply_id}", headers={"x-hitl-feedback-token": token}
        ).json()
        assert late["answer"] == {"text": "reply: refund now", "source": "approved"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
