"""``decide()`` as a table, and the review budget over streams of decisions."""

from __future__ import annotations

import math
import random

import pytest

from middleware.scoring.policy import (
    AskLimiter,
    BudgetState,
    DecisionContext,
    ReviewBudget,
    Thresholds,
    complaint_action,
    complaint_wanted,
    decide,
    is_candidate,
    is_risky,
)

T = Thresholds(escalate_below=0.3, hold_below=0.2, ask_margin=0.15)
OPEN = BudgetState(allows_review=True)
FULL = BudgetState(allows_review=False)


def ctx(**kw: bool) -> DecisionContext:
    return DecisionContext(**kw)


@pytest.mark.parametrize(
    ("confidence", "context", "budget", "kind", "ask"),
    [
        # confident replies are delivered
        (0.9, ctx(), OPEN, "deliver", False),
        (0.66, ctx(), OPEN, "deliver", False),
        # near the boundary: ask
        (0.5, ctx(), OPEN, "ask", True),
        (0.62, ctx(), OPEN, "ask", True),
        (0.38, ctx(), OPEN, "ask", True),
        # ... unless this user may not be asked again
        (0.5, ctx(may_ask=False), OPEN, "deliver", False),
        # sampled confident replies are asked too, within the user's allowance
        (0.9, ctx(sampled=True), OPEN, "ask", True),
        (0.9, ctx(sampled=True, may_ask=False), OPEN, "deliver", False),
        # drift doubles the asking margin
        (0.75, ctx(drifting=True), OPEN, "ask", True),
        (0.75, ctx(), OPEN, "deliver", False),
        # below escalate_below ("below" is strict) within the budget: escalate
        (0.29, ctx(), OPEN, "escalate", False),
        (0.3, ctx(), OPEN, "deliver", False),
        (0.05, ctx(), OPEN, "escalate", False),
        # over the budget: not escalated; asked only if uncertain or sampled
        (0.05, ctx(), FULL, "deliver", False),
        (0.05, ctx(sampled=True), FULL, "ask", True),
        # an outlier is escalated even when confident, budget permitting
        (0.95, ctx(outlier=True), OPEN, "escalate", False),
        (0.95, ctx(outlier=True), FULL, "deliver", False),
        (0.5, ctx(outlier=True), OPEN, "escalate", True),
        # risky route below hold_below: held, whatever the budget
        (0.1, ctx(risky=True), OPEN, "hold", False),
        (0.1, ctx(risky=True), FULL, "hold", False),
        (0.19, ctx(risky=True, outlier=True), FULL, "hold", False),
        # risky but at or above hold_below: the ordinary rules
        (0.2, ctx(risky=True), OPEN, "escalate", False),
        (0.25, ctx(risky=True), FULL, "deliver", False),
        (0.9, ctx(risky=True), OPEN, "deliver", False),
        # thresholds are inclusive ends of [0, 1]
        (0.0, ctx(), OPEN, "escalate", False),
        (1.0, ctx(), OPEN, "deliver", False),
    ],
)
def test_decide(
    confidence: float, context: DecisionContext, budget: BudgetState, kind: str, ask: bool
) -> None:
    decision = decide(confidence, context, budget, T)
    assert (decision.kind, decision.ask_feedback) == (kind, ask)
    assert decision.reviewed == (kind in ("escalate", "hold"))


def test_decide_says_why() -> None:
    assert decide(0.1, ctx(risky=True, outlier=True), OPEN, T).reasons == (
        "risky route, confidence 0.10 < 0.2",
        "outlier",
    )
    assert decide(0.25, ctx(outlier=True), OPEN, T).reasons == (
        "confidence 0.25 < 0.3",
        "outlier",
    )
    assert decide(0.5, ctx(), OPEN, T).reasons == ("uncertain",)
    assert decide(0.9, ctx(sampled=True), OPEN, T).reasons == ("sampled",)
    assert decide(0.9, ctx(), OPEN, T).reasons == ()


def test_uncertain_escalations_also_ask() -> None:
    wide = Thresholds(escalate_below=0.45, hold_below=0.2, ask_margin=0.15)
    decision = decide(0.4, ctx(), OPEN, wide)
    assert (decision.kind, decision.ask_feedback) == ("escalate", True)


@pytest.mark.parametrize(
    ("confidence", "outlier", "expected"),
    [(0.29, False, True), (0.3, False, False), (0.9, True, True), (0.9, False, False)],
)
def test_is_candidate(confidence: float, outlier: bool, expected: bool) -> None:
    assert is_candidate(confidence, outlier, T) is expected


def run_stream(budget: ReviewBudget, scores: list[float], *, escalate_below: float) -> list[bool]:
    """Feed decisions as the scorer does: only candidates ask the budget, all are recorded."""
    escalated = []
    for i, score in enumerate(scores):
        allowed = score < escalate_below and budget.allows(score, now=float(i))
        budget.record(score, allowed, now=float(i))
        escalated.append(allowed)
        # Within the share, or (before one escalation's worth of decisions) just one.
        n = min(i + 1, budget.window)
        bound = budget.share + budget.slack
        assert budget.escalated_share * n <= max(1.0, bound * n) + 1e-9
    return escalated


