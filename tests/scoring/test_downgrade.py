"""A decision the fleet refused: ``downgrade`` (pure) is what ``decide`` answers with the
cap or the user's allowance reached, and the scorer takes back what it had counted."""

from __future__ import annotations

import itertools

import pytest

from middleware.scoring.completion import ReplySummary
from middleware.scoring.policy import (
    FLEET_CAP_WHY,
    AskLimiter,
    BudgetState,
    Decision,
    DecisionContext,
    HeldBack,
    ReviewBudget,
    Thresholds,
    decide,
    downgrade,
)
from middleware.scoring.scorer import Assessment, Scorer

T = Thresholds(escalate_below=0.3, hold_below=0.2, ask_margin=0.25)
UNCERTAIN = 0.28  # a candidate near the boundary: asked when it may be
SURE_LOW = 0.05  # a candidate far from the boundary
PLAIN = DecisionContext()


def fleet_refused(kind: str, ask: bool, reasons: tuple[str, ...], candidate: str) -> Decision:
    """What an escalation refused its fleet slot becomes: held back by the fleet's cap."""
    held = HeldBack(
        "fleet_hourly_cap", f"{candidate} made it a review candidate, but {FLEET_CAP_WHY}"
    )
    return Decision(kind, ask, (*reasons, held.reason()), held)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("confidence", "context", "review", "ask", "expected"),
    [
        # An escalation refused its slot: what the reached cap decides.
        (
            UNCERTAIN,
            PLAIN,
            False,
            True,
            fleet_refused("ask", True, ("uncertain",), "confidence 0.28 < 0.3"),
        ),
        (
            SURE_LOW,
            DecisionContext(sampled=True),
            False,
            True,
            fleet_refused("ask", True, ("sampled",), "confidence 0.05 < 0.3"),
        ),
        (
            SURE_LOW,
            PLAIN,
            False,
            True,
            fleet_refused("deliver", False, (), "confidence 0.05 < 0.3"),
        ),
        # ... refused its slot and its ask.
        (
            UNCERTAIN,
            PLAIN,
            False,
            False,
            fleet_refused("deliver", False, (), "confidence 0.28 < 0.3"),
        ),
        # Its slot granted, its ask refused: still escalated, nobody asked.
        (UNCERTAIN, PLAIN, True, False, Decision("escalate", False, ("confidence 0.28 < 0.3",))),
        # An outlier that is sure of itself goes to people for being an outlier.
        (
            0.9,
            DecisionContext(outlier=True, sampled=True),
            True,
            False,
            Decision("escalate", False, ("outlier",)),
        ),
        # An ask refused: delivered.
        (0.55, PLAIN, True, False, Decision("deliver", False, ())),
        # A hold never depends on the budget: refused everything, it is still a hold.
        (
            0.1,
            DecisionContext(risky=True),
            False,
            False,
            Decision("hold", False, ("risky route, confidence 0.10 < 0.2",)),
        ),
        (
            0.1,
            DecisionContext(risky=True, outlier=True, sampled=True),
            False,
            False,
            Decision("hold", False, ("risky route, confidence 0.10 < 0.2", "outlier")),
        ),
        # Everything granted: unchanged.
        (UNCERTAIN, PLAIN, True, True, Decision("escalate", True, ("confidence 0.28 < 0.3",))),
    ],
)
def test_downgrade(
    confidence: float, context: DecisionContext, review: bool, ask: bool, expected: Decision
) -> None:
    decision = decide(confidence, context, BudgetState(allows_review=True), T)
    assert downgrade(decision, confidence, context, T, review=review, ask=ask) == expected


