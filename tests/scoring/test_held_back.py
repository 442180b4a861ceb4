"""Why a review candidate was not escalated: each rule of the review budget, named on the
decision (``decide``, ``downgrade``) and read back from the stored reasons."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from middleware.scoring.policy import (
    BUDGET_RULES,
    FLEET_CAP_WHY,
    BudgetState,
    DecisionContext,
    HeldBack,
    ReviewBudget,
    Thresholds,
    decide,
    downgrade,
    held_back_of,
)

T = Thresholds(escalate_below=0.3, hold_below=0.2, ask_margin=0.15)
#: 0.28 is a candidate within the asking margin
WIDE = Thresholds(escalate_below=0.3, hold_below=0.2, ask_margin=0.25)
NOW = 10_000.0


def no_budget() -> ReviewBudget:
    return ReviewBudget(share=0.0, per_hour=None)


def hour_used() -> ReviewBudget:
    budget = ReviewBudget(share=1.0, per_hour=2)
    budget.record(0.1, True, now=NOW - 60)
    budget.record(0.1, True, now=NOW - 30)
    return budget


def share_used() -> ReviewBudget:
    budget = ReviewBudget(share=0.1, per_hour=None, slack=0.01)
    budget.record(0.1, True, now=NOW)
    for _ in range(9):
        budget.record(0.9, False, now=NOW)
    return budget


def not_least_confident() -> ReviewBudget:
    budget = ReviewBudget(share=0.1, per_hour=None)
    for i in range(30):  # nothing escalated; the 10% quantile of 0.00..0.29 is 0.02
        budget.record(i / 100, False, now=NOW)
    return budget


def hour_passed() -> ReviewBudget:
    budget = ReviewBudget(share=1.0, per_hour=2)
    budget.record(0.1, True, now=NOW - 3700)
    budget.record(0.1, True, now=NOW - 3650)
    return budget


@pytest.mark.parametrize(
    ("budget", "confidence", "rule", "why"),
    [
        (no_budget, 0.25, "no_review_budget", "[policy] review_budget is 0: nothing is escalated"),
        (
            hour_used,
            0.25,
            "hourly_cap",
            "2 replies were already escalated in the last hour ([policy] max_reviews_per_hour = 2)",
        ),
        (
            share_used,
            0.25,
            "review_share",
            "escalating it would make 2 of the last 11 decisions escalations, above "
            "[policy] review_budget = 0.1 plus review_budget_slack = 0.01",
        ),
        (
            not_least_confident,
            0.25,
            "least_confident",
            "under the review budget only the least confident go to people, and its "
            "confidence 0.25 is above 0.02, the 10% quantile of the last 30 scores",
        ),
        # Within every limit: escalated, nothing held back.
        (not_least_confident, 0.01, None, ""),
        (hour_passed, 0.25, None, ""),
        (lambda: ReviewBudget(share=1.0, per_hour=None), 0.25, None, ""),
    ],
)
def test_each_budget_rule_is_named_on_the_decision(
    budget: Callable[[], ReviewBudget], confidence: float, rule: str | None, why: str
) -> None:
    room = budget().check(confidence, NOW)
    assert room.refused_by == rule and room.why == why
    assert room.allows_review is (rule is None)
    decision = decide(confidence, DecisionContext(), room, T)
    if rule is None:
        assert decision.kind == "escalate" and decision.held_back is None
        return
    assert decision.kind == "deliver"
    expected = HeldBack(
        rule,  # type: ignore[arg-type]
        f"confidence {confidence:.2f} < 0.3 made it a review candidate, but {why}",
    )
    assert decision.held_back == expected
    # Stored with the reasons, and read back from them as it was.
    assert decision.reasons == (expected.reason(),)
    assert held_back_of(list(decision.reasons)) == expected


def test_the_fleet_cap_is_named_when_it_refuses_the_slot() -> None:
    context = DecisionContext()
    escalated = decide(0.28, context, BudgetState(), WIDE)
    assert escalated.kind == "escalate" and escalated.held_back is None
    refused = downgrade(escalated, 0.28, context, WIDE, review=False, ask=True)
    assert refused.kind == "ask"  # uncertain: asked instead
    assert refused.held_back == HeldBack(
        "fleet_hourly_cap", f"confidence 0.28 < 0.3 made it a review candidate, but {FLEET_CAP_WHY}"
    )
    assert refused.reasons == ("uncertain", refused.held_back.reason())
    # Granted: nothing held back.
    assert downgrade(escalated, 0.28, context, WIDE, review=True, ask=True).held_back is None


def test_a_local_rule_survives_a_refused_ask() -> None:
    room = BudgetState(False, "least_confident", "not among the least confident")
    asked = decide(0.28, DecisionContext(), room, WIDE)
    assert asked.kind == "ask" and asked.held_back is not None
    after = downgrade(asked, 0.28, DecisionContext(), WIDE, review=True, ask=False)
    assert after.kind == "deliver"
    assert after.held_back == asked.held_back
    assert after.reasons == (asked.held_back.reason(),)


@pytest.mark.parametrize(
    ("confidence", "context", "held"),
    [
        # Not a candidate: nothing was held back, whatever the budget.
        (0.9, DecisionContext(), False),
        (0.5, DecisionContext(), False),
        # A hold never depends on the budget.
        (0.1, DecisionContext(risky=True), False),
        # An outlier is a candidate too, and says so.
        (0.9, DecisionContext(outlier=True), True),
        (0.25, DecisionContext(outlier=True), True),
    ],
)
def test_only_candidates_the_budget_refused_are_held_back(
    confidence: float, context: DecisionContext, held: bool
) -> None:
    room = BudgetState(False, "review_share", "the share is used")
    decision = decide(confidence, context, room, T)
    assert (decision.held_back is not None) is held
    if held:
        assert decision.held_back is not None
        assert decision.held_back.message.startswith(
            "outlier made it" if confidence >= 0.3 else "confidence 0.25 < 0.3 and outlier made it"
        )


def test_a_refusal_without_a_rule_holds_back_nothing_it_cannot_name() -> None:
    decision = decide(0.1, DecisionContext(), BudgetState(allows_review=False), T)
    assert decision.kind == "deliver" and decision.held_back is None and decision.reasons == ()


@pytest.mark.parametrize(
    "reasons",
    [
        [],
        ["uncertain", "confidence 0.10 < 0.3"],
        ["held back (no_such_rule): something"],  # an unknown name is no rule
        ["held back (review_share)"],  # no sentence
        [{"held back": "review_share"}, 3, None],  # not text at all
    ],
)
def test_held_back_of_reads_only_what_decide_wrote(reasons: list[object]) -> None:
    assert held_back_of(reasons) is None


def test_every_rule_reads_back() -> None:
    for rule in BUDGET_RULES:
        held = HeldBack(rule, "a sentence: with a colon (and brackets)\nand a line")
        assert held_back_of(["uncertain", held.reason()]) == held
