"""No secret leaves where it belongs: every scenario the gateway serves (chat JSON and
stream, feedback, replies, the review API, the report, Slack with signed payloads, and
their errors), run with a distinctive value for every configured secret; then the logs
(caplog at DEBUG, and a real process's stderr), the whole SQLite file, every answer the
client got and every request the Slack and upstream stand-ins received are searched
for each one. The upstream key may appear only in the Authorization header upstream."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from middleware.errors import ConfigError
from middleware.secrets import Secrets
from middleware.settings import settings_from_mapping
from tests.support.fleet import serving
from tests.support.servers import ServerThread
from tests.support.slack import action_payload, card_for, elements, signed
from tests.support.slack_standin import CHANNEL, SlackStandin

UPSTREAM_KEY = "sk-UPSTREAM-4f6c2e9d1b7a-SECRET"
TOKEN_SECRET = "TOKENSECRET-8e1d7c3a5f90-SECRET"
ADMIN_TOKEN = "ADMINTOKEN-2b9e4d6f1a3c-SECRET"
BOT_TOKEN = "xoxb-BOTTOKEN-7a3c9e1f5d2b-SECRET"
SIGNING_SECRET = "SIGNINGSECRET-5d1f3b7e9a2c-SECRET"
CLIENT_KEYS = ("ck-CLIENTKEYONE-9c2e-SECRET", "ck-CLIENTKEYTWO-1a7f-SECRET")
STORE_PASSWORD = "PGPASSWORD-3e8a1c5f7b9d-SECRET"

SECRETS = {
    "upstream API key": UPSTREAM_KEY,
    "token secret": TOKEN_SECRET,
    "admin token": ADMIN_TOKEN,
    "Slack bot token": BOT_TOKEN,
    "Slack signing secret": SIGNING_SECRET,
    "client key 1": CLIENT_KEYS[0],
    "client key 2": CLIENT_KEYS[1],
}
ENVIRON = {
    "OPENAI_API_KEY": UPSTREAM_KEY,
    "HITL_TOKEN_SECRET": TOKEN_SECRET,
    "HITL_ADMIN_TOKEN": ADMIN_TOKEN,
    "SLACK_BOT_TOKEN": BOT_TOKEN,
    "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    "GATEWAY_CLIENT_KEYS": ",".join(CLIENT_KEYS),
}
SECTIONS: dict[str, dict[str, Any]] = {
    "server": {
        "client_keys_env": "GATEWAY_CLIENT_KEYS",
        "feedback_per_minute": 0,
        "log_bodies": True,
    },
    "policy": {"escalate_below": 1.0, "review_budget": 1.0, "max_reviews_per_hour": 1000},
}


def leaks(text: str | bytes, *, allowed: tuple[str, ...] = ()) -> list[str]:
    """The names of the secrets found in ``text``."""
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return [
        name
        for name, value in SECRETS.items()
        if name not in allowed
        and (value.encode() in blob or base64.b64encode(value.encode()) in blob)
    ]


@dataclass
class Seen:
    """Everything the gateway sent back to its clients."""

    answers: list[str] = field(default_factory=list)

    def keep(self, r: httpx.Response) -> httpx.Response:
        headers = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        self.answers.append(
            f"{r.request.method} {r.request.url} -> {r.status_code}\n{headers}\n{r.text}"
        )
        return r


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def slack_send(client: httpx.Client, payload: dict[str, Any], secret: str) -> httpx.Response:
    body = urlencode({"payload": json.dumps(payload)})
    return client.post("/slack/events", content=body, headers=signed(body, secret=secret))


def scenarios(url: str, standin: SlackStandin) -> Seen:
    """Every route the gateway serves, with and without the right credentials."""
    seen = Seen()
    messages = [{"role": "user", "content": "How do I reset my password?"}]
    with httpx.Client(base_url=url, timeout=30) as client:
        keep = seen.keep
        assert keep(client.get("/healthz")).status_code == 200
        # Chat: JSON with one client key, a stream with the other, and refusals.
        r = keep(
            client.post(
                "/v1/chat/completions",
                json={"model": "json", "messages": messages},
                headers=bearer(CLIENT_KEYS[0]),
            )
        )
        assert r.status_code == 200, r.text
        first = r.json()["hitl"]
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "json", "messages": messages, "stream": True},
            headers=bearer(CLIENT_KEYS[1]),
        ) as streamed:
            assert streamed.status_code == 200
            text = "".join(streamed.iter_text())
            seen.answers.append(text)
        second = json.loads(
            [line for line in text.splitlines() if '"hitl"' in line][-1].removeprefix("data: ")
        )["hitl"]
        assert (
            keep(
                client.post("/v1/chat/completions", json={"model": "json", "messages": messages})
            ).status_code
            == 401
        )
        assert (
            keep(
                client.post(
                    "/v1/chat/completions",
                    json={"model": "json", "messages": messages},
                    headers=bearer(CLIENT_KEYS[0] + "x"),
                )
            ).status_code
            == 401
        )
        for model, status in (("fail-500", 502), ("fail-400", 400), ("garbage", 502)):
            r = keep(
                client.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": messages},
                    headers=bearer(CLIENT_KEYS[0]),
                )
            )
            assert r.status_code == status, r.text
        assert keep(client.get("/v1/models", headers=bearer(CLIENT_KEYS[1]))).status_code == 200
        # Feedback and the reply's state.
        vote = {
            "reply_id": first["reply_id"],
            "token": first["feedback_token"],
            "rating": "down",
            "reason": "incorrect",
            "comment": "wrong",
        }
        assert keep(client.post("/v1/feedback", json=vote)).status_code == 201
        assert (
            keep(client.post("/v1/feedback", json={**vote, "token": "forged"})).status_code == 403
        )
        assert (
            keep(
                client.get(
                    f"/v1/replies/{first['reply_id']}",
                    headers={"X-HITL-Feedback-Token": first["feedback_token"]},
                )
            ).status_code
            == 200
        )
        # The review API.
        verdict = {"decision": "correct", "correction": "Use the reset link.", "reviewer": "ann"}
        assert (
            keep(
                client.post(
                    f"/v1/reviews/{second['reply_id']}",
                    json=verdict,
                    headers=bearer(ADMIN_TOKEN + "x"),
                )
            ).status_code
            == 401
        )
        assert (
            keep(
                client.post(
                    f"/v1/reviews/{second['reply_id']}", json=verdict, headers=bearer(ADMIN_TOKEN)
                )
            ).status_code
            == 200
        )
        # The report, with the admin token as Bearer and as Basic password, and without.
        basic = {
            "Authorization": "Basic " + base64.b64encode(f"admin:{ADMIN_TOKEN}".encode()).decode()
        }
        assert keep(client.get("/report", headers=bearer(ADMIN_TOKEN))).status_code == 200
        assert keep(client.get("/report.json", headers=basic)).status_code == 200
        assert keep(client.get("/report.csv", headers=bearer(ADMIN_TOKEN))).status_code == 200
        assert keep(client.get("/report")).status_code == 401
        assert keep(client.get("/metrics")).status_code == 200
        # Slack: the card, a signed click, a forged one and a stale one.
        card = card_for(standin, first["reply_id"])
        payload = action_payload(card, elements(card)["hitl_approve"], "UREVIEWER1")
        assert keep(slack_send(client, payload, "not-the-signing-secret")).status_code == 401
        body = urlencode({"payload": json.dumps(payload)})
        stale = signed(body, secret=SIGNING_SECRET, ts=str(int(time.time()) - 3600))
        assert keep(client.post("/slack/events", content=body, headers=stale)).status_code == 401
        assert keep(slack_send(client, payload, SIGNING_SECRET)).status_code == 200
        standin.wait_for("chat.update")
    return seen


def assert_stand_ins_clean(upstream_requests: list[dict[str, Any]], standin: SlackStandin) -> None:
    assert upstream_requests, "the upstream stand-in saw nothing"
    for request in upstream_requests:
        headers = {k: v for k, v in request["headers"].items() if k != "authorization"}
        assert leaks(json.dumps(headers) + request["path"] + request["query"]) == []
        assert leaks(request["body"]) == []
        # The upstream key, and only it, in the one header meant for it.
        if "authorization" in request["headers"]:
            assert request["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert standin.calls, "the Slack stand-in saw nothing"
    for call in standin.calls:
        assert leaks(json.dumps(call.args)) == [], call.method
        assert call.token == BOT_TOKEN  # from the Authorization header, not the body


def assert_store_clean(db: Path) -> None:
    files = [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]
    for path in files:
        assert leaks(path.read_bytes()) == [], path
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    assert "INSERT INTO" in dump and leaks(dump) == []


def test_no_secret_leaks_in_process(
    gateway_factory: Any,
    standin: SlackStandin,
    upstream_requests: list[dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.token = BOT_TOKEN
    gw: ServerThread = gateway_factory(
        environ=ENVIRON,
        slack={
            "enabled": True,
            "channel": CHANNEL,
            "api_url": standin.url,
            "reviewers": ["UREVIEWER1"],
        },
        **SECTIONS,
    )
    seen = scenarios(gw.url, standin)
    gw.stop()

    for answer in seen.answers:
        assert leaks(answer) == [], answer
    logged = [caplog.text]
    for record in caplog.records:
        logged += [record.getMessage(), repr(getattr(record, "fields", None))]
        logged.append(repr(record.args))
    assert len(caplog.records) > 20, "DEBUG logging was not captured"
    assert leaks("\n".join(logged)) == []
    assert_stand_ins_clean(upstream_requests, standin)
    assert_store_clean(tmp_path / "hitl.db")


def test_no_secret_leaks_from_a_real_process(
    upstream_server: ServerThread,
    upstream_requests: list[dict[str, Any]],
    standin: SlackStandin,
    tmp_path: Path,
) -> None:
    standin.token = BOT_TOKEN
    db = tmp_path / "hitl.db"
    config = f"""
