"""``POST /v1/chat/completions`` and the ``/v1/*`` passthrough, through real parts.

A real fake upstream on 127.0.0.1 (``fake_openai``), a real gateway (uvicorn, SQLite
file) and the official ``openai`` client as well as raw HTTP.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from middleware.app import create_app
from middleware.http.auth import ClientKeyMiddleware, exempt_path
from tests.conftest import GatewayFactory, gateway_settings
from tests.support.servers import ServerThread

CHAT = "/v1/chat/completions"


def rows(directory: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "hitl.db") as conn:
        return conn.execute(sql, params).fetchall()


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def stream_events(
    url: str, body: dict[str, Any], **headers: str
) -> tuple[httpx.Response, list[Any]]:
    """POST a streaming request; the parsed ``data:`` payloads in order (``[DONE]`` as str)."""
    with httpx.stream("POST", url + CHAT, json=body, headers=headers) as r:
        raw = b"".join(r.iter_bytes())
    assert r.status_code == 200, raw
    assert raw.endswith(b"\n\n")
    events: list[Any] = []
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: "), event
        data = event[6:]
        events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return r, events


@pytest.fixture
def gw(module_gateway: ServerThread) -> ServerThread:
    """The module's shared default gateway; rows are looked up by reply id."""
    return module_gateway


@pytest.fixture
def db(module_tmp: Path) -> Path:
    return module_tmp


# -- JSON ----------------------------------------------------------------------------


def test_json_reply_gains_hitl_and_headers(gw: ServerThread, db: Path) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="json", messages=user("what is this?")
    )
    completion = raw.parse()
    assert completion.id == "chatcmpl-test"
    assert completion.choices[0].message.content == "reply: what is this?"
    assert completion.usage is not None and completion.usage.total_tokens == 7
    hitl = (completion.model_extra or {})["hitl"]
    assert set(hitl) == {"reply_id", "feedback_token", "confidence", "decision", "ask_feedback"}
    assert raw.headers["x-hitl-reply-id"] == hitl["reply_id"]
    assert raw.headers["x-hitl-feedback-token"] == hitl["feedback_token"]
    assert float(raw.headers["x-hitl-confidence"]) == pytest.approx(hitl["confidence"])
    assert raw.headers["x-hitl-decision"] == hitl["decision"]
    assert hitl["decision"] in {"deliver", "ask", "escalate", "hold"}
    assert 0.0 <= hitl["confidence"] <= 1.0
    # The upstream's own headers come along.
    assert raw.headers["x-request-id"] == "req-123"
    # Committed before the reply left: it is in the file now.
    assert rows(
        db,
        "SELECT question, reply_text, status, stream, upstream_status, decision FROM exchange "
        "WHERE id = ?",
        hitl["reply_id"],
    ) == [("what is this?", "reply: what is this?", "complete", 0, 200, hitl["decision"])]


def test_confidence_is_the_configured_prior_before_learning(gateway_factory: Any) -> None:
    gw = gateway_factory(policy={"prior": 0.9, "ask_sample_rate": 0.0})
    r = httpx.post(gw.url + CHAT, json={"model": "json", "messages": user("hi")})
    assert r.json()["hitl"]["confidence"] == pytest.approx(0.9)
    assert r.json()["hitl"]["decision"] == "deliver"
    assert r.headers["x-hitl-decision"] == "deliver"


def test_every_reply_gets_its_own_id_and_token(gw: ServerThread) -> None:
    seen = set()
    for _ in range(5):
        hitl = httpx.post(gw.url + CHAT, json={"model": "json", "messages": user("x")}).json()[
            "hitl"
        ]
        seen.add((hitl["reply_id"], hitl["feedback_token"]))
    assert len({reply_id for reply_id, _ in seen}) == 5
    assert len({token for _, token in seen}) == 5


def test_n_greater_than_one_passes_through_intact(gw: ServerThread) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
    completion = client.chat.completions.create(model="json", messages=user("many"), n=3)
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"reply: many"}


def test_tool_calls_pass_through_intact(gw: ServerThread, db: Path) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
    tools: Any = [
        {
            "type": "function",
            "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
        }
    ]
    completion = client.chat.completions.create(model="tools", messages=user("look"), tools=tools)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_1", "lookup", '{"q": "x"}')
    ]
    reply_id = (completion.model_extra or {})["hitl"]["reply_id"]
    assert rows(db, "SELECT finish_reason FROM exchange WHERE id = ?", reply_id) == [
        ("tool_calls",)
    ]


