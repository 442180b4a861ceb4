"""``kill -9`` a serving process during a burst of votes at concurrency 32: every vote
that got a 2xx is in the store (a vote's 2xx is sent only after its commit).

Real processes, loopback only. Each reply gets its votes one after the other, each with
a comment naming it, so the stored row says which vote won: the last acknowledged one,
or one sent after it whose answer the kill cut off (``fleet.vote_problems``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support import fleet
from tests.support.waiting import wait_for

REPLIES = 1000
VOTES_PER_REPLY = 5
TOTAL = REPLIES * VOTES_PER_REPLY
#: the kill comes once this many votes were acknowledged: mid-burst
KILL_AFTER = TOTAL // 3


def config(store_url: str) -> str:
    return f"""
[server]
feedback_per_minute = 0   # one client sends the whole burst

[upstream]
kind = "local"

[policy]
review_downvotes = false  # the comments are tags, not complaints

[store]
url = "{store_url}"
"""


def assert_every_acknowledged_vote_is_stored(
    burst: fleet.VoteBurst, store_url: str, gateway_log: str
) -> None:
    outcomes = burst.outcomes
    acked = sum(o.acknowledged for o in outcomes)
    lost = sum(o.status is None for o in outcomes)
    print(f"{len(outcomes)} votes sent, {acked} acknowledged, {lost} without an answer")
    assert burst.unfinished == 0, f"{burst.unfinished} replies still had votes at the deadline"
    statuses = {o.status for o in outcomes if o.status is not None}
    assert statuses <= {200, 201}, f"answers other than 200/201: {statuses}\n{gateway_log[-3000:]}"
    assert fleet.vote_problems(outcomes, fleet.stored_votes(store_url)) == []
    # A first vote appends its label in the same transaction: one per stored vote.
    labels = fleet.labels_per_reply(store_url)
    voted = set(fleet.stored_votes(store_url))
    assert set(labels) == voted
    assert set(labels.values()) == {1}


@pytest.mark.slow
def test_sqlite_a_killed_gateway_loses_no_acknowledged_vote(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'hitl.db'}"
    gateways = [fleet.start_serve(tmp_path, config(store_url))]
    times: dict[str, float] = {}
    try:
        first = gateways[0]
        replies = asyncio.run(fleet.make_replies(first.url, REPLIES))
        burst = fleet.VoteBurst(first.url, replies, votes_per_reply=VOTES_PER_REPLY)

        async def kill_and_start_again() -> None:
            await burst.acknowledged_at_least(KILL_AFTER)
            times["killed"] = time.monotonic()
            first.kill()
            assert first.process.returncode == -9
            # The same file, the same port: the burst's clients find it again.
            again = await asyncio.to_thread(
                fleet.start_serve, tmp_path, config(store_url), port=first.port
            )
            gateways.append(again)
            times["restarted"] = time.monotonic()

        asyncio.run(burst.run(kill_and_start_again()))
        assert len(gateways) == 2, "the gateway was not started again"
        again = gateways[1]
        failed = [o for o in burst.outcomes if o.status is None]
        # The kill cut votes off, and only the kill did.
        assert failed, "no vote lost its answer: the kill did not happen mid-burst"
        assert all(o.sent_at < times["restarted"] for o in failed), failed
        assert any(o.acknowledged and o.sent_at > times["restarted"] for o in burst.outcomes)
        assert_every_acknowledged_vote_is_stored(burst, store_url, again.output())
        # Nothing learned was lost either: the restarted process learned every label.
        (labels,) = fleet.query(store_url, "SELECT count(*) FROM label")[0]
        learned = wait_for(lambda: fleet.labels_learned(again.url) == labels, timeout=15)
        assert learned, (fleet.healthz(again.url), labels)
    finally:
        for gateway in gateways:
            gateway.stop()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_a_killed_worker_loses_no_acknowledged_vote(
    tmp_path: Path, postgres_url: str
) -> None:
    with fleet.serving(tmp_path, config(postgres_url), workers=2) as gateway:
        before = gateway.serving_pids()
        replies = asyncio.run(fleet.make_replies(gateway.url, REPLIES))
        burst = fleet.VoteBurst(gateway.url, replies, votes_per_reply=VOTES_PER_REPLY)
        killed: dict[str, float] = {}

        async def kill_a_busy_worker() -> None:
            await burst.acknowledged_at_least(KILL_AFTER)
            pids = gateway.serving_pids()
            assert len(pids) == 2, pids
            victim = max(pids, key=gateway.connections)
            assert gateway.connections(victim) > 0, "no worker holds a connection of the burst"
            gateway.kill(victim)
            killed["pid"], killed["at"] = victim, time.monotonic()

        asyncio.run(burst.run(kill_a_busy_worker()))
        assert "at" in killed, "no worker was killed"
        failed = [o for o in burst.outcomes if o.status is None]
        assert failed, "no vote lost its answer: the kill did not happen mid-burst"
        # Around the kill (sent before it, or just after on a connection it broke).
        assert all(o.sent_at < killed["at"] + 5 for o in failed), failed
        # The other worker kept answering.
        after = [o for o in burst.outcomes if o.acknowledged and o.sent_at > killed["at"]]
        assert len(after) > 100, f"only {len(after)} votes acknowledged after the kill"
        assert_every_acknowledged_vote_is_stored(burst, postgres_url, gateway.output())
        # uvicorn's supervisor started a worker in the dead one's place.
        gateway.wait_ready(started=3, timeout=30)
        now = gateway.serving_pids()
        assert killed["pid"] not in now and len(now) == 2, (before, killed, now)


def outcome(index: int, status: int | None, reply: str = "r") -> fleet.VoteOutcome:
    rating = "up" if index % 2 == 0 else "down"
    return fleet.VoteOutcome(reply, index, rating, f"{reply}/{index}", 0.0, 0.0, status)


def stored(index: int, reply: str = "r") -> dict[str, list[fleet.StoredVote]]:
    return {reply: [fleet.StoredVote("up" if index % 2 == 0 else "down", f"{reply}/{index}")]}


@pytest.mark.parametrize(
    ("sent", "store", "problems"),
    [
        ([outcome(0, 201), outcome(1, 200)], stored(1), 0),
        # The answer to the last vote was lost: it may or may not have been committed.
        ([outcome(0, 201), outcome(1, None)], stored(0), 0),
        ([outcome(0, 201), outcome(1, None)], stored(1), 0),
        ([outcome(0, None)], {}, 0),
        # An acknowledged vote missing, or overwritten by an older one.
        ([outcome(0, 201)], {}, 1),
        ([outcome(0, 201), outcome(1, 200)], stored(0), 1),
        ([outcome(0, 201), outcome(1, 200), outcome(2, None)], stored(0), 1),
        # A first vote that was not a 201, a stored rating not the one sent, a stray row.
        ([outcome(0, 200)], stored(0), 1),
        ([outcome(0, 201)], {"r": [fleet.StoredVote("down", "r/0")]}, 1),
        ([outcome(0, 201)], {**stored(0), **stored(0, "other")}, 1),
    ],
)
def test_the_vote_check_finds_what_the_store_lost(
    sent: list[fleet.VoteOutcome], store: dict[str, list[fleet.StoredVote]], problems: int
) -> None:
    assert len(fleet.vote_problems(sent, store)) == problems
