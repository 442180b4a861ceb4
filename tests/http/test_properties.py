"""Property tests: arbitrary bytes and arbitrary JSON shapes at every endpoint that reads
input never get a 500. The answer is a 2xx or a 4xx in the error shape (502, 503 and
504 keep their meanings: the upstream or the store failed). One gateway per module, over
the fake upstream and the Slack stand-in; the examples are bounded to stay fast."""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from middleware.app import create_app
from middleware.http.bodies import InvalidJSON, parse_json
from tests.conftest import gateway_settings
from tests.support.servers import ServerThread
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

ADMIN = "admin-token-for-property-tests-0123"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOUNDED = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEWER = settings(BOUNDED, max_examples=80)


@pytest.fixture(scope="module")
def client(upstream_server: ServerThread) -> Iterator[httpx.Client]:
    with tempfile.TemporaryDirectory() as tmp, SlackStandin() as standin:
        config = gateway_settings(
            Path(tmp),
            upstream_server.url,
            server={"feedback_per_minute": 0},
            slack={"enabled": True, "channel": CHANNEL, "api_url": standin.url},
        )
        environ = {
            "HITL_ADMIN_TOKEN": ADMIN,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
        }
        with (
            ServerThread(create_app(config, environ=environ)) as gw,
            httpx.Client(base_url=gw.url, timeout=10) as http,
        ):
            yield http


def assert_not_a_500(r: httpx.Response) -> None:
    assert r.status_code < 500 or r.status_code in (502, 503, 504), (r.status_code, r.text)
    json_error = r.headers.get("content-type", "").startswith("application/json")
    if r.status_code >= 400 and json_error and r.request.method != "HEAD":  # HEAD: no body
        error = r.json()["error"]
        assert isinstance(error, dict) and {"message", "type", "code"} <= set(error), r.text


# -- strategies -----------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
keys_text = st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys_text, inner, max_size=4),
    max_leaves=25,
)
roles = st.sampled_from(["user", "assistant", "system", "tool"]) | json_values
message = st.fixed_dictionaries({"role": roles}, optional={"content": json_values})
chat_shaped = st.fixed_dictionaries(
    {"messages": st.lists(message | json_values, max_size=4) | json_values},
    optional={
        "model": st.just("json") | json_values,
        "stream": st.booleans() | json_values,
        "user": st.text(max_size=20) | json_values,
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8)) | json_values,
        "stream_options": json_values,
        "temperature": json_values,
    },
)
#: bytes that are nearly JSON: a good body with a few bytes changed, cut or added
good = b'{"model": "json", "messages": [{"role": "user", "content": "hi"}], "stream": false}'
near_json = st.builds(
    lambda at, cut, junk: good[:at] + junk + good[at + cut :],
    st.integers(0, len(good)),
    st.integers(0, 5),
    st.binary(max_size=6) | st.sampled_from([b"[", b"{", b'"', b"\\u0000", b"\xff", b"NaN"]),
)
#: what an HTTP header value may carry (h11 refuses the rest on the client side)
header_bytes = st.binary(max_size=60).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c < 127 or c >= 128).strip(b" \t")
)


