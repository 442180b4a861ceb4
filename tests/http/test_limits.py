"""Slow and huge requests: a stalled body gets a 408, every route caps its body while
reading it, and a large chat request is stored once."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from feedback_store import LabelRow
from middleware.learning.brain import Brain
from middleware.scoring.features import (
    QUESTION_CHARS,
    TEXT_KEYS,
    ExchangeView,
    features,
    without_text,
)
from tests.support.servers import ServerThread
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

ADMIN = "admin-token-for-limits-0123456789"
SIGNING = "signing-secret-for-limits-0123456789"
TIMEOUT_S = 1.0


@pytest.fixture
def gw(gateway_factory: Any, standin: SlackStandin) -> ServerThread:
    """Every body-reading route on, with small limits and a one-second body timeout."""
    server: ServerThread = gateway_factory(
        environ={
            "HITL_ADMIN_TOKEN": ADMIN,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING,
        },
        server={
            "body_timeout_s": TIMEOUT_S,
            "max_body_bytes": 1000,
            "max_feedback_bytes": 1000,
            "feedback_per_minute": 0,
        },
        slack={"enabled": True, "channel": CHANNEL, "api_url": standin.url},
    )
    return server


def slack_headers() -> dict[str, str]:
    return {
        "X-Slack-Request-Timestamp": str(int(time.time())),
        "X-Slack-Signature": "v0=" + "0" * 64,
    }


#: (route, extra headers, the route's body limit in the fixture's gateway)
ROUTES = [
    ("/v1/chat/completions", {}, 1000),
    ("/v1/embeddings", {}, 1000),  # the passthrough: /v1/* other than the gateway's own
    ("/v1/feedback", {}, 1000),
    ("/v1/reviews/hitl-nope", {"Authorization": f"Bearer {ADMIN}"}, 64 * 1024),
    ("/slack/events", "slack", 1024 * 1024),
]
ROUTE_IDS = ["chat", "passthrough", "feedback", "reviews", "slack"]


def head(path: str, extra: dict[str, str] | str, **headers: str) -> bytes:
    fields = {"Host": "gateway", "Content-Type": "application/json"}
    fields.update(slack_headers() if extra == "slack" else extra)  # type: ignore[arg-type]
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items()), "", ""]
    return "\r\n".join(lines).encode()


class Raw:
    """A raw HTTP/1.1 client on one socket: sends what it is told, when it is told."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sent_at = 0.0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent_at = self.sent_at or time.monotonic()

    def trickle(self, data: bytes, every_s: float, size: int = 1) -> None:
        """Send ``data`` ``size`` bytes at a time from a thread, until done or refused."""

        def run() -> None:
            for i in range(0, len(data), size):
                try:
                    self.sock.sendall(data[i : i + size])
                except OSError:
                    return
                time.sleep(every_s)

        threading.Thread(target=run, daemon=True).start()

    def response(self, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes, float, bool]:
        """(status, headers, body, seconds since the first byte sent, closed after it)."""
        self.sock.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before a response: {data!r}"
            data += chunk
        elapsed = time.monotonic() - self.sent_at
        top, _, body = data.partition(b"\r\n\r\n")
        status_line, *lines = top.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        while len(body) < int(headers.get("content-length", "0")):
            body += self.sock.recv(65536)
        closed = False
        try:
            self.sock.settimeout(2.0)
            closed = self.sock.recv(1) == b""
        except (TimeoutError, ConnectionResetError):
            closed = False
        return int(status_line.split()[1]), headers, body, elapsed, closed

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(gw: ServerThread) -> Iterator[Raw]:
    client = Raw(gw.port)
    yield client
    client.close()


def assert_408(status: int, headers: dict[str, str], body: bytes, elapsed: float) -> None:
    assert status == 408, body
    assert elapsed < TIMEOUT_S + 1, f"answered after {elapsed:.2f}s"
    error = json.loads(body)["error"]
    assert error["code"] == "body_timeout"
    assert error["type"] == "invalid_request_error"
    assert "body_timeout_s" in error["message"]
    assert headers["connection"] == "close"


# -- stalled and trickled bodies ---------------------------------------------------------------


