"""``GET /v1/replies/{id}/explanation`` and reviewers' own tokens, through a real gateway:
the parts add up to the live model's log-odds; only reviewers and the admin may read it;
a verdict with a reviewer's token is recorded under the reviewer's name."""

from __future__ import annotations

import base64
import math
from typing import Any

import httpx
import pytest

from middleware.app import create_app
from middleware.errors import ConfigError
from middleware.http.reviewers import parse_tokens
from tests.conftest import GatewayFactory, gateway_settings
from tests.support.servers import ServerThread

ADMIN = "admin-token-for-explanations-0123"
ANN = "ann-personal-token-0123456789"
BOB = "bob-personal-token-9876543210"
ENV = {"HITL_ADMIN_TOKEN": ADMIN, "HITL_REVIEWER_TOKENS": f"ann:{ANN}, bob:{BOB}"}
CHAT = "/v1/chat/completions"


def ask(gw: ServerThread, text: str, model: str = "json") -> dict[str, Any]:
    r = httpx.post(
        gw.url + CHAT, json={"model": model, "messages": [{"role": "user", "content": text}]}
    )
    assert r.status_code == 200, r.text
    return dict(r.json()["hitl"])


def vote(gw: ServerThread, hitl: dict[str, Any], rating: str) -> None:
    r = httpx.post(
        gw.url + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": rating},
    )
    assert r.status_code in (200, 201), r.text


def explain(gw: ServerThread, reply_id: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/v1/replies/{reply_id}/explanation", headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_the_parts_add_up_to_the_live_model_log_odds(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory(environ=ENV, server={"feedback_per_minute": 0})
    for i in range(10):
        hedging = ask(gw, "q", model=f"reply:I'm not sure, maybe it could be {i}")
        plain = ask(gw, "q", model=f"reply:The answer is {i}, as the manual says.")
        vote(gw, hedging, "down")
        vote(gw, plain, "up")
    probe = ask(gw, "q", model="reply:I'm not sure, the manual may say so.")
    r = explain(gw, probe["reply_id"], **bearer(ANN))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"reply_id", "score", "score_at_reply", "intercept", "tokens", "features"}
    assert body["reply_id"] == probe["reply_id"]
    assert body["score_at_reply"] == pytest.approx(probe["confidence"], abs=1e-4)
    total = (
        body["intercept"]
        + sum(t["contribution"] for t in body["tokens"])
        + sum(f["contribution"] for f in body["features"])
    )
    assert total == pytest.approx(body["log_odds"], abs=1e-4)
    assert 1 / (1 + math.exp(-body["log_odds"])) == pytest.approx(body["score"], abs=1e-5)
    for items in (body["tokens"], body["features"]):
        magnitudes = [abs(i["contribution"]) for i in items]
        assert magnitudes == sorted(magnitudes, reverse=True)
    tokens = {t["token"]: t["contribution"] for t in body["tokens"]}
    assert tokens["not sure"] < 0
    assert [w["word"] for w in body["words"]][:3] == ["i'm", "not", "sure"]


def test_only_reviewers_and_the_admin_may_read_an_explanation(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(environ=ENV)
    reply_id = ask(gw, "hello")["reply_id"]
    basic = base64.b64encode(f"anyone:{BOB}".encode()).decode()
    assert explain(gw, reply_id, **bearer(ADMIN)).status_code == 200
    assert explain(gw, reply_id, authorization=f"Basic {basic}").status_code == 200
    for headers in ({}, bearer("not-a-token-at-all-000"), {"authorization": "Basic %%%"}):
        r = explain(gw, reply_id, **headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"]["code"] == "invalid_admin_token"
        assert "bearer" in r.headers["www-authenticate"].lower()
    r = explain(gw, "hitl-000000000000000000000000", **bearer(ANN))
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_reply"


def test_without_any_token_configured_the_explanation_is_off(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(environ={})
    reply_id = ask(gw, "hello")["reply_id"]
    r = explain(gw, reply_id, **bearer(ANN))
    assert r.status_code == 403
    assert "HITL_REVIEWER_TOKENS" in r.json()["error"]["message"]


def test_a_reviewer_token_records_the_verdict_under_its_name(
    gateway_factory: GatewayFactory,
) -> None:
    gw = gateway_factory(environ=ENV, policy={"prior": 0.1})
    hitl = ask(gw, "please check")
    r = httpx.post(
        f"{gw.url}/v1/reviews/{hitl['reply_id']}",
        json={"decision": "approve", "reviewer": "someone else"},
        headers=bearer(ANN),
    )
    assert r.status_code == 200, r.text
    assert r.json()["review"]["by"] == "ann"
    # With the admin token the request names the reviewer, and must.
    other = ask(gw, "please check again")
    r = httpx.post(
        f"{gw.url}/v1/reviews/{other['reply_id']}",
        json={"decision": "approve"},
        headers=bearer(ADMIN),
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "reviewer"
    for name, says in (("", "'reviewer' must not be empty"),
                       ("a" * 201, "'reviewer' must be at most 200 characters")):  # fmt: skip
        r = httpx.post(
            f"{gw.url}/v1/reviews/{other['reply_id']}",
            json={"decision": "approve", "reviewer": name},
            headers=bearer(ADMIN),
        )
        assert r.status_code == 422 and r.json()["error"] == {
            "message": says,
            "type": "invalid_request_error",
            "code": "invalid_field",
            "param": "reviewer",
        }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("ann", "expected NAME:TOKEN"),
        ("ann:short", "shorter than 16"),
        (f"ann:{ANN},ann:{BOB}", "listed twice"),
        (f"admin:{ANN}", "admin token"),
        (f":{ANN}", "expected NAME:TOKEN"),
    ],
)
def test_bad_reviewer_tokens_stop_start_up_without_showing_a_token(raw: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_tokens(raw, variable="HITL_REVIEWER_TOKENS")
    assert ANN not in str(caught.value) and BOB not in str(caught.value)
    assert "HITL_REVIEWER_TOKENS" in str(caught.value)


def test_a_bad_reviewer_token_variable_stops_the_app_from_building(tmp_path: Any) -> None:
    settings = gateway_settings(tmp_path, None)
    with pytest.raises(ConfigError, match="HITL_REVIEWER_TOKENS"):
        create_app(settings, environ={"HITL_REVIEWER_TOKENS": "nobody"})
