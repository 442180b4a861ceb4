"""The learning loop through the HTTP API: votes teach the model within seconds,
kill -9 loses nothing, re-votes are stored but learned once, replay reports figures."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .servers import ServerThread

HEDGES = [
    "I'm not sure, maybe it could be {w}, I think.",
    "I don't know, perhaps {w}? Hard to say.",
    "Maybe {w}, but I am not sure about that.",
    "I guess it might be {w}, possibly.",
]
PLAIN = [
    "The answer is {w}.",
    "{w} is configured in config.toml.",
    "Set {w} and restart the gateway.",
    "Use {w}; it is documented in the README.",
]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def hedging(i: int) -> str:
    return HEDGES[i % len(HEDGES)].format(w=WORDS[i % len(WORDS)])


def plain(i: int) -> str:
    return PLAIN[i % len(PLAIN)].format(w=WORDS[i % len(WORDS)])


def ask(url: str, reply: str, user: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "reply:" + reply,
        "messages": [{"role": "user", "content": "question about the gateway"}],
    }
    if user:
        body["user"] = user
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    hitl: dict[str, Any] = r.json()["hitl"]
    return hitl


def vote(url: str, hitl: dict[str, Any], rating: str) -> httpx.Response:
    return httpx.post(
        url + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": rating},
        timeout=10,
    )


def teach(url: str, n: int = 40) -> None:
    for i in range(n):
        assert vote(url, ask(url, hedging(i)), "down").status_code == 201
        assert vote(url, ask(url, plain(i)), "up").status_code == 201


def gap(url: str) -> float:
    """How much lower a new hedging reply scores than a new plain one."""
    return (
        ask(url, "Perhaps omega, I'm not sure.")["confidence"]
        - ask(url, "Omega is the answer.")["confidence"]
    )


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_votes_teach_the_model_within_seconds(gateway_factory: Any) -> None:
    gw: ServerThread = gateway_factory(server={"feedback_per_minute": 0})
    learner = gw.config.app.state.gateway.learner  # type: ignore[attr-defined]
    before = gap(gw.url)
    assert before == 0.0  # untrained: both get the prior
    teach(gw.url)
    assert wait_for(lambda: learner.brain.labels >= 80, timeout=5.0), "labels not learned in 5 s"
    assert gap(gw.url) <= -0.15


def test_revote_is_stored_but_learned_once(gateway_factory: Any, tmp_path: Path) -> None:
    gw: ServerThread = gateway_factory()
    learner = gw.config.app.state.gateway.learner  # type: ignore[attr-defined]
    hitl = ask(gw.url, plain(1))
    assert vote(gw.url, hitl, "up").status_code == 201
    assert wait_for(lambda: learner.brain.labels == 1)
    changed = vote(gw.url, hitl, "down")
    assert changed.status_code == 200
    assert changed.json()["status"] == "updated"
    time.sleep(0.3)
    assert learner.brain.labels == 1
    db = sqlite3.connect(tmp_path / "hitl.db")
    assert db.execute("SELECT rating, changes FROM feedback").fetchall() == [("down", 1)]
    assert db.execute("SELECT source, value FROM label").fetchall() == [("user", 1)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(config: Path, port: int, cwd: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    log = cwd / "serve.log"
    with log.open("ab") as stderr:
        command = ["serve", "--config", str(config), "--port", str(port)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "middleware.cli", *command],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    assert wait_for(ready, timeout=30.0)
    assert proc.poll() is None, log.read_text()
    return proc


def test_kill_9_loses_no_learning(tmp_path: Path, upstream_server: ServerThread) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[server]
feedback_per_minute = 0
[upstream]
kind = "openai"
base_url = "{upstream_server.url}/v1"
[store]
url = "sqlite:///{tmp_path / "hitl.db"}"
[learner]
snapshot_every_labels = 50
"""
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(config, port, tmp_path)
    try:
        teach(url)
        assert wait_for(lambda: gap(url) <= -0.15, timeout=10.0)
        probes = [hedging(99), plain(99), "Something else entirely."]
        before = [ask(url, p)["confidence"] for p in probes]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    proc = _serve(config, port, tmp_path)
    try:
        after = [ask(url, p)["confidence"] for p in probes]
        assert after == before
        assert gap(url) <= -0.15
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def _write_stream(path: Path, rows: list[tuple[str, int]], user: str = "u1") -> None:
    with path.open("w") as out:
        for i, (reply, label) in enumerate(rows):
            out.write(
                json.dumps(
                    {
                        "id": f"t-{i}",
                        "order": i,
                        "question": "what is it?",
                        "history": [{"role": "user", "text": "hello"}],
                        "reply": reply,
                        "label": label,
                        "meta": {"user": f"{user}-{i % 7}"},
                    }
                )
                + "\n"
            )


