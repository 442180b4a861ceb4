"""The reply and complaint flows claim from the fleet's counts: two sets of parts (two
processes, each with its own store file) sharing one set of counters hold the hourly
review cap and each user's asks for the pair; counters that fail mean fewer reviews and
asks, never more, and never a held reply released."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from feedback_store import Escalation, Store
from middleware.app.parts import Parts, build_parts
from middleware.errors import QuotaUnavailable
from middleware.flows import ChatExchange, ComplaintFlow, Hooks
from middleware.quotas import FleetCaps, MemoryQuotas, Quotas
from middleware.scoring.completion import ReplySummary
from middleware.scoring.policy import ReviewBudget
from middleware.scoring.tokens import new_reply_id
from middleware.settings import settings_from_mapping
from tests.support.builders import exchange_row


class Down:
    """Counters that cannot be reached."""

    def __init__(self) -> None:
        self.calls = 0

    async def take(self, name: str, key: str, *, limit: int, window_s: int) -> int | None:
        self.calls += 1
        raise QuotaUnavailable("the counters are down")

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await fleet(quotas, n=2, **policy)``: ``n`` started parts (SQLite stores of their
    own) sharing ``quotas``, as ``n`` processes sharing Redis or PostgreSQL would."""
    async with AsyncExitStack() as stack:

        async def start(quotas: Quotas, n: int = 2, **policy: Any) -> list[Parts]:
            started = []
            for i in range(n):
                settings = settings_from_mapping(
                    {
                        "store": {"url": f"sqlite:///{tmp_path / f'p{i}-{time.time_ns()}.db'}"},
                        "upstream": {"kind": "local"},
                        "policy": policy,
                    }
                )
                parts = build_parts(settings, environ={}, quotas=quotas)
                await parts.start(serve=False)
                stack.push_async_callback(parts.stop, serve=False)
                started.append(parts)
            return started

        yield start


def exchange(user: str | None = None, *, risky: bool = False) -> ChatExchange:
    return ChatExchange(
        reply_id=new_reply_id(),
        payload={"model": "m", "messages": [{"role": "user", "content": "Where is my parcel?"}]},
        end_user=user,
        risky=risky,
        started=time.perf_counter(),
        summary=ReplySummary(text="It is on its way.", finish_reason="stop"),
        signals={},
        model="m",
    )


ESCALATE_ALL = {"escalate_below": 1.0, "review_budget": 1.0, "ask_sample_rate": 0.0}


async def test_the_hourly_cap_holds_for_two_processes(fleet: Any) -> None:
    a, b = await fleet(MemoryQuotas(), **ESCALATE_ALL, max_reviews_per_hour=3)
    decisions = [(await (a, b)[i % 2].replies(exchange())).decision for i in range(10)]
    assert [d.kind for d in decisions].count("escalate") == 3
    # The rest are what this process's own cap, reached, decides: asked (at the prior,
    # right on the boundary), nothing more; each says which cap held it back.
    rest = [d for d in decisions if d.kind != "escalate"]
    assert {(d.kind, d.reasons[0]) for d in rest} == {("ask", "uncertain")}
    assert {d.held_back.rule for d in rest if d.held_back} <= {"hourly_cap", "fleet_hourly_cap"}
    assert all(d.held_back for d in rest)
    assert any(d.held_back and d.held_back.rule == "fleet_hourly_cap" for d in rest)
    stored = [await p.store.count_rows(Escalation) for p in (a, b)]
    assert sum(stored) == 3 and all(stored)  # both processes escalated some
    # Each process counts as escalated only what the fleet granted it.
    for parts, escalated in zip((a, b), stored, strict=True):
        assert parts.scorer.budget.escalated_share == escalated / 5


async def test_asks_per_user_hold_for_two_processes(fleet: Any) -> None:
    policy = {"escalate_below": 0.0, "ask_per_user_per_hour": 2, "ask_sample_rate": 0.0}
    a, b = await fleet(MemoryQuotas(), **policy)
    alice = [(await (a, b)[i % 2].replies(exchange("alice"))).decision for i in range(6)]
    assert [d.ask_feedback for d in alice] == [True, True, False, False, False, False]
    assert [d.kind for d in alice[2:]] == ["deliver"] * 4
    assert (await b.replies(exchange("bob"))).decision.ask_feedback
    # Users without a name are never limited.
    assert all([(await a.replies(exchange(None))).decision.ask_feedback for _ in range(4)])


async def test_a_reply_that_spends_nothing_asks_the_counters_nothing(fleet: Any) -> None:
    down = Down()
    (parts,) = await fleet(down, n=1, escalate_below=0.0, ask_margin=0.0, ask_sample_rate=0.0)
    assert (await parts.replies(exchange("alice"))).decision.kind == "deliver"
    assert down.calls == 0


async def test_counters_that_are_down_mean_no_review_and_no_ask_but_holds_hold(
    fleet: Any,
) -> None:
    down = Down()
    (parts,) = await fleet(
        down, n=1, **ESCALATE_ALL, hold_below=0.6, risky_models=["m"], max_reviews_per_hour=100
    )
    plain = (await parts.replies(exchange("carol"))).decision
    assert (plain.kind, plain.ask_feedback) == ("deliver", False)
    risky = exchange("carol", risky=True)
    held = await parts.replies(risky)
    assert (held.decision.kind, held.decision.ask_feedback) == ("hold", False)
    row = await parts.store.escalation_for(risky.reply_id)
    assert row is not None and row.hold
    assert await parts.store.count_rows(Escalation) == 1  # the hold's, nothing else
    assert down.calls == 3  # a review and an ask for the first, an ask for the hold
    assert parts.scorer.budget.escalated_share == 0.0


# -- complaints -------------------------------------------------------------------------


def complaints(store: Store, quotas: Quotas, per_hour: int = 1) -> ComplaintFlow:
    hooks = Hooks(
        label_committed=lambda: None,
        review_queued=lambda: None,
        rated=lambda rating, source: None,
        decided=lambda outcome: None,
    )
    return ComplaintFlow(
        store=store,
        budget=ReviewBudget(share=1.0, per_hour=None),
        enabled=True,
        hooks=hooks,
        caps=FleetCaps(quotas, reviews_per_hour=per_hour, asks_per_user_per_hour=10),
    )


async def test_a_complaint_needs_a_slot_of_the_fleets_cap(store: Store) -> None:
    for reply_id in ("r1", "r2", "r3"):
        await store.record_exchange(exchange_row(reply_id, decision="deliver", confidence=0.9))
    shared = MemoryQuotas()
    # Two processes' complaint flows, one slot an hour between them.
    await complaints(store, shared)("r1", "down", "wrong")
    await complaints(store, shared)("r2", "down", "wrong too")
    assert await store.escalation_for("r1") is not None
    assert await store.escalation_for("r2") is None
    # Counters that are down open nothing.
    await complaints(store, Down(), per_hour=100)("r3", "down", "wrong again")
    assert await store.escalation_for("r3") is None
