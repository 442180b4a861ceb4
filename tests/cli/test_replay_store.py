"""``hitl replay`` into a real store leaves it honest: what the policy would have
escalated is kept as "replayed", never posted to Slack, never queued for reviewers, and
the report built from the store says which exchanges were replayed.

A real ``hitl replay`` process writes the SQLite file; then a real gateway over the same
file, with Slack pointed at the local stand-in, serves one live escalation.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import GatewayFactory
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "replay-admin-token"
#: every reply escalated, whatever its score: replay must keep every one of them apart
ESCALATE_ALL = {"escalate_below": 1.0, "review_budget": 1.0, "max_reviews_per_hour": 1000}
ROWS = 40


def write_stream(path: Path) -> None:
    with path.open("w") as out:
        for i in range(ROWS):
            row = {
                "id": f"s-{i}",
                "order": i,
                "question": f"question number {i}",
                "history": [],
                "reply": "maybe, I am not sure" if i % 2 else f"the answer is {i}",
                "label": 1 - i % 2,
                "meta": {"user": f"user-{i % 5}"},
            }
            out.write(json.dumps(row) + "\n")


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_replayed_escalations_are_kept_apart_from_the_review_work(
    tmp_path: Path, gateway_factory: GatewayFactory, standin: SlackStandin
) -> None:
    db = tmp_path / "hitl.db"
    stream = tmp_path / "stream.jsonl"
    write_stream(stream)
    config = tmp_path / "replay.toml"
    config.write_text(
        "[policy]\nescalate_below = 1.0\nreview_budget = 1.0\n"
        f'[slack]\nenabled = true\nchannel = "{CHANNEL}"\napi_url = "{standin.url}"\n'
    )
    subprocess.run(
        [
            *(sys.executable, "-m", "middleware.cli", "replay", str(stream)),
            *("--config", str(config), "--store", f"sqlite:///{db}", "--no-baseline", "--quiet"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SLACK_BOT_TOKEN": TOKEN},
        capture_output=True,
        timeout=240,
        check=True,
    )
    assert rows(db, "SELECT route, count(*) FROM exchange GROUP BY route") == [("replay", ROWS)]
    assert rows(db, "SELECT state, count(*) FROM escalation GROUP BY state") == [("replayed", ROWS)]
    assert standin.calls_to("chat.postMessage") == []

    gw = gateway_factory(
        environ={"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": "s", "HITL_ADMIN_TOKEN": ADMIN},
        policy=ESCALATE_ALL,
        slack={"enabled": True, "channel": CHANNEL, "api_url": standin.url},
    )
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "json", "messages": [{"role": "user", "content": "a live question"}]},
    )
    assert r.status_code == 200
    live = r.json()["hitl"]
    assert live["decision"] == "escalate"
    # The outbox takes due rows oldest first: had a replayed row been due, it would have
    # been posted before the live one. Only the live card reaches Slack.
    standin.wait_for("chat.postMessage", 1)
    posted = standin.calls_to("chat.postMessage")
    assert len(posted) == 1
    assert live["reply_id"] in json.dumps(posted[0].args)
    assert rows(db, "SELECT count(*) FROM escalation WHERE state = 'replayed'") == [(ROWS,)]

    admin = {"authorization": f"Bearer {ADMIN}"}
    queue = httpx.get(gw.url + "/review", headers=admin)
    assert queue.status_code == 200
    assert live["reply_id"] in queue.text
    replayed_ids = [i for (i,) in rows(db, "SELECT id FROM exchange WHERE route = 'replay'")]
    assert not [i for i in replayed_ids if i in queue.text]

    report = httpx.get(gw.url + "/report.json", headers=admin).json()
    assert report["exchanges"] == ROWS + 1
    assert report["replayed"] == ROWS
    assert report["reviews"]["replayed"] == ROWS
    # The live card is in the channel: one item waits, not forty-one.
    assert report["reviews"]["pending"] == 1
    buckets = report["timeline"]["buckets"]
    assert sum(b["escalated"] for b in buckets) == 1
    assert sum(b["replayed"] for b in buckets) == ROWS
    assert max(b["backlog"] for b in buckets) <= 1
    segments = {s["segment"]: s["exchanges"] for s in report["segments"]}
    assert segments["route=replay"] == ROWS and segments["route=chat"] == 1
    page = httpx.get(gw.url + "/report", headers=admin).text
    assert f"{ROWS} of these {ROWS + 1} exchanges were replayed" in page
    assert f"{ROWS} replayed, not sent" in page

    # A verdict on a replayed reply is refused (nobody waits for it; its label came with
    # the stream), through the review API and the terminal alike, and nothing is stored.
    labels = rows(db, "SELECT count(*) FROM label")
    replayed = replayed_ids[0]
    refused = httpx.post(
        f"{gw.url}/v1/reviews/{replayed}",
        headers=admin,
        json={"decision": "approve", "reviewer": "ann"},
    )
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "replayed"
    assert error["message"] == (
        f"reply {replayed!r} was replayed from a recorded stream (hitl replay), not served "
        "to anyone: nobody waits for its review, and its label came with the stream"
    )
    gw.stop()
    cli = subprocess.run(
        [
            *(sys.executable, "-m", "middleware.cli", "reviews", "decide", replayed, "approve"),
            *("--reviewer", "ann", "--config", str(config), "--store", f"sqlite:///{db}"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "was replayed from a recorded stream" in cli.stderr
    assert rows(db, "SELECT count(*) FROM label") == labels
    assert rows(db, f"SELECT state FROM escalation WHERE reply_id = '{replayed}'") == [
        ("replayed",)
    ]