def test_content_part_arrays_pass_through(
    gw: ServerThread, upstream_requests: list[Any], db: Path
) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "part one"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "part two"},
            ],
        }
    ]
    r = httpx.post(gw.url + CHAT, json={"model": "json", "messages": messages})
    assert r.status_code == 200, r.text
    # The fake joins the parts it reads with spaces (the image part reads as "").
    assert r.json()["choices"][0]["message"]["content"] == "reply: part one  part two"
    assert json.loads(upstream_requests[-1]["body"])["messages"] == messages
    reply_id = r.json()["hitl"]["reply_id"]
    assert rows(db, "SELECT question FROM exchange WHERE id = ?", reply_id) == [
        ("part one\npart two",)
    ]


def test_request_body_reaches_the_upstream_byte_for_byte(
    gw: ServerThread, upstream_requests: list[Any]
) -> None:
    # Odd spacing, key order, escapes, vendor fields: nothing is re-serialised.
    body = (
        b'{ "temperature":0.70, "model" : "json",\n'
        b'  "messages":[{"role":"user","content":"caf\\u00e9 \xe2\x98\x95"}],'
        b' "tools": [{"type": "function", "function": {"name": "f"}}],'
        b' "stream_options": null, "x_vendor": {"keep": [1, 2.50]}, "max_tokens": 5 }'
    )
    r = httpx.post(gw.url + CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert upstream_requests[-1]["body"] == body
    assert r.json()["choices"][0]["message"]["content"] == "reply: café ☕"


def test_streamed_body_reaches_the_upstream_byte_for_byte(
    gw: ServerThread, upstream_requests: list[Any]
) -> None:
    body = b'{"stream":true,"model":"json","messages":[{"role":"user","content":"s"}],"seed":7}'
    with httpx.stream(
        "POST", gw.url + CHAT, content=body, headers={"content-type": "application/json"}
    ) as r:
        r.read()
    assert r.status_code == 200
    assert upstream_requests[-1]["body"] == body


def test_logprobs_are_asked_for_only_when_configured(
    gateway_factory: Any, gw: ServerThread, upstream_requests: list[Any]
) -> None:
    plain = httpx.post(gw.url + CHAT, json={"model": "json", "messages": user("a")})
    assert plain.status_code == 200, plain.text
    assert "logprobs" not in json.loads(upstream_requests[-1]["body"])
    asking = gateway_factory(upstream={"logprobs": True})
    r = httpx.post(asking.url + CHAT, json={"model": "json", "messages": user("a")})
    assert r.status_code == 200, r.text
    assert json.loads(upstream_requests[-1]["body"])["logprobs"] is True
    # A client that says what it wants is not overruled.
    r = httpx.post(
        asking.url + CHAT, json={"model": "json", "messages": user("a"), "logprobs": False}
    )
    assert r.status_code == 200, r.text
    assert json.loads(upstream_requests[-1]["body"])["logprobs"] is False


# -- streaming ---------------------------------------------------------------------


def test_stream_relays_chunks_and_ends_with_the_hitl_chunk(gw: ServerThread, db: Path) -> None:
    r, events = stream_events(
        gw.url,
        {
            "model": "json",
            "messages": user("a b c"),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    final, usage = events[-2], events[-3]
    upstream_chunks = events[:-2]
    # The upstream's chunks, usage chunk included, come first and unchanged.
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7
    assert upstream_chunks[-2]["choices"][0]["finish_reason"] == "stop"
    text = "".join(
        c["choices"][0]["delta"].get("content", "") for c in upstream_chunks if c["choices"]
    )
    assert text == "reply: a b c"
    # The extra chunk looks like the stream's own, so strict clients accept it.
    assert final["object"] == "chat.completion.chunk"
    assert final["choices"] == []
    assert (final["id"], final["created"], final["model"]) == (
        usage["id"],
        usage["created"],
        usage["model"],
    )
    hitl = final["hitl"]
    assert hitl["reply_id"] == r.headers["x-hitl-reply-id"]
    assert hitl["feedback_token"] == r.headers["x-hitl-feedback-token"]
    assert hitl["decision"] in {"deliver", "ask", "escalate", "hold"}
    assert rows(
        db,
        "SELECT reply_text, status, stream, finish_reason FROM exchange WHERE id = ?",
        hitl["reply_id"],
    ) == [("reply: a b c", "complete", 1, "stop")]


def test_openai_client_reads_the_stream_with_usage(gw: ServerThread) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="json",
            messages=user("x y"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-2].usage is not None and chunks[-2].usage.total_tokens == 7
    assert chunks[-1].choices == []
    assert (chunks[-1].model_extra or {})["hitl"]["reply_id"].startswith("hitl-")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "reply: x y"


def test_stream_with_several_choices(gw: ServerThread) -> None:
    _, events = stream_events(
        gw.url, {"model": "json", "messages": user("p q"), "n": 2, "stream": True}
    )
    texts = {0: "", 1: ""}
    for event in events[:-2]:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
    assert texts == {0: "reply: p q", 1: "reply: p q"}
    assert "hitl" in events[-2]


def test_streamed_tool_calls_pass_through(gw: ServerThread, db: Path) -> None:
    _, events = stream_events(gw.url, {"model": "tools", "messages": user("t"), "stream": True})
    arguments = "".join(
        call["function"].get("arguments", "")
        for event in events[:-2]
        for choice in event["choices"]
        for call in choice["delta"].get("tool_calls") or []
    )
    assert arguments == '{"q": "x"}'
    reply_id = events[-2]["hitl"]["reply_id"]
    assert rows(db, "SELECT finish_reason FROM exchange WHERE id = ?", reply_id) == [
        ("tool_calls",)
    ]


def test_stream_hitl_chunk_can_be_turned_off(gateway_factory: Any) -> None:
    gw = gateway_factory(server={"stream_hitl_chunk": False})
    r, events = stream_events(
        gw.url,
        {
            "model": "json",
            "messages": user("a"),
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    assert all("hitl" not in e for e in events[:-1])
    assert events[-2]["usage"]["total_tokens"] == 7
    # The headers still carry what is needed to vote.
    vote = httpx.post(
        gw.url + "/v1/feedback",
        json={
            "reply_id": r.headers["x-hitl-reply-id"],
            "token": r.headers["x-hitl-feedback-token"],
            "rating": "up",
        },
    )
    assert vote.status_code == 201, vote.text


def test_a_streamed_reply_can_be_voted_on_at_once(gw: ServerThread) -> None:
    # The exchange is committed before the last byte: a vote can never find it missing.
    for _ in range(5):
        _, events = stream_events(gw.url, {"model": "json", "messages": user("v"), "stream": True})
        hitl = events[-2]["hitl"]
        r = httpx.post(
            gw.url + "/v1/feedback",
            json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "up"},
        )
        assert r.status_code == 201, r.text


# -- keys and headers ----------------------------------------------------------------


def test_upstream_gets_the_configured_key_not_the_clients(
    gateway_factory: Any, upstream_requests: list[Any]
) -> None:
    gw = gateway_factory(environ={"OPENAI_API_KEY": "sk-up"})
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)
    client.chat.completions.create(model="json", messages=user("k"))
    list(client.chat.completions.create(model="json", messages=user("k"), stream=True))
    client.models.list()
    assert len(upstream_requests) == 3
    for request in upstream_requests:
        auth = [v for k, v in request["raw_headers"] if k.lower() == "authorization"]
        assert auth == ["Bearer sk-up"]


def test_without_a_configured_key_no_authorization_goes_upstream(
    gw: ServerThread, upstream_requests: list[Any]
) -> None:
    httpx.post(
        gw.url + CHAT,
        json={"model": "json", "messages": user("k")},
        headers={"authorization": "Bearer sk-client"},
    )
    assert "authorization" not in upstream_requests[-1]["headers"]


def test_forward_client_auth_sends_the_clients_key(
    gateway_factory: Any, upstream_requests: list[Any]
) -> None:
    gw = gateway_factory(
        environ={"OPENAI_API_KEY": "sk-up"}, upstream={"forward_client_auth": True}
    )
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-client", max_retries=0)
    client.chat.completions.create(model="json", messages=user("k"))
    assert upstream_requests[-1]["headers"]["authorization"] == "Bearer sk-client"


def test_hop_by_hop_headers_are_dropped(
    gw: ServerThread, upstream_server: ServerThread, upstream_requests: list[Any]
) -> None:
    headers = {
        "connection": "keep-alive, x-private-hop",
        "keep-alive": "timeout=5",
        "x-private-hop": "secret",
        "te": "trailers",
        "proxy-authorization": "Basic Zm9vOmJhcg==",
        "x-hitl-user": "alice",
        "x-custom": "kept",
        "openai-organization": "org-1",
    }
    # Sent straight to the upstream, they all arrive: this client really sends them.
    direct = {"model": "json", "messages": user("h")}
    httpx.post(upstream_server.url + CHAT, json=direct, headers=headers)
    assert set(headers) <= set(upstream_requests[-1]["headers"])
    r = httpx.post(gw.url + CHAT, json={"model": "json", "messages": user("h")}, headers=headers)
    assert r.status_code == 200, r.text
    seen = upstream_requests[-1]["headers"]
    for name in ("keep-alive", "x-private-hop", "te", "proxy-authorization", "x-hitl-user"):
        assert name not in seen, name
    assert seen["x-custom"] == "kept"
    assert seen["openai-organization"] == "org-1"
    assert "x-private-hop" not in seen.get("connection", "")


# -- passthrough -----------------------------------------------------------------------


def test_models_and_embeddings_pass_through_unscored(
    gw: ServerThread, upstream_requests: list[Any], db: Path
) -> None:
    before = rows(db, "SELECT count(*) FROM exchange")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
    assert [m.id for m in client.models.list()] == ["json"]
    r = httpx.get(gw.url + "/v1/models?limit=5")
    assert r.status_code == 200
    assert r.json() == {
        "object": "list",
        "data": [{"id": "json", "object": "model", "created": 0, "owned_by": "test"}],
    }
    assert (upstream_requests[-1]["method"], upstream_requests[-1]["path"]) == ("GET", "/v1/models")
    assert upstream_requests[-1]["query"] == "limit=5"
    assert not any(name.startswith("x-hitl-") for name in r.headers)
    body = b'{"model": "e",  "input": ["a", "b"]}'
    e = httpx.post(
        gw.url + "/v1/embeddings", content=body, headers={"content-type": "application/json"}
    )
    assert e.status_code == 200
    assert e.json()["data"][0]["embedding"] == [0.1, 0.2]
    assert "hitl" not in e.json()
    assert upstream_requests[-1]["body"] == body
    embedding = client.embeddings.create(model="e", input="x")
    assert embedding.data[0].embedding == [0.1, 0.2]
    assert rows(db, "SELECT count(*) FROM exchange") == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/completions"),  # legacy completions: text a user reads
        ("POST", "/v1/responses"),
        ("POST", "/v1/responses/resp_1/cancel"),
        ("POST", "/v1/assistants"),
        ("GET", "/v1/no-such-thing"),
        ("GET", "/v1/modelsx"),  # a route covers what is below it, not a longer name
    ],
)
def test_a_route_the_passthrough_does_not_name_is_a_404_never_forwarded(
    gw: ServerThread, upstream_requests: list[Any], db: Path, method: str, path: str
) -> None:
    seen, before = len(upstream_requests), rows(db, "SELECT count(*) FROM exchange")
    r = httpx.request(method, gw.url + path, json={"model": "json", "prompt": "x"})
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["code"] == "not_found" and error["type"] == "not_found_error"
    assert f"no route for {path}" in error["message"]
    assert (
        "[upstream] passthrough = ['/models', '/embeddings', '/moderations']" in (error["message"])
    )
    assert len(upstream_requests) == seen
    assert rows(db, "SELECT count(*) FROM exchange") == before


def test_a_passthrough_of_every_route_forwards_an_unknown_one(
    gateway_factory: GatewayFactory, upstream_requests: list[Any]
) -> None:
    gw = gateway_factory(upstream={"passthrough": ["*"]})
    r = httpx.get(gw.url + "/v1/no-such-thing")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_url"  # the upstream's own answer
    assert upstream_requests[-1]["path"] == "/v1/no-such-thing"
    own = httpx.post(gw.url + "/v1/chat/completions/", json={})
    assert own.status_code == 404 and "own route" in own.json()["error"]["message"]


def test_a_named_route_covers_what_is_below_it(
    gateway_factory: GatewayFactory, upstream_requests: list[Any]
) -> None:
    gw = gateway_factory(upstream={"passthrough": ["/models"]})
    httpx.get(gw.url + "/v1/models/json")
    assert upstream_requests[-1]["path"] == "/v1/models/json"
    assert httpx.post(gw.url + "/v1/embeddings", json={"input": "x"}).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
        ("DELETE", "/v1/feedback", 405, "method_not_allowed"),
        ("POST", "/v1/replies/r-1", 405, "method_not_allowed"),
        ("POST", "/v1/chat/completions/", 404, "not_found"),
        ("POST", "/v1//chat/completions", 404, "not_found"),
        ("POST", "/v1/chat//completions", 404, "not_found"),
        ("POST", "/v1/Chat/Completions", 404, "not_found"),
        ("POST", "/v1/chat%5Ccompletions", 404, "not_found"),  # a backslash, IIS-style
        ("POST", "/v1/chat/completions%2F", 404, "not_found"),
        ("POST", "/v1/feedback/", 404, "not_found"),
        ("POST", "/v1/FEEDBACK", 404, "not_found"),
        ("GET", "/v1/replies/r-1/", 404, "not_found"),
        ("GET", "/v1/replies/r-1/explanation/", 404, "not_found"),
        ("POST", "/v1/reviews//r-1", 404, "not_found"),
        ("GET", "/v1/Replies", 404, "not_found"),
    ],
)
def test_a_path_an_upstream_would_read_as_the_gateways_own_is_never_forwarded(
    gw: ServerThread,
    upstream_requests: list[Any],
    db: Path,
    method: str,
    path: str,
    status: int,
    code: str,
) -> None:
    # Forwarded, /v1/chat/completions/ would be answered by the model unscored and
    # unheld (or redirected to the upstream's own address).
    seen, before = len(upstream_requests), rows(db, "SELECT count(*) FROM exchange")
    r = httpx.request(method, gw.url + path, json={"model": "json", "messages": user("x")})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    if status == 404:
        assert "the gateway's own route is /v1/" in error["message"]
    assert len(upstream_requests) == seen
    assert rows(db, "SELECT count(*) FROM exchange") == before


