"""A fleet on PostgreSQL, as real processes: serving processes on their own ports (two
hosts) or behind one port (``--workers``), and learners of which exactly one learns.

Each label reaches every serving process's model within 5 seconds of its commit; killing
the active learner (kill -9) hands the lead to another within seconds, and the model it
publishes has learned each stored label exactly once."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from feedback_store.leadership import LEARNER_LOCK
from tests.support.fleet import (
    LearnerProcess,
    ServeProcess,
    query,
    serving,
    start_learner,
    start_serve,
)
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin
from tests.support.waiting import wait_for

CONFIG = """
[upstream]
kind = "local"
[store]
url = "{url}"
[server]
feedback_per_minute = 0
[learner]
# Snapshots for restarts as rare as they go: publishing to the fleet does not wait on them.
snapshot_every_labels = 100000
snapshot_interval_s = 3600
{extra}
"""


def config(url: str, extra: str = "") -> str:
    return CONFIG.format(url=url, extra=extra)


def wait_output(process: LearnerProcess | ServeProcess, needle: str, timeout: float = 30) -> None:
    if not wait_for(lambda: needle in process.output(), timeout):
        raise AssertionError(f"no {needle!r} in:\n{process.output()}")


def scalar(url: str, sql: str, **params: Any) -> Any:
    """The first column of the first row, or None when there is no row."""
    rows = query(url, sql, **params)
    return rows[0][0] if rows else None


def reply(client: httpx.Client, base: str, text_: str) -> dict[str, Any]:
    r = client.post(
        base + "/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": text_}]},
    )
    assert r.status_code == 200, r.text
    return dict(r.json()["hitl"])


def vote(client: httpx.Client, base: str, hitl: dict[str, Any], rating: str) -> None:
    r = client.post(
        base + "/v1/feedback",
        json={"reply_id": hitl["reply_id"], "token": hitl["feedback_token"], "rating": rating},
    )
    assert r.status_code == 201, r.text  # the first vote on a reply


def model(base: str) -> dict[str, Any]:
    return dict(httpx.get(base + "/healthz", timeout=5).json()["model"])


def lock_holders(url: str) -> int:
    return int(
        scalar(
            url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :high AND objid = :low "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            high=LEARNER_LOCK >> 32,
            low=LEARNER_LOCK & 0xFFFFFFFF,
        )
    )


def votes_reach_every_model(
    client: httpx.Client, gateways: list[str], *, first: int, count: int, url: str
) -> float:
    """``count`` replies and votes spread over ``gateways``; the seconds from the last
    vote's 2xx until every gateway serves a model that learned every stored label."""
    for i in range(first, first + count):
        made = reply(client, gateways[i % len(gateways)], f"question number {i}")
        vote(client, gateways[(i + 1) % len(gateways)], made, "down" if i % 3 else "up")
    voted = time.monotonic()
    labels = int(scalar(url, "SELECT count(*) FROM label"))
    assert labels == first + count

    def everywhere() -> bool:
        return all(model(g)["labels"] == labels for g in gateways)

    assert wait_for(everywhere, timeout=5.0), [model(g) for g in gateways]
    return time.monotonic() - voted


def test_two_hosts_and_two_learners_one_learns_and_a_kill_hands_over(
    tmp_path: Path, postgres_url: str
) -> None:
    text_ = config(postgres_url)
    with contextlib.ExitStack() as stack, httpx.Client(timeout=10) as client:
        first = start_learner(tmp_path, text_)
        stack.callback(first.stop)
        wait_output(first, "learner started: leading")
        second = start_learner(tmp_path, text_)
        stack.callback(second.stop)
        wait_output(second, "learner started: standing by")
        gateways = [stack.enter_context(serving(tmp_path, text_, learner=False)) for _ in "ab"]
        for gateway in gateways:
            assert model(gateway.url)["learner"] == "following"
        urls = [g.url for g in gateways]
        assert lock_holders(postgres_url) == 1

        votes_reach_every_model(client, urls, first=0, count=30, url=postgres_url)
        assert "took over" not in second.output()

        # The active learner dies without a word; the standby takes the lead.
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        wait_output(second, "took over as the fleet's learner", timeout=15)
        assert lock_holders(postgres_url) == 1

        votes_reach_every_model(client, urls, first=30, count=20, url=postgres_url)
        # Each stored label learned exactly once: the published model's count is the
        # number of labels up to the newest one it learned.
        newest = scalar(postgres_url, "SELECT max(id) FROM modelsnapshot")
        learned = scalar(postgres_url, "SELECT labels FROM modelsnapshot WHERE id = :i", i=newest)
        upto = scalar(
            postgres_url,
            "SELECT last_label_id FROM modelsnapshot WHERE id = :i",
            i=newest,
        )
        assert learned == scalar(postgres_url, "SELECT count(*) FROM label WHERE id <= :u", u=upto)
        assert learned == 50


def test_workers_behind_one_port_with_their_learner(tmp_path: Path, postgres_url: str) -> None:
    with SlackStandin() as slack:
        extra = f"""
[policy]
prior = 0.1
review_budget = 1.0
max_reviews_per_hour = 4
[slack]
enabled = true
channel = "{CHANNEL}"
api_url = "{slack.url}"
"""
        env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": "0123456789abcdef0123456789abcdef"}
        with contextlib.ExitStack() as stack, httpx.Client(timeout=10) as client:
            fleet = start_serve(
                tmp_path, config(postgres_url, extra), workers=2, env=env, wait=False
            )
            stack.callback(fleet.stop)
            # Once the port is announced, a client waits for a worker, never refused.
            wait_output(fleet, "serving on http")
            early = httpx.get(fleet.url + "/healthz", timeout=60)
            assert early.status_code == 200, early.text
            fleet.wait_ready()
            wait_output(fleet, "learner started: leading")

            # Both workers answer on the one port, each a process of its own.
            pids: set[int] = set()

            def both_seen() -> bool:
                with httpx.Client(timeout=5) as fresh:  # a new connection each time
                    pids.add(int(fresh.get(fleet.url + "/healthz").json()["process"]["pid"]))
                return len(pids) == 2

            assert wait_for(both_seen, timeout=20), pids
            assert lock_holders(postgres_url) == 1

            # Every reply is a review candidate (prior 0.1); the fleet may post 4 an hour.
            made = [reply(client, fleet.url, f"please check number {i}") for i in range(12)]
            for i, hitl in enumerate(made):
                vote(client, fleet.url, hitl, "down" if i % 2 else "up")
            # Every worker serves a model that learned all 12 labels, within 5 seconds.
            seen: dict[int, int] = {}

            def all_learned() -> bool:
                with httpx.Client(timeout=5) as fresh:  # a new connection: any worker
                    health = fresh.get(fleet.url + "/healthz").json()
                seen[int(health["process"]["pid"])] = int(health["model"]["labels"])
                return len(seen) == 2 and set(seen.values()) == {12}

            assert wait_for(all_learned, timeout=5.0), seen

            # An escalation is committed with its reply: the count is final now.
            assert scalar(postgres_url, "SELECT count(*) FROM escalation") == 4
            posts = slack.wait_for("chat.postMessage", count=4, timeout=15)
            time.sleep(1.0)  # any second post of a card would come now
            posts = slack.calls_to("chat.postMessage")
            posted = [
                str(call.args.get("text", "")) + str(call.args.get("metadata", ""))
                for call in posts
            ]
            assert len(posts) == 4, posted
