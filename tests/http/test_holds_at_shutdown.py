"""A held client at shutdown: it waits through ``[server] shutdown_grace_s`` (another
process may still decide), then gets the fallback. Never the original, never a cut
connection or a bare 500 when the server gives up on it.

A real ``hitl serve`` (one process on SQLite, and two workers on PostgreSQL), SIGTERM,
and a real ``hitl reviews decide`` process on the same store as the reviewer who decides
during the grace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy

from tests.support.fleet import clean_env, start_serve
from tests.support.waiting import wait_for

FALLBACK = "A person is checking this; please try again later."


def config(url: str) -> str:
    return f"""
[server]
shutdown_grace_s = 12
[upstream]
kind = "local"
[store]
url = "{url}"
[policy]
hold_below = 1.0
escalate_below = 1.0
hold_timeout_s = 120
hold_poll_s = 0.2
hold_fallback = "{FALLBACK}"
"""


def held_request(port: int, question: str, *, stream: bool, into: dict[str, Any]) -> None:
    """Ask as a client on a risky route, and keep what came back (or what went wrong)."""
    body = {"model": "local", "stream": stream, "messages": [{"role": "user", "content": question}]}
    try:
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=body,
            headers={"x-hitl-risk": "high"},
            timeout=60,
        )
        into[question] = (r.status_code, r.text)
    except httpx.HTTPError as exc:
        into[question] = (None, repr(exc))


def streamed(text: str) -> tuple[str, dict[str, Any]]:
    """The text a stream carried, and its last chunk's ``hitl``."""
    events = [b[len("data: ") :] for b in text.split("\n\n") if b.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")
    )
    return content, chunks[-1]["hitl"]


def escalations(url: str) -> dict[str, tuple[Any, ...]]:
    """question -> (reply id, review state, what the hold released, timed out)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sqlalchemy.text(
                    "SELECT x.question, e.reply_id, e.state, e.released, e.timed_out "
                    "FROM escalation e JOIN exchange x ON x.id = e.reply_id"
                )
            ).fetchall()
    finally:
        engine.dispose()
    return {question: tuple(rest) for question, *rest in found}


@pytest.mark.parametrize(("kind", "workers"), [("sqlite", 1), ("postgres", 2)])
def test_held_clients_wait_through_the_grace_then_get_the_fallback(
    kind: str, workers: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'hitl.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    gateway = start_serve(tmp_path, config(url), workers=workers)
    answers: dict[str, Any] = {}
    clients = [
        threading.Thread(target=held_request, args=(gateway.port, q), kwargs=kw)
        for q, kw in (
            ("approved during the grace?", {"stream": False, "into": answers}),
            ("nobody decides this one?", {"stream": True, "into": answers}),
        )
    ]
    try:
        for client in clients:
            client.start()
        wait_for(lambda: len(escalations(url)) == 2, timeout=20)
        gateway.process.send_signal(signal.SIGTERM)
        # Another process decides one of them while this one drains.
        approved_id = escalations(url)["approved during the grace?"][0]
        decided = subprocess.run(
            [
                *(sys.executable, "-m", "middleware.cli", "reviews", "decide", approved_id),
                *("approve", "--reviewer", "ann", "--config", str(tmp_path / "config.toml")),
            ],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert decided.returncode == 0, decided.stdout + decided.stderr
        for client in clients:
            client.join(timeout=60)
        assert gateway.process.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        gateway.stop()

    status, text = answers["approved during the grace?"]
    assert status == 200, text
    reply = json.loads(text)
    assert reply["hitl"]["released"] == "original"
    assert reply["choices"][0]["message"]["content"] != FALLBACK

    status, text = answers["nobody decides this one?"]
    assert status == 200, text  # not a cut connection
    content, hitl = streamed(text)
    assert content == FALLBACK
    assert hitl["released"] == "fallback" and hitl["timed_out"] is True

    rows = escalations(url)
    assert rows["approved during the grace?"][1:3] == ("approved", "original")
    assert rows["nobody decides this one?"][1:] == ("pending", "fallback", True)