# -- client keys and CORS ----------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, upstream_server: ServerThread
) -> Iterator[ServerThread]:
    """A gateway that needs client keys (shared by this module's key tests)."""
    settings = gateway_settings(
        tmp_path_factory.mktemp("keyed"),
        upstream_server.url,
        server={"client_keys_env": "HITL_CLIENT_KEYS"},
    )
    environ = {"HITL_CLIENT_KEYS": "key-a, key-b", "OPENAI_API_KEY": "sk-up"}
    with ServerThread(create_app(settings, environ=environ)) as server:
        yield server


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": "key-a"},
        {"authorization": "Basic key-a"},
    ],
)
def test_client_keys_refuse_missing_or_wrong_keys(
    keyed: ServerThread, headers: dict[str, str]
) -> None:
    for method, path in (("POST", CHAT), ("GET", "/v1/models")):
        r = httpx.request(
            method, keyed.url + path, json={"model": "json", "messages": user("x")}, headers=headers
        )
        assert r.status_code == 401, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "authentication_error"
        assert "Authorization: Bearer" in error["message"]


def test_client_keys_accept_each_configured_key(
    keyed: ServerThread, upstream_requests: list[Any]
) -> None:
    for key in ("key-a", "key-b"):
        client = openai.OpenAI(base_url=keyed.url + "/v1", api_key=key, max_retries=0)
        completion = client.chat.completions.create(model="json", messages=user("ok"))
        assert completion.choices[0].message.content == "reply: ok"
        # The gateway's client key is not the upstream's.
        assert upstream_requests[-1]["headers"]["authorization"] == "Bearer sk-up"


