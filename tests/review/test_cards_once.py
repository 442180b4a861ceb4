"""Each card is posted once, also when Slack's answer is lost: the stand-in Slack carries
a post out and then hangs or drops the connection, or the dispatcher dies between the
post and its commit (a gateway process killed with SIGKILL). The card is then found in
the channel's history by its metadata and adopted, never posted again.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.channel import SlackReviewChannel, card_reply_id, map_slack_error
from feedback_store import EscalationRow, Store
from middleware.app import create_app
from middleware.errors import ReviewChannelAmbiguous, ReviewChannelRetryable
from middleware.ports import ReviewItem
from middleware.review.items import ReviewItems
from middleware.review.outbox import LogChannel, Outbox
from middleware.review.retry import RetryPolicy, may_be_in_channel
from middleware.settings import settings_from_mapping
from tests.support.outbox import FAST, decisions, escalate, eventually, row_when
from tests.support.processes import free_port
from tests.support.servers import ServerThread
from tests.support.slack import ADMIN, ESCALATE_ALL, SECRET, card_update, click
from tests.support.slack_standin import BOT_ID, CHANNEL, TOKEN, SlackStandin

ROOT = Path(__file__).resolve().parents[2]

# -- the pure decisions -----------------------------------------------------------------


def row(**values: Any) -> EscalationRow:
    base: dict[str, Any] = {"id": 1, "reply_id": "r1", "created_at": 100.0}
    return EscalationRow(**{"next_attempt_at": 100.0, **base, **values})


@pytest.mark.parametrize(
    ("escalation", "left_clean", "unsure"),
    [
        (row(), None, False),  # queued, never touched
        (row(next_attempt_at=160.0), None, True),  # a lease left by a process that died
        (row(attempts=1, next_attempt_at=101.0), None, True),  # another process failed it
        (row(attempts=1, next_attempt_at=101.0), (1, 101.0), False),  # as we left it: clean
        (row(attempts=2, next_attempt_at=103.0), (1, 101.0), True),  # touched since
        (row(next_attempt_at=130.0), (0, 130.0), False),  # we deferred it, nothing since
        (row(next_attempt_at=190.0), (0, 130.0), True),  # ... then someone leased it
    ],
)
def test_may_be_in_channel(
    escalation: EscalationRow, left_clean: tuple[int, float] | None, unsure: bool
) -> None:
    assert may_be_in_channel(escalation, left_clean) is unsure


class _Answer:
    def __init__(self, status: int, data: Any) -> None:
        self.status_code, self.data, self.headers = status, data, {}


@pytest.mark.parametrize(
    ("exc", "ambiguous"),
    [
        (TimeoutError(), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("Response payload is not completed"), True),
        (ConnectionResetError(), True),
        (SlackApiError("x", _Answer(500, {"ok": False, "error": "internal_error"})), True),
        (SlackApiError("x", _Answer(200, {"ok": False, "error": "fatal_error"})), True),
        (SlackApiError("x", _Answer(504, "<html>gateway timeout</html>")), True),
        (ConnectionRefusedError(), False),
        (aiohttp.ConnectionTimeoutError(), False),
        (SlackApiError("x", _Answer(429, {"ok": False, "error": "ratelimited"})), False),
        (SlackApiError("x", _Answer(503, {"ok": False, "error": "service_unavailable"})), False),
    ],
)
def test_lost_answers_are_ambiguous(exc: BaseException, ambiguous: bool) -> None:
    mapped = map_slack_error(exc, "chat.postMessage")
    assert isinstance(mapped, ReviewChannelRetryable)
    assert isinstance(mapped, ReviewChannelAmbiguous) is ambiguous


def card_message(reply_id: Any, **extra: Any) -> dict[str, Any]:
    meta = {"event_type": "hitl_review", "event_payload": {"reply_id": reply_id}}
    return {"ts": "1.000001", "bot_id": BOT_ID, "metadata": meta, **extra}


@pytest.mark.parametrize(
    ("message", "bot_id", "expected"),
    [
        (card_message("r1"), BOT_ID, "r1"),
        (card_message("r1"), None, "r1"),
        (card_message("r1", bot_id="BOTHER"), BOT_ID, None),  # another app's message
        (card_message("r1", subtype="tombstone"), None, None),
        (card_message(None), None, None),
        ({"ts": "1.1", "metadata": {"event_type": "other", "event_payload": {}}}, None, None),
        ({"ts": "1.1", "text": "drift"}, None, None),
    ],
)
def test_card_reply_id(message: dict[str, Any], bot_id: str | None, expected: str | None) -> None:
    assert card_reply_id(message, bot_id) == expected


async def test_the_log_channel_finds_nothing() -> None:
    assert await LogChannel().find(["r1"], since=0.0) == {}


@pytest.mark.parametrize(
    ("reasons", "trigger", "said"),
    [
        (("confidence 0.20 < 0.3",), "policy", "(confidence 0.20 < 0.3)"),
        (("outlier",), "policy", "(outlier, confidence 0.20)"),
        ((), "complaint", "(complaint, confidence 0.20)"),
    ],
)
async def test_the_log_channel_says_why_once_and_how_to_decide(
    reasons: tuple[str, ...], trigger: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="hitl.outbox")
    item = ReviewItem(
        reply_id="r1",
        question="q?",
        answer="a.",
        confidence=0.2,
        threshold=0.3,
        reasons=reasons,
        trigger=trigger,
    )
    assert await LogChannel().post(item) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"reply r1 needs review {said}: no reviewer channel is configured; decide with "
        "POST /v1/reviews/r1"
    )


# -- the stand-in's history, and find() over it -----------------------------------------


@pytest.fixture
async def slack(standin: SlackStandin) -> AsyncIterator[SlackReviewChannel]:
    client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
    channel = SlackReviewChannel(client=client, channel=CHANNEL, timeout_s=0.5)
    await channel.open()
    await channel.check()
    yield channel
    await channel.aclose()


async def test_history_pages_and_metadata_like_slack(
    standin: SlackStandin, slack: SlackReviewChannel
) -> None:
    standin.history_page_cap = 2
    before = time.time()
    for i in range(5):
        await slack.client.chat_postMessage(
            channel=CHANNEL,
            text=f"m{i}",
            metadata={"event_type": "hitl_review", "event_payload": {"reply_id": f"r{i}"}},
        )
    plain = (await slack.client.conversations_history(channel=CHANNEL)).data
    assert isinstance(plain, dict)
    assert [m["text"] for m in plain["messages"]] == ["m4", "m3"]  # newest first
    assert plain["has_more"] is True and "metadata" not in plain["messages"][0]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = (
            await slack.client.conversations_history(
                channel=CHANNEL, include_all_metadata=True, cursor=cursor, oldest=str(before)
            )
        ).data
        assert isinstance(page, dict)
        seen += page["messages"]
        cursor = page.get("response_metadata", {}).get("next_cursor")
        if not page["has_more"]:
            assert not cursor
            break
    assert [m["metadata"]["event_payload"]["reply_id"] for m in seen] == [
        "r4",
        "r3",
        "r2",
        "r1",
        "r0",
    ]
    third = seen[2]["ts"]  # oldest and latest are exclusive unless inclusive
    window = await slack.client.conversations_history(
        channel=CHANNEL, oldest=seen[3]["ts"], latest=seen[1]["ts"]
    )
    assert [m["ts"] for m in window["messages"]] == [third]


async def test_find_reads_back_to_since_across_pages_oldest_first(
    standin: SlackStandin, slack: SlackReviewChannel, caplog: pytest.LogCaptureFixture
) -> None:
    standin.history_page_cap = 3
    standin.add_message(card_message("r1", text="too old"), ts="1000.000001")
    since = time.time()
    first = await slack.post(item_for("r1"))
    for i in range(7):
        await slack.announce(f"noise {i}")
    second = await slack.post(item_for("r1"))
    other = await slack.post(item_for("r2"))
    found = await slack.find(["r1", "r3"], since=since)
    assert found == {"r1": [first, second]}
    assert other not in found.get("r1", [])
    calls = standin.calls_to("conversations.history")
    assert len(calls) == 4  # 10 messages, 3 a page
    assert all(c.args["include_all_metadata"] in ("1", "true") for c in calls)
    assert float(calls[0].args["oldest"]) == pytest.approx(since)
    # A bounded number of pages: a lookup that cannot reach ``since`` says so.
    slack.history_pages = 2
    caplog.set_level("WARNING", logger="hitl.slack")
    assert await slack.find(["r1"], since=since) == {"r1": [second]}  # the first is too far
    assert any("through 2 pages" in r.getMessage() for r in caplog.records)


def item_for(reply_id: str) -> ReviewItem:
    return ReviewItem(reply_id=reply_id, question="q?", answer="a.", confidence=0.2, threshold=0.3)


# -- the outbox: lost answers, crashes, copies ------------------------------------------


Dispatcher = Callable[..., Any]


@pytest.fixture
async def dispatchers(store: Store, standin: SlackStandin) -> AsyncIterator[Dispatcher]:
    """Outboxes with their own Slack client each (like separate processes), not running:
    the tests drive them with ``run_once``."""
    channels: list[SlackReviewChannel] = []

    async def make(policy: RetryPolicy = FAST) -> tuple[Outbox, SlackReviewChannel]:
        client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
        channel = SlackReviewChannel(client=client, channel=CHANNEL, timeout_s=0.5)
        await channel.open()
        await channel.check()
        channels.append(channel)
        items = ReviewItems(store=store, threshold=0.3)
        outbox = Outbox(
            store=store,
            channel=channel,
            load_item=items.for_escalation,
            policy=policy,
            rng=random.Random(1),
        )
        return outbox, channel

    yield make
    for channel in channels:
        await channel.aclose()


async def until_posted(store: Store, outbox: Outbox, reply_id: str) -> EscalationRow:
    deadline = time.monotonic() + 5
    while True:
        await outbox.run_once()
        row = await store.escalation_for(reply_id)
        if row is not None and row.state == "posted":
            return row
        assert time.monotonic() < deadline, f"never posted: {row}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("how", ["hang", "drop"])
async def test_a_post_whose_answer_is_lost_is_found_not_posted_again(
    how: str, store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    outbox, _ = await dispatchers()
    await escalate(store, "r1")
    standin.lose_answer("chat.postMessage", how=how)  # type: ignore[arg-type]
    delay = await outbox.run_once()
    assert delay is not None and delay > 0
    failed = await store.escalation_for("r1")
    assert failed is not None and failed.state == "pending" and failed.attempts == 1
    assert len(standin.cards_for("r1")) == 1  # Slack has it; we don't know

    posted = await until_posted(store, outbox, "r1")
    cards = standin.cards_for("r1")
    assert list(cards) == [posted.message_ts] and posted.channel == CHANNEL
    assert len(standin.calls_to("chat.postMessage")) == 1
    assert len(standin.calls_to("conversations.history")) == 1

    # (c) a verdict after the adoption redraws that one card
    review = decisions(store)
    await review.decide("r1", "reject", "UREVIEWER1", "unsafe")
    await until_current(store, outbox, "r1")
    update = standin.calls_to("chat.update", ok_only=True)[-1].args
    assert update["ts"] == posted.message_ts
    assert "Rejected" in json.dumps(update["blocks"]) and '"actions"' not in json.dumps(
        update["blocks"]
    )
    assert list(standin.cards_for("r1")) == [posted.message_ts]


async def until_current(store: Store, outbox: Outbox, reply_id: str) -> None:
    deadline = time.monotonic() + 5
    while True:
        await outbox.run_once()
        row = await store.escalation_for(reply_id)
        if row is not None and row.message_ts and not row.card_stale:
            return
        assert time.monotonic() < deadline, f"card never redrawn: {row}"
        await asyncio.sleep(0.05)


async def test_a_dispatcher_that_died_after_posting_leaves_a_card_the_next_adopts(
    store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    short = RetryPolicy(base_s=0.05, cap_s=0.2, lease_s=0.3, poll_s=0.5)
    _, dead_channel = await dispatchers(short)
    await escalate(store, "r1", "r2")
    # The first process: leases both rows, Slack takes r1's card, then the process dies.
    leased = await store.claim_escalations(now=time.time(), lease_s=short.lease_s, limit=5)
    assert [r.reply_id for r in leased] == ["r1", "r2"]
    items = ReviewItems(store=store, threshold=0.3)
    item = await items.for_escalation(leased[0])
    assert item is not None
    first = await dead_channel.post(item)
    await asyncio.sleep(short.lease_s + 0.05)  # its lease runs out

    outbox, _ = await dispatchers(short)
    await outbox.run_once()
    r1 = await row_when(store, "r1", lambda r: r.state == "posted")
    await row_when(store, "r2", lambda r: r.state == "posted")
    assert r1.message_ts == first.ts
    assert list(standin.cards_for("r1")) == [first.ts]
    assert len(standin.cards_for("r2")) == 1
    assert len(standin.calls_to("chat.postMessage")) == 2  # r1 once (by the dead one), r2
    assert len(standin.calls_to("conversations.history")) == 1  # one lookup for both


async def test_copies_from_older_versions_the_oldest_is_kept_the_rest_deleted(
    store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    outbox, channel = await dispatchers()
    await escalate(store, "r1")
    row0 = await store.escalation_for("r1")
    assert row0 is not None
    item = await ReviewItems(store=store, threshold=0.3).for_escalation(row0)
    assert item is not None
    # Posted twice before, the answers lost, the row left with a failed attempt.
    oldest, newer = await channel.post(item), await channel.post(item)
    await store.retry_escalation(row0.id, attempts=1, at=0.0, error="timeout")

    posted = await until_posted(store, outbox, "r1")
    assert posted.message_ts == oldest.ts
    assert list(standin.cards_for("r1")) == [oldest.ts]
    assert [c.args["ts"] for c in standin.calls_to("chat.delete", ok_only=True)] == [newer.ts]
    await decisions(store).decide("r1", "approve", "UREVIEWER1")
    await until_current(store, outbox, "r1")
    assert "Approved" in json.dumps(standin.messages[CHANNEL][oldest.ts]["blocks"])


async def test_a_refused_post_is_retried_without_a_lookup(
    store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    outbox, _ = await dispatchers()
    await escalate(store, "r1", "r2")
    standin.fail("chat.postMessage", status=429, retry_after=0.1)
    await outbox.run_once()  # r1 limited, r2 waits behind it
    await until_posted(store, outbox, "r1")
    await until_posted(store, outbox, "r2")
    assert standin.calls_to("conversations.history") == []
    assert len(standin.cards_for("r1")) == len(standin.cards_for("r2")) == 1


async def test_a_failed_lookup_is_retried_and_still_posts_once(
    store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    outbox, _ = await dispatchers()
    await escalate(store, "r1")
    standin.lose_answer("chat.postMessage", how="drop")
    standin.fail("conversations.history", status=503)
    await outbox.run_once()  # the post: answer lost
    await outbox.run_once()  # paused
    posted = await until_posted(store, outbox, "r1")
    assert [c.ok for c in standin.calls_to("conversations.history")] == [False, True]
    assert list(standin.cards_for("r1")) == [posted.message_ts]
    assert posted.attempts == 2


async def test_rows_whose_lease_runs_out_go_back_unposted(
    store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    policy = RetryPolicy(base_s=0.05, cap_s=0.2, lease_s=0.2, poll_s=0.5)
    outbox, channel = await dispatchers(policy)
    real_post = channel.post

    async def slow_post(item: Any) -> Any:
        await asyncio.sleep(0.15)  # past half the lease
        return await real_post(item)

    channel.post = slow_post  # type: ignore[method-assign]
    await escalate(store, "r1", "r2", "r3")
    assert await outbox.run_once() == 0.0
    assert (await store.review_counts()).posted == 1
    back = await store.escalation_for("r3")
    assert back is not None and back.next_attempt_at <= time.time()
    for _ in range(4):
        await outbox.run_once()
    await eventually(lambda: sum(len(standin.cards_for(r)) for r in ("r1", "r2", "r3")) == 3)
    assert standin.calls_to("conversations.history") == []  # put back clean: no lookups


async def test_a_stopping_dispatcher_finishes_the_row_in_hand_and_gives_back_the_rest(
    store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    # Left leased, the rows would wait out the minute's lease after a restart.
    policy = RetryPolicy(base_s=0.05, cap_s=0.2, lease_s=60.0, poll_s=0.5)
    outbox, channel = await dispatchers(policy)
    real_post, posting = channel.post, asyncio.Event()

    async def slow_post(item: Any) -> Any:
        posting.set()
        await asyncio.sleep(0.3)
        return await real_post(item)

    channel.post = slow_post  # type: ignore[method-assign]
    await escalate(store, "r1", "r2", "r3")
    outbox.start()
    await asyncio.wait_for(posting.wait(), 5)
    await outbox.stop()
    assert (await store.review_counts()).posted == 1  # the card in hand was finished
    now = time.time()
    for rid in ("r2", "r3"):
        back = await store.escalation_for(rid)
        # As it was queued: due, never attempted, so the next takes it without a lookup.
        assert back is not None and back.state == "pending" and back.attempts == 0
        assert back.next_attempt_at == back.created_at <= now
    nxt, _ = await dispatchers(policy)
    assert await nxt.run_once() is None
    assert [len(standin.cards_for(r)) for r in ("r1", "r2", "r3")] == [1, 1, 1]
    assert standin.calls_to("conversations.history") == []


async def test_a_dispatcher_stopped_while_slack_hangs_gives_its_rows_back_to_look_up(
    store: Store, standin: SlackStandin, dispatchers: Dispatcher
) -> None:
    policy = RetryPolicy(base_s=0.05, cap_s=0.2, lease_s=60.0, poll_s=0.5, stop_grace_s=0.1)
    outbox, _ = await dispatchers(policy)
    await escalate(store, "r1", "r2")
    standin.lose_answer("chat.postMessage", how="hang")  # Slack takes r1's card, then hangs
    outbox.start()
    await eventually(lambda: len(standin.cards_for("r1")) == 1)
    await outbox.stop()
    in_hand = await store.escalation_for("r1")
    # Let go after the grace, before Slack's timeout (0.5 s) could count an attempt.
    assert in_hand is not None and in_hand.state == "pending" and in_hand.attempts == 0
    # Due now, and not as queued: the card may be in the channel, so it is looked up.
    assert in_hand.created_at < in_hand.next_attempt_at <= time.time()
    untouched = await store.escalation_for("r2")
    assert untouched is not None and untouched.next_attempt_at == untouched.created_at

    nxt, _ = await dispatchers(policy)
    await nxt.run_once()
    adopted = await store.escalation_for("r1")
    assert adopted is not None and adopted.state == "posted"
    assert list(standin.cards_for("r1")) == [adopted.message_ts]  # adopted, not posted again
    assert len(standin.cards_for("r2")) == 1
    assert len(standin.calls_to("chat.postMessage")) == 2


# -- a real gateway process killed between the post and its commit -------------------


RUNNER = """
import json, sys
import uvicorn
from middleware.app import create_app
from middleware.review.retry import RetryPolicy
from middleware.settings import settings_from_mapping

