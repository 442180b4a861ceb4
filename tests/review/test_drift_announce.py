"""A drift is announced in the review channel once, with the error rate before and after,
however many dispatchers run."""

from __future__ import annotations

import asyncio
import json

from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.channel import SlackReviewChannel
from feedback_store import Store
from middleware.review.items import ReviewItems
from middleware.review.outbox import Outbox, drift_text
from middleware.review.retry import RetryPolicy
from tests.support.outbox import eventually
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

FAST = RetryPolicy(base_s=0.05, cap_s=0.2, jitter=0.5, lease_s=5.0, poll_s=0.5, batch=20)


def test_the_announcement_names_the_rates() -> None:
    data = json.dumps({"labels": 1200, "error_before": 0.21, "error_after": 0.345})
    text = drift_text(data)
    assert "after 1200 labels" in text and "21.0% to 34.5%" in text
    # A malformed event still says something sensible, and never raises.
    assert "drifted" in drift_text("{not json")
    assert "drifted" in drift_text(json.dumps({"labels": 3}))


async def test_a_drift_is_announced_once_by_several_dispatchers(
    store: Store, standin: SlackStandin
) -> None:
    await store.add_event("drift", {"labels": 500, "error_before": 0.2, "error_after": 0.4})
    channels, outboxes = [], []
    for _ in range(3):
        client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
        channel = SlackReviewChannel(client=client, channel=CHANNEL, timeout_s=2.0)
        await channel.open()
        channels.append(channel)
        items = ReviewItems(store=store, threshold=0.3)
        outboxes.append(
            Outbox(store=store, channel=channel, load_item=items.for_escalation, policy=FAST)
        )
    try:
        await asyncio.gather(*(outbox.run_once() for outbox in outboxes))
        await asyncio.gather(*(outbox.run_once() for outbox in outboxes))
    finally:
        for channel in channels:
            await channel.aclose()
    posts = [c.args["text"] for c in standin.calls_to("chat.postMessage", ok_only=True)]
    assert len(posts) == 1
    assert "20.0% to 40.0%" in posts[0]


async def test_a_failed_announcement_is_tried_again(store: Store, standin: SlackStandin) -> None:
    await store.add_event("drift", {"labels": 9, "error_before": 0.1, "error_after": 0.3})
    client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
    channel = SlackReviewChannel(client=client, channel=CHANNEL, timeout_s=2.0)
    await channel.open()
    items = ReviewItems(store=store, threshold=0.3)
    outbox = Outbox(store=store, channel=channel, load_item=items.for_escalation, policy=FAST)
    try:
        standin.fail("chat.postMessage", status=503)
        await outbox.run_once()
        assert standin.calls_to("chat.postMessage", ok_only=True) == []
        await outbox.run_once()
    finally:
        await channel.aclose()
    assert len(standin.calls_to("chat.postMessage", ok_only=True)) == 1


async def test_every_announcement_a_failed_pass_claimed_is_tried_again(
    store: Store, standin: SlackStandin
) -> None:
    for before in (0.1, 0.2, 0.3):
        await store.add_event("drift", {"labels": 9, "error_before": before, "error_after": 0.5})
    client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
    channel = SlackReviewChannel(client=client, channel=CHANNEL, timeout_s=2.0)
    await channel.open()
    items = ReviewItems(store=store, threshold=0.3)
    outbox = Outbox(store=store, channel=channel, load_item=items.for_escalation, policy=FAST)
    try:
        standin.fail("chat.postMessage", status=503)  # the first of three, then Slack is well
        await outbox.run_once()
        await outbox.run_once()
    finally:
        await channel.aclose()
    posts = [c.args["text"] for c in standin.calls_to("chat.postMessage", ok_only=True)]
    assert sorted(p.split(" from ")[1][:5] for p in posts) == ["10.0%", "20.0%", "30.0%"]


async def test_an_announcement_cut_off_by_a_stop_is_announced_again(
    store: Store, standin: SlackStandin
) -> None:
    await store.add_event("drift", {"labels": 9, "error_before": 0.1, "error_after": 0.3})
    stopping = RetryPolicy(base_s=0.05, cap_s=0.2, lease_s=5.0, poll_s=0.5, stop_grace_s=0.1)
    channels = []
    for _ in range(2):
        client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
        channels.append(SlackReviewChannel(client=client, channel=CHANNEL, timeout_s=5.0))
        await channels[-1].open()
    items = ReviewItems(store=store, threshold=0.3)
    first, second = (
        Outbox(store=store, channel=c, load_item=items.for_escalation, policy=stopping)
        for c in channels
    )
    try:
        standin.lose_answer("chat.postMessage", how="hang")
        first.start()
        await eventually(lambda: len(standin.calls_to("chat.postMessage")) == 1)
        await first.stop()  # before Slack answers: the announcement may or may not be there
        await second.run_once()
    finally:
        for channel in channels:
            await channel.aclose()
    # Said again rather than never: the stop gave the claim back.
    assert len(standin.calls_to("chat.postMessage")) == 2
