"""The review outbox in tests: a fast retry policy, escalations and waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from feedback_store import EscalationRow, Store
from middleware.flows import DecisionFlow, Hooks
from middleware.review.items import ReviewItems
from middleware.review.retry import RetryPolicy
from tests.support.builders import escalation_row, exchange_row

FAST = RetryPolicy(base_s=0.05, cap_s=0.2, jitter=0.5, lease_s=5.0, poll_s=0.5, batch=20)


def decisions(store: Store, hooks: Hooks | None = None) -> DecisionFlow:
    return DecisionFlow(
        store=store,
        items=ReviewItems(store=store, threshold=0.3),
        reviewer_weight=3.0,
        hooks=hooks or Hooks(),
    )


async def eventually(check: Callable[[], Any], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def escalate(store: Store, *reply_ids: str, question: str = "q?") -> None:
    for rid in reply_ids:
        await store.record_exchange(exchange_row(rid, question=question), escalation_row(rid))


async def row_when(
    store: Store, reply_id: str, check: Callable[[EscalationRow], bool], within: float = 5.0
) -> EscalationRow:
    """The escalation row of ``reply_id`` once ``check(row)`` holds (the commit follows
    the Slack call by a moment)."""
    deadline = time.monotonic() + within
    while True:
        row = await store.escalation_for(reply_id)
        if row is not None and check(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"escalation of {reply_id} never matched: {row}")
        await asyncio.sleep(0.02)
