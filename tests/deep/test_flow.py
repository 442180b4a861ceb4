"""The deeper look in the loop, over a real SQLite store, with a stand-in embedder (the
real worker is tested in ``test_worker.py`` and ``test_serve.py``): what its score does
to a delivered reply and to a held one, what it learns, and its snapshot."""

from __future__ import annotations

import asyncio

import pytest

from feedback_store import Store
from middleware.flows import ComplaintFlow, Hooks, Vote, VoteFlow
from middleware.flows.deep import DeepFlow, deep_escalates, hold_released
from middleware.learning.deep import DeepModel
from middleware.learning.deep.worker import EmbedderUnavailable
from middleware.scoring.policy import Decision, DecisionContext, ReviewBudget, Thresholds
from middleware.scoring.scorer import Assessment
from middleware.scoring.tokens import TokenSigner
from tests.deep.test_look import WordEmbedder
from tests.support.builders import exchange_row

T = Thresholds(escalate_below=0.3, hold_below=0.2)


@pytest.mark.parametrize(
    ("score", "fast", "escalates"),
    [
        (None, "deliver", False),  # the look has learned nothing: the live score stands
        (0.1, "deliver", True),
        (0.1, "ask", True),
        (0.29, "deliver", True),
        (0.3, "deliver", False),
        (0.1, "escalate", False),  # already with people
        (0.1, "hold", False),
    ],
)
def test_which_scores_send_a_delivered_reply_to_people(
    score: float | None, fast: str, escalates: bool
) -> None:
    assert deep_escalates(score, fast, T) is escalates


def test_a_hold_is_released_only_on_a_score() -> None:
    assert hold_released(0.2, T) and hold_released(0.9, T)
    assert not hold_released(0.19, T)
    assert not hold_released(None, T)  # a failed or late look keeps it held


class DeadEmbedder(WordEmbedder):
    async def embed(self, texts: list[str]) -> list[list[float]]:
        raise EmbedderUnavailable("the embedding worker stopped (test)")


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    """These tests run on SQLite only."""
    return sqlite_store


def flow(store: Store, embedder: WordEmbedder, *, wait_s: float = 5.0) -> DeepFlow:
    queued: list[int] = []
    deep = DeepFlow(
        embedder=embedder,
        model=DeepModel(ring_size=50, neighbours=5),
        queue_size=8,
        store=store,
        budget=ReviewBudget(share=1.0, per_hour=None),
        thresholds=T,
        learned_up_to=lambda: 10**9,
        review_queued=lambda: queued.append(1),
        wait_s=wait_s,
    )
    deep.queued = queued  # type: ignore[attr-defined]
    return deep


def assessed(kind: str, confidence: float = 0.5) -> Assessment:
    return Assessment(
        confidence, Decision(kind, False), {}, context=DecisionContext(risky=kind == "hold")
    )


async def teach(deep: DeepFlow) -> None:
    # enough for the second model, which starts as the live score and learns slowly
    for i in range(300):
        helpful = i % 2 == 0
        text = "it arrives monday" if helpful else "sorry i do not know"
        assert await deep.look.learn(f"l{i}", "q", text, 0.5, helpful, 1.0)


async def test_a_low_deep_score_sends_a_delivered_reply_to_review(store: Store) -> None:
    deep = flow(store, WordEmbedder())
    await teach(deep)
    for reply_id, text in [("bad", "sorry no"), ("good", "arrives monday")]:
        await store.record_exchange(exchange_row(reply_id, reply_text=text), None)
        deep.budget.record(0.5, False, now=0.0)  # the live decision, as the scorer records it
        deep.submit(reply_id, "q", text, assessed("deliver"))
    await deep.look.step()
    bad, good = await store.escalation_for("bad"), await store.escalation_for("good")
    assert bad is not None and bad.trigger == "deep" and bad.state == "pending"
    assert good is None
    # One decision per reply: the bad one's became an escalation, none was added.
    assert deep.budget.escalated_share == 0.5
    assert deep.counts().escalated == 1 and deep.queued == [1]  # type: ignore[attr-defined]


async def test_no_budget_no_deep_escalation(store: Store) -> None:
    deep = flow(store, WordEmbedder())
    deep.budget = ReviewBudget(share=0.0, per_hour=None)
    await teach(deep)
    await store.record_exchange(exchange_row("bad", reply_text="sorry no"), None)
    deep.submit("bad", "q", "sorry no", assessed("deliver"))
    await deep.look.step()
    assert await store.escalation_for("bad") is None and deep.counts().escalated == 0


async def test_a_held_reply_is_released_only_by_a_good_score(store: Store) -> None:
    deep = flow(store, WordEmbedder())
    await teach(deep)
    deep._task = asyncio.create_task(deep.run())
    try:
        good = await deep.hold("g", "q", "it arrives monday", assessed("hold", 0.1))
        bad = await deep.hold("b", "q", "sorry i do not know", assessed("hold", 0.1))
    finally:
        await deep.stop()
    assert good.decision.kind != "hold" and "deeper look" in good.decision.reasons[0]
    assert good.confidence == 0.1  # the live score is what the live model is judged on
    assert bad.decision.kind == "hold"
    assert deep.counts().released == 1


async def test_a_hold_stays_held_when_the_worker_is_dead_or_late(store: Store) -> None:
    dead = flow(store, DeadEmbedder())
    dead._task = asyncio.create_task(dead.run())
    try:
        kept = await dead.hold("h", "q", "it arrives monday", assessed("hold", 0.1))
    finally:
        await dead.stop()
    assert kept.decision.kind == "hold" and dead.counts().failed == 1
    late = flow(store, WordEmbedder(), wait_s=0.01)  # nobody runs its task
    kept = await late.hold("h2", "q", "it arrives monday", assessed("hold", 0.1))
    assert kept.decision.kind == "hold"


async def test_it_learns_the_stored_labels_and_comes_back_from_its_snapshot(
    store: Store,
) -> None:
    signer = TokenSigner()
    signer.set_secret("s" * 32)
    hooks = Hooks()
    budget = ReviewBudget(share=0.0, per_hour=None)
    complaints = ComplaintFlow(store=store, budget=budget, enabled=False, hooks=hooks)
    votes = VoteFlow(
        store=store, signer=signer, user_weight=1.0, complaints=complaints, hooks=hooks
    )
    for i in range(30):
        helpful = i % 2 == 0
        text = "it arrives monday" if helpful else "sorry i do not know"
        await store.record_exchange(exchange_row(f"r{i}", reply_text=text, question="q"), None)
        rating = "up" if helpful else "down"
        await votes(Vote(reply_id=f"r{i}", token=signer.sign(f"r{i}"), rating=rating))
    deep = flow(store, WordEmbedder())
    assert await deep.catch_up() == 30 and deep.model.labels == 30
    assert await deep.catch_up() == 0  # each label once
    await deep.snapshot()
    again = flow(store, WordEmbedder())
    await again.restore()
    assert again.model.labels == 30 and again.last_label_id == deep.last_label_id
    assert await again.catch_up() == 0
