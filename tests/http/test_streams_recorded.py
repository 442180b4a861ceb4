"""Every reply a user has seen is recorded: a stream the client leaves, a stream ended by
shutdown, and a store that is down before a stream starts."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import private_postgres
from tests.support.fleet import start_serve
from tests.support.processes import free_port
from tests.support.servers import ServerThread
from tests.support.waiting import wait_for

WORDS = " ".join(f"word{i}" for i in range(40))


def serve(tmp_path: Path, upstream: ServerThread, *, grace_s: float) -> tuple[int, Any]:
    """A real ``hitl serve`` process over the upstream stand-in and a SQLite file."""
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[server]
shutdown_grace_s = {grace_s}
[upstream]
kind = "openai"
base_url = "{upstream.url}/v1"
[store]
url = "sqlite:///{tmp_path / "hitl.db"}"
"""
    )
    port = free_port()
    return port, start_serve(tmp_path, config.read_text(), port=port).process


def exchange_rows(db: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, reply_text, stream FROM exchange").fetchall()


def test_a_stream_the_client_leaves_is_recorded_as_incomplete(
    gateway_factory: Any, tmp_path: Path
) -> None:
    gw: ServerThread = gateway_factory()
    body = {"model": "trickle", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    seen = b""
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=10) as r:
        for piece in r.iter_raw():
            seen += piece
            if seen.count(b"word") >= 3:
                break  # the client goes away mid-stream
    rows = wait_for(lambda: exchange_rows(tmp_path / "hitl.db"), timeout=10)
    assert rows, "a stream the client left was not recorded"
    status, text, stream = rows[0]
    assert status == "incomplete" and stream == 1
    # What was sent is on record: a prefix of the reply, at least what the client read.
    assert text.startswith("reply: word0 word1")
    assert len(text) < len("reply: " + WORDS)


def test_sigterm_lets_streams_finish_then_ends_the_rest_cleanly(
    tmp_path: Path, upstream_server: ServerThread
) -> None:
    port, proc = serve(tmp_path, upstream_server, grace_s=1)
    body = {"model": "trickle", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    received = b""
    signalled = False
    try:
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=20
        ) as r:
            for piece in r.iter_raw():
                received += piece
                if b"word1" in received and not signalled:
                    proc.send_signal(signal.SIGTERM)
                    signalled = True
        started = time.monotonic()
        # uvicorn re-raises the signal it handled once it has shut down.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    events = [
        block[len("data: ") :]
        for block in received.decode().split("\n\n")
        if block.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert final["hitl"]["incomplete"] is True
    [(status, text, _)] = exchange_rows(tmp_path / "hitl.db")
    assert status == "incomplete"
    assert text.startswith("reply: word0 word1") and len(text) < len("reply: " + WORDS)


def test_a_new_connection_is_refused_while_shutting_down(
    tmp_path: Path, upstream_server: ServerThread
) -> None:
    port, proc = serve(tmp_path, upstream_server, grace_s=3)
    body = {"model": "trickle", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
    try:
        with httpx.stream(
            "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=20
        ) as r:
            for piece in r.iter_raw():
                if b"word0" in piece:
                    break
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # The listening socket is closed: nobody new is accepted.
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
                pass
    finally:
        proc.wait(timeout=20)


reason = private_postgres.unavailable()


@pytest.mark.postgres
@pytest.mark.skipif(reason is not None, reason=reason or "")
def test_while_the_store_is_down_a_stream_gets_503_before_any_content(
    gateway_factory: Any,
) -> None:
    cluster = private_postgres.PrivateCluster()
    cluster.start()
    try:
        gw: ServerThread = gateway_factory(store={"url": cluster.url})
        body = {"model": "json", "messages": [{"role": "user", "content": "hello"}]}
        assert httpx.post(gw.url + "/v1/chat/completions", json=body).status_code == 200
        cluster.stop()
        for stream in (True, False):
            r = httpx.post(
                gw.url + "/v1/chat/completions", json={**body, "stream": stream}, timeout=20
            )
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["code"] == "store_unavailable"
            assert "hello" not in r.text
        cluster.start()
        ok = wait_for(
            lambda: (
                httpx.post(
                    gw.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=20
                ).status_code
                == 200
            ),
            timeout=20,
        )
        assert ok, "the gateway did not recover when the store came back"
        gw.stop()
    finally:
        cluster.remove()
