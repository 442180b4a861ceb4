"""``/review`` without a browser's script: the queue as the server renders it, decisions
by plain form posts, refusals (bad tokens, another site's post, bad fields), escaping."""

from __future__ import annotations

import html
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory
from tests.support.servers import ServerThread

ANN = "ann-personal-token-0123456789"
ENV = {"HITL_REVIEWER_TOKENS": f"ann:{ANN}"}
AUTH = {"authorization": f"Bearer {ANN}"}
MARKUP = "<script>alert(1)</script> & <b>x</b>"


def chat(gw: ServerThread, text: str, *, risky: bool = False) -> dict[str, Any]:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "reply:" + text, "messages": [{"role": "user", "content": text}]},
        headers={"x-hitl-risk": "high"} if risky else {},
        timeout=0.5 if risky else 10,
    )
    assert r.status_code == 200, r.text
    return dict(r.json()["hitl"])


@pytest.fixture
def gw(gateway_factory: GatewayFactory) -> ServerThread:
    return gateway_factory(
        environ=ENV, policy={"prior": 0.1, "review_budget": 1.0, "max_reviews_per_hour": 1000}
    )


def order(page: str) -> list[str]:
    return [part.split('"', 1)[0] for part in page.split('data-reply="')[1:]]


def test_the_queue_lists_waiting_items_oldest_first_escaped(gw: ServerThread) -> None:
    ids = [chat(gw, f"question {i}")["reply_id"] for i in range(3)]
    marked = chat(gw, MARKUP)["reply_id"]
    r = httpx.get(gw.url + "/review", headers=AUTH)
    assert r.status_code == 200
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert order(r.text) == [*ids, marked]
    assert "<script>alert(1)</script>" not in r.text
    assert html.escape(MARKUP) in r.text
    assert "Signed in as <b>ann</b>" in r.text


def test_a_plain_form_post_decides_and_returns_to_the_queue(
    gw: ServerThread, tmp_path: Path
) -> None:
    first, second = chat(gw, "one")["reply_id"], chat(gw, "two")["reply_id"]
    r = httpx.post(
        f"{gw.url}/review/{first}",
        data={"decision": "correct", "reason": "incorrect", "correction": "Three."},
        headers=AUTH,
    )
    assert r.status_code == 303 and r.headers["location"] == f"/review?done={first}"
    page = httpx.get(gw.url + r.headers["location"], headers=AUTH)
    assert order(page.text) == [second]
    assert f"Decided: {first}" in page.text
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        row = conn.execute(
            "SELECT state, decided_by, correction FROM escalation WHERE reply_id = ?", (first,)
        ).fetchone()
    assert row == ("corrected", "ann", "Three.")
    # The same item again: already decided, said on the page with a 409.
    again = httpx.post(f"{gw.url}/review/{first}", data={"decision": "approve"}, headers=AUTH)
    assert again.status_code == 409
    assert "already decided by ann" in again.text