@pytest.mark.parametrize(("path", "extra", "limit"), ROUTES, ids=ROUTE_IDS)
def test_a_body_that_stalls_halfway_gets_408(
    raw: Raw, path: str, extra: dict[str, str] | str, limit: int
) -> None:
    body = b'{"model": "json", "messages": [{"role": "user", "content": "hello there"}]}'
    raw.send(head(path, extra, Content_Length=str(len(body))) + body[: len(body) // 2])
    status, headers, answer, elapsed, closed = raw.response()
    assert_408(status, headers, answer, elapsed)
    assert closed, "the connection stays open for the rest of a body nobody reads"


def test_a_chunked_body_that_stalls_gets_408(raw: Raw) -> None:
    raw.send(
        head("/v1/chat/completions", {}, Transfer_Encoding="chunked")
        + b'10\r\n{"model": "json"\r\n'
    )
    assert_408(*raw.response()[:4])


def test_a_body_trickled_a_byte_at_a_time_is_cut_off(raw: Raw) -> None:
    """Each byte arrives well within the timeout; the whole body does not."""
    body = b'{"model": "json", "messages": [{"role": "user", "content": "slowly"}]}'
    raw.send(head("/v1/chat/completions", {}, Content_Length=str(len(body))))
    raw.trickle(body, every_s=0.1)
    assert_408(*raw.response()[:4])


def test_the_deadline_is_for_the_body_only(gateway_factory: Any) -> None:
    """An upstream slower than body_timeout_s is not cut off (it has the upstream's
    timeout), nor is a stream that lasts longer."""
    gw = gateway_factory(server={"body_timeout_s": 0.5}, upstream={"timeout_s": 10})
    messages = [{"role": "user", "content": "take your time"}]
    r = httpx.post(
        gw.url + "/v1/chat/completions", json={"model": "slow", "messages": messages}, timeout=20
    )
    assert r.status_code == 200, r.text
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={"model": "slow", "messages": messages, "stream": True},
        timeout=20,
    ) as streamed:
        assert streamed.status_code == 200
        assert "data: [DONE]" in "".join(streamed.iter_text())


def test_a_body_that_arrives_in_time_is_read(gw: ServerThread) -> None:
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 200, r.text


# -- size limits, on every route -----------------------------------------------------------------


@pytest.mark.parametrize(("path", "extra", "limit"), ROUTES, ids=ROUTE_IDS)
def test_a_declared_body_over_the_route_limit_is_413(
    raw: Raw, path: str, extra: dict[str, str] | str, limit: int
) -> None:
    raw.send(head(path, extra, Content_Length=str(limit + 1)))
    status, _, body, _, _ = raw.response()
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "body_too_large"


@pytest.mark.parametrize(("path", "extra", "limit"), ROUTES, ids=ROUTE_IDS)
def test_a_chunked_body_over_the_route_limit_is_413_while_it_is_read(
    raw: Raw, path: str, extra: dict[str, str] | str, limit: int
) -> None:
    """No length up front: the route counts while reading and stops at its limit, long
    before the client is done sending (it would send 8 times the limit)."""
    chunk = b"x" * 4096
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    raw.send(head(path, extra, Transfer_Encoding="chunked"))
    raw.trickle(framed * (8 * limit // len(chunk) + 1), every_s=0, size=len(framed))
    status, _, body, _, _ = raw.response()
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "body_too_large"


def test_a_body_at_the_route_limit_is_read(gw: ServerThread) -> None:
    padding = "x" * 900
    body = json.dumps({"model": "json", "messages": [{"role": "user", "content": padding}]})
    body += " " * (1000 - len(body))
    r = httpx.post(
        gw.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200, r.text


# -- a large request is stored once -------------------------------------------------------------


def store_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def test_a_large_chat_request_is_stored_once(gateway_factory: Any, tmp_path: Path) -> None:
    """A ~10 MiB question grows the SQLite file by about its own size (before: 3.0x, the
    request, the question and the features each holding the whole text)."""
    gw = gateway_factory()
    db = tmp_path / "hitl.db"
    small = {"model": "reply:fine", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(gw.url + "/v1/chat/completions", json=small).status_code == 200
    gw.stop()
    before = store_bytes(db)

    gw = gateway_factory()
    question = ("lorem ipsum dolor sit amet consectetur " * 300_000)[: 10 * 1024 * 1024]
    big = {
        "model": "reply:fine",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": question},
        ],
        "metadata": {"locale": "en", "huge": "y" * 100_000},
    }
    body = orjson.dumps(big)
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    reply_id = r.json()["hitl"]["reply_id"]
    gw.stop()  # the WAL is checkpointed into the file and removed
    growth = store_bytes(db) - before
    assert growth < 1.3 * len(body), f"{growth} bytes stored for a {len(body)}-byte request"

    with sqlite3.connect(db) as conn:
        request_json, stored_question, features_json, meta_json = conn.execute(
            "SELECT request_json, question, features_json, meta_json FROM exchange WHERE id = ?",
            (reply_id,),
        ).fetchone()
    assert orjson.loads(request_json) == big  # the whole request, once
    assert stored_question == question[:QUESTION_CHARS]
    stored_features = orjson.loads(features_json)
    assert not set(TEXT_KEYS) & set(stored_features)
    assert len(features_json) < 4096
    assert orjson.loads(meta_json) == {"locale": "en", "huge": "y" * 512}


def test_the_learner_learns_the_texts_from_their_columns() -> None:
    """A label whose features were stored ``without_text`` teaches the model exactly what
    one whose features carried the texts (rows stored before this change) does."""
    views = [
        ExchangeView(question=f"question {i}", reply=reply)
        for i, reply in enumerate(
            ["I'm not sure, maybe.", "Open Settings, then Billing.", "I think it could be."] * 5
        )
    ]
    with_text, from_columns = Brain(rolling_window=50), Brain(rolling_window=50)
    for i, view in enumerate(views):
        x = features(view)
        common: dict[str, Any] = {
            "id": i + 1,
            "reply_id": f"r{i}",
            "source": "user",
            "value": int("Open" in view.reply),
            "weight": 1.0,
            "created_at": float(i),
            "confidence": 0.5,
            "end_user": None,
        }
        with_text.learn_label(LabelRow(**common, features_json=orjson.dumps(x).decode()))
        from_columns.learn_label(
            LabelRow(
                **common,
                features_json=orjson.dumps(without_text(x)).decode(),
                reply_text=view.reply,
                question=view.question,
            )
        )
    probe = features(ExchangeView(question="and now?", reply="Open Billing, then Settings."))
    assert with_text.predict(probe) == pytest.approx(from_columns.predict(probe))
    assert with_text.predict(probe) != pytest.approx(Brain(rolling_window=50).predict(probe) or 0.5)
