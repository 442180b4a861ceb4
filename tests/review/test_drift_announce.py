"""A drift is announced in the review channel once, with the error rate before and after,
however many dispatchers run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.channel import SlackReviewChannel
from feedback_store import Store
from middleware.review.items import ReviewItems
from middleware.review.outbox import Outbox, drift_text
from middleware.review.retry import RetryPolicy
from tests.support.outbox import FAST, eventually
from tests.support.slack_standin import CHANNEL, TOKEN, SlackStandin

Dispatcher = Callable[..., Awaitable[Outbox]]


@pytest.fixture
async def dispatcher(store: Store, standin: SlackStandin) -> AsyncIterator[Dispatcher]:
    """Outboxes over the stand-in Slack, each with its own client (like separate
    processes), not running: tests drive them with ``run_once`` or ``start``."""
    made: list[tuple[Outbox, SlackReviewChannel]] = []

    async def make(policy: RetryPolicy = FAST) -> Outbox:
        client = AsyncWebClient(token=TOKEN, base_url=standin.url, retry_handlers=[])
        channel = SlackReviewChannel(client=client, channel=CHANNEL, timeout_s=2.0)
        await channel.open()
        items = ReviewItems(store=store, threshold=0.3)
        outbox = Outbox(store=store, channel=channel, load_item=items.for_escalation, policy=policy)
        made.append((outbox, channel))
        return outbox

    yield make
    for outbox, channel in made:
        await outbox.stop()
        await channel.aclose()


def test_the_announcement_names_the_rates() -> None:
    data = json.dumps({"labels": 1200, "error_before": 0.21, "error_after": 0.345})
    text = drift_text(data)
    assert "after 1200 labels" in text and "21.0% to 34.5%" in text
    # A malformed event still says something sensible, and never raises.
    assert "drifted" in drift_text("{not json")
    assert "drifted" in drift_text(json.dumps({"labels": 3}))


async def test_a_drift_is_announced_once_by_several_dispatchers(
    store: Store, standin: SlackStandin, dispatcher: Dispatcher
) -> None:
    await store.add_event("drift", {"labels": 500, "error_before": 0.2, "error_after": 0.4})
    outboxes = [await dispatcher() for _ in range(3)]
    await asyncio.gather(*(outbox.run_once() for outbox in outboxes))
    await asyncio.gather(*(outbox.run_once() for outbox in outboxes))
    posts = [c.args["text"] for c in standin.calls_to("chat.postMessage", ok_only=True)]
    assert len(posts) == 1
    assert "20.0% to 40.0%" in posts[0]


async def test_a_failed_announcement_is_tried_again(
    store: Store, standin: SlackStandin, dispatcher: Dispatcher
) -> None:
    await store.add_event("drift", {"labels": 9, "error_before": 0.1, "error_after": 0.3})
    outbox = await dispatcher()
    standin.fail("chat.postMessage", status=503)
    await outbox.run_once()
    assert standin.calls_to("chat.postMessage", ok_only=True) == []
    await outbox.run_once()
    assert len(standin.calls_to("chat.postMessage", ok_only=True)) == 1


async def test_every_announcement_a_failed_pass_claimed_is_tried_again(
    store: Store, standin: SlackStandin, dispatcher: Dispatcher
) -> None:
    for before in (0.1, 0.2, 0.3):
        await store.add_event("drift", {"labels": 9, "error_before": before, "error_after": 0.5})
    outbox = await dispatcher()
    standin.fail("chat.postMessage", status=503)  # the first of three, then Slack is well
    await outbox.run_once()
    await outbox.run_once()
    posts = [c.args["text"] for c in standin.calls_to("chat.postMessage", ok_only=True)]
    assert sorted(p.split(" from ")[1][:5] for p in posts) == ["10.0%", "20.0%", "30.0%"]


async def test_an_announcement_cut_off_by_a_stop_is_announced_again(
    store: Store, standin: SlackStandin, dispatcher: Dispatcher
) -> None:
    await store.add_event("drift", {"labels": 9, "error_before": 0.1, "error_after": 0.3})
    # The stop lets go (0.1 s) long before Slack's own timeout (2 s) would.
    first = await dispatcher(replace(FAST, stop_grace_s=0.1))
    second = await dispatcher()
    standin.lose_answer("chat.postMessage", how="hang")
    first.start()
    await eventually(lambda: len(standin.calls_to("chat.postMessage")) == 1)
    await first.stop()  # before Slack answers: the announcement may or may not be there
    await second.run_once()
    # Said again rather than never: the stop gave the claim back.
    assert len(standin.calls_to("chat.postMessage")) == 2
