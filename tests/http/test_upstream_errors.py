"""Every error row: upstream failures, bad requests, broken streams, the store's health.

Each answer is asserted in the OpenAI error shape and never as a 500 with a traceback.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.processes import free_port
from tests.support.servers import ServerThread

CHAT = "/v1/chat/completions"


def rows(directory: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(directory / "hitl.db") as conn:
        return conn.execute(sql, params).fetchall()


def body(model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert "Traceback" not in r.text
    error: dict[str, Any] = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert {"type", "code"} <= set(error)
    if code is not None:
        assert error["code"] == code
    return error


def post(gw: ServerThread, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + CHAT, json=payload, timeout=10)


def post_stream(gw: ServerThread, payload: dict[str, Any]) -> httpx.Response:
    with httpx.stream("POST", gw.url + CHAT, json={**payload, "stream": True}, timeout=10) as r:
        r.read()
    return r


@pytest.fixture
def gw(module_gateway: ServerThread) -> ServerThread:
    """The module's shared default gateway; rows are looked up by reply id."""
    return module_gateway


@pytest.fixture
def db(module_tmp: Path) -> Path:
    return module_tmp


# -- the upstream fails ----------------------------------------------------------------


def test_upstream_refused_is_502(gateway_factory: Any, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    gw = gateway_factory(upstream={"base_url": url})
    # It started without the upstream, and says it is healthy: the store is.
    assert httpx.get(gw.url + "/healthz").status_code == 200
    error = assert_error(post(gw, body("json")), 502, "upstream_unavailable")
    assert url in error["message"]
    assert_error(post_stream(gw, body("json")), 502, "upstream_unavailable")
    assert_error(httpx.get(gw.url + "/v1/models"), 502, "upstream_unavailable")
    assert rows(tmp_path, "SELECT count(*) FROM exchange") == [(0,)]


def test_upstream_5xx_is_502(gw: ServerThread) -> None:
    error = assert_error(post(gw, body("fail-500")), 502)
    assert "500" in error["message"]
    assert_error(post_stream(gw, body("fail-500")), 502)


def test_upstream_timeout_is_504(gw: ServerThread) -> None:
    error = assert_error(post(gw, body("slow")), 504, "upstream_timeout")
    assert "timeout_s" in error["message"]


def test_upstream_timeout_on_a_stream_is_504(gw: ServerThread) -> None:
    assert_error(post_stream(gw, body("slow")), 504, "upstream_timeout")


def test_openai_client_sees_gateway_errors_as_api_errors(gw: ServerThread) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="fail-500", messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 502


def test_upstream_4xx_passes_through_unchanged(gw: ServerThread, db: Path) -> None:
    before = rows(db, "SELECT count(*) FROM exchange")
    expected = {"error": {"message": "bad model", "type": "invalid_request_error", "code": "x"}}
    r = post(gw, body("fail-400"))
    assert r.status_code == 400
    assert r.json() == expected
    streamed = post_stream(gw, body("fail-400"))
    assert streamed.status_code == 400
    assert streamed.json() == expected
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="fail-400", messages=[{"role": "user", "content": "x"}]
        )
    assert "bad model" in str(info.value)
    assert rows(db, "SELECT count(*) FROM exchange") == before


def test_upstream_200_that_is_not_json_is_502(gw: ServerThread) -> None:
    error = assert_error(post(gw, body("garbage")), 502, "upstream_error")
    assert "not JSON" in error["message"]


# -- the client's request is wrong --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{not json", 400),
        (b"", 400),
        (b"[1, 2]", 400),
        (b'"just a string"', 400),
        (b'{"model": "json"}', 400),
        (b'{"model": "json", "messages": []}', 400),
        (b'{"model": "json", "messages": "hi"}', 400),
    ],
)
def test_malformed_requests_are_400_and_never_reach_the_upstream(
    gw: ServerThread, upstream_requests: list[Any], raw: bytes, status: int
) -> None:
    r = httpx.post(gw.url + CHAT, content=raw, headers={"content-type": "application/json"})
    assert_error(r, status)
    assert upstream_requests == []


def test_missing_messages_names_the_parameter(gw: ServerThread) -> None:
    r = httpx.post(gw.url + CHAT, json={"model": "json"})
    assert assert_error(r, 400)["param"] == "messages"


def test_body_over_the_limit_is_413(gateway_factory: Any, upstream_requests: list[Any]) -> None:
    gw = gateway_factory(server={"max_body_bytes": 2048})
    big = body("json", "x" * 4000)
    error = assert_error(post(gw, big), 413, "body_too_large")
    assert "2048" in error["message"]
    # Just under the limit is fine.
    assert post(gw, body("json", "x" * 1500)).status_code == 200
    assert len(upstream_requests) == 1


def test_chunked_body_over_the_limit_is_413(
    gateway_factory: Any, upstream_requests: list[Any]
) -> None:
    gw = gateway_factory(server={"max_body_bytes": 2048})
    data = json.dumps(body("json", "y" * 8000)).encode()

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 512):
            yield data[i : i + 512]

    with httpx.Client(timeout=10) as client:
        request = client.build_request(
            "POST", gw.url + CHAT, content=chunks(), headers={"content-type": "application/json"}
        )
        assert "content-length" not in request.headers
        r = client.send(request)
    assert_error(r, 413, "body_too_large")
    assert upstream_requests == []


def test_passthrough_body_over_the_limit_is_413(gateway_factory: Any) -> None:
    gw = gateway_factory(server={"max_body_bytes": 100})
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": "e", "input": "z" * 500})
    assert_error(r, 413)