spec = json.loads(sys.argv[1])
settings = settings_from_mapping(spec["settings"], source="test")
app = create_app(settings, environ=spec["environ"], retry=RetryPolicy(**spec["retry"]))
uvicorn.run(app, host="127.0.0.1", port=spec["port"], log_level="warning")
"""


def db_rows(tmp_path: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp_path / "hitl.db") as conn:
        return conn.execute(sql, params).fetchall()


@pytest.mark.slow
def test_a_gateway_killed_after_slack_took_the_card_leaves_one_card_the_next_adopts(
    tmp_path: Path, standin: SlackStandin, upstream_server: ServerThread
) -> None:
    config = {
        "store": {"url": f"sqlite:///{tmp_path / 'hitl.db'}"},
        "upstream": {"kind": "openai", "base_url": upstream_server.url + "/v1", "timeout_s": 1.5},
        "policy": ESCALATE_ALL,
        "slack": {
            "enabled": True,
            "channel": CHANNEL,
            "api_url": standin.url,
            "reviewers": ["UREVIEWER1"],
        },
    }
    environ = {"SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SECRET, "HITL_ADMIN_TOKEN": ADMIN}
    retry = {"base_s": 0.05, "cap_s": 0.2, "lease_s": 1.0, "poll_s": 0.2}
    port = free_port()
    spec = {"settings": config, "environ": environ, "retry": retry, "port": port}
    standin.lose_answer("chat.postMessage", how="hang")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (tmp_path / "first.log").open("w") as out:
        first = subprocess.Popen(
            [sys.executable, "-c", RUNNER, json.dumps(spec)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the first gateway did not come up"
            time.sleep(0.05)
        answer = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "json", "messages": [{"role": "user", "content": "How do I?"}]},
        ).json()
        assert answer["hitl"]["decision"] == "escalate"
        rid = answer["hitl"]["reply_id"]
        deadline = time.monotonic() + 10
        while not standin.cards_for(rid):  # Slack has the card; its answer hangs
            assert time.monotonic() < deadline, "the card never reached Slack"
            time.sleep(0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    standin.release()
    assert db_rows(
        tmp_path, "SELECT state, message_ts FROM escalation WHERE reply_id = ?", rid
    ) == [("pending", None)]

    settings = settings_from_mapping(config, source="test")
    second = ServerThread(create_app(settings, environ=environ, retry=RetryPolicy(**retry)))
    second.start()
    try:
        deadline = time.monotonic() + 10
        while db_rows(tmp_path, "SELECT state FROM escalation WHERE reply_id = ?", rid) != [
            ("posted",)
        ]:
            assert time.monotonic() < deadline, "the card was never adopted"
            time.sleep(0.05)
        cards = standin.cards_for(rid)
        [(ts, message)] = cards.items()
        assert db_rows(tmp_path, "SELECT message_ts FROM escalation WHERE reply_id = ?", rid) == [
            (ts,)
        ]
        assert len(standin.calls_to("chat.postMessage")) == 1  # the first gateway's only
        assert standin.calls_to("conversations.history")

        # (c) a reviewer decides on the adopted card: that card, and only it, is redrawn
        assert click(second, {**message, "ts": ts}, "hitl_approve").status_code == 200
        deadline = time.monotonic() + 5
        while "Approved" not in json.dumps(card_update(standin, ts)["blocks"]):
            assert time.monotonic() < deadline, "the adopted card was never redrawn"
            time.sleep(0.02)
        assert list(standin.cards_for(rid)) == [ts]
    finally:
        second.stop()
