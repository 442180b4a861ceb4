"""A low score the review budget kept from people says so, end to end: the reply's log
line and ``GET /v1/replies/{id}`` name the rule, and the stored exchange keeps it."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import ServerThread

# Every reply is a candidate (the prior 0.5 < 0.6), and only one an hour may go to people.
ONE_AN_HOUR = {"escalate_below": 0.6, "review_budget": 1.0, "max_reviews_per_hour": 1}


def chat(gw: ServerThread) -> dict[str, Any]:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    return hitl


def state(gw: ServerThread, hitl: dict[str, Any]) -> dict[str, Any]:
    r = httpx.get(
        f"{gw.url}/v1/replies/{hitl['reply_id']}",
        headers={"X-HITL-Feedback-Token": hitl["feedback_token"]},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_the_hourly_cap_is_named_in_the_log_and_the_reply_state(
    gateway_factory: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    gw = gateway_factory(policy=ONE_AN_HOUR)
    with caplog.at_level(logging.INFO, logger="hitl.chat"):
        first, second = chat(gw), chat(gw)
    assert first["decision"] == "escalate"
    assert second["decision"] in ("ask", "deliver")
    assert state(gw, first)["held_back"] is None

    held = state(gw, second)["held_back"]
    assert held == {
        "rule": "hourly_cap",
        "message": "confidence 0.50 < 0.6 made it a review candidate, but 1 replies were "
        "already escalated in the last hour ([policy] max_reviews_per_hour = 1)",
    }
    lines = {r.fields["reply_id"]: r for r in caplog.records if hasattr(r, "fields")}
    line = lines[second["reply_id"]]
    assert line.fields["held_back"] == "hourly_cap"
    assert line.fields["held_back_why"] == held["message"]
    assert f"held_back=hourly_cap ({held['message']})" in line.getMessage()
    assert "held_back" not in lines[first["reply_id"]].fields

    # What the endpoint reads is what the exchange keeps (no column of its own).
    with sqlite3.connect(tmp_path / "hitl.db") as db:
        (reasons,) = db.execute(
            "SELECT reasons_json FROM exchange WHERE id = ?", (second["reply_id"],)
        ).fetchone()
    assert f"held back (hourly_cap): {held['message']}" in reasons


def test_a_restarted_gateway_resumes_the_review_budget_from_the_store(
    gateway_factory: Any,
) -> None:
    # Half of the replies may go to people; every reply is a candidate (prior 0.5 < 0.6).
    half = {"escalate_below": 0.6, "review_budget": 0.5, "max_reviews_per_hour": 1000}
    first = gateway_factory(policy=half)
    decisions = [chat(first)["decision"] for _ in range(4)]
    # The first goes to people; then every second reply once it fits the share.
    assert [d == "escalate" for d in decisions] == [True, False, False, True]
    first.stop()
    # A fresh process with an empty budget would escalate this one (its first
    # candidate); resumed from the store it would make 3 of 5 escalations.
    again = gateway_factory(policy=half)
    reply = chat(again)
    assert reply["decision"] != "escalate"
    assert state(again, reply)["held_back"] == {
        "rule": "review_share",
        "message": "confidence 0.50 < 0.6 made it a review candidate, but escalating it "
        "would make 3 of the last 5 decisions escalations, above "
        "[policy] review_budget = 0.5 plus review_budget_slack = 0.01",
    }