def test_unknown_routes_are_404_in_the_error_shape(gw: ServerThread) -> None:
    assert_error(httpx.get(gw.url + "/nothing-here"), 404)


# -- a stream breaks midway ------------------------------------------------------------------


def test_a_stream_cut_midway_ends_cleanly_and_is_recorded_incomplete(
    gw: ServerThread, db: Path
) -> None:
    with httpx.stream("POST", gw.url + CHAT, json=body("cut", "a b c d", stream=True)) as r:
        raw = b"".join(r.iter_bytes())
    assert r.status_code == 200
    events = [e[6:] for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    final = json.loads(events[-2])
    assert final["choices"] == []
    hitl = final["hitl"]
    assert hitl["incomplete"] is True
    assert hitl["reply_id"] == r.headers["x-hitl-reply-id"]
    relayed = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, events[:-2])
        if c["choices"]
    )
    assert relayed == "reply: a"
    assert rows(db, "SELECT status, reply_text FROM exchange WHERE id = ?", hitl["reply_id"]) == [
        ("incomplete", "reply: a")
    ]
    # The partial reply can still be rated.
    vote = httpx.post(
        gw.url + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "down"},
    )
    assert vote.status_code == 201, vote.text


def test_openai_client_finishes_a_cut_stream_without_error(gw: ServerThread) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="cut", messages=[{"role": "user", "content": "a b c d"}], stream=True
        )
    )
    assert (chunks[-1].model_extra or {})["hitl"]["incomplete"] is True


# -- the store's health -----------------------------------------------------------------------


def test_healthz_is_200_when_the_store_is_reachable(gw: ServerThread) -> None:
    r = httpx.get(gw.url + "/healthz")
    assert r.status_code == 200
    assert r.json()["store"] == "ok"


def _pg(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _block(server_url: str, database: str, allow: bool) -> None:
    """Let connections to ``database`` in or not, and end the ones it has."""
    with psycopg.connect(_pg(server_url), autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )


def test_healthz_is_503_and_chat_is_503_when_the_store_is_unreachable(
    gateway_factory: Any, postgres_url: str
) -> None:
    import os

    server_url = os.environ["HITL_TEST_POSTGRES_URL"]
    database = str(make_url(postgres_url).database)
    gw = gateway_factory(store={"url": postgres_url})
    assert httpx.get(gw.url + "/healthz").status_code == 200
    hitl = post(gw, body("json")).json()["hitl"]
    _block(server_url, database, allow=False)
    try:
        r = httpx.get(gw.url + "/healthz")
        assert r.status_code == 503
        assert r.json()["store"] == "unreachable"
        # No reply goes out that could not be recorded, and no vote is acknowledged.
        assert_error(post(gw, body("json")), 503, "store_unavailable")
        vote = httpx.post(
            gw.url + "/v1/feedback",
            json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": "up"},
        )
        assert_error(vote, 503)
        # A stream is not started when its reply could not be recorded: a 503 before any
        # content, as for JSON.
        with httpx.stream("POST", gw.url + CHAT, json=body("json", stream=True)) as r:
            raw = b"".join(r.iter_bytes())
        assert r.status_code == 503
        assert json.loads(raw)["error"]["code"] == "store_unavailable"
        assert b"data:" not in raw
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk", max_retries=0)
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(**body("json"), stream=True))
    finally:
        _block(server_url, database, allow=True)
    # And it recovers on its own once the database is back.
    assert httpx.get(gw.url + "/healthz").status_code == 200
    assert post(gw, body("json")).status_code == 200


def test_odd_stream_chunks_are_relayed_not_fatal(gw: ServerThread, db: Path) -> None:
    with httpx.stream("POST", gw.url + CHAT, json=body("odd", stream=True), timeout=10) as r:
        raw = b"".join(r.iter_bytes())
    assert r.status_code == 200
    assert b": keep-alive comment\n\n" in raw
    assert b"data: not json at all\n\n" in raw
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [e[6:] for e in raw.split(b"\n\n") if e.startswith(b"data: ")]
    hitl = json.loads(events[-2])["hitl"]
    assert rows(db, "SELECT status, reply_text FROM exchange WHERE id = ?", hitl["reply_id"]) == [
        ("complete", "odd end")
    ]


def test_an_upstream_reply_nested_too_deep_is_a_502(gw: ServerThread) -> None:
    r = post(gw, body("deep"))
    assert_error(r, 502, "upstream_error")
    assert "nested too deep" in r.json()["error"]["message"]


def test_a_nul_in_the_upstream_reply_is_stored_without_it(gw: ServerThread, db: Path) -> None:
    r = post(gw, body("nul"))
    assert r.status_code == 200, r.text
    # The client gets what the upstream said; the store keeps what it can hold.
    assert r.json()["choices"][0]["message"]["content"] == "before\x00after"
    reply_id = r.json()["hitl"]["reply_id"]
    stored = rows(db, f"SELECT reply_text FROM exchange WHERE id = '{reply_id}'")
    assert stored == [("beforeafter",)]


def test_an_event_stream_without_events_is_recorded_as_incomplete(
    gw: ServerThread, db: Path
) -> None:
    with httpx.stream("POST", gw.url + CHAT, json=body("empty-stream", stream=True)) as r:
        raw = b"".join(r.iter_bytes())
        reply_id = r.headers["x-hitl-reply-id"]
    assert raw.endswith(b"data: [DONE]\n\n")
    status = rows(db, f"SELECT status FROM exchange WHERE id = '{reply_id}'")
    assert status == [("incomplete",)]
