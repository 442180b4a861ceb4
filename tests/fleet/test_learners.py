"""A fleet on PostgreSQL, as real processes: serving processes on their own ports (two
hosts) or behind one port (``--workers``), and learners of which exactly one learns.

Each label reaches every serving process's model within 5 seconds of its commit; killing
the active learner (kill -9) hands the lead to another within seconds, and the model it
publishes has learned each stored label exactly once."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from feedback_store.leadership import LEARNER_LOCK
from tests.support.processes import clean_env, free_port
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


class Proc:
    """One ``hitl`` process, its output kept in a file."""

    def __init__(self, tmp: Path, name: str, *args: str, env: dict[str, str] | None = None):
        self.log = tmp / f"{name}.log"
        self.port: int | None = None
        if args and args[0] == "serve":
            self.port = free_port()
            args = (*args, "--port", str(self.port))
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "middleware.cli", *args, "--config", str(tmp / "c.toml")],
                cwd=tmp,
                env=clean_env(**(env or {})),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_output(self, needle: str, timeout: float = 30) -> None:
        if not wait_for(
            lambda: needle in self.output() or self.process.poll() is not None, timeout
        ):
            raise AssertionError(f"no {needle!r} in:\n{self.output()}")
        assert needle in self.output(), self.output()

    def wait_up(self, timeout: float = 60) -> None:
        def up() -> bool:
            assert self.process.poll() is None, self.output()
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(up, timeout), self.output()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


def write_config(tmp: Path, url: str, extra: str = "") -> None:
    (tmp / "c.toml").write_text(CONFIG.format(url=url, extra=extra))


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


def scalar(url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


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
    write_config(tmp_path, postgres_url)
    with processes() as procs, httpx.Client(timeout=10) as client:
        first = Proc(tmp_path, "learner-1", "learner")
        procs.append(first)
        first.wait_output("learner started: leading")
        second = Proc(tmp_path, "learner-2", "learner")
        procs.append(second)
        second.wait_output("learner started: standing by")
        gateways = []
        for name in ("host-a", "host-b"):
            gateway = Proc(tmp_path, name, "serve", "--no-learner")
            procs.append(gateway)
            gateways.append(gateway)
        for gateway in gateways:
            gateway.wait_up()
            assert model(gateway.url)["learner"] == "following"
        urls = [g.url for g in gateways]
        assert lock_holders(postgres_url) == 1

        votes_reach_every_model(client, urls, first=0, count=30, url=postgres_url)
        assert "took over" not in second.output()

        # The active learner dies without a word; the standby takes the lead.
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        second.wait_output("took over as the fleet's learner", timeout=15)
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
        write_config(tmp_path, postgres_url, extra)
        env = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": "0123456789abcdef0123456789abcdef"}
        with processes() as procs, httpx.Client(timeout=10) as client:
            fleet = Proc(tmp_path, "fleet", "serve", "--workers", "2", env=env)
            procs.append(fleet)
            # Once the port is announced, a client waits for a worker, never refused.
            fleet.wait_output("serving on http")
            early = httpx.get(fleet.url + "/healthz", timeout=60)
            assert early.status_code == 200, early.text
            fleet.wait_up()
            fleet.wait_output("learner started: leading")

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