def _replay(*args: str, cwd: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "middleware.cli", "replay", *args, "--json", "--quiet"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_replay_json_has_every_key(tmp_path: Path) -> None:
    rows = [(hedging(i), 0) if i % 2 else (plain(i), 1) for i in range(200)]
    stream = tmp_path / "stream.jsonl"
    _write_stream(stream, rows)
    result = _replay(str(stream), cwd=tmp_path)
    assert set(result) == {
        "labels",
        "roc_auc",
        "log_loss",
        "accuracy",
        "caught_at_budget",
        "escalated_share",
        "baseline",
        "labels_per_second",
    }
    assert result["labels"] == 200
    assert result["roc_auc"] > 0.9  # the pattern is trivially learnable
    assert 0 < result["log_loss"] < 0.7
    assert 0.5 < result["accuracy"] <= 1
    for budget in ("0.1", "0.2", "0.3"):
        assert 0 <= result["escalated_share"][budget] <= float(budget) + 0.01
        assert 0 <= result["caught_at_budget"][budget] <= 1
    assert result["caught_at_budget"]["0.3"] > result["caught_at_budget"]["0.1"]
    assert set(result["baseline"]) == {"roc_auc", "caught_at_budget"}
    assert result["labels_per_second"] > 0


def test_shifted_stream_records_drift_and_outliers(tmp_path: Path) -> None:
    # First the hedging replies are the bad ones; then users turn around. Last, replies
    # become huge and strange: outliers for the numeric-feature detector.
    rows = [(hedging(i), 0) if i % 2 else (plain(i), 1) for i in range(400)]
    rows += [(hedging(i), 1) if i % 2 else (plain(i), 0) for i in range(400)]
    rows += [(" ".join(["zzz?!"] * 400), i % 2) for i in range(30)]
    stream = tmp_path / "shift.jsonl"
    _write_stream(stream, rows)
    db = tmp_path / "shift.db"
    _replay(str(stream), "--store", f"sqlite:///{db}", "--no-baseline", cwd=tmp_path)
    con = sqlite3.connect(db)
    drifts = [
        json.loads(d) for (d,) in con.execute("SELECT data_json FROM event WHERE kind = 'drift'")
    ]
    assert drifts, "no drift event recorded after the labels turned around"
    assert any(d["error_after"] > d["error_before"] for d in drifts)
    assert all(d["labels"] >= 400 for d in drifts)
    flagged = con.execute("SELECT count(*) FROM exchange WHERE outlier").fetchone()[0]
    assert flagged >= 1
    late = con.execute(
        "SELECT count(*) FROM exchange WHERE outlier AND length(reply_text) > 1000"
    ).fetchone()[0]
    assert late >= 1


@pytest.mark.parametrize("rows", [0, 5])
def test_replay_of_tiny_streams(tmp_path: Path, rows: int) -> None:
    stream = tmp_path / "tiny.jsonl"
    _write_stream(stream, [(plain(i), i % 2) for i in range(rows)])
    result = _replay(str(stream), cwd=tmp_path)
    assert result["labels"] == rows
