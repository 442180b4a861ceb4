"""Held replies decided in Slack: a real gateway, the stand-in Slack, signed payloads.
The held client gets exactly what the reviewer decided; the card says it is held and
shows the tally when several reviewers must agree."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path
from typing import Any

import httpx

from tests.support.holds import FALLBACK, HOLD_ALL, held_reply_id
from tests.support.servers import ServerThread
from tests.support.slack import (
    ADMIN,
    SECRET,
    card_for,
    card_update,
    click,
    ephemerals_to,
    submit_correction,
)
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)


def held_gateway(gateway_factory: Any, standin: SlackStandin, **review: Any) -> ServerThread:
    gw: ServerThread = gateway_factory(
        environ={
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "HITL_ADMIN_TOKEN": ADMIN,
        },
        policy=HOLD_ALL,
        review=review,
        slack={
            "enabled": True,
            "channel": CHANNEL,
            "api_url": standin.url,
            "reviewers": ["UREVIEWER1", "UREVIEWER2"],
            "retry_base_s": 0.05,
            "retry_max_s": 0.2,
        },
    )
    return gw


def chat(gw: ServerThread, text: str) -> httpx.Response:
    body = {"model": "json", "messages": [{"role": "user", "content": text}]}
    return httpx.post(gw.url + "/v1/chat/completions", json=body, timeout=30)


def test_an_approve_click_releases_the_held_reply(
    gateway_factory: Any, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = held_gateway(gateway_factory, standin)
    waiting = pool.submit(chat, gw, "refund order 77")
    reply_id = held_reply_id(tmp_path / "hitl.db", "refund order 77")
    card = card_for(standin, reply_id)
    blocks = json.dumps(card["blocks"])
    assert "Held reply" in blocks and "the user waits for your verdict" in blocks
    assert not waiting.done()
    assert click(gw, card, "hitl_approve").status_code == 200
    r = waiting.result(timeout=10)
    assert r.json()["choices"][0]["message"]["content"] == "reply: refund order 77"
    assert r.json()["hitl"]["released"] == "original"


def test_a_correction_through_the_modal_is_exactly_what_the_client_gets(
    gateway_factory: Any, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = held_gateway(gateway_factory, standin)
    waiting = pool.submit(chat, gw, "cancel my loan")
    reply_id = held_reply_id(tmp_path / "hitl.db", "cancel my loan")
    card = card_for(standin, reply_id)
    assert click(gw, card, "hitl_correct").status_code == 200
    view = standin.wait_for("views.open")[0].args["view"]
    correction = "Loans can be cancelled within 14 days: call us on <the number on your card>."
    assert submit_correction(gw, view, correction).status_code == 200
    r = waiting.result(timeout=10)
    assert r.json()["choices"][0]["message"]["content"] == correction
    assert r.json()["hitl"]["released"] == "correction"


def test_a_reject_click_releases_only_the_fallback(
    gateway_factory: Any, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = held_gateway(gateway_factory, standin)
    waiting = pool.submit(chat, gw, "prescribe me something")
    reply_id = held_reply_id(tmp_path / "hitl.db", "prescribe me something")
    card = card_for(standin, reply_id)
    assert click(gw, card, "hitl_reject", reason="unsafe").status_code == 200
    r = waiting.result(timeout=10)
    assert r.json()["choices"][0]["message"]["content"] == FALLBACK
    assert "prescribe" not in r.text.replace(r.json()["id"], "")


def test_two_reviewers_in_slack_with_the_tally_on_the_card(
    gateway_factory: Any, standin: SlackStandin, tmp_path: Path
) -> None:
    gw = held_gateway(gateway_factory, standin, votes_required=2)
    waiting = pool.submit(chat, gw, "transfer my pension")
    reply_id = held_reply_id(tmp_path / "hitl.db", "transfer my pension")
    card = card_for(standin, reply_id)
    assert click(gw, card, "hitl_approve", uid="UREVIEWER1").status_code == 200
    told = ephemerals_to(standin, "UREVIEWER1")
    assert "Your vote is in" in told[-1]
    redrawn = json.dumps(card_update(standin, card["ts"])["blocks"])
    assert "Votes: approve 1 (<@UREVIEWER1>), reject 0" in redrawn
    assert not waiting.done()
    # The same reviewer cannot decide alone by clicking twice.
    assert click(gw, card, "hitl_approve", uid="UREVIEWER1").status_code == 200
    assert "already voted" in ephemerals_to(standin, "UREVIEWER1", count=2)[-1]
    assert not waiting.done()
    assert click(gw, card, "hitl_approve", uid="UREVIEWER2").status_code == 200
    r = waiting.result(timeout=10)
    assert r.json()["choices"][0]["message"]["content"] == "reply: transfer my pension"


def test_a_late_click_after_the_timeout_becomes_the_late_answer(
    gateway_factory: Any, standin: SlackStandin, tmp_path: Path
) -> None:
    gw: ServerThread = gateway_factory(
        environ={"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET},
        policy={**HOLD_ALL, "hold_timeout_s": 1.0},
        slack={
            "enabled": True,
            "channel": CHANNEL,
            "api_url": standin.url,
            "reviewers": ["UREVIEWER1"],
        },
    )
    r = chat(gw, "can I get a mortgage")
    assert r.json()["choices"][0]["message"]["content"] == FALLBACK
    hitl = r.json()["hitl"]
    assert hitl["timed_out"] is True
    card = card_for(standin, hitl["reply_id"])
    assert click(gw, card, "hitl_approve").status_code == 200
    body = httpx.get(
        f"{gw.url}/v1/replies/{hitl['reply_id']}",
        headers={"x-hitl-feedback-token": hitl["feedback_token"]},
    ).json()
    assert body["answer"] == {"text": "reply: can I get a mortgage", "source": "approved"}
    assert body["released"]["as"] == "fallback" and body["released"]["timed_out"] is True
    assert [v["by"] for v in body["review"]["votes"]] == ["UREVIEWER1"]