@pytest.mark.parametrize(("share", "per_one"), [(0.1, 10), (0.04, 20), (0.5, 2)])
def test_a_new_budget_escalates_its_first_candidate_then_keeps_the_share(
    share: float, per_one: int
) -> None:
    budget = ReviewBudget(share=share, per_hour=None)
    assert budget.allows(0.05, now=0.0)  # not "one of one is above the share"
    budget.record(0.05, True, now=0.0)
    decisions = 1
    while not budget.allows(0.05, now=float(decisions)):
        room = budget.check(0.05, now=float(decisions))
        assert room.refused_by == "review_share"
        if decisions + 1 < per_one:
            assert room.why == (
                f"escalating it would make 2 escalations in the first {decisions + 1} "
                f"decisions, and [policy] review_budget = {share:g} plus "
                f"review_budget_slack = 0.01 allow one per {per_one}"
            )
        else:
            assert room.why.startswith(f"escalating it would make 2 of the last {decisions + 1}")
        budget.record(0.05, False, now=float(decisions))
        decisions += 1
    # The second waits until it is within the share of every decision so far.
    assert decisions + 1 == math.ceil(2 / (share + 0.01))
    assert budget.escalated_share == 1 / decisions


@pytest.mark.parametrize("share", [0.01, 0.05, 0.1, 0.3])
def test_review_budget_share_is_never_exceeded(share: float) -> None:
    rng = random.Random(7)
    scores = [rng.random() for _ in range(3000)]
    budget = ReviewBudget(share=share, per_hour=None, window=500)
    escalated = run_stream(budget, scores, escalate_below=0.5)
    count = sum(escalated)
    assert count > 0
    # Over every window the cap (share plus its one-point slack) holds, not just at the end.
    for end in range(500, len(escalated) + 1, 50):
        assert sum(escalated[end - 500 : end]) <= (share + budget.slack) * 500 + 1e-9
    # The least confident go first.
    chosen = [s for s, e in zip(scores, escalated, strict=True) if e]
    candidates = [s for s in scores if s < 0.5]
    assert sum(chosen) / len(chosen) < sum(candidates) / len(candidates)


def test_review_budget_full_share_escalates_every_candidate_from_the_first() -> None:
    budget = ReviewBudget(share=1.0, per_hour=None)
    # Ties included: every score the same.
    escalated = run_stream(budget, [0.1] * 50, escalate_below=0.3)
    assert all(escalated)
    assert budget.escalated_share == 1.0


def test_review_budget_ties_do_not_starve_a_partial_share() -> None:
    budget = ReviewBudget(share=0.2, per_hour=None, window=100)
    escalated = run_stream(budget, [0.1] * 200, escalate_below=0.3)
    # Equal scores all sit at the quantile: the share fills (to within one of the window).
    assert 20 <= sum(escalated[-100:]) <= 21


def test_review_budget_prefers_the_least_confident_once_warm() -> None:
    budget = ReviewBudget(share=0.1, per_hour=None)
    for i in range(1, 101):
        budget.record(i / 100, False, now=0.0)
    assert budget.threshold() == pytest.approx(0.10)
    assert budget.allows(0.05, now=0.0)
    assert budget.allows(0.10, now=0.0)
    # Room in the share, but not among the least confident tenth.
    assert not budget.allows(0.2, now=0.0)


def test_review_budget_without_slack_holds_the_share_exactly() -> None:
    budget = ReviewBudget(share=0.1, per_hour=None, window=200, slack=0.0)
    rng = random.Random(3)
    escalated = run_stream(budget, [rng.random() for _ in range(1000)], escalate_below=1.0)
    for end in range(200, len(escalated) + 1, 20):
        assert sum(escalated[end - 200 : end]) <= 20


def test_review_budget_zero_share_never_escalates() -> None:
    budget = ReviewBudget(share=0.0, per_hour=None)
    assert not any(run_stream(budget, [0.0] * 20, escalate_below=0.3))


def test_review_budget_hourly_cap() -> None:
    budget = ReviewBudget(share=1.0, per_hour=3)
    times = [0.0, 10.0, 20.0, 30.0, 3599.0, 3600.0, 3610.0, 3620.0, 3630.0]
    allowed = []
    for now in times:
        ok = budget.allows(0.1, now)
        budget.record(0.1, ok, now)
        allowed.append(ok)
    # Three in the first hour; each frees its slot an hour after it was used.
    assert allowed == [True, True, True, False, False, True, True, True, False]


def test_review_budget_window_forgets_old_decisions() -> None:
    budget = ReviewBudget(share=0.5, per_hour=None, window=10)
    for i in range(10):
        budget.record(0.1, i % 2 == 0, now=float(i))
    assert budget.escalated_share == 0.5
    for i in range(10):
        budget.record(0.9, False, now=float(10 + i))
    assert budget.escalated_share == 0.0


