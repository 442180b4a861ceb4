"""The review outbox against a stand-in Slack: retries, rate limits, outages, restarts.

Everything real: a SQLite file, the dispatcher task, the Slack client over HTTP to the
stand-in on 127.0.0.1. Retry delays are shortened through ``RetryPolicy``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.channel import SlackReviewChannel, map_slack_error
from feedback_store import ReviewCounts, Store, StoreError
from middleware.errors import ReviewChannelPermanent, ReviewChannelRetryable
from middleware.flows import Hooks
from middleware.review.items import ReviewItems
from middleware.review.outbox import PARKED_AT, LogChannel, Outbox
from middleware.review.retry import RetryPolicy, backoff_delay, retry_delay
from tests.support.outbox import FAST, decisions, escalate, eventually, row_when
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

# -- the pure retry decisions -----------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 0.0, 0.5),  # half of base 1.0 is fixed, half is jitter
        (1, 1.0, 1.0),
        (2, 0.0, 1.0),
        (3, 0.5, 3.0),
        (4, 1.0, 8.0),
        (20, 1.0, 300.0),  # capped
        (20, 0.0, 150.0),
    ],
)
def test_backoff_delay(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, RetryPolicy(), rand) == pytest.approx(expected)


def test_backoff_grows_and_stays_within_bounds() -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=30.0, jitter=1.0)
    rng = random.Random(7)
    for attempt in range(1, 30):
        raw = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert 0.0 <= backoff_delay(attempt, policy, rng.random()) <= raw
    no_jitter = RetryPolicy(base_s=1.0, cap_s=1e9, jitter=0.0)
    delays = [backoff_delay(a, no_jitter, 0.9) for a in range(1, 8)]
    assert delays == [1, 2, 4, 8, 16, 32, 64]


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_retry_after_is_honoured(rand: float) -> None:
    policy = RetryPolicy(base_s=1.0)
    delay = retry_delay(9, 30.0, policy, rand)
    assert 30.0 <= delay <= 30.1
    assert retry_delay(2, None, policy, rand) == backoff_delay(2, policy, rand)


# -- error mapping ----------------------------------------------------------------------


async def test_slack_errors_map_to_retryable_or_permanent(standin: SlackStandin) -> None:
    client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
    channel = SlackReviewChannel(client=client, channel=CHANNEL)
    await channel.open()
    try:
        standin.fail("auth.test", status=429, retry_after=7)
        with pytest.raises(ReviewChannelRetryable) as limited:
            await channel.check()
        assert limited.value.retry_after == 7.0
        standin.fail("auth.test", status=503)
        with pytest.raises(ReviewChannelRetryable):
            await channel.check()
        for code in ("invalid_auth", "channel_not_found", "invalid_blocks", "not_in_channel"):
            standin.fail("auth.test", error=code)
            with pytest.raises(ReviewChannelPermanent, match=code):
                await channel.check()
        identity = await channel.check()
        assert identity.bot_user_id == "UHITLBOT"
    finally:
        await channel.aclose()
    assert isinstance(map_slack_error(ConnectionRefusedError(), "x"), ReviewChannelRetryable)
    assert isinstance(map_slack_error(TimeoutError(), "x"), ReviewChannelRetryable)


# -- the dispatcher ---------------------------------------------------------------------


OutboxFactory = Callable[..., Awaitable[Outbox]]


@pytest.fixture
async def outboxes(store: Store, standin: SlackStandin) -> AsyncIterator[OutboxFactory]:
    """Start dispatchers (each with its own Slack client, like separate processes)."""
    running: list[tuple[Outbox, SlackReviewChannel]] = []

    async def start(*, channel_id: str = CHANNEL, run: bool = True) -> Outbox:
        client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
        channel = SlackReviewChannel(client=client, channel=channel_id, timeout_s=2.0)
        await channel.open()
        items = ReviewItems(store=store, threshold=0.3)
        outbox = Outbox(
            store=store,
            channel=channel,
            load_item=items.for_escalation,
            policy=FAST,
            rng=random.Random(1),
        )
        running.append((outbox, channel))
        if run:
            outbox.start()
        return outbox

    yield start
    for outbox, channel in running:
        await outbox.stop()
        await channel.aclose()


def posted_reply_ids(standin: SlackStandin) -> list[str]:
    return [
        c.args["metadata"]["event_payload"]["reply_id"]
        for c in standin.calls_to("chat.postMessage", ok_only=True)
    ]


async def counts_when(store: Store, check: Callable[[ReviewCounts], bool]) -> ReviewCounts:
    deadline = time.monotonic() + 5.0
    while True:
        counts = await store.review_counts()
        if check(counts):
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"review counts never matched: {counts}")
        await asyncio.sleep(0.02)


async def test_posts_each_escalation_once_and_records_it(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    outbox = await outboxes()
    await escalate(store, "r1", "r2", "r3")
    outbox.wake()
    await eventually(lambda: len(posted_reply_ids(standin)) == 3)
    assert sorted(posted_reply_ids(standin)) == ["r1", "r2", "r3"]
    call = standin.calls_to("chat.postMessage")[0]
    assert call.args["unfurl_links"] is False and call.args["unfurl_media"] is False
    assert "link_names" not in call.args
    assert call.token == TOKEN
    row = await row_when(store, "r1", lambda r: r.state == "posted")
    assert row.channel == CHANNEL
    assert row.message_ts in standin.messages[CHANNEL]
    assert await outbox.run_once() is None  # nothing left to do
    assert len(posted_reply_ids(standin)) == 3


async def test_rate_limit_retry_after_is_honoured(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    standin.fail("chat.postMessage", status=429, retry_after=1)
    outbox = await outboxes()
    await escalate(store, "r1", "r2")
    outbox.wake()
    await eventually(lambda: len(posted_reply_ids(standin)) == 2, within=4)
    calls = standin.calls_to("chat.postMessage")
    assert [c.status for c in calls] == [429, 200, 200]
    # Both the limited card and the one queued behind it waited out the Retry-After.
    assert calls[1].at - calls[0].at >= 1.0
    assert calls[2].at - calls[0].at >= 1.0
    row = await store.escalation_for("r1")
    assert row is not None and row.attempts == 1
    # Slack said no: nothing was posted, so nothing is looked up before the retry.
    assert standin.calls_to("conversations.history") == []


async def test_server_errors_back_off_and_retry(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    standin.fail("chat.postMessage", status=500, times=2)
    standin.fail("chat.postMessage", error="internal_error")
    outbox = await outboxes()
    await escalate(store, "r1")
    outbox.wake()
    await eventually(lambda: len(posted_reply_ids(standin)) == 1)
    row = await row_when(store, "r1", lambda r: r.state == "posted")
    calls = standin.calls_to("chat.postMessage")
    assert [(c.status, c.ok) for c in calls] == [
        (500, False),
        (500, False),
        (200, False),
        (200, True),
    ]
    assert posted_reply_ids(standin) == ["r1"]
    assert row.attempts == 3


async def test_slack_down_then_back_posts_each_exactly_once(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    outbox = await outboxes()
    standin.stop()
    ids = [f"r{i}" for i in range(6)]
    await escalate(store, *ids)
    outbox.wake()

    # Retried with backoff while the connection is refused; the rest wait behind it.
    await row_when(store, "r0", lambda r: r.attempts >= 3)
    assert (await store.review_counts()).pending == 6
    assert posted_reply_ids(standin) == []
    standin.start()  # back, on the same port
    await eventually(lambda: len(posted_reply_ids(standin)) == 6)
    await asyncio.sleep(0.3)  # a few more passes of the dispatcher: nothing is posted again
    assert sorted(posted_reply_ids(standin)) == ids
    assert standin.calls_to("conversations.history") == []  # refused: surely not posted


async def test_restart_between_commit_and_post(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    # Committed with the exchange, then the process died before posting: nothing ran.
    await escalate(store, "r1", "r2")
    assert standin.calls_to("chat.postMessage") == []
    first = await outboxes()  # the restarted process
    await eventually(lambda: len(posted_reply_ids(standin)) == 2)
    await counts_when(store, lambda c: c.posted == 2)
    await first.stop()
    second = await outboxes()  # and another restart: posted rows stay posted
    await second.run_once()
    await asyncio.sleep(0.2)
    assert sorted(posted_reply_ids(standin)) == ["r1", "r2"]


async def test_two_dispatchers_never_post_one_escalation_twice(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    ids = [f"r{i}" for i in range(10)]
    await escalate(store, *ids)
    a = await outboxes(run=False)
    b = await outboxes(run=False)
    await asyncio.gather(a.run_once(), b.run_once(), a.run_once(), b.run_once())
    assert sorted(posted_reply_ids(standin)) == ids


async def test_permanent_error_is_a_dead_letter(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    outbox = await outboxes(channel_id="CWRONG")
    await escalate(store, "r1")
    outbox.wake()
    await counts_when(store, lambda c: c.failed == 1)
    row = await row_when(store, "r1", lambda r: r.state == "failed")
    assert "channel_not_found" in row.last_error
    events = await store.events("review_dead_letter")
    assert len(events) == 1
    assert json.loads(events[0].data_json)["reply_id"] == "r1"
    await asyncio.sleep(0.2)
    assert len(standin.calls_to("chat.postMessage")) == 1  # never retried


async def test_a_verdict_redraws_the_card_in_place(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    outbox = await outboxes()
    await escalate(store, "r1")
    outbox.wake()
    await eventually(lambda: len(posted_reply_ids(standin)) == 1)
    await row_when(store, "r1", lambda r: r.state == "posted")
    review = decisions(store, Hooks(review_queued=outbox.wake))
    await review.decide("r1", "reject", "UREVIEWER1", "unsafe")
    await eventually(lambda: standin.calls_to("chat.update", ok_only=True))
    await row_when(store, "r1", lambda r: not r.card_stale)
    posted = await store.escalation_for("r1")
    update = standin.calls_to("chat.update")[0].args
    assert posted is not None
    assert (update["channel"], update["ts"]) == (CHANNEL, posted.message_ts)
    blocks = json.dumps(update["blocks"])
    assert "Rejected" in blocks and "<@UREVIEWER1>" in blocks and "unsafe" in blocks
    assert '"actions"' not in blocks  # buttons gone
    await asyncio.sleep(0.2)
    assert len(standin.calls_to("chat.update")) == 1


async def test_a_verdict_before_posting_means_no_card(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    await escalate(store, "r1", "r2")
    review = decisions(store)
    await review.decide("r1", "approve", "api")
    outbox = await outboxes(run=False)
    await outbox.run_once()
    assert posted_reply_ids(standin) == ["r2"]


async def test_verdict_while_posting_still_reaches_the_card(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory
) -> None:
    await escalate(store, "r1")
    rows = await store.claim_escalations(now=time.time(), lease_s=5, limit=5)
    assert [r.reply_id for r in rows] == ["r1"]
    review = decisions(store)
    await review.decide("r1", "approve", "U1")  # lands between the post and its record
    await store.mark_posted(rows[0].id, channel=CHANNEL, ts="1.1", now=time.time())
    row = await store.escalation_for("r1")
    assert row is not None
    assert (row.state, row.message_ts, row.card_stale) == ("approved", "1.1", True)


async def test_store_failure_after_post_does_not_post_again(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    await escalate(store, "r1")
    outbox = await outboxes(run=False)
    real = store.mark_posted
    failures = iter([StoreError("disk full")])

    async def flaky(*args: Any, **kwargs: Any) -> None:
        for exc in failures:
            raise exc
        await real(*args, **kwargs)

    monkeypatch.setattr(store, "mark_posted", flaky)
    with pytest.raises(StoreError):
        await outbox.run_once()
    # The lease expires; the card is already in the channel and is only recorded.
    await store.defer_escalations([(await store.escalation_for("r1")).id], at=0.0)  # type: ignore[union-attr]
    await outbox.run_once()
    assert posted_reply_ids(standin) == ["r1"]
    row = await store.escalation_for("r1")
    assert row is not None and row.state == "posted"


async def test_log_channel_parks_until_slack_is_on(
    store: Store, standin: SlackStandin, outboxes: OutboxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="hitl.outbox")
    items = ReviewItems(store=store, threshold=0.3)
    quiet = Outbox(store=store, channel=LogChannel(), load_item=items.for_escalation, policy=FAST)
    await escalate(store, "r1")
    assert await quiet.run_once() is not None
    assert await quiet.run_once() is not None
    assert len([r for r in caplog.records if "r1" in r.getMessage()]) == 1
    row = await store.escalation_for("r1")
    assert row is not None and row.state == "pending" and row.next_attempt_at == PARKED_AT
    slack = await outboxes(run=False)
    assert await slack.unpark() == 1
    await slack.run_once()
    assert posted_reply_ids(standin) == ["r1"]
