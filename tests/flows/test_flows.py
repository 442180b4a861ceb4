"""The flows without HTTP: what each commits, what it refuses, and which hooks it calls
(only after the commit)."""

from __future__ import annotations

from typing import Any

import pytest

from feedback_store import Store
from middleware.errors import InvalidToken, StoreUnavailable, UnknownReply
from middleware.flows import ComplaintFlow, Hooks, Vote, VoteFlow
from middleware.scoring.policy import ReviewBudget
from middleware.scoring.tokens import TokenSigner
from tests.support.builders import escalation_row, exchange_row

SECRET = "a-test-secret-of-enough-length"


class Heard:
    """Records every hook call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def hooks(self) -> Hooks:
        return Hooks(
            label_committed=lambda: self.calls.append(("label", None)),
            review_queued=lambda: self.calls.append(("review", None)),
            rated=lambda rating, source: self.calls.append(("rated", (rating, source))),
            decided=lambda outcome: self.calls.append(("decided", outcome.state)),
        )


def votes(store: Store, heard: Heard, *, enabled: bool = True, share: float = 1.0) -> VoteFlow:
    hooks = heard.hooks()
    complaints = ComplaintFlow(
        store=store,
        budget=ReviewBudget(share=share, per_hour=None),
        enabled=enabled,
        hooks=hooks,
    )
    return VoteFlow(
        store=store,
        signer=TokenSigner(SECRET),
        user_weight=1.0,
        complaints=complaints,
        hooks=hooks,
    )


def vote(reply_id: str, rating: str = "up", **kw: Any) -> Vote:
    return Vote(reply_id=reply_id, token=TokenSigner(SECRET).sign(reply_id), rating=rating, **kw)  # type: ignore[arg-type]


async def test_a_first_vote_wakes_the_learner_a_changed_one_does_not(store: Store) -> None:
    await store.record_exchange(exchange_row("r1", decision="deliver"))
    heard = Heard()
    flow = votes(store, heard)
    first = await flow(vote("r1", "up"))
    assert first.created
    assert heard.calls == [("label", None), ("rated", ("up", "user"))]
    changed = await flow(vote("r1", "down"))
    assert not changed.created
    # A changed vote is counted but teaches nothing new: the first thumb is the label.
    assert heard.calls[2:] == [("rated", ("down", "user"))]


async def test_a_wrong_token_and_an_unknown_reply_are_refused(store: Store) -> None:
    heard = Heard()
    flow = votes(store, heard)
    with pytest.raises(InvalidToken):
        await flow(Vote(reply_id="r1", token="forged", rating="up"))
    with pytest.raises(UnknownReply, match="r-missing"):
        await flow(vote("r-missing"))
    assert heard.calls == []


async def test_a_complaint_opens_a_review_within_the_budget(store: Store) -> None:
    await store.record_exchange(exchange_row("r1", decision="deliver", confidence=0.6))
    heard = Heard()
    await votes(store, heard)(vote("r1", "down", reason="incorrect", comment="wrong city"))
    escalation = await store.escalation_for("r1")
    assert escalation is not None and escalation.trigger == "downvote"
    assert ("review", None) in heard.calls


async def test_a_complaint_without_budget_or_switched_off_opens_nothing(store: Store) -> None:
    for reply_id in ("r1", "r2"):
        await store.record_exchange(exchange_row(reply_id, decision="deliver", confidence=0.9))
    await votes(store, Heard(), enabled=False)(vote("r1", "down", comment="no"))
    assert await store.escalation_for("r1") is None
    # A budget of nothing lets no complaint through.
    await votes(store, Heard(), share=0.0)(vote("r2", "down", comment="no"))
    assert await store.escalation_for("r2") is None


async def test_complaints_turn_their_replys_decisions_into_escalations(store: Store) -> None:
    budget = ReviewBudget(share=0.5, per_hour=None)
    for reply_id in ("r1", "r2"):
        await store.record_exchange(exchange_row(reply_id, decision="deliver", confidence=0.9))
        budget.record(0.9, False, now=0.0)  # the live decisions, as the scorer records them
    complaints = ComplaintFlow(store=store, budget=budget, enabled=True, hooks=Heard().hooks())
    await complaints("r1", "down", "wrong city")
    assert await store.escalation_for("r1") is not None
    assert budget.escalated_share == 0.5  # one of the two replies, none added
    # The second would make both replies escalations: over the half the budget allows.
    await complaints("r2", "down", "wrong date")
    assert await store.escalation_for("r2") is None


async def test_a_complaint_on_a_reviewed_reply_redraws_its_card(store: Store) -> None:
    await store.record_exchange(
        exchange_row("r1"), escalation_row("r1", state="posted", channel="C1", message_ts="1.1")
    )
    heard = Heard()
    await votes(store, heard, share=0.0)(vote("r1", "down", comment="still wrong"))
    escalation = await store.escalation_for("r1")
    assert escalation is not None and escalation.card_stale
    assert ("review", None) in heard.calls


async def test_a_store_failure_is_the_gateways_own_error(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    await store.start()
    await store.record_exchange(exchange_row("r1", decision="deliver"))
    await store.close()  # a stopped store refuses every write
    with pytest.raises(StoreUnavailable) as caught:
        await votes(store, Heard())(vote("r1"))
    assert caught.value.public == "the vote could not be stored; retry"
    assert caught.value.status_code == 503
