"""Reviewers in Slack, end to end: a real gateway, the stand-in Slack, signed payloads.

Payloads are form-encoded ``payload=<json>`` and signed the way Slack signs them
(``v0=`` HMAC-SHA256 of ``v0:{timestamp}:{body}``, via slack_sdk's SignatureVerifier).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from adapters.slack.events import header_problem
from feedback_store import Store
from tests.support.builders import escalation_row, exchange_row
from tests.support.servers import ServerThread
from tests.support.slack import (
    ADMIN,
    ESCALATE_ALL,
    SECRET,
    action_payload,
    ask,
    card_for,
    card_update,
    click,
    elements,
    ephemerals_to,
    rows,
    signed,
    submit_correction,
)
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

SlackGateway = Callable[..., ServerThread]


@pytest.fixture
def slack_gateway(gateway_factory: Any, standin: SlackStandin) -> SlackGateway:
    def start(
        *, token: str = TOKEN, reviewers: list[str] | None = None, **slack: Any
    ) -> ServerThread:
        gw: ServerThread = gateway_factory(
            environ={
                "SLACK_BOT_TOKEN": token,
                "SLACK_SIGNING_SECRET": SECRET,
                "HITL_ADMIN_TOKEN": ADMIN,
            },
            policy=ESCALATE_ALL,
            slack={
                "enabled": True,
                "channel": CHANNEL,
                "api_url": standin.url,
                "reviewers": ["UREVIEWER1", "UREVIEWER2"] if reviewers is None else reviewers,
                "retry_base_s": 0.05,
                "retry_max_s": 0.2,
                **slack,
            },
        )
        return gw

    return start


# -- the card ---------------------------------------------------------------------------


def test_question_that_pings_and_links_arrives_inert(
    slack_gateway: SlackGateway, standin: SlackStandin
) -> None:
    gw = slack_gateway()
    hitl = ask(gw, "hey <!channel> look <http://evil.example|click> <@U0BOSS>")
    card = card_for(standin, hitl["reply_id"])
    everything = json.dumps(card["blocks"]) + card["text"]
    for live in ("<!channel>", "<http://evil.example|click>", "<@U0BOSS>"):
        assert live not in everything
    assert "&lt;!channel&gt;" in everything
    assert "&lt;http://evil.example|click&gt;" in everything
    assert card["unfurl_links"] is False and card["unfurl_media"] is False
    assert "link_names" not in card
    assert set(elements(card)) == {"hitl_approve", "hitl_reject", "hitl_correct"}


def test_privacy_patterns_are_masked_before_slack(
    gateway_factory: Any, standin: SlackStandin
) -> None:
    gw = gateway_factory(
        environ={"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET},
        policy=ESCALATE_ALL,
        privacy={"redact": [r"\b\d{3}-\d{2}-\d{4}\b"]},
        slack={"enabled": True, "channel": CHANNEL, "api_url": standin.url},
    )
    hitl = ask(gw, "my ssn is 123-45-6789")
    card = card_for(standin, hitl["reply_id"])
    assert "123-45-6789" not in json.dumps(card)
    assert "[redacted]" in json.dumps(card["blocks"])


# -- decisions --------------------------------------------------------------------------


def test_approve_is_committed_before_the_ack_then_the_card_updates(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway()
    hitl = ask(gw)
    rid = hitl["reply_id"]
    card = card_for(standin, rid)
    r = click(gw, card, "hitl_approve")
    assert r.status_code == 200, r.text
    # The ack came back: the verdict and its label are already durable.
    assert rows(tmp_path, "SELECT state, decided_by FROM escalation WHERE reply_id = ?", rid) == [
        ("approved", "UREVIEWER1")
    ]
    assert rows(tmp_path, "SELECT source, value, weight FROM label WHERE reply_id = ?", rid) == [
        ("reviewer", 1, 3.0)
    ]
    update = card_update(standin, card["ts"])
    blocks = json.dumps(update["blocks"])
    assert "Approved" in blocks and "<@UREVIEWER1>" in blocks
    assert '"actions"' not in blocks
    status = httpx.get(
        f"{gw.url}/v1/replies/{rid}", headers={"X-HITL-Feedback-Token": hitl["feedback_token"]}
    ).json()
    assert status["review"]["state"] == "approved" and status["review"]["by"] == "UREVIEWER1"


def test_reject_with_a_reason(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway()
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    assert click(gw, card, "hitl_reject", reason="unsafe").status_code == 200
    assert rows(
        tmp_path, "SELECT state, decision_reason FROM escalation WHERE reply_id = ?", rid
    ) == [("rejected", "unsafe")]
    assert rows(tmp_path, "SELECT value FROM label WHERE reply_id = ?", rid) == [(0,)]
    assert "unsafe" in json.dumps(card_update(standin, card["ts"])["blocks"])


def test_correct_through_the_modal(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway()
    rid = ask(gw, "what is the refund window?")["reply_id"]
    card = card_for(standin, rid)
    assert click(gw, card, "hitl_correct").status_code == 200
    opened = standin.wait_for("views.open")[0].args
    assert opened["trigger_id"] == "1337.42.abcdef"
    view = opened["view"]
    field = view["blocks"][-1]["element"]
    assert field["multiline"] is True
    assert field["initial_value"] == "reply: what is the refund window?"
    # Nothing is decided by opening the form.
    assert rows(tmp_path, "SELECT state FROM escalation WHERE reply_id = ?", rid) == [("posted",)]
    r = submit_correction(gw, view, "Refunds are possible within 30 days.")
    assert r.status_code == 200 and r.content in (b"", b"{}"), r.text
    assert rows(tmp_path, "SELECT state, correction FROM escalation WHERE reply_id = ?", rid) == [
        ("corrected", "Refunds are possible within 30 days.")
    ]
    assert rows(tmp_path, "SELECT value FROM label WHERE reply_id = ?", rid) == [(0,)]
    blocks = json.dumps(card_update(standin, card["ts"])["blocks"])
    assert "Corrected" in blocks and "Refunds are possible within 30 days." in blocks


def test_double_click_and_races_first_verdict_wins(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway()
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    assert click(gw, card, "hitl_approve").status_code == 200
    assert click(gw, card, "hitl_approve").status_code == 200
    assert click(gw, card, "hitl_reject", uid="UREVIEWER2", reason="tone").status_code == 200
    assert rows(tmp_path, "SELECT count(*) FROM label WHERE reply_id = ?", rid) == [(1,)]
    assert rows(tmp_path, "SELECT state, decided_by FROM escalation WHERE reply_id = ?", rid) == [
        ("approved", "UREVIEWER1")
    ]
    told = ephemerals_to(standin, "UREVIEWER2")
    assert told == ["Already decided by <@UREVIEWER1>: approved."]
    assert ephemerals_to(standin, "UREVIEWER1") == ["Already decided by <@UREVIEWER1>: approved."]
    # A correction form submitted after someone else decided is refused in the form.
    view = {
        "type": "modal",
        "callback_id": "hitl_correction",
        "private_metadata": json.dumps({"reply_id": rid}),
    }
    r = submit_correction(gw, view, "late", uid="UREVIEWER2")
    assert r.json()["response_action"] == "errors"
    assert "Already decided by UREVIEWER1" in r.json()["errors"]["correction"]
    assert rows(tmp_path, "SELECT count(*) FROM label WHERE reply_id = ?", rid) == [(1,)]


def test_a_non_reviewer_is_told_privately_and_nothing_changes(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway(reviewers=["UREVIEWER1"])
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    assert click(gw, card, "hitl_approve", uid="UINTRUDER").status_code == 200
    assert click(gw, card, "hitl_correct", uid="UINTRUDER").status_code == 200
    told = ephemerals_to(standin, "UINTRUDER", count=2)
    assert all("Only reviewers" in text for text in told)
    view = {
        "type": "modal",
        "callback_id": "hitl_correction",
        "private_metadata": json.dumps({"reply_id": rid}),
    }
    r = submit_correction(gw, view, "mine now", uid="UINTRUDER")
    assert r.json()["response_action"] == "errors"
    assert rows(tmp_path, "SELECT state FROM escalation WHERE reply_id = ?", rid) == [("posted",)]
    assert rows(tmp_path, "SELECT count(*) FROM label") == [(0,)]
    assert standin.calls_to("views.open") == []
    assert standin.calls_to("chat.update") == []


async def test_a_payload_naming_a_replayed_reply_is_answered_and_decides_nothing(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway()
    card = card_for(standin, ask(gw)["reply_id"])
    # No card of a replayed reply is ever posted; a signed payload may still name one.
    store = Store(f"sqlite:///{tmp_path / 'hitl.db'}")
    await store.start(migrate=False)
    try:
        await store.record_exchange(
            exchange_row("hitl-replayed", route="replay"),
            escalation_row("hitl-replayed", state="replayed"),
        )
    finally:
        await store.close()
    forged = json.loads(json.dumps(card).replace(card_reply(card), "hitl-replayed"))
    assert (await asyncio.to_thread(click, gw, forged, "hitl_approve")).status_code == 200
    view = {
        "type": "modal",
        "callback_id": "hitl_correction",
        "private_metadata": json.dumps({"reply_id": "hitl-replayed"}),
    }
    r = await asyncio.to_thread(submit_correction, gw, view, "a correction")
    replayed = "Reply hitl-replayed was replayed from a recorded stream; it takes no review."
    assert r.json() == {"response_action": "errors", "errors": {"correction": replayed}}
    assert await asyncio.to_thread(ephemerals_to, standin, "UREVIEWER1") == [replayed]
    state = "SELECT state FROM escalation WHERE reply_id = 'hitl-replayed'"
    assert rows(tmp_path, state) == [("replayed",)]
    assert rows(tmp_path, "SELECT count(*) FROM label") == [(0,)]


def card_reply(card: dict[str, Any]) -> str:
    return str(card["metadata"]["event_payload"]["reply_id"])


def test_without_a_reviewer_list_channel_members_decide(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway(reviewers=[])
    first, second = ask(gw, "one")["reply_id"], ask(gw, "two")["reply_id"]
    assert click(gw, card_for(standin, first), "hitl_approve", uid="UOUTSIDER").status_code == 200
    assert "Only reviewers" in ephemerals_to(standin, "UOUTSIDER")[0]
    assert click(gw, card_for(standin, second), "hitl_approve", uid="UREVIEWER2").status_code == 200
    assert rows(
        tmp_path, "SELECT reply_id, decided_by FROM escalation WHERE state = 'approved'"
    ) == [(second, "UREVIEWER2")]
    assert standin.calls_to("conversations.members")[0].args["channel"] == CHANNEL


# -- signatures -------------------------------------------------------------------------


def test_forged_stale_and_malformed_signatures_are_401(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = slack_gateway()
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    payload = action_payload(card, elements(card)["hitl_approve"], "UREVIEWER1")
    body = urlencode({"payload": json.dumps(payload)})
    url = gw.url + "/slack/events"
    now = str(int(time.time()))
    good = signed(body)
    attempts = {
        "forged": signed(body, secret="not-the-signing-secret"),
        "stale": signed(body, ts=str(int(time.time()) - 6 * 60)),
        "future": signed(body, ts=str(int(time.time()) + 6 * 60)),
        "non-numeric timestamp": {**good, "X-Slack-Request-Timestamp": "abc"},
        "float timestamp": {**good, "X-Slack-Request-Timestamp": now + ".5"},
        "malformed signature": {**good, "X-Slack-Signature": "v1=" + "0" * 64},
        "short signature": {**good, "X-Slack-Signature": "v0=abc"},
        "no timestamp": {k: v for k, v in good.items() if k != "X-Slack-Request-Timestamp"},
        "no signature": {k: v for k, v in good.items() if k != "X-Slack-Signature"},
        "body changed": good,
    }
    for name, headers in attempts.items():
        content = body + "&x=1" if name == "body changed" else body
        r = httpx.post(url, content=content, headers=headers)
        assert r.status_code == 401, (name, r.status_code, r.text)
    assert rows(tmp_path, "SELECT state FROM escalation WHERE reply_id = ?", rid) == [("posted",)]
    assert httpx.post(url, content=body, headers=good).status_code == 200
    assert rows(tmp_path, "SELECT state FROM escalation WHERE reply_id = ?", rid) == [("approved",)]


@pytest.mark.parametrize(
    ("timestamp", "signature", "ok"),
    [
        ("1700000000", "v0=" + "a" * 64, True),
        ("1700000000", "v0=" + "A" * 64, False),
        ("", "v0=" + "a" * 64, False),
        ("1700000000", None, False),
        ("-1700000000", "v0=" + "a" * 64, False),
        ("1699999000", "v0=" + "a" * 64, False),
        ("1700000299", "v0=" + "a" * 64, True),
        ("99999999999999999999", "v0=" + "a" * 64, False),
    ],
)
def test_header_problem(timestamp: str, signature: str | None, ok: bool) -> None:
    assert (header_problem(timestamp, signature, 1_700_000_000.0) is None) is ok


# -- start-up ---------------------------------------------------------------------------


def test_a_wrong_token_is_reported_plainly_and_chat_keeps_working(
    slack_gateway: SlackGateway,
    standin: SlackStandin,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="hitl.review")
    gw = slack_gateway(token="xoxb-wrong")
    deadline = time.monotonic() + 5
    while not standin.calls_to("auth.test") and time.monotonic() < deadline:
        time.sleep(0.02)
    rid = ask(gw)["reply_id"]
    messages = [r.getMessage() for r in caplog.records if r.name == "hitl.review"]
    deadline = time.monotonic() + 5
    while not any("refused the bot token" in m for m in messages) and time.monotonic() < deadline:
        time.sleep(0.02)
        messages = [r.getMessage() for r in caplog.records if r.name == "hitl.review"]
    assert any(
        "refused the bot token in $SLACK_BOT_TOKEN" in m and "invalid_auth" in m for m in messages
    )
    time.sleep(0.2)
    # The card waits for a fixed token instead of being dead-lettered.
    assert standin.calls_to("chat.postMessage") == []
    assert rows(tmp_path, "SELECT state FROM escalation WHERE reply_id = ?", rid) == [("pending",)]
    assert httpx.get(gw.url + "/healthz").json()["review"] == {"failed": 0, "pending": 1}


def test_a_good_token_is_checked_once_at_start(
    slack_gateway: SlackGateway, standin: SlackStandin
) -> None:
    gw = slack_gateway()
    ask(gw)
    card_for(standin, ask(gw)["reply_id"])
    assert len(standin.calls_to("auth.test")) == 1


def test_missing_slack_secrets_leave_review_to_the_api(
    gateway_factory: Any, standin: SlackStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR", logger="hitl.review")
    gw = gateway_factory(
        environ={"HITL_ADMIN_TOKEN": ADMIN},
        policy=ESCALATE_ALL,
        slack={"enabled": True, "channel": CHANNEL, "api_url": standin.url},
    )
    ask(gw)
    assert httpx.post(gw.url + "/slack/events", content=b"x").status_code == 404
    assert any(
        "$SLACK_BOT_TOKEN and $SLACK_SIGNING_SECRET are empty" in r.getMessage()
        for r in caplog.records
    )
    assert standin.calls == []


# -- outages and restarts, through the whole gateway ------------------------------------


def test_escalations_piled_up_while_slack_was_down_are_posted_once_after_restarts(
    slack_gateway: SlackGateway, standin: SlackStandin, tmp_path: Path
) -> None:
    standin.stop()
    first = slack_gateway()  # start-up with Slack unreachable: chat still works
    ids = [ask(first, f"question {i}")["reply_id"] for i in range(4)]
    first.stop()  # a restart between the commit and the post
    standin.start()  # Slack is back
    second = slack_gateway()
    for rid in ids:
        card_for(standin, rid)
    deadline = time.monotonic() + 5
    while rows(tmp_path, "SELECT count(*) FROM escalation WHERE state = 'posted'") != [(4,)]:
        assert time.monotonic() < deadline, "the posts were never recorded"
        time.sleep(0.02)
    second.stop()
    third = slack_gateway()  # and once more: posted cards are not posted again
    ask(third, "one more")
    card_for(standin, rows(tmp_path, "SELECT id FROM exchange ORDER BY created_at DESC")[0][0])
    posted = [
        c.args["metadata"]["event_payload"]["reply_id"]
        for c in standin.calls_to("chat.postMessage", ok_only=True)
    ]
    assert sorted(posted[:4]) == sorted(ids) and len(posted) == 5