def test_a_later_escalation_turns_its_replys_decision_into_one_and_adds_none() -> None:
    # A deeper look or a complaint sends a delivered reply to people after all.
    budget = ReviewBudget(share=0.1, per_hour=None, window=100, slack=0.0)
    for i in range(100):
        budget.record(i / 100, False, now=float(i))
    quantile = budget.threshold()
    for n in range(1, 11):
        assert budget.allows(0.05, now=100.0, recorded=True)
        budget.escalated_later(now=100.0)
        # Exactly n of the same 100 decisions, not n of 100 + n.
        assert budget.escalated_share == n / 100
    assert budget.threshold() == quantile  # no score was added
    assert not budget.allows(0.05, now=100.0, recorded=True)  # 11 of 100 > 10%
    # Recorded anew, the same ten count as 10 of 110, and an eleventh gets through.
    twice = ReviewBudget(share=0.1, per_hour=None, window=200, slack=0.0)
    for i in range(100):
        twice.record(i / 100, False, now=float(i))
    for _ in range(10):
        twice.record(0.05, True, now=100.0)
    assert twice.allows(0.05, now=100.0)


def test_a_resumed_budget_knows_the_share_the_quantile_and_the_hour() -> None:
    resumed = ReviewBudget(share=0.1, per_hour=2, window=100)
    resumed.resume(
        [(i / 100, "escalate" if i in (50, 90) else "deliver", float(i)) for i in range(100)]
    )
    assert resumed.escalated_share == 0.02
    assert resumed.threshold() == pytest.approx(0.09)  # the 10% quantile of the 100 scores
    # Two escalations within the hour before 100 s: the hourly cap is spent.
    assert resumed.check(0.01, now=100.0).refused_by == "hourly_cap"
    assert resumed.allows(0.01, now=3651.0)


def test_a_later_escalation_spends_the_hourly_cap() -> None:
    budget = ReviewBudget(share=1.0, per_hour=2)
    budget.record(0.1, False, now=0.0)
    budget.escalated_later(now=1.0)
    budget.escalated_later(now=2.0)  # no undecided one left to turn: counted anew
    assert budget.escalated_share == 1.0
    assert not budget.allows(0.1, now=3.0, recorded=True)
    assert budget.allows(0.1, now=3601.0, recorded=True)


def test_ask_limiter_per_user_per_hour() -> None:
    asker = AskLimiter(2)
    for now in (0.0, 1.0):
        assert asker.may_ask("alice", now)
        asker.record("alice", now)
    assert not asker.may_ask("alice", 2.0)
    assert asker.may_ask("bob", 2.0)
    assert asker.may_ask("alice", 3600.5)
    # Anonymous users are not tracked, only the global switch applies.
    asker.record(None, 0.0)
    assert asker.may_ask(None, 0.0)
    assert not AskLimiter(0).may_ask(None, 0.0)
    assert not AskLimiter(0).may_ask("carol", 0.0)


def test_ask_limiter_memory_is_bounded() -> None:
    asker = AskLimiter(1, max_users=3)
    for user in ("a", "b", "c", "d"):
        asker.record(user, 0.0)
    # The oldest user was forgotten; the newest is still limited.
    assert asker.may_ask("a", 1.0)
    assert not asker.may_ask("d", 1.0)


# -- a complaint asks for a review -------------------------------------------------------


@pytest.mark.parametrize(
    ("enabled", "rating", "comment", "wanted"),
    [
        (True, "down", "wrong city", True),
        (True, "down", None, False),
        (True, "down", "   ", False),
        (True, "up", "great", False),
        (False, "down", "wrong city", False),
    ],
)
def test_a_complaint_is_a_thumbs_down_that_says_something(
    enabled: bool, rating: str, comment: str | None, wanted: bool
) -> None:
    assert complaint_wanted(enabled=enabled, rating=rating, comment=comment) is wanted


@pytest.mark.parametrize(
    ("under_review", "within_budget", "action"),
    [
        (False, True, "open"),
        (False, False, "skip"),
        # Already in front of a reviewer: the card is redrawn, whatever the budget says.
        (True, False, "redraw"),
        (True, True, "redraw"),
    ],
)
def test_what_a_complaint_does(under_review: bool, within_budget: bool, action: str) -> None:
    assert complaint_action(under_review=under_review, within_budget=within_budget) == action


@pytest.mark.parametrize(
    ("header", "model", "risky"),
    [
        ("high", "any", True),
        (" HIGH ", "any", True),
        ("low", "refunds", True),
        (None, "refunds", True),
        (None, "chat", False),
        ("", "chat", False),
        ("medium", "chat", False),
    ],
)
def test_a_route_is_risky_by_header_or_model(header: str | None, model: str, risky: bool) -> None:
    assert is_risky(header, model, frozenset({"refunds"})) is risky