def test_openai_client_with_a_wrong_key_gets_an_authentication_error(keyed: ServerThread) -> None:
    client = openai.OpenAI(base_url=keyed.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="json", messages=user("x"))
    assert info.value.status_code == 401


def test_client_keys_leave_health_and_feedback_open(keyed: ServerThread) -> None:
    assert httpx.get(keyed.url + "/healthz").status_code == 200
    r = httpx.post(
        keyed.url + CHAT,
        json={"model": "json", "messages": user("v")},
        headers={"authorization": "Bearer key-a"},
    )
    hitl = r.json()["hitl"]
    vote = httpx.post(
        keyed.url + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "up"},
    )
    assert vote.status_code == 201, vote.text


def raw_request(port: int, target: bytes, body: bytes) -> bytes:
    """One request with its target sent verbatim (clients normalise ``..`` away)."""
    head = (
        b"POST " + target + b" HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/feedback/../chat/completions",
        b"/v1/replies/../chat/completions",
        b"/v1/replies/%2e%2e/chat/completions",
        b"/v1/reviews/x/../../chat/completions",
        b"/v1/feedbackx",
        b"/v1/replies/x/y",
    ],
)
def test_exempt_routes_do_not_open_other_paths(
    keyed: ServerThread, upstream_requests: list[Any], target: bytes
) -> None:
    payload = json.dumps({"model": "json", "messages": user("sneak")}).encode()
    answer = raw_request(keyed.port, target, payload)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert upstream_requests == []