def test_a_refused_claim_is_exactly_the_local_limit_reached() -> None:
    """Over every kind of reply: refusing the slot is ``decide`` with the budget spent,
    refusing the ask is ``decide`` with the user's asks spent; a decision that claimed
    nothing is left as it was. A candidate the local budget held back stays held back by
    the same rule; one the fleet refused is held back by the fleet's cap."""
    local = BudgetState(False, "review_share", "the share is used")
    for confidence, outlier, risky, sampled, may_ask, drifting, allows in itertools.product(
        (0.05, 0.15, 0.25, 0.35, 0.5, 0.6, 0.95),
        *([(False, True)] * 6),
    ):
        context = DecisionContext(outlier, risky, sampled, may_ask, drifting)
        decision = decide(confidence, context, BudgetState() if allows else local, T)
        for review, ask in itertools.product((False, True), repeat=2):
            budget = local
            if allows:
                budget = BudgetState(False, "fleet_hourly_cap", FLEET_CAP_WHY)
                if review or decision.kind != "escalate":
                    budget = BudgetState()
            expected = decide(
                confidence,
                DecisionContext(outlier, risky, sampled, may_ask and ask, drifting),
                budget,
                T,
            )
            got = downgrade(decision, confidence, context, T, review=review, ask=ask)
            assert got == expected, (confidence, context, allows, review, ask)
            if decision.kind == "hold":
                assert got.kind == "hold"
            if review and ask:
                assert got == decision


def test_a_refused_escalation_frees_the_local_count() -> None:
    budget = ReviewBudget(share=1.0, per_hour=2)
    budget.record(0.1, True, now=10.0)
    budget.record(0.1, True, now=11.0)
    assert not budget.allows(0.1, now=12.0)
    budget.refused(11.0)
    assert budget.escalated_share == 0.5
    assert budget.allows(0.1, now=12.0)
    # The other escalation still leaves the hour when it always would.
    budget.record(0.1, True, now=12.0)
    assert not budget.allows(0.1, now=3609.0)
    assert budget.allows(0.1, now=3610.0)


def test_a_refused_ask_frees_the_users_local_count() -> None:
    asker = AskLimiter(1)
    asker.record("alice", 5.0)
    assert not asker.may_ask("alice", 6.0)
    asker.refused("alice", 5.0)
    asker.refused("bob", 5.0)  # never asked: nothing to take back
    asker.refused(None, 5.0)
    assert asker.may_ask("alice", 6.0)


def scorer(budget: ReviewBudget, asker: AskLimiter) -> Scorer:
    return Scorer(
        brain=None,
        prior=0.28,  # below escalate_below and within the asking margin
        thresholds=T,
        budget=budget,
        asker=asker,
        ask_sample_rate=0.0,
        clock=lambda: 100.0,
    )


def assess(s: Scorer, user: str | None = "alice", risky: bool = False) -> Assessment:
    return s.assess(
        question="Where is my parcel?",
        history=(),
        reply=ReplySummary(text="It is on its way.", finish_reason="stop"),
        signals={},
        model="m",
        route="chat",
        end_user=user,
        risky=risky,
    )


def test_the_scorer_takes_back_what_the_fleet_refused() -> None:
    budget, asker = ReviewBudget(share=1.0, per_hour=1), AskLimiter(1)
    s = scorer(budget, asker)
    first = assess(s)
    assert (first.decision.kind, first.decision.ask_feedback) == ("escalate", True)
    assert first.reasons == ["confidence 0.28 < 0.3"] and first.at == 100.0
    # This process's own cap and alice's asks are used up by it...
    assert not budget.allows(0.28, 100.0) and not asker.may_ask("alice", 100.0)
    refused = s.refused(first, review=False, ask=False)
    assert (refused.decision.kind, refused.decision.ask_feedback) == ("deliver", False)
    held = refused.decision.held_back
    assert held is not None and held.rule == "fleet_hourly_cap"
    assert refused.reasons == [held.reason()] and refused.confidence == first.confidence
    # ... until the fleet refused them: then they are free again.
    assert budget.allows(0.28, 100.0) and asker.may_ask("alice", 100.0)
    assert budget.escalated_share == 0.0
    again = assess(s)
    assert again.decision.kind == "escalate"
    kept = s.refused(again, review=True, ask=False)
    assert (kept.decision.kind, kept.decision.ask_feedback) == ("escalate", False)
    assert kept.reasons == again.reasons
    assert not budget.allows(0.28, 100.0) and asker.may_ask("alice", 100.0)


def test_a_held_reply_stays_held_when_its_ask_is_refused() -> None:
    s = scorer(ReviewBudget(share=1.0, per_hour=1), AskLimiter(1))
    s.prior = 0.15
    held = assess(s, risky=True)
    assert held.decision.kind == "hold"
    after = s.refused(held, review=False, ask=False)
    assert after.decision.kind == "hold" and after.reasons == held.reasons
