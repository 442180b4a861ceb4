"""A private PostgreSQL cluster stopped and started again under load, a real ``hitl
serve`` on it: 503s with ``Retry-After`` while it is down, never a 2xx that is not stored,
no request left hanging, and recovery without restarting the gateway (the learner too).

Loopback only; the cluster is the test's own (``initdb``/``pg_ctl`` in a temporary
folder), never the shared server. The last test checks, on a database of its own on the
shared server, that a label committed out of id order (two writers at once, as after a
restart) is learned all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
import sqlalchemy.pool

from tests.support import fleet, private_postgres
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

reason = private_postgres.unavailable()

#: clients sending chat requests and votes, one after the other
CLIENTS = 4
#: no answer may take longer (the client gives up then, and the test fails)
REQUEST_TIMEOUT_S = 15.0
#: replies each client keeps unvoted, to vote on while chat requests fail
RESERVE = 3
#: how long the database stays down
DOWN_S = 4.0
#: requests succeed again at most this long after the database is back
RECOVERY_BOUND_S = 15.0

CONFIG = """
[server]
feedback_per_minute = 0

[upstream]
kind = "local"

[policy]
review_downvotes = false

[store]
url = "{url}"
"""


@dataclass
class Answer:
    """One request of the load: what, when, and what came back (``status`` None: no
    answer, ``error`` says why)."""

    kind: str  # chat | vote
    sent_at: float
    done_at: float
    status: int | None
    error: str | None = None
    reply_id: str = ""  # a 200 chat reply's, or the voted reply's
    rating: str | None = None
    attempt: int = 1  # a vote's: how many times it was sent
    retry_after: str | None = None
    body: Any = None


@dataclass
class Timeline:
    stopped_at: float = 0.0  # pg_ctl stop returned: the database is down
    starting_at: float = 0.0  # pg_ctl start called
    started_at: float = 0.0  # pg_ctl start returned: the database is up
    started_clock: float = 0.0  # the same moment by time.time(), as the store's rows say


async def send(client: httpx.AsyncClient, kind: str, path: str, body: dict[str, Any]) -> Answer:
    sent = time.monotonic()
    try:
        r = await client.post(path, json=body)
    except httpx.TransportError as exc:  # a timeout too
        return Answer(kind, sent, time.monotonic(), None, error=type(exc).__name__)
    try:
        data = r.json()
    except ValueError:
        data = r.text
    retry_after = r.headers.get("retry-after")
    return Answer(kind, sent, time.monotonic(), r.status_code, retry_after=retry_after, body=data)


async def client_loop(
    client: httpx.AsyncClient, n: int, record: Callable[[Answer], None], stop: asyncio.Event
) -> None:
    """Until ``stop``: ask, then vote on the oldest reply not voted on yet (up or down,
    one rating per reply), keeping ``RESERVE`` in hand while chat requests succeed. A vote
    that was not acknowledged is sent again later, so votes go on while the store is
    down."""
    unvoted: list[tuple[str, str, str, int]] = []  # reply id, token, rating, attempts
    i = 0
    while not stop.is_set():
        i += 1
        question = {"model": "local", "messages": [{"role": "user", "content": f"{n}.{i}?"}]}
        chat = await send(client, "chat", "/v1/chat/completions", question)
        if chat.status == 200:
            hitl = chat.body["hitl"]
            chat.reply_id = hitl["reply_id"]
            unvoted.append((chat.reply_id, hitl["feedback_token"], ("up", "down")[i % 2], 0))
        record(chat)
        # A few replies kept in hand, so that votes go on while chat requests fail.
        if len(unvoted) > RESERVE or (unvoted and not ok(chat)):
            reply_id, token, rating, attempts = unvoted.pop(0)
            body = {"reply_id": reply_id, "token": token, "rating": rating}
            vote = await send(client, "vote", "/v1/feedback", body)
            vote.reply_id, vote.rating, vote.attempt = reply_id, rating, attempts + 1
            record(vote)
            if not ok(vote):
                unvoted.append((reply_id, token, rating, attempts + 1))
        if not ok(chat):
            await asyncio.sleep(0.05)  # while it is down: a steady trickle, not a spin


#: (when, status or None, labels learned or -1)
Health = tuple[float, int | None, int]


async def poll_health(url: str, seen: list[Health], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        while not stop.is_set():
            try:
                r = await client.get(url + "/healthz")
            except httpx.TransportError:
                seen.append((time.monotonic(), None, -1))
            else:
                labels = r.json()["model"]["labels"] if r.status_code == 200 else -1
                seen.append((time.monotonic(), r.status_code, labels))
            await asyncio.sleep(0.1)


def ok(answer: Answer) -> bool:
    return answer.status is not None and 200 <= answer.status < 300


async def outage(
    gateway: fleet.ServeProcess, cluster: private_postgres.PrivateCluster
) -> tuple[list[Answer], list[Health], Timeline]:
    """Load before, during and after the outage; stops once both a chat request and a
    vote succeeded after the restart and a few more seconds of load went through."""
    answers: list[Answer] = []
    health: list[Health] = []
    timeline = Timeline()
    stop, recovered = asyncio.Event(), asyncio.Event()
    kinds_since_start: set[str] = set()

    def record(answer: Answer) -> None:
        answers.append(answer)
        if timeline.started_at and ok(answer) and answer.sent_at > timeline.started_at:
            kinds_since_start.add(answer.kind)
            if kinds_since_start == {"chat", "vote"}:
                recovered.set()

    async def conduct() -> None:
        try:
            await asyncio.sleep(2.0)
            assert any(ok(a) for a in answers), "nothing succeeded before the outage"
            await asyncio.to_thread(fleet.pg_ctl_stop, cluster, "fast")
            timeline.stopped_at = time.monotonic()
            await asyncio.sleep(DOWN_S)
            timeline.starting_at = time.monotonic()
            await asyncio.to_thread(cluster.start)
            timeline.started_at, timeline.started_clock = time.monotonic(), time.time()
            with contextlib.suppress(TimeoutError):  # the test says it did not recover
                await asyncio.wait_for(recovered.wait(), RECOVERY_BOUND_S + 5)
            await asyncio.sleep(3.0)  # and it stays recovered
        finally:
            stop.set()

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=gateway.url, limits=limits, timeout=REQUEST_TIMEOUT_S
    ) as client:
        await asyncio.gather(
            conduct(),
            poll_health(gateway.url, health, stop),
            *(client_loop(client, n, record, stop) for n in range(CLIENTS)),
        )
    return answers, health, timeline


def changes(values: list[Any]) -> list[Any]:
    """``values`` without repeats in a row: [200, 200, 503, 200] -> [200, 503, 200]."""
    return [v for i, v in enumerate(values) if i == 0 or v != values[i - 1]]


def check_answers(answers: list[Answer], timeline: Timeline, log: str) -> None:
    """No request hung or broke and none was a 500; 503s with ``Retry-After`` and the
    error shape; nothing acknowledged while the database was down."""
    assert [a for a in answers if a.status is None] == []
    statuses = {(a.kind, a.status) for a in answers}
    allowed = {("chat", 200), ("chat", 503), ("vote", 201), ("vote", 200), ("vote", 503)}
    assert statuses <= allowed, log
    # A 200 (the same voter again) only for a vote sent again after a 503: one whose
    # commit happened but whose answer the outage cut off.
    assert [a for a in answers if a.kind == "vote" and a.status == 200 and a.attempt == 1] == []
    unavailable = [a for a in answers if a.status == 503]
    assert {a.kind for a in unavailable} == {"chat", "vote"}, {a.kind for a in unavailable}
    for a in unavailable:
        assert a.retry_after is not None and int(a.retry_after) > 0, a
        error = a.body["error"]
        assert set(error) >= {"message", "type", "code"}, a
        assert all(isinstance(error[k], str) and error[k] for k in ("message", "type", "code"))
    down = [
        a for a in answers if timeline.stopped_at <= a.sent_at < a.done_at <= timeline.starting_at
    ]
    assert {a.kind for a in down} == {"chat", "vote"}, down
    assert [a for a in down if a.status != 503] == []


def check_recovery(answers: list[Answer], timeline: Timeline, log: str) -> float:
    """Chat requests and votes succeed again within the bound, and keep succeeding;
    returns how long after the database was back they did."""
    after = [a for a in answers if ok(a) and a.sent_at > timeline.started_at]
    kinds = {a.kind for a in after}
    assert kinds == {"chat", "vote"}, f"only {kinds} succeeded after the restart\n{log}"
    recovered_at = max(min(a.done_at for a in after if a.kind == k) for k in kinds)
    recovery_s = recovered_at - timeline.started_at
    assert recovery_s < RECOVERY_BOUND_S, f"recovered after {recovery_s:.1f} s"
    assert [a for a in answers if a.sent_at > recovered_at and not ok(a)] == []
    assert len([a for a in after if a.kind == "vote"]) >= 5
    return recovery_s


def check_store(answers: list[Answer], url: str) -> dict[str, list[fleet.StoredVote]]:
    """Every 2xx reply is in ``exchange``, every 2xx vote in ``feedback``; the votes."""
    exchanges = {r for (r,) in fleet.query(url, "SELECT id FROM exchange")}
    replies = [a.reply_id for a in answers if a.kind == "chat" and ok(a)]
    assert [r for r in replies if r not in exchanges] == []
    votes = fleet.stored_votes(url)
    acked = [a for a in answers if a.kind == "vote" and ok(a)]
    stored = {a.reply_id: [v.rating for v in votes.get(a.reply_id, [])] for a in acked}
    assert [a for a in acked if stored[a.reply_id] != [a.rating]] == []
    return votes


@pytest.mark.skipif(reason is not None, reason=reason or "")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_database_restarted_under_load(tmp_path: Path, workers: int) -> None:
    cluster = private_postgres.PrivateCluster()
    try:
        cluster.start()
        config = CONFIG.format(url=cluster.url)
        with fleet.serving(tmp_path, config, workers=workers) as gateway:
            answers, health, timeline = asyncio.run(outage(gateway, cluster))
            log = gateway.output()[-4000:]
            print(f"{len(answers)} requests, {sum(a.status == 503 for a in answers)} 503s")

            check_answers(answers, timeline, log)
            recovery_s = check_recovery(answers, timeline, log)
            print(f"recovered {recovery_s:.2f} s after the database was back")
            # /healthz said so: 200, then 503 while down, then 200 again.
            assert changes([s for _, s, _ in health]) == [200, 503, 200]
            votes = check_store(answers, cluster.url)

            # The learner resumed: it learns the labels voted after the recovery.
            (labels,) = fleet.query(cluster.url, "SELECT count(*) FROM label")[0]
            assert labels == len(votes)  # each stored vote is its reply's first: one label
            ((since,),) = fleet.query(
                cluster.url,
                "SELECT count(*) FROM label WHERE created_at > :t",
                t=timeline.started_clock,
            )
            assert since >= 5
            # Every label, once, in every serving process: several answers in a row, so
            # that with two workers both have very likely answered. (A vote the outage
            # rolled back leaves a gap in the label ids, which the learner waits out for
            # a while before it goes on: hence the generous bound.)
            settled = wait_for(
                lambda: all(fleet.labels_learned(gateway.url) == labels for _ in range(5)),
                timeout=30,
            )
            assert settled, (fleet.labels_learned(gateway.url), labels, log)
    finally:
        cluster.remove()


def test_a_label_committed_after_a_newer_one_is_learned_too(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two writers (workers, hosts) commit votes at once, and the one that took the lower
    label id commits last (after a database restart every writer retries its batch at
    once). Its label must be learned too, not passed by. Here the slower writer is a
    transaction of the test's own, shaped like the store's vote (a feedback row and its
    label), held open while the gateway commits a vote of its own."""
    with fleet.serving(tmp_path, CONFIG.format(url=postgres_url)) as gateway:
        slow, quick = asyncio.run(fleet.make_replies(gateway.url, 2))
        now = time.time()
        engine = sqlalchemy.create_engine(postgres_url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(
                    sqlalchemy.text(
                        "INSERT INTO feedback (reply_id, voter, rating, created_at, updated_at,"
                        " changes) VALUES (:reply, 'user', 'up', :now, :now, 0)"
                    ),
                    {"reply": slow.reply_id, "now": now},
                )
                slow_label = conn.execute(
                    sqlalchemy.text(
                        "INSERT INTO label (reply_id, source, value, weight, created_at)"
                        " VALUES (:reply, 'user', 1, 1.0, :now) RETURNING id"
                    ),
                    {"reply": slow.reply_id, "now": now},
                ).scalar_one()
                vote = {"reply_id": quick.reply_id, "token": quick.token, "rating": "down"}
                assert httpx.post(gateway.url + "/v1/feedback", json=vote).status_code == 201
                (quick_label,) = fleet.query(
                    postgres_url, "SELECT id FROM label WHERE reply_id = :r", r=quick.reply_id
                )[0]
                assert slow_label < quick_label
                # Time for the learner (woken by the commit, polling every second) to pass
                # the open label by, or to wait for it.
                wait_for(lambda: fleet.labels_learned(gateway.url) == 1, timeout=3)
                conn.commit()
        finally:
            engine.dispose()
        assert fleet.query(postgres_url, "SELECT count(*) FROM label") == [(2,)]
        learned_both = wait_for(lambda: fleet.labels_learned(gateway.url) == 2, timeout=15)
        assert learned_both, fleet.healthz(gateway.url)