def test_dot_segments_never_reach_the_upstream(
    gw: ServerThread, upstream_requests: list[Any]
) -> None:
    # Normalised by the upstream client, they would reach chat unscored and unrecorded.
    payload = json.dumps({"model": "json", "messages": user("sneak")}).encode()
    for target in (b"/v1/x/../chat/completions", b"/v1/./chat/completions"):
        answer = raw_request(gw.port, target, payload)
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert upstream_requests == []


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/v1/feedback", True),
        ("/v1/replies/hitl-abc", True),
        ("/v1/reviews/hitl-abc", True),
        ("/v1/feedback/", False),
        ("/v1/feedbackx", False),
        ("/v1/feedback/../chat/completions", False),
        ("/v1/replies/", False),
        ("/v1/replies/..", False),
        ("/v1/replies/a/b", False),
        ("/v1/chat/completions", False),
    ],
)
def test_exempt_path(path: str, exempt: bool) -> None:
    assert exempt_path(path, ClientKeyMiddleware.exempt) is exempt


ORIGIN = "https://chat.example.com"


def test_cors_exposes_the_hitl_headers(gateway_factory: Any) -> None:
    gw = gateway_factory(server={"cors_origins": [ORIGIN]})
    r = httpx.post(
        gw.url + CHAT, json={"model": "json", "messages": user("c")}, headers={"origin": ORIGIN}
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert exposed >= {
        "x-hitl-reply-id",
        "x-hitl-feedback-token",
        "x-hitl-confidence",
        "x-hitl-decision",
    }
    other = httpx.post(
        gw.url + CHAT,
        json={"model": "json", "messages": user("c")},
        headers={"origin": "https://evil.example"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_cors_preflight_passes_before_client_keys(gateway_factory: Any) -> None:
    gw = gateway_factory(
        server={"cors_origins": [ORIGIN], "client_keys_env": "KEYS"}, environ={"KEYS": "k"}
    )
    for path in (CHAT, "/v1/feedback"):
        r = httpx.options(
            gw.url + path,
            headers={
                "origin": ORIGIN,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
    # A refused key still carries CORS headers, so the browser can read the 401.
    refused = httpx.post(gw.url + CHAT, json={}, headers={"origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN


def test_no_cors_headers_unless_configured(gw: ServerThread) -> None:
    r = httpx.post(
        gw.url + CHAT, json={"model": "json", "messages": user("c")}, headers={"origin": ORIGIN}
    )
    assert "access-control-allow-origin" not in r.headers


# -- the default, offline upstream -----------------------------------------------------


def test_default_config_serves_offline_through_local(gateway_factory: Any, tmp_path: Path) -> None:
    gw = gateway_factory(local=True)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    assert "local" in [m.id for m in client.models.list()]
    raw = client.chat.completions.with_raw_response.create(
        model="local", messages=user("How do I send a thumbs up or thumbs down?")
    )
    completion = raw.parse()
    answer = completion.choices[0].message.content or ""
    assert len(answer) > 20
    hitl = (completion.model_extra or {})["hitl"]
    assert raw.headers["x-hitl-reply-id"] == hitl["reply_id"]
    chunks = list(
        client.chat.completions.create(
            model="local", messages=user("How do I send a thumbs up or thumbs down?"), stream=True
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer
    final = (chunks[-1].model_extra or {})["hitl"]
    vote = httpx.post(
        gw.url + "/v1/feedback",
        json={"reply_id": final["reply_id"], "token": final["feedback_token"], "rating": "up"},
    )
    assert vote.status_code == 201, vote.text
    assert rows(tmp_path, "SELECT count(*), sum(stream) FROM exchange") == [(2, 1)]