def body(shapes: Any) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, nearly-JSON bytes, or JSON of ``shapes`` and of any shape."""
    encoded = (shapes | json_values).map(lambda v: json.dumps(v).encode())
    return st.binary(max_size=300) | near_json | encoded


# -- the endpoints --------------------------------------------------------------------


@BOUNDED
@given(raw=body(chat_shaped))
def test_chat_never_500s(client: httpx.Client, raw: bytes) -> None:
    r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "text/json"})
    assert_not_a_500(r)


@FEWER
@given(payload=chat_shaped, risky=st.booleans())
def test_chat_streams_never_500(client: httpx.Client, payload: dict[str, Any], risky: bool) -> None:
    payload = {**payload, "stream": True}
    headers = {"x-hitl-risk": "high"} if risky else {}
    r = client.post("/v1/chat/completions", json=payload, headers=headers)
    assert_not_a_500(r)


feedback_shaped = st.fixed_dictionaries(
    {
        "reply_id": st.text(max_size=50) | json_values,
        "token": st.text(max_size=50) | json_values,
        "rating": st.sampled_from(["up", "down"]) | json_values,
    },
    optional={"reason": json_values, "comment": json_values, "correction": json_values},
)


@BOUNDED
@given(raw=body(feedback_shaped), content_type=st.sampled_from(["application/json", "x/y", ""]))
def test_feedback_never_500s(client: httpx.Client, raw: bytes, content_type: str) -> None:
    r = client.post("/v1/feedback", content=raw, headers={"content-type": content_type})
    assert_not_a_500(r)


@BOUNDED
@given(reply_id=st.text(min_size=1, max_size=60), token=header_bytes)
def test_reply_lookups_never_500(client: httpx.Client, reply_id: str, token: bytes) -> None:
    headers = {"X-HITL-Feedback-Token": token} if token else {}
    r = client.get(f"/v1/replies/{quote(reply_id, safe='')}", headers=headers)
    assert_not_a_500(r)


review_shaped = st.fixed_dictionaries(
    {"decision": st.sampled_from(["approve", "reject", "correct"]) | json_values},
    optional={"reviewer": st.text(max_size=20) | json_values, "reason": json_values,
              "correction": json_values},
)  # fmt: skip


@BOUNDED
@given(reply_id=st.text(min_size=1, max_size=40), raw=body(review_shaped))
def test_reviews_never_500(client: httpx.Client, reply_id: str, raw: bytes) -> None:
    r = client.post(
        f"/v1/reviews/{quote(reply_id, safe='')}",
        content=raw,
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert_not_a_500(r)


form_fields = st.dictionaries(
    st.sampled_from(["decision", "reason", "correction", "x"]) | st.text(max_size=8),
    st.sampled_from(["approve", "reject", "correct", "tone", ""]) | st.text(max_size=30),
    max_size=4,
)
#: what a form post may carry: a real urlencoded form, or bytes that are nearly one
form_bodies = form_fields.map(lambda f: urlencode(f).encode()) | st.binary(max_size=300)


@FEWER
@given(
    reply_id=st.text(min_size=1, max_size=40),
    raw=form_bodies,
    accept=st.sampled_from(["application/json", "text/html", "*/*"]),
)
def test_review_page_posts_never_500(
    client: httpx.Client, reply_id: str, raw: bytes, accept: str
) -> None:
    r = client.post(
        f"/review/{quote(reply_id, safe='')}",
        content=raw,
        headers={
            "Authorization": f"Bearer {ADMIN}",
            "content-type": "application/x-www-form-urlencoded",
            "accept": accept,
        },
    )
    assert_not_a_500(r)


@FEWER
@given(reply_id=st.text(min_size=1, max_size=60), done=st.text(max_size=40))
def test_explanations_and_the_queue_never_500(
    client: httpx.Client, reply_id: str, done: str
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    explained = client.get(f"/v1/replies/{quote(reply_id, safe='')}/explanation", headers=admin)
    assert_not_a_500(explained)
    assert_not_a_500(client.get("/review?" + urlencode({"done": done}), headers=admin))


@FEWER
@given(
    path=st.text(max_size=40),
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]),
)
def test_any_path_under_v1_never_500s(client: httpx.Client, path: str, method: str) -> None:
    # Forwarded (the passthrough allow-list), or refused: never a crash of the gateway.
    r = client.request(method, "/v1/" + quote(path, safe="/%"), content=b"{}")
    assert_not_a_500(r)


when = (
    st.text(max_size=30)
    | st.sampled_from(["7d", "0d", "2024-05-01", "1e9d", "0001-01-01", "1970-01-01"])
    | st.floats(allow_nan=True).map(str)
)


@BOUNDED
@given(since=when, until=when, route=st.sampled_from(["/report.json", "/report.csv"]))
def test_report_periods_never_500(client: httpx.Client, since: str, until: str, route: str) -> None:
    query = urlencode({"since": since, "until": until})
    r = client.get(f"{route}?{query}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert_not_a_500(r)


# -- Slack: signed with the real secret, so every body gets past the signature --------


def signed_headers(raw: bytes, content_type: str) -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + raw, hashlib.sha256)
    return {
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": "v0=" + digest.hexdigest(),
        "Content-Type": content_type,
    }


ids = st.text(max_size=12) | json_values
slack_shaped = st.fixed_dictionaries(
    {"type": st.sampled_from(["block_actions", "view_submission"]) | json_values},
    optional={
        "user": st.fixed_dictionaries({"id": ids}) | json_values,
        "actions": st.lists(
            st.fixed_dictionaries(
                {"action_id": st.sampled_from(["hitl_approve", "hitl_reject", "hitl_correct"])},
                optional={"value": ids, "block_id": ids, "selected_option": json_values},
            )
            | json_values,
            max_size=2,
        ),
        "view": st.fixed_dictionaries(
            {"type": st.just("modal") | json_values, "callback_id": st.just("hitl_correction")},
            optional={"private_metadata": st.text(max_size=30) | json_values, "state": json_values},
        ) | json_values,
        "team": ids, "enterprise": ids, "channel": ids, "container": json_values,
        "authorizations": json_values, "response_urls": json_values, "trigger_id": ids,
    },
)  # fmt: skip


@BOUNDED
@given(
    raw=st.binary(max_size=300)
    | slack_shaped.map(lambda p: urlencode({"payload": json.dumps(p)}).encode())
    | json_values.map(lambda p: urlencode({"payload": json.dumps(p)}).encode())
    | slack_shaped.map(lambda p: json.dumps(p).encode()),
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json"]),
)
def test_signed_slack_requests_never_500(
    client: httpx.Client, raw: bytes, content_type: str
) -> None:
    r = client.post("/slack/events", content=raw, headers=signed_headers(raw, content_type))
    assert_not_a_500(r)


# -- the duplicate-key check's shortcut agrees with the slow, exact one ---------------

keys = st.sampled_from(["a", "b", "a:b", ":", "\\u003a", "k\\u003ak", "x\\\\u003a"])
objects = st.recursive(
    st.lists(st.tuples(keys, st.sampled_from(['1', '":"', '"\\u003a"', '"a:b"'])), max_size=4),
    lambda inner: st.lists(st.tuples(keys, inner), max_size=3),
    max_leaves=12,
)  # fmt: skip


def text_of(pairs: Any) -> str:
    if isinstance(pairs, str):
        return pairs
    return "{" + ", ".join(f'"{k}": {text_of(v)}' for k, v in pairs) + "}"


def has_duplicate(pairs: Any) -> bool:
    if isinstance(pairs, str):
        return False
    names = [json.loads(f'"{k}"') for k, _ in pairs]
    return len(names) != len(set(names)) or any(has_duplicate(v) for _, v in pairs)


@settings(BOUNDED, max_examples=300)
@given(pairs=objects)
def test_duplicate_keys_are_found_however_colons_are_spelled(pairs: Any) -> None:
    raw = text_of(pairs).encode()
    try:
        parse_json(raw)
    except InvalidJSON as exc:
        assert has_duplicate(pairs) and "appears twice" in str(exc)
    else:
        assert not has_duplicate(pairs)