def test_json_answers_for_the_page_script(gw: ServerThread) -> None:
    reply_id = chat(gw, "one")["reply_id"]
    headers = {**AUTH, "accept": "application/json"}
    r = httpx.post(f"{gw.url}/review/{reply_id}", data={"decision": "approve"}, headers=headers)
    assert r.status_code == 200 and r.json() == {
        "reply_id": reply_id,
        "applied": True,
        "state": "approved",
    }
    r = httpx.post(f"{gw.url}/review/{reply_id}", data={"decision": "approve"}, headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "already_decided"


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"decision": "maybe"}, "decision"),
        ({}, "decision"),
        ({"decision": "reject", "reason": "<nope>"}, "reason"),
    ],
)
def test_bad_fields_are_a_422_naming_the_field(
    gw: ServerThread, form: dict[str, str], param: str
) -> None:
    reply_id = chat(gw, "one")["reply_id"]
    r = httpx.post(
        f"{gw.url}/review/{reply_id}", data=form, headers={**AUTH, "accept": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == param
    page = httpx.post(f"{gw.url}/review/{reply_id}", data=form, headers=AUTH)
    assert page.status_code == 422 and "<nope>" not in page.text


def test_a_correction_without_text_is_refused(gw: ServerThread) -> None:
    reply_id = chat(gw, "one")["reply_id"]
    r = httpx.post(
        f"{gw.url}/review/{reply_id}",
        data={"decision": "correct", "correction": ""},
        headers={**AUTH, "accept": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "correction"


def test_a_post_from_another_site_is_refused(gw: ServerThread, tmp_path: Path) -> None:
    reply_id = chat(gw, "one")["reply_id"]
    for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
        r = httpx.post(
            f"{gw.url}/review/{reply_id}", data={"decision": "approve"}, headers={**AUTH, **headers}
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site_request"
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        state = conn.execute(
            "SELECT state FROM escalation WHERE reply_id = ?", (reply_id,)
        ).fetchone()
    assert state[0] in ("pending", "posted")
    same = httpx.post(
        f"{gw.url}/review/{reply_id}",
        data={"decision": "approve"},
        headers={**AUTH, "origin": gw.url},
    )
    assert same.status_code == 303


def test_unknown_tokens_and_replies(gw: ServerThread) -> None:
    for headers in ({}, {"authorization": "Bearer nope-nope-nope-nope-nope"}):
        assert httpx.get(gw.url + "/review", headers=headers).status_code == 401
        r = httpx.post(f"{gw.url}/review/hitl-x", data={"decision": "approve"}, headers=headers)
        assert r.status_code == 401
    r = httpx.post(
        f"{gw.url}/review/hitl-000000000000000000000000",
        data={"decision": "approve"},
        headers={**AUTH, "accept": "application/json"},
    )
    assert r.status_code == 404


def test_held_items_come_first(gw: ServerThread, gateway_factory: GatewayFactory) -> None:
    plain = chat(gw, "plain one")["reply_id"]
    with pytest.raises(httpx.ReadTimeout):
        chat(gw, "refund me", risky=True)  # held: the client waits; we stop waiting
    page = httpx.get(gw.url + "/review", headers=AUTH).text
    ids = order(page)
    assert len(ids) == 2 and ids[1] == plain
    assert "held: the user waits for you" in page.split(plain)[0]


def test_a_form_over_the_limit_is_refused_unread(gw: ServerThread) -> None:
    reply_id = chat(gw, "one")["reply_id"]
    r = httpx.post(
        f"{gw.url}/review/{reply_id}",
        data={"decision": "correct", "correction": "x" * 70_000},
        headers={**AUTH, "accept": "application/json"},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "body"
    assert "larger than 65536 bytes" in r.json()["error"]["message"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("reply_id", ["hitl-%00abc", "%00", "x" * 300])
def test_an_id_no_reply_can_have_is_a_404_on_every_store(
    kind: str, reply_id: str, gateway_factory: GatewayFactory, request: pytest.FixtureRequest
) -> None:
    # PostgreSQL refuses NUL in text: asked, it would answer as if the store were down.
    store = {"url": request.getfixturevalue("postgres_url")} if kind == "postgres" else {}
    gw = gateway_factory(environ={**ENV, "HITL_ADMIN_TOKEN": "admin-0123456789abcdef"}, store=store)
    as_json = {**AUTH, "accept": "application/json"}
    page = httpx.post(f"{gw.url}/review/{reply_id}", data={"decision": "approve"}, headers=AUTH)
    assert page.status_code == 404, page.text
    assert "no reply with id" in page.text and "<!doctype html>" in page.text
    for url, headers, body in (
        (f"{gw.url}/review/{reply_id}", as_json, {"data": {"decision": "approve"}}),
        (f"{gw.url}/v1/reviews/{reply_id}", AUTH, {"json": {"decision": "approve"}}),
    ):
        r = httpx.post(url, headers=headers, **body)  # type: ignore[arg-type]
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "unknown_reply"
        assert len(r.json()["error"]["message"]) < 240  # the id is cut, not echoed whole
