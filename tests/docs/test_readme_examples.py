"""The README's examples, pasted as a user would: into Python or a terminal, in the
folder of a running ``hitl serve``, with the values they need filled in the way the
README says (its printed ``export`` line, ``$REPLY_ID``, ``$TOKEN``, ``$HITL_ADMIN_TOKEN``)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx

from tests.docs.gateway import ADMIN_TOKEN, ReadmeGateway, ran
from tests.docs.readme import example


def json_values(output: str) -> list[Any]:
    """The JSON values a block printed, one after the other (curl adds no newline)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while (at := _skip_space(output, at)) < len(output):
        value, at = decoder.raw_decode(output, at)
        values.append(value)
    return values


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at].isspace():
        at += 1
    return at


def exports(output: str) -> dict[str, str]:
    """The ``export A=1 B=2`` line a block printed, as the variables it sets."""
    line = next(x for x in output.splitlines() if x.startswith("export "))
    return dict(pair.split("=", 1) for pair in line.removeprefix("export ").split())


def test_the_python_example_then_the_feedback_curl(gateway: ReadmeGateway) -> None:
    out = ran(gateway.python(example("python-sdk", url=gateway.url)))
    assert "reply: How do I send feedback?" in out
    values = exports(out)
    assert values["REPLY_ID"].startswith("hitl-") and values["TOKEN"]
    # The thumb, with what the example printed.
    answer = ran(gateway.sh(example("feedback", url=gateway.url), **values))
    assert json_values(answer) == [
        {
            "reply_id": values["REPLY_ID"],
            "rating": "down",
            "status": "created",
        }
    ]
    state = gateway.reply_state(values["REPLY_ID"], values["TOKEN"]).json()
    assert state["feedback"] == {"rating": "down", "reason": "incorrect", "comment": None}


def test_the_feedback_curl_pasted_unfilled_is_a_clear_4xx(gateway: ReadmeGateway) -> None:
    """Pasted before the ``export`` line: empty values, a clear error in the documented
    shape (never a 500)."""
    answer = ran(gateway.sh(example("feedback", url=gateway.url), REPLY_ID="", TOKEN=""))
    (body,) = json_values(answer)
    error = body["error"]
    assert error["code"] == "invalid_field" and error["param"] == "reply_id"
    assert set(error) >= {"message", "type", "code"}


def test_the_feedback_curl_with_the_old_placeholders_is_403_not_500(
    gateway: ReadmeGateway,
) -> None:
    """The README once showed ``"token": "…"`` literally; pasted, that non-ASCII token
    made ``hmac.compare_digest`` raise (a 500) until tokens were compared as bytes."""
    answer = ran(gateway.sh(example("feedback", url=gateway.url), REPLY_ID="hitl-…", TOKEN="…"))
    (body,) = json_values(answer)
    assert body["error"]["code"] == "invalid_token" and body["error"]["param"] == "token"


def test_the_review_api_example(gateway: ReadmeGateway) -> None:
    hitl = gateway.chat()
    assert hitl["decision"] == "escalate"  # the README's trial policy sends all to review
    out = ran(
        gateway.sh(
            example("review-api", url=gateway.url),
            REPLY_ID=hitl["reply_id"],
            TOKEN=hitl["feedback_token"],
        )
    )
    state, verdict = json_values(out)
    assert state["reply_id"] == hitl["reply_id"] and state["decision"] == "escalate"
    assert state["review"]["state"] == "pending" and state["held_back"] is None
    assert verdict["review"]["state"] == "corrected"
    assert verdict["review"]["by"] == "ann"
    assert verdict["review"]["correction"] == "Refunds take 30 days."


def test_the_review_api_example_without_the_admin_token(gateway: ReadmeGateway) -> None:
    hitl = gateway.chat()
    out = ran(
        gateway.sh(
            example("review-api", url=gateway.url),
            REPLY_ID=hitl["reply_id"],
            TOKEN=hitl["feedback_token"],
            HITL_ADMIN_TOKEN="not-the-token",
        )
    )
    verdict = json_values(out)[-1]
    assert verdict["error"]["type"] and "token" in verdict["error"]["message"]


def test_the_reviews_commands(gateway: ReadmeGateway) -> None:
    hitl = gateway.chat()
    out = ran(gateway.sh(example("reviews-cli"), REPLY_ID=hitl["reply_id"]))
    listed = [line for line in out.splitlines() if hitl["reply_id"] in line]
    assert listed, out
    assert "rejected" in out or "reject" in out
    state = gateway.reply_state(hitl["reply_id"], hitl["feedback_token"]).json()
    assert state["review"]["state"] == "rejected" and state["review"]["by"] == "ann"
    assert state["review"]["reason"] == "incorrect"


def test_the_report_and_export_commands(gateway: ReadmeGateway) -> None:
    # Something to report and export: a labelled reply and a reviewer's correction.
    hitl = gateway.chat("Where is my parcel?")
    vote = {"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "down"}
    assert httpx.post(gateway.url + "/v1/feedback", json=vote).status_code == 201
    r = httpx.post(
        f"{gateway.url}/v1/reviews/{hitl['reply_id']}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={"decision": "correct", "correction": "It ships tomorrow.", "reviewer": "ann"},
    )
    assert r.status_code == 200, r.text
    out = ran(gateway.sh(example("reports")))
    folder = gateway.folder
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    # Each command says what it wrote; --format json prints the report itself.
    assert "wrote HTML for" in out and "corrected answers to fix.jsonl" in out
    report, _ = json.JSONDecoder().raw_decode(out, out.index("\n{") + 1)
    assert report["period"]["from"] and report
    csv = (folder / "exchanges.csv").read_text(encoding="utf-8").splitlines()
    assert any(hitl["reply_id"] in row for row in csv[1:])
    labelled = [json.loads(x) for x in (folder / "labelled.jsonl").read_text().splitlines()]
    assert labelled
    fixes = [json.loads(x) for x in (folder / "fix.jsonl").read_text().splitlines()]
    assert {"role": "assistant", "content": "It ships tomorrow."} in [
        f["messages"][-1] for f in fixes
    ]
    audit = (folder / "audit.jsonl").read_text(encoding="utf-8")
    assert re.search(re.escape(hitl["reply_id"]), audit)
