"""Reviewers in Slack in Socket Mode, end to end: a real gateway dials out to the stand-in
Slack (``apps.connections.open`` on the Web API stand-in, then a WebSocket on the Socket
Mode stand-in); clicks arrive as ``interactive`` envelopes and must be acknowledged on
the socket within Slack's 3 seconds, after the verdict is committed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from slack_sdk.errors import SlackApiError

from adapters.slack.socket_mode import connection_error
from middleware.app import create_app
from middleware.errors import ConfigError, ReviewChannelPermanent, ReviewChannelRetryable
from middleware.settings import settings_from_mapping
from tests.conftest import gateway_settings
from tests.support.processes import ROOT, clean_env
from tests.support.servers import ServerThread
from tests.support.slack import (
    ADMIN,
    ESCALATE_ALL,
    SECRET,
    ask,
    card_for,
    card_update,
    click_payload,
    correction_payload,
    ephemerals_to,
    rows,
    send,
)
from tests.support.slack_standin import APP_TOKEN, CHANNEL, TOKEN, SlackStandin
from tests.support.socket_standin import SocketStandin
from tests.support.waiting import wait_for

SLACK_ACK_S = 3.0

SocketGateway = Callable[..., ServerThread]


@pytest.fixture
def sockets(standin: SlackStandin) -> Iterator[SocketStandin]:
    """The Socket Mode stand-in, its URLs issued by the Web API stand-in."""
    with SocketStandin() as server:
        standin.connections = server.url
        yield server


def socket_slack(standin: SlackStandin, **slack: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "mode": "socket",
        "channel": CHANNEL,
        "api_url": standin.url,
        "reviewers": ["UREVIEWER1", "UREVIEWER2"],
        "retry_base_s": 0.05,
        "retry_max_s": 0.2,
        **slack,
    }


@pytest.fixture
def socket_gateway(
    standin: SlackStandin, sockets: SocketStandin, gateway_factory: Any
) -> SocketGateway:
    """Gateways in socket mode; stopped before the stand-ins (set up after them)."""

    def start(
        *, app_token: str | None = APP_TOKEN, environ: dict[str, str] | None = None, **slack: Any
    ) -> ServerThread:
        # No signing secret: Socket Mode does without one.
        environ = {"SLACK_BOT_TOKEN": TOKEN, "HITL_ADMIN_TOKEN": ADMIN, **(environ or {})}
        if app_token is not None:
            environ["SLACK_APP_TOKEN"] = app_token
        gw: ServerThread = gateway_factory(
            environ=environ, policy=ESCALATE_ALL, slack=socket_slack(standin, **slack)
        )
        return gw

    return start


def state_of(tmp_path: Path, reply_id: str) -> list[tuple[Any, ...]]:
    return rows(
        tmp_path,
        "SELECT state, decided_by, decision_reason FROM escalation WHERE reply_id = ?",
        reply_id,
    )


def log_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith(logger)]


# -- decisions over the socket ------------------------------------------------------------


def test_an_approve_envelope_is_decided_then_acknowledged_in_time(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    gw = socket_gateway()
    sockets.wait_connected()
    opened = standin.calls_to("apps.connections.open", ok_only=True)
    assert [c.token for c in opened] == [APP_TOKEN]  # the app-level token, not the bot's
    hitl = ask(gw)
    rid = hitl["reply_id"]
    card = card_for(standin, rid)

    envelope = sockets.send(click_payload(card, "hitl_approve", "UREVIEWER1"))
    ack = sockets.wait_ack(envelope)
    assert ack.envelope_id == envelope
    assert ack.payload is None  # a plain ack: the card is redrawn by the outbox
    assert 0 < ack.delay_s < SLACK_ACK_S
    # The ack came back: the verdict and its label are already durable.
    assert state_of(tmp_path, rid) == [("approved", "UREVIEWER1", None)]
    assert rows(tmp_path, "SELECT source, value FROM label WHERE reply_id = ?", rid) == [
        ("reviewer", 1)
    ]
    assert "<@UREVIEWER1>" in json.dumps(card_update(standin, card["ts"])["blocks"])
    status = httpx.get(
        f"{gw.url}/v1/replies/{rid}", headers={"X-HITL-Feedback-Token": hitl["feedback_token"]}
    ).json()
    assert status["review"] == {**status["review"], "state": "approved", "by": "UREVIEWER1"}
    assert any("connected in Socket Mode" in m for m in log_lines(caplog, "hitl.slack.socket"))
    assert APP_TOKEN not in caplog.text


def test_a_reject_with_a_reason(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
) -> None:
    gw = socket_gateway()
    sockets.wait_connected()
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    envelope = sockets.send(click_payload(card, "hitl_reject", "UREVIEWER2", reason="unsafe"))
    ack = sockets.wait_ack(envelope)
    assert ack.envelope_id == envelope and ack.delay_s < SLACK_ACK_S
    assert state_of(tmp_path, rid) == [("rejected", "UREVIEWER2", "unsafe")]
    assert rows(tmp_path, "SELECT value FROM label WHERE reply_id = ?", rid) == [(0,)]
    assert "unsafe" in json.dumps(card_update(standin, card["ts"])["blocks"])


def test_a_click_from_a_non_reviewer_is_acknowledged_and_changes_nothing(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
) -> None:
    gw = socket_gateway(reviewers=["UREVIEWER1"])
    sockets.wait_connected()
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    envelope = sockets.send(click_payload(card, "hitl_approve", "UINTRUDER"))
    ack = sockets.wait_ack(envelope)
    assert ack.envelope_id == envelope and ack.delay_s < SLACK_ACK_S
    assert "Only reviewers" in ephemerals_to(standin, "UINTRUDER")[0]
    assert state_of(tmp_path, rid) == [("posted", None, None)]
    assert rows(tmp_path, "SELECT count(*) FROM label") == [(0,)]
    assert standin.calls_to("chat.update") == []


def test_a_double_click_is_acknowledged_twice_and_the_first_verdict_wins(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
) -> None:
    gw = socket_gateway()
    sockets.wait_connected()
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    first = sockets.send(click_payload(card, "hitl_approve", "UREVIEWER1"))
    second = sockets.send(click_payload(card, "hitl_reject", "UREVIEWER2", reason="tone"))
    for envelope in (first, second):
        assert sockets.wait_ack(envelope).delay_s < SLACK_ACK_S
    assert rows(tmp_path, "SELECT count(*) FROM label WHERE reply_id = ?", rid) == [(1,)]
    assert ephemerals_to(standin, "UREVIEWER2") == ["Already decided by <@UREVIEWER1>: approved."]


def test_a_correction_through_the_form_and_a_late_one_refused_in_it(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
) -> None:
    gw = socket_gateway()
    sockets.wait_connected()
    rid = ask(gw, "what is the refund window?")["reply_id"]
    card = card_for(standin, rid)
    clicked = sockets.send(click_payload(card, "hitl_correct"))
    assert sockets.wait_ack(clicked).delay_s < SLACK_ACK_S
    view = standin.wait_for("views.open")[0].args["view"]
    assert state_of(tmp_path, rid) == [("posted", None, None)]  # opening decides nothing

    submitted = sockets.send(correction_payload(view, "Refunds are possible within 30 days."))
    ack = sockets.wait_ack(submitted)
    assert ack.delay_s < SLACK_ACK_S and ack.payload is None  # the form closes
    assert rows(tmp_path, "SELECT state, correction FROM escalation WHERE reply_id = ?", rid) == [
        ("corrected", "Refunds are possible within 30 days.")
    ]
    late = sockets.wait_ack(sockets.send(correction_payload(view, "mine", uid="UREVIEWER2")))
    # The refusal travels in the ack, as bolt's answer to the submission.
    assert late.payload is not None and late.payload["response_action"] == "errors"
    assert "Already decided by UREVIEWER1" in late.payload["errors"]["correction"]
    assert rows(tmp_path, "SELECT count(*) FROM label WHERE reply_id = ?", rid) == [(1,)]


def test_slack_refreshing_the_connection_is_followed_by_a_reconnect(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
) -> None:
    gw = socket_gateway()
    sockets.wait_connected()
    sockets.disconnect()
    sockets.wait_connected(count=2)  # with a new URL from apps.connections.open
    assert wait_for(lambda: sockets.open_sockets == 1, timeout=5)
    assert len(standin.calls_to("apps.connections.open", ok_only=True)) == 2
    rid = ask(gw)["reply_id"]
    envelope = sockets.send(click_payload(card_for(standin, rid), "hitl_approve"))
    assert sockets.wait_ack(envelope).delay_s < SLACK_ACK_S
    assert state_of(tmp_path, rid) == [("approved", "UREVIEWER1", None)]


# -- what socket mode does without --------------------------------------------------------


def test_slack_events_is_not_mounted_in_socket_mode(
    socket_gateway: SocketGateway, standin: SlackStandin, sockets: SocketStandin, tmp_path: Path
) -> None:
    gw = socket_gateway()
    rid = ask(gw)["reply_id"]
    card = card_for(standin, rid)
    # Even a payload signed with a signing secret finds nothing to take it.
    assert send(gw, click_payload(card, "hitl_approve")).status_code == 404
    assert state_of(tmp_path, rid) == [("posted", None, None)]


# -- start-up -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "kind"),
    [(TOKEN, "a bot token"), ("xoxp-a-user-token-0123", "a user token"), ("0f9e8d7c", "something")],
)
def test_a_token_that_is_not_an_app_level_token_stops_start_up(
    tmp_path: Path, standin: SlackStandin, token: str, kind: str
) -> None:
    settings = gateway_settings(tmp_path, None, slack=socket_slack(standin))
    environ = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_APP_TOKEN": token}
    with pytest.raises(ConfigError) as raised:
        create_app(settings, environ=environ)
    message = str(raised.value)
    assert "$SLACK_APP_TOKEN" in message and "xapp-" in message and kind in message
    assert "connections:write" in message
    assert token not in message
    assert standin.calls == []


def test_hitl_serve_names_the_variable_it_read(tmp_path: Path, standin: SlackStandin) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path / "hitl.db"}"\n'
        f'[slack]\nenabled = true\nmode = "socket"\nchannel = "{CHANNEL}"\n'
        f'api_url = "{standin.url}"\napp_token_env = "REVIEW_APP_TOKEN"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "middleware.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=tmp_path,
        env=clean_env(SLACK_BOT_TOKEN=TOKEN, REVIEW_APP_TOKEN="xoxb-pasted-the-wrong-one"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith('hitl: [slack] mode = "socket" needs an app-level token (xapp-...)')
    assert "$REVIEW_APP_TOKEN" in last and "a bot token" in last
    assert "xoxb-pasted-the-wrong-one" not in done.stderr


def test_a_missing_app_token_is_named_and_review_goes_to_the_log(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("ERROR", logger="hitl.review")
    # A signing secret does not stand in for the app token.
    gw = socket_gateway(app_token=None, environ={"SLACK_SIGNING_SECRET": SECRET})
    rid = ask(gw)["reply_id"]
    messages = log_lines(caplog, "hitl.review")
    assert any(
        "$SLACK_APP_TOKEN is empty" in m and "no Socket Mode connection is made" in m
        for m in messages
    ), messages
    assert state_of(tmp_path, rid) == [("pending", None, None)]
    assert httpx.post(gw.url + "/slack/events", content=b"x").status_code == 404
    assert standin.calls == [] and sockets.connections == 0


def test_slack_refusing_the_app_token_is_logged_once_and_chat_keeps_working(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="hitl.slack")
    gw = socket_gateway(app_token="xapp-1-ASTANDIN-revoked-token")

    def refused() -> list[str]:
        return [m for m in log_lines(caplog, "hitl.slack.socket") if "refused" in m]

    found = wait_for(refused, timeout=5)
    assert found, log_lines(caplog, "hitl.slack")
    assert "$SLACK_APP_TOKEN" in found[0] and "invalid_auth" in found[0]
    assert "connections:write" in found[0]
    assert "xapp-1-ASTANDIN-revoked-token" not in caplog.text
    # Not retried: a token Slack refused stays refused until someone changes it.
    assert len(standin.calls_to("apps.connections.open")) == 1
    assert sockets.connections == 0
    # Chat works, and cards are still posted (the bot token is fine).
    rid = ask(gw)["reply_id"]
    card_for(standin, rid)
    assert httpx.get(gw.url + "/healthz").status_code == 200


def test_an_unreachable_slack_is_retried_without_holding_up_start_up(
    socket_gateway: SocketGateway,
    standin: SlackStandin,
    sockets: SocketStandin,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("WARNING", logger="hitl.slack.socket")
    standin.fail("apps.connections.open", status=503, times=2)
    gw = socket_gateway()
    ask(gw)  # serving before Slack answered
    sockets.wait_connected()
    warnings = log_lines(caplog, "hitl.slack.socket")
    assert len([m for m in warnings if "trying again" in m]) == 2, warnings
    assert [c.status for c in standin.calls_to("apps.connections.open")] == [503, 503, 200]
    rid = ask(gw)["reply_id"]
    envelope = sockets.send(click_payload(card_for(standin, rid), "hitl_approve"))
    assert sockets.wait_ack(envelope).delay_s < SLACK_ACK_S
    assert state_of(tmp_path, rid) == [("approved", "UREVIEWER1", None)]


# -- what a failed apps.connections.open means (pure) --------------------------------------


class _Answer:
    def __init__(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self.status_code, self.data, self.headers = status, data, headers or {}


@pytest.mark.parametrize(
    ("exc", "permanent", "says"),
    [
        (SlackApiError("x", _Answer(200, {"ok": False, "error": "invalid_auth"})), True,
         "HTTP 200, invalid_auth (make a new app-level token with the connections:write scope)"),
        (SlackApiError("x", _Answer(200, {"ok": False, "error": "not_allowed_token_type"})),
         True, "not_allowed_token_type (it must be an app-level token (xapp-...))"),
        (SlackApiError("x", _Answer(200, {"ok": False, "error": "token_revoked"})), True,
         "token_revoked (make a new"),
        (SlackApiError("x", _Answer(200, {"ok": False, "error": "app_disabled"})), True,
         "HTTP 200, app_disabled"),
        (SlackApiError("x", _Answer(503, {"ok": False, "error": "internal_error"})), False,
         "HTTP 503, internal_error"),
        (SlackApiError("x", _Answer(502, "<html>bad gateway</html>")), False, "HTTP 502"),
        (aiohttp.ServerDisconnectedError(), False, "ServerDisconnectedError"),
        (ConnectionRefusedError(), False, "ConnectionRefusedError"),
        (TimeoutError(), False, "TimeoutError"),
    ],
)  # fmt: skip
def test_connection_errors(exc: BaseException, permanent: bool, says: str) -> None:
    mapped = connection_error(exc)
    assert isinstance(mapped, ReviewChannelPermanent if permanent else ReviewChannelRetryable)
    assert str(mapped).startswith("Slack apps.connections.open failed: ")
    assert says in str(mapped)
    assert "may have taken effect" not in str(mapped)  # nothing to take effect


def test_a_rate_limit_says_how_long_to_wait() -> None:
    answer = _Answer(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"})
    mapped = connection_error(SlackApiError("x", answer))
    assert isinstance(mapped, ReviewChannelRetryable) and mapped.retry_after == 7.0


# -- the settings and the manifest ---------------------------------------------------------


def test_http_is_the_default_mode_and_other_modes_are_refused() -> None:
    slack = settings_from_mapping({}).slack
    assert (slack.mode, slack.app_token_env) == ("http", "SLACK_APP_TOKEN")
    with pytest.raises(ConfigError, match=r"slack.mode = 'websocket': Input should be"):
        settings_from_mapping({"slack": {"mode": "websocket"}})


def test_the_socket_manifest_is_the_http_one_without_a_request_url() -> None:
    yaml = pytest.importorskip("yaml")
    http = yaml.safe_load((ROOT / "slack-app-manifest.yaml").read_text(encoding="utf-8"))
    socket = yaml.safe_load((ROOT / "slack-app-manifest.socket.yaml").read_text(encoding="utf-8"))
    assert socket["oauth_config"] == http["oauth_config"]
    assert socket["features"] == http["features"]
    assert http["settings"]["socket_mode_enabled"] is False
    assert socket["settings"]["socket_mode_enabled"] is True
    assert socket["settings"]["interactivity"] == {"is_enabled": True}
    assert "url" not in json.dumps(socket) and "YOUR-HOST" not in json.dumps(socket)