[server]
client_keys_env = "GATEWAY_CLIENT_KEYS"
feedback_per_minute = 0
log_format = "json"
log_bodies = true

[upstream]
kind = "openai"
base_url = "{upstream_server.url}/v1"

[store]
url = "sqlite:///{db}"

[policy]
escalate_below = 1.0
review_budget = 1.0
max_reviews_per_hour = 1000

[slack]
enabled = true
channel = "{CHANNEL}"
api_url = "{standin.url}"
reviewers = ["UREVIEWER1"]
"""
    with serving(tmp_path, config, env=ENVIRON) as gateway:
        seen = scenarios(gateway.url, standin)
    output = gateway.output()
    assert "Slack: review cards go to channel" in output  # the start-up lines are in it
    assert leaks(output) == [], output
    for answer in seen.answers:
        assert leaks(answer) == [], answer
    assert_stand_ins_clean(upstream_requests, standin)
    assert_store_clean(db)


def test_a_wrong_slack_token_is_named_not_shown(
    gateway_factory: Any, standin: SlackStandin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.token = "xoxb-the-right-one"
    gateway_factory(
        environ=ENVIRON,
        slack={"enabled": True, "channel": CHANNEL, "api_url": standin.url},
    )
    standin.wait_for("auth.test", count=0)
    deadline = time.monotonic() + 5
    while "SLACK_BOT_TOKEN" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "$SLACK_BOT_TOKEN" in caplog.text
    assert leaks(caplog.text) == []


def test_settings_and_secrets_print_no_secret() -> None:
    url = f"postgresql+psycopg://hitl:{STORE_PASSWORD}@db.internal:5432/hitl"
    settings = settings_from_mapping(
        {"store": {"url": url}, "server": {"client_keys_env": "GATEWAY_CLIENT_KEYS"}}
    )
    secrets = Secrets(settings, ENVIRON)
    assert secrets.upstream_api_key == UPSTREAM_KEY  # read, and kept
    for shown in (repr(settings), str(settings), repr(settings.store), repr(secrets), str(secrets)):
        assert leaks(shown) == [] and STORE_PASSWORD not in shown, shown
    assert "hitl:***@db.internal" in repr(settings)
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"store": {"url": f"mysql://hitl:{STORE_PASSWORD}@db/hitl"}})
    assert STORE_PASSWORD not in str(refused.value)
    assert "***@db" in str(refused.value)


def test_an_unreachable_database_is_named_without_its_password(tmp_path: Path) -> None:
    config = f"""
[store]
url = "postgresql+psycopg://hitl:{STORE_PASSWORD}@127.0.0.1:1/hitl"
"""
    (tmp_path / "config.toml").write_text(config)
    import subprocess
    import sys

    from tests.support.processes import clean_env

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "middleware.cli",
            "serve",
            "--config",
            str(tmp_path / "config.toml"),
        ],
        cwd=tmp_path,
        env=clean_env(**ENVIRON),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "127.0.0.1:1" in done.stderr
    assert STORE_PASSWORD not in done.stderr + done.stdout
    assert leaks(done.stderr + done.stdout) == []
