"""Bad input, class by class, through a real gateway: a 4xx in the documented error shape
(``{"error": {"message", "type", "code", "param"?}}``), never a 500 and never a hang;
the upstream is not called and nothing is recorded where it must not be."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest

from middleware.app import create_app
from middleware.cli import main
from middleware.errors import ConfigError
from middleware.http.bodies import MAX_JSON_DEPTH
from middleware.settings import load_settings, settings_from_mapping
from tests.conftest import gateway_settings
from tests.support.servers import ServerThread
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

ADMIN = "admin-token-for-bad-input-tests-0123"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHAT = "/v1/chat/completions"
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    502: "upstream_error",
}


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackStandin]:
    with SlackStandin() as standin:
        yield standin


@pytest.fixture(scope="module")
def gw(module_tmp: Path, upstream_server: ServerThread, slack: SlackStandin) -> Iterator[str]:
    settings = gateway_settings(
        module_tmp,
        upstream_server.url,
        server={"feedback_per_minute": 0},
        slack={"enabled": True, "channel": CHANNEL, "api_url": slack.url},
    )
    environ = {"HITL_ADMIN_TOKEN": ADMIN, "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET}
    with ServerThread(create_app(settings, environ=environ)) as server:
        yield server.url


@pytest.fixture
def client(gw: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw, timeout=10) as http:
        yield http


@pytest.fixture
def recorded(module_tmp: Path) -> Iterator[Any]:
    """``recorded()``: how many exchanges the store holds now."""

    def count() -> int:
        with sqlite3.connect(module_tmp / "hitl.db") as conn:
            return int(conn.execute("SELECT count(*) FROM exchange").fetchone()[0])

    yield count


def assert_error(
    r: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = r.json()["error"]
    assert set(error) - {"param"} == {"message", "type", "code"}, error
    assert error["type"] == TYPES[status]
    assert error["message"] and "Traceback" not in r.text
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def ask(client: httpx.Client, text: str = "hello") -> dict[str, Any]:
    r = client.post(CHAT, json={"model": "json", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    return hitl


# -- 1. feedback tokens and reply ids -------------------------------------------------

ODD_TOKENS = ["é", "jeton-été", "☃" * 32, "🙂", "Ω" * 200, "\tx", "a b", "\x7f", "\x00", "ß="]


@pytest.mark.parametrize("token", ODD_TOKENS)
def test_an_odd_feedback_token_is_403(client: httpx.Client, token: str) -> None:
    reply_id = ask(client)["reply_id"]
    for rid in (reply_id, "hitl-000000000000000000000000", "é", "\x00"):
        r = client.post("/v1/feedback", json={"reply_id": rid, "token": token, "rating": "up"})
        assert_error(r, 403, "invalid_token", "token")


ODD_HEADERS = ["é".encode(), "☃".encode(), b"\xff\xfe", b"\x80", "café".encode("latin-1")]


@pytest.mark.parametrize("token", ODD_HEADERS)
def test_an_odd_reply_token_header_is_403(client: httpx.Client, token: bytes) -> None:
    reply_id = ask(client)["reply_id"]
    r = client.get(f"/v1/replies/{reply_id}", headers={"X-HITL-Feedback-Token": token})
    assert_error(r, 403, "invalid_token", "X-HITL-Feedback-Token")


@pytest.mark.parametrize(
    "reply_id", ["%C3%A9", "%FF%FE", "%00", "%ED%A0%80", "x" * 5000, "%20", "a%3Fb", "..%5C"]
)
def test_an_odd_reply_id_is_403_to_anyone_and_404_to_the_admin(
    client: httpx.Client, reply_id: str
) -> None:
    token = ask(client)["feedback_token"]
    r = client.get(f"/v1/replies/{reply_id}", headers={"X-HITL-Feedback-Token": token})
    assert_error(r, 403, "invalid_token")
    verdict = {"decision": "approve", "reviewer": "ann"}
    r = client.post(
        f"/v1/reviews/{reply_id}", json=verdict, headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert_error(r, 404, "unknown_reply")
    assert len(r.json()["error"]["message"]) < 300


# -- 2. chat JSON: strict, shallow, of the shape the gateway reads --------------------


def nest(levels: int) -> str:
    return "[" * levels + "]" * levels


MESSAGES = '"messages": [{"role": "user", "content": "hi"}]'


def extra(fields: str) -> bytes:
    """A good chat request with ``fields`` (raw JSON text) added."""
    return f'{{"model": "json", {MESSAGES}, {fields}}}'.encode()


def messages(items: str) -> bytes:
    """A chat request with ``items`` (raw JSON text) as its messages."""
    return f'{{"model": "json", "messages": [{items}]}}'.encode()


def content(text: bytes) -> bytes:
    return b'{"model": "json", "messages": [{"role": "user", "content": "' + text + b'"}]}'


DEEP_PART = '{"a": ' * 80 + "1" + "}" * 80
CHAT_BODIES: list[tuple[str, bytes, str | None]] = [
    # (case, body, the param the answer names)
    ("deep metadata", extra(f'"metadata": {{"a": {nest(300)}}}'), "metadata"),
    ("deep vendor field", extra(f'"x": {nest(MAX_JSON_DEPTH)}'), "x"),
    ("deep content", messages(f'{{"role": "user", "content": [{DEEP_PART}]}}'), "messages"),
    ("deep tools", extra(f'"tools": {nest(2000)}'), None),
    ("deep body", nest(100_000).encode(), None),
    ("NaN", extra('"temperature": NaN'), None),
    ("Infinity", extra('"temperature": Infinity'), None),
    ("-Infinity", extra('"top_p": -Infinity'), None),
    ("1e400", extra('"temperature": 1e400'), None),
    ("huge int", extra(f'"seed": {"9" * 400}'), None),
    ("duplicate model", extra('"model": "other"'), "model"),
    ("duplicate stream", extra('"stream": false, "stream": true'), "stream"),
    ("duplicate role", messages('{"role": "user", "role": "system", "content": "x"}'), "role"),
    ("duplicate behind an escape", extra('"x": "\\u003a", "n": 1, "n": 2'), "n"),
    ("not UTF-8", content(b"\xff"), None),
    ("overlong UTF-8", content(b"\xc0\xaf"), None),
    ("UTF-8 surrogate", content(b"\xed\xa0\x80"), None),
    ("escaped lone surrogate", content(b"\\ud800"), None),
    ("Latin-1", content("café".encode("latin-1")), None),
    ("UTF-16", f'{{"model": "json", {MESSAGES}}}'.encode("utf-16"), None),
    ("empty", b"", None),
    ("blank", b" \n ", None),
    ("truncated", f'{{"model": "json", {MESSAGES}'.encode(), None),
    ("array", f"[{{{MESSAGES}}}]".encode(), None),
    ("string", b'"messages"', None),
    ("number", b"7", None),
    ("null", b"null", None),
    ("no messages", b'{"model": "json"}', "messages"),
    ("messages an object", b'{"model": "json", "messages": {"role": "user"}}', "messages"),
    ("messages a string", b'{"model": "json", "messages": "hi"}', "messages"),
    ("messages empty", messages(""), "messages"),
    ("message a number", messages("1"), "messages[0]"),
    ("message a string", messages('{"role": "user", "content": "a"}, "hi"'), "messages[1]"),
    ("message null", messages("null"), "messages[0]"),
    ("message an array", messages("[]"), "messages[0]"),
    ("no role", messages('{"content": "x"}'), "messages[0].role"),
    ("role a number", messages('{"role": 1, "content": "x"}'), "messages[0].role"),
    ("role null", messages('{"role": null, "content": "x"}'), "messages[0].role"),
    ("role an object", messages('{"role": {"r": "user"}, "content": "x"}'), "messages[0].role"),
    ("content a number", messages('{"role": "user", "content": 5}'), "messages[0].content"),
    ("content an object", messages('{"role": "user", "content": {}}'), "messages[0].content"),
    ("content of strings", messages('{"role": "user", "content": ["x"]}'), "messages[0].content"),
    ("model a number", f'{{"model": 4, {MESSAGES}}}'.encode(), "model"),
    ("model null", f'{{"model": null, {MESSAGES}}}'.encode(), "model"),
    ("model an array", f'{{"model": ["json"], {MESSAGES}}}'.encode(), "model"),
    ("model an object", f'{{"model": {{"id": "json"}}, {MESSAGES}}}'.encode(), "model"),
    ("stream a string", extra('"stream": "true"'), "stream"),
    ("stream a number", extra('"stream": 1'), "stream"),
    ("stream an object", extra('"stream": {}'), "stream"),
    ("user a number", extra('"user": 5'), "user"),
    ("user an object", extra('"user": {"id": "u"}'), "user"),
    ("metadata an array", extra('"metadata": [1]'), "metadata"),
    ("metadata a string", extra('"metadata": "m"'), "metadata"),
    ("stream_options a string", extra('"stream": true, "stream_options": "x"'), "stream_options"),
    ("NUL in content", content(b"a\\u0000b"), "messages"),
    ("NUL in model", f'{{"model": "js\\u0000on", {MESSAGES}}}'.encode(), "model"),
    ("NUL in user", extra('"user": "\\u0000"'), "user"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "param"), CHAT_BODIES, ids=[c[0] for c in CHAT_BODIES])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_bad_chat_json_is_400_before_the_upstream(
    client: httpx.Client,
    upstream_requests: list[Any],
    recorded: Any,
    case: str,
    body: bytes,
    param: str | None,
    stream: bool,
) -> None:
    before = recorded()
    headers = {"content-type": "application/json"}
    if stream and body.startswith(b'{"model": "json", ') and b'"stream"' not in body:
        body = body.replace(b'{"model": "json", ', b'{"model": "json", "stream": true, ', 1)
    r = client.post(CHAT, content=body, headers=headers)
    error = assert_error(r, 400)
    assert error["code"] in ("invalid_json", "invalid_request")
    if param is not None:
        assert error["param"] == param, error
    assert upstream_requests == []
    assert recorded() == before


def test_json_just_inside_the_limits_goes_through(
    client: httpx.Client, upstream_requests: list[Any]
) -> None:
    body = (
        f'{{"model": "json", "messages": [{{"role": "user", "content": "a: b \\u003a"}}], '
        f'"stream": null, "user": null, "metadata": null, "x": {nest(MAX_JSON_DEPTH - 1)}, '
        f'"seed": 18446744073709551615, "n": 1, "logit_bias": {{"1:2": 3}}}}'
    ).encode()
    r = client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert upstream_requests[-1]["body"] == body


def test_a_chunked_chat_body_is_read_whole(client: httpx.Client) -> None:
    def pieces() -> Iterator[bytes]:
        yield b'{"model": "json", "messages": [{"role": "user", '
        yield b'"content": "in pieces"}]}'

    r = client.post(CHAT, content=pieces(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "reply: in pieces"


# -- 3. report periods ----------------------------------------------------------------

BAD_PERIODS = [
    "99999-01-01",
    "-1e300",
    "nan",
    "inf",
    "-inf",
    "99999999999999999999d",
    "9" * 400 + "w",
    "1e300d",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "1969-12-31T23:59:59Z",
    "0001-01-01",
    "2024-02-30",
    "last tuesday",
    "\x00",
    "7d\x00",
    "\uff12\uff10\uff12\uff14",  # fullwidth digits
]


@pytest.mark.parametrize("value", BAD_PERIODS)
@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("route", ["/report", "/report.json", "/report.csv"])
def test_a_bad_report_period_is_400_naming_it(
    client: httpx.Client, route: str, name: str, value: str
) -> None:
    r = client.get(f"{route}?{name}={quote(value)}", headers={"Authorization": f"Bearer {ADMIN}"})
    error = assert_error(r, 400, "invalid_parameter", name)
    assert error["message"].startswith(f"'{name}': ")


def test_report_periods_at_the_edges_of_time_are_fine(client: httpx.Client) -> None:
    for query in (
        "since=1970-01-01&until=9999-12-31T23:59:59Z",
        "since=1970-01-01T00:00:00Z&until=0d",
        "since=2030-01-01&until=2020-01-01",
        "since=9999-12-31",
        "since=&until=",
        "since=7d&since=1w&other=x",
    ):
        for route in ("/report", "/report.json", "/report.csv"):
            r = client.get(f"{route}?{query}", headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 200, (route, query, r.text)


@pytest.mark.parametrize("value", ["99999999999999999999d", "0001-01-01T00:00:00+14:00", "nan"])
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_cli_report_refuses_a_bad_period_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    store = f"sqlite:///{tmp_path / 'hitl.db'}"
    for command in ("report", "export"):
        with pytest.raises(SystemExit) as exited:
            main([command, "--store", store, option, value], environ={})
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"hitl: {option}: "), err
        assert "Traceback" not in err


# -- 4. Slack requests ----------------------------------------------------------------


def slack_headers(body: bytes, *, secret: str = SECRET, **extra: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + digest.hexdigest(),
        "Content-Type": "application/x-www-form-urlencoded",
        **extra,
    }


def form(payload: Any) -> bytes:
    raw = payload if isinstance(payload, str) else json.dumps(payload)
    return urlencode({"payload": raw}).encode()


USER = {"id": "UOUTSIDER", "team_id": "T1"}
ACTION = {"action_id": "hitl_approve", "block_id": "hitl:x", "value": "hitl-x"}
CLICK = {"type": "block_actions", "user": USER, "actions": [ACTION]}
VIEW = {
    "type": "modal",
    "callback_id": "hitl_correction",
    "private_metadata": "{}",
    "state": {"values": {}},
}
SUBMIT = {"type": "view_submission", "user": USER, "view": VIEW}


def submit(**view: Any) -> bytes:
    return form({**SUBMIT, "view": {**VIEW, **view}})


SLACK_BODIES: list[tuple[str, bytes, str]] = [
    ("not UTF-8", b"payload=" + b"\xff\xfe", "body"),
    ("not UTF-8 JSON", b'{"type": "block_actions", "x": "\xff"}', "body"),
    ("empty", b"", "payload"),
    ("a form without payload", b"a=1&b=2", "payload"),
    ("payload mentioned, not a field", b"text=payload", "payload"),
    ("a malformed form", b"payload", "payload"),
    ("payload not JSON", b"payload=%7Bnot+json", "payload"),
    ("payload empty", b"payload=", "payload"),
    ("payload percent-garbage", b"payload=%FF%FE%00", "payload"),
    ("payload a list", form([CLICK]), "payload"),
    ("payload a string", form('"block_actions"'), "payload"),
    ("payload null", form("null"), "payload"),
    ("payload NaN", form("NaN"), "payload"),
    ("payload too deep", form('{"type": "block_actions", "x": ' + nest(200) + "}"), "payload"),
    ("payload far too deep", form(nest(5000)), "payload"),
    ("JSON body a list", b"[1]", "body"),
    ("JSON body not JSON", b"{oops", "body"),
    ("no type", form({"user": USER, "actions": [ACTION]}), "type"),
    ("type a number", form({**CLICK, "type": 7}), "type"),
    ("type not handled", form({**CLICK, "type": "shortcut"}), "type"),
    ("type url_verification", b'{"type": "url_verification", "challenge": "x"}', "type"),
    ("no user", form({"type": "block_actions", "actions": [ACTION]}), "user"),
    ("user a string", form({**CLICK, "user": "U1"}), "user"),
    ("user id a number", form({**CLICK, "user": {"id": 5}}), "user"),
    ("no actions", form({"type": "block_actions", "user": USER}), "actions"),
    ("actions empty", form({**CLICK, "actions": []}), "actions"),
    ("actions an object", form({**CLICK, "actions": ACTION}), "actions"),
    ("action a string", form({**CLICK, "actions": ["hitl_approve"]}), "actions[0]"),
    ("action without id", form({**CLICK, "actions": [{"value": "x"}]}), "actions[0]"),
    ("action id a number", form({**CLICK, "actions": [{"action_id": 1}]}), "actions[0]"),
    ("team a list", form({**CLICK, "team": ["T1"]}), "team"),
    ("team id a number", form({**CLICK, "team": {"id": 1}}), "team.id"),
    ("enterprise a number", form({**CLICK, "enterprise": 1}), "enterprise"),
    ("channel a string", form({**CLICK, "channel": "C1"}), "channel"),
    ("container a list", form({**CLICK, "container": []}), "container"),
    ("authorizations of numbers", form({**CLICK, "authorizations": [1]}), "authorizations"),
    ("response_urls a number", form({**CLICK, "response_urls": 3}), "response_urls"),
    ("no view", form({"type": "view_submission", "user": USER}), "view"),
    ("view without callback", form({**SUBMIT, "view": {"type": "modal"}}), "view"),
    ("view without type", form({**SUBMIT, "view": {"callback_id": "hitl_correction"}}), "view"),
    ("metadata a number", submit(private_metadata=5), "view.private_metadata"),
    ("metadata too deep", submit(private_metadata=nest(3000)), "view.private_metadata"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "body", "param"), SLACK_BODIES, ids=[c[0] for c in SLACK_BODIES])
def test_a_signed_slack_request_bolt_cannot_read_is_400(
    client: httpx.Client, case: str, body: bytes, param: str
) -> None:
    content_type = "application/json" if body.startswith((b"{", b"[")) else None
    extra = {"Content-Type": content_type} if content_type else {}
    r = client.post("/slack/events", content=body, headers=slack_headers(body, **extra))
    assert_error(r, 400, param=param)
    # Unsigned (or signed with another secret), the same body stays a 401.
    forged = slack_headers(body, secret="not-the-signing-secret", **extra)
    assert_error(client.post("/slack/events", content=body, headers=forged), 401)


def test_a_well_formed_click_still_reaches_the_listeners(
    client: httpx.Client, slack: SlackStandin
) -> None:
    for payload in (CLICK, {**CLICK, "channel": {"id": CHANNEL}, "team": "T1"}, SUBMIT):
        body = form(payload)
        r = client.post("/slack/events", content=body, headers=slack_headers(body))
        assert r.status_code == 200, (payload, r.text)


# -- 5. the upstream's base_url -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("https://user:hunter2-secret@api.example.com/v1", "api_key_env"),
        ("https://:hunter2-secret@api.example.com/v1", "api_key_env"),
        ("https://sk-hunter2-secret@api.example.com/v1", "api_key_env"),
        ("http://u:hunter2-secret@127.0.0.1:8000/v1", "api_key_env"),
        ("https://api.example.com/v1?key=hunter2-secret", "query string"),
        ("https://api.example.com/v1?", "query string"),
        ("https://api.example.com/v1#hunter2-secret", "fragment"),
        ("https://api.example.com:99999/v1", "not a valid URL"),
        ("https://api.example.com:port/v1", "not a valid URL"),
        ("http://[::1/v1", "not a valid URL"),
        ("https://api example.com/v1", "host"),
    ],
)
def test_a_base_url_the_client_cannot_use_stops_start_up(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_from_mapping({"upstream": {"kind": "openai", "base_url": url}}, source="t.toml")
    message = str(refused.value)
    assert "upstream.base_url" in message and says in message
    assert "hunter2" not in message
    environ = {"HITL_UPSTREAM_BASE_URL": url, "HITL_UPSTREAM_KIND": "openai"}
    with pytest.raises(ConfigError) as refused:
        load_settings(None, environ)
    assert "$HITL_UPSTREAM_BASE_URL" in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_usual_base_urls_still_pass() -> None:
    for url in ("https://api.openai.com/v1", "http://127.0.0.1:11434/v1/", "http://[::1]:8000/v1"):
        settings = settings_from_mapping({"upstream": {"kind": "openai", "base_url": url}})
        assert settings.upstream.base_url == url.rstrip("/")


# -- 6. an upstream that answers a stream with something else -------------------------


@pytest.mark.parametrize("model", ["no-stream", "garbage"])
@pytest.mark.parametrize("risky", [False, True], ids=["relayed", "judged"])
def test_a_stream_answered_without_events_is_502_and_not_recorded(
    client: httpx.Client, recorded: Any, model: str, risky: bool
) -> None:
    before = recorded()
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "s"}]}
    r = client.post(CHAT, json=body, headers={"X-HITL-Risk": "high"} if risky else {})
    error = assert_error(r, 502, "upstream_error")
    assert "text/event-stream" in error["message"]
    assert recorded() == before


# -- 7. the rest of the surface -------------------------------------------------------

REVIEW_BODIES: list[tuple[bytes, int, str | None]] = [
    (b"", 400, None),
    (b"{", 400, None),
    (b"[]", 422, "body"),
    (b'"approve"', 422, "body"),
    (b"\xff", 400, None),
    (nest(5000).encode(), 400, None),
    (b'{"decision": "approve", "decision": "reject", "reviewer": "a"}', 400, "decision"),
    (b'{"decision": "maybe", "reviewer": "a"}', 422, "decision"),
    (b'{"decision": "approve"}', 422, "reviewer"),
    (b'{"decision": "approve", "reviewer": 5}', 422, "reviewer"),
    (b'{"decision": "approve", "reviewer": "a\\u0000"}', 422, "reviewer"),
    (b'{"decision": "correct", "reviewer": "a", "correction": "x\\u0000"}', 422, "correction"),
    (b'{"decision": "approve", "reviewer": "a", "extra": 1}', 422, "extra"),
    (b'{"decision": "approve", "reviewer": "a", "reason": 1e999}', 400, None),
]


@pytest.mark.parametrize(("body", "status", "param"), REVIEW_BODIES)
def test_a_bad_review_body_is_4xx(
    client: httpx.Client, body: bytes, status: int, param: str | None
) -> None:
    reply_id = ask(client)["reply_id"]
    r = client.post(
        f"/v1/reviews/{reply_id}",
        content=body,
        headers={"Authorization": f"Bearer {ADMIN}", "content-type": "text/plain"},
    )
    assert_error(r, status, param=param)


JSON = "application/json"
VOTE = '"reply_id": "x", "token": "y", "rating": "up"'
FEEDBACK_BODIES: list[tuple[bytes, str, int, str | None]] = [
    (b"", JSON, 400, None),
    (b"reply_id=x&token=y&rating=up", "application/x-www-form-urlencoded", 400, None),
    (b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--", "multipart/form-data", 400, None),
    (b"\xef\xbb\xbf{}", JSON, 400, None),
    (f'{{{VOTE}, "rating": "down"}}'.encode(), JSON, 400, "rating"),
    (b'{"reply_id": "x", "token": "y", "rating": "sideways"}', "text/plain", 422, "rating"),
    (f'{{{VOTE}, "comment": "\\u0000"}}'.encode(), JSON, 422, "comment"),
    (f'{{{VOTE}, "reason": {nest(70)}}}'.encode(), JSON, 400, "reason"),
    (b"null", JSON, 422, "body"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "content_type", "status", "param"), FEEDBACK_BODIES)
def test_a_bad_feedback_body_is_4xx(
    client: httpx.Client, body: bytes, content_type: str, status: int, param: str | None
) -> None:
    r = client.post("/v1/feedback", content=body, headers={"content-type": content_type})
    assert_error(r, status, param=param)


def test_a_chunked_feedback_body_over_the_limit_is_413(client: httpx.Client) -> None:
    def pieces() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    assert_error(client.post("/v1/feedback", content=pieces()), 413, "body_too_large")


def test_a_reply_without_its_token_header_is_403(client: httpx.Client) -> None:
    reply_id = ask(client)["reply_id"]
    assert_error(client.get(f"/v1/replies/{reply_id}"), 403, "invalid_token")
