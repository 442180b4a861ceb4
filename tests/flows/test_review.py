"""Verdicts (one path for Slack and the API), the review API, downvote reviews, no-Slack mode."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedback_store import Store
from middleware.errors import InvalidVerdict, UnknownReply
from middleware.flows import DecisionFlow, Hooks
from middleware.flows.decision import check_verdict
from middleware.review.items import ReviewItems
from tests.support.builders import escalation_row, exchange_row
from tests.support.servers import ServerThread

ADMIN = "admin-token-for-tests-0123456789"


def service(store: Store, hooks: Hooks | None = None) -> DecisionFlow:
    return DecisionFlow(
        store=store,
        items=ReviewItems(store=store, threshold=0.3),
        reviewer_weight=3.0,
        hooks=hooks or Hooks(),
    )


async def labels(store: Store, reply_id: str) -> list[tuple[str, int, float]]:
    from sqlalchemy import select

    from feedback_store import Label

    table = Label.__table__  # type: ignore[attr-defined]
    query = select(table.c.source, table.c.value, table.c.weight).where(
        table.c.reply_id == reply_id
    )
    rows = await store.read(lambda conn: conn.execute(query).all())
    return [tuple(r) for r in rows]


# -- the verdict path -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "reason", "correction", "state", "value"),
    [
        ("approve", None, None, "approved", 1),
        ("reject", "incorrect", None, "rejected", 0),
        ("correct", None, "the right answer", "corrected", 0),
    ],
)
async def test_verdict_is_stored_with_its_label(
    store: Store, decision: str, reason: str | None, correction: str | None, state: str, value: int
) -> None:
    await store.record_exchange(exchange_row("r1"), escalation_row("r1"))
    learned: list[int] = []
    woken: list[int] = []
    hooks = Hooks(label_committed=lambda: learned.append(1), review_queued=lambda: woken.append(1))
    outcome = await service(store, hooks).decide("r1", decision, "UREVIEWER1", reason, correction)
    assert outcome is not None and outcome.applied
    assert (outcome.state, outcome.decided_by, outcome.reason, outcome.correction) == (
        state,
        "UREVIEWER1",
        reason,
        correction,
    )
    row = await store.escalation_for("r1")
    assert row is not None
    assert (row.state, row.decided_by, row.decision_reason, row.correction) == (
        state,
        "UREVIEWER1",
        reason,
        correction,
    )
    assert row.decided_at is not None
    assert await labels(store, "r1") == [("reviewer", value, 3.0)]
    assert learned == [1] and woken == [1]


async def test_first_verdict_wins(store: Store) -> None:
    await store.record_exchange(exchange_row("r1"), escalation_row("r1"))
    review = service(store)
    first, second = await asyncio.gather(
        review.decide("r1", "approve", "UREVIEWER1"),
        review.decide("r1", "reject", "UREVIEWER2", "tone"),
    )
    assert first is not None and second is not None
    assert first.applied and not second.applied
    assert second.decided_by == "UREVIEWER1" and second.state == "approved"
    assert second.message == "already decided by UREVIEWER1 (approved)"
    again = await review.decide("r1", "approve", "UREVIEWER1")
    assert again is not None and not again.applied
    assert await labels(store, "r1") == [("reviewer", 1, 3.0)]


async def test_posted_card_goes_stale_after_a_verdict(store: Store) -> None:
    await store.record_exchange(
        exchange_row("r1"), escalation_row("r1", state="posted", channel="C1", message_ts="1.1")
    )
    await store.record_exchange(exchange_row("r2"), escalation_row("r2"))
    review = service(store)
    await review.decide("r1", "approve", "U1")
    await review.decide("r2", "approve", "U1")
    posted = await store.escalation_for("r1")
    unposted = await store.escalation_for("r2")
    assert posted is not None and posted.card_stale
    # Never in the channel: nothing to redraw, and it will not be posted now.
    assert unposted is not None and not unposted.card_stale


async def test_unknown_reply_and_unescalated_reply(store: Store) -> None:
    review = service(store)
    with pytest.raises(UnknownReply, match="nope"):
        await review.decide("nope", "approve", "U1")
    await store.record_exchange(exchange_row("plain", decision="deliver"))
    outcome = await review.decide("plain", "reject", "api-reviewer", "unsafe")
    assert outcome is not None and outcome.applied
    row = await store.escalation_for("plain")
    assert row is not None and row.trigger == "api" and row.state == "rejected"
    assert await labels(store, "plain") == [("reviewer", 0, 3.0)]


async def test_decision_listeners_hear_committed_verdicts_only(store: Store) -> None:
    await store.record_exchange(exchange_row("r1"), escalation_row("r1"))
    heard: list[str] = []
    review = service(store, Hooks(decided=lambda outcome: heard.append(outcome.state)))
    await review.decide("r1", "correct", "U1", None, "fixed")
    await review.decide("r1", "approve", "U2")
    assert heard == ["corrected"]


@pytest.mark.parametrize(
    ("decision", "reason", "correction", "problem"),
    [
        ("maybe", None, None, "'decision'"),
        ("reject", None, None, "'reason' is required"),
        ("reject", "bad-reason", None, "'reason' must be one of"),
        ("correct", None, "   ", "'correction'"),
        ("correct", None, None, "'correction'"),
    ],
)
def test_check_verdict_refuses(
    decision: str, reason: str | None, correction: str | None, problem: str
) -> None:
    with pytest.raises(InvalidVerdict, match=problem):
        check_verdict(decision, reason, correction)


def test_check_verdict_cleans() -> None:
    assert check_verdict("approve", None, "ignored") == (None, None)
    assert check_verdict("correct", "incomplete", "  fixed  ") == ("incomplete", "fixed")


# -- the HTTP API, through a real gateway -----------------------------------------------


def rows(tmp_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        return conn.execute(sql, params).fetchall()


def ask(gw: ServerThread, text: str = "hello") -> dict[str, Any]:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": text}]},
    )
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    return hitl


def reply(gw: ServerThread, reply_id: str, token: str | None) -> httpx.Response:
    headers = {} if token is None else {"X-HITL-Feedback-Token": token}
    return httpx.get(f"{gw.url}/v1/replies/{reply_id}", headers=headers)


def review(gw: ServerThread, reply_id: str, body: Any, token: str | None = ADMIN) -> httpx.Response:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{gw.url}/v1/reviews/{reply_id}", json=body, headers=headers)


ESCALATE_ALL = {"escalate_below": 1.0, "review_budget": 1.0, "max_reviews_per_hour": 1000}


@pytest.fixture
def gw(gateway_factory: Any) -> ServerThread:
    server: ServerThread = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN, "SLACK_BOT_TOKEN": "xoxb-unused"},
        policy=ESCALATE_ALL,
    )
    return server


def test_reply_state_through_the_review_api(gw: ServerThread, tmp_path: Path) -> None:
    hitl = ask(gw)
    rid, token = hitl["reply_id"], hitl["feedback_token"]
    assert hitl["decision"] == "escalate"
    r = reply(gw, rid, token)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "reply_id": rid,
        "decision": "escalate",
        "confidence": hitl["confidence"],
        "held": False,
        "held_back": None,
        "review": {
            "state": "pending",
            "by": None,
            "at": None,
            "reason": None,
            "correction": None,
            "votes": [],
        },
        "answer": None,
        "released": None,
        "feedback": None,
    }
    # Slack is off: the escalation waits for the API; nothing else depends on Slack.
    assert httpx.post(gw.url + "/slack/events", content=b"{}").status_code == 404
    r = review(gw, rid, {"decision": "correct", "correction": "better", "reviewer": "ann"})
    assert r.status_code == 200, r.text
    assert r.json()["review"]["state"] == "corrected"
    body = reply(gw, rid, token).json()
    assert body["review"]["state"] == "corrected"
    assert body["review"]["by"] == "ann"
    assert body["review"]["correction"] == "better"
    assert body["review"]["at"].endswith("Z")
    # The reviewer's answer is readable once decided, and so is who decided what.
    assert body["answer"] == {"text": "better", "source": "corrected"}
    assert [(v["by"], v["decision"]) for v in body["review"]["votes"]] == [("ann", "correct")]
    assert rows(tmp_path, "SELECT source, value, weight FROM label WHERE reply_id = ?", rid) == [
        ("reviewer", 0, 3.0)
    ]
    again = review(gw, rid, {"decision": "approve", "reviewer": "bob"})
    assert again.status_code == 409
    assert again.json()["error"]["message"] == "already decided by ann (corrected)"


def test_reply_lookup_needs_the_replys_token(gw: ServerThread) -> None:
    hitl = ask(gw)
    other = ask(gw, "another")
    assert reply(gw, hitl["reply_id"], None).status_code == 403
    assert reply(gw, hitl["reply_id"], other["feedback_token"]).status_code == 403
    # An unknown id with a wrong token is 403 too: ids can't be probed.
    assert reply(gw, "hitl-000000000000000000000000", hitl["feedback_token"]).status_code == 403


def test_reply_lookup_404_and_feedback(gw: ServerThread) -> None:
    hitl = ask(gw)
    app: Any = gw.config.app
    gateway = app.state.parts
    unknown = "hitl-ffffffffffffffffffffffff"
    assert reply(gw, unknown, gateway.signer.sign(unknown)).status_code == 404
    r = httpx.post(
        gw.url + "/v1/feedback",
        json={
            "reply_id": hitl["reply_id"],
            "token": hitl["feedback_token"],
            "rating": "down",
            "reason": "incomplete",
            "comment": "too short",
        },
    )
    assert r.status_code == 201, r.text
    body = reply(gw, hitl["reply_id"], hitl["feedback_token"]).json()
    assert body["feedback"] == {"rating": "down", "reason": "incomplete", "comment": "too short"}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"decision": "approve"}, 422, "reviewer"),
        ({"decision": "maybe", "reviewer": "ann"}, 422, "decision"),
        ({"decision": "reject", "reviewer": "ann"}, 422, "reason"),
        ({"decision": "reject", "reason": "bad", "reviewer": "ann"}, 422, "reason"),
        ({"decision": "correct", "reviewer": "ann"}, 422, "correction"),
        ({"decision": "approve", "reviewer": "ann", "extra": 1}, 422, "extra"),
        ("not an object", 422, None),
    ],
)
def test_review_api_validates(gw: ServerThread, body: Any, status: int, param: str | None) -> None:
    rid = ask(gw)["reply_id"]
    r = review(gw, rid, body)
    assert r.status_code == status, r.text
    if param is not None:
        assert r.json()["error"]["param"] == param


def test_review_api_needs_the_admin_token(gw: ServerThread, tmp_path: Path) -> None:
    rid = ask(gw)["reply_id"]
    body = {"decision": "approve", "reviewer": "ann"}
    assert review(gw, rid, body, token=None).status_code == 401
    assert review(gw, rid, body, token="wrong").status_code == 401
    assert review(gw, "hitl-unknown", body).status_code == 404
    assert rows(tmp_path, "SELECT count(*) FROM label") == [(0,)]
    r = review(gw, rid, {"decision": "reject", "reason": "off-topic", "reviewer": "ann"})
    assert r.status_code == 200
    assert rows(
        tmp_path, "SELECT state, decision_reason FROM escalation WHERE reply_id = ?", rid
    ) == [("rejected", "off-topic")]


def test_review_api_is_off_without_an_admin_token(gateway_factory: Any) -> None:
    gw = gateway_factory(policy=ESCALATE_ALL)
    rid = ask(gw)["reply_id"]
    r = review(gw, rid, {"decision": "approve", "reviewer": "ann"}, token="anything")
    assert r.status_code == 403
    assert "HITL_ADMIN_TOKEN" in r.json()["error"]["message"]


def test_review_api_works_alongside_client_keys(gateway_factory: Any) -> None:
    gw = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN, "KEYS": "client-key"},
        server={"client_keys_env": "KEYS"},
        policy=ESCALATE_ALL,
    )
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": "Bearer client-key"},
    )
    rid = r.json()["hitl"]["reply_id"]
    assert review(gw, rid, {"decision": "approve", "reviewer": "ann"}).status_code == 200


def test_healthz_details_the_review_backlog(gw: ServerThread) -> None:
    first = ask(gw)
    ask(gw, "second")
    health = httpx.get(gw.url + "/healthz").json()
    assert health["review"] == {"failed": 0, "pending": 2}
    review(gw, first["reply_id"], {"decision": "approve", "reviewer": "ann"})
    assert httpx.get(gw.url + "/healthz").json()["review"] == {"failed": 0, "pending": 1}


def test_without_slack_an_escalation_is_logged_once_and_waits(
    gateway_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="hitl.outbox")
    gw = gateway_factory(environ={"HITL_ADMIN_TOKEN": ADMIN}, policy=ESCALATE_ALL)
    rid = ask(gw)["reply_id"]
    deadline = time.monotonic() + 5
    while not any(rid in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
        time.sleep(0.02)
    logged = [r for r in caplog.records if rid in r.getMessage()]
    assert len(logged) == 1 and "POST /v1/reviews/" in logged[0].getMessage()
    gw.stop()
    again = gateway_factory(environ={"HITL_ADMIN_TOKEN": ADMIN}, policy=ESCALATE_ALL)
    ask(again, "wake the outbox")
    time.sleep(0.3)
    assert len([r for r in caplog.records if rid in r.getMessage()]) == 1
    assert rows(tmp_path, "SELECT state FROM escalation WHERE reply_id = ?", rid) == [("pending",)]


# -- downvotes open reviews -------------------------------------------------------------


def downvote(gw: ServerThread, hitl: dict[str, Any], comment: str | None) -> None:
    body = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "down"}
    if comment is not None:
        body["comment"] = comment
    r = httpx.post(gw.url + "/v1/feedback", json=body)
    assert r.status_code == 201, r.text


def test_downvote_with_a_comment_opens_a_review(gateway_factory: Any, tmp_path: Path) -> None:
    gw = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN},
        policy={"escalate_below": 0.0, "review_budget": 1.0, "max_reviews_per_hour": 1000},
    )
    silent, complained = ask(gw, "one"), ask(gw, "two")
    assert silent["decision"] != "escalate" and complained["decision"] != "escalate"
    downvote(gw, silent, None)
    downvote(gw, complained, "wrong answer")
    assert rows(tmp_path, "SELECT reply_id, trigger, state FROM escalation") == [
        (complained["reply_id"], "downvote", "pending")
    ]
    body = reply(gw, complained["reply_id"], complained["feedback_token"]).json()
    assert body["review"]["state"] == "pending"


def test_downvote_reviews_respect_the_budget_and_the_setting(
    gateway_factory: Any, tmp_path: Path
) -> None:
    gw = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN},
        policy={"escalate_below": 0.0, "review_budget": 1.0, "max_reviews_per_hour": 1},
    )
    first, second = ask(gw, "one"), ask(gw, "two")
    downvote(gw, first, "bad")
    downvote(gw, second, "also bad")  # the hourly cap of 1 is used up
    assert rows(tmp_path, "SELECT reply_id FROM escalation") == [(first["reply_id"],)]


def test_downvote_reviews_can_be_turned_off(gateway_factory: Any, tmp_path: Path) -> None:
    gw = gateway_factory(
        policy={"escalate_below": 0.0, "review_budget": 1.0, "review_downvotes": False}
    )
    downvote(gw, ask(gw), "bad")
    assert rows(tmp_path, "SELECT count(*) FROM escalation") == [(0,)]


def test_a_reply_nobody_reviews_has_review_state_none(gateway_factory: Any) -> None:
    gw = gateway_factory(policy={"escalate_below": 0.0})
    hitl = ask(gw)
    assert hitl["decision"] != "escalate"
    body = reply(gw, hitl["reply_id"], hitl["feedback_token"]).json()
    assert body["review"] == {
        "state": "none",
        "by": None,
        "at": None,
        "reason": None,
        "correction": None,
        "votes": [],
    }
    assert body["held"] is False
    assert body["answer"] is None and body["released"] is None


def test_slack_without_a_channel_stops_start_up(tmp_path: Path) -> None:
    from middleware.app import create_app
    from middleware.errors import ConfigError
    from middleware.settings import settings_from_mapping

    settings = settings_from_mapping(
        {"store": {"url": f"sqlite:///{tmp_path / 'x.db'}"}, "slack": {"enabled": True}}
    )
    with pytest.raises(ConfigError, match=r"slack\.channel is empty"):
        create_app(settings, environ={"SLACK_BOT_TOKEN": "x", "SLACK_SIGNING_SECRET": "y"})
