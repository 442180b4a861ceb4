"""What to do with a scored reply: a pure function, plus the small state it is fed.

``decide()`` takes values and returns a value; the stateful parts (the review budget,
the per-user asking limit) live in small classes whose answers are passed in. In a fleet
the decision then claims what it spends from the shared counts (the hourly cap, the
user's asks); ``downgrade()`` is what it becomes when a claim is refused.

| condition                                               | decision  |
| ------------------------------------------------------- | --------- |
| risky route and confidence < hold_below                 | hold      |
| (confidence < escalate_below or outlier), budget allows | escalate  |
| uncertain (near the boundary) or sampled, may ask       | ask       |
| otherwise                                               | deliver   |

A candidate the budget refused carries the rule that held it back (``HeldBack``: one of
``BUDGET_RULES`` and a sentence), on the decision and in its reasons, so the log line,
the stored exchange and ``GET /v1/replies/{id}`` can say why it was not escalated.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from middleware.vocabulary import REVIEWED_DECISIONS, DecisionKind


@dataclass(frozen=True, slots=True)
class Thresholds:
    escalate_below: float = 0.3
    hold_below: float = 0.2
    ask_margin: float = 0.15
    boundary: float = 0.5


@dataclass(frozen=True, slots=True)
class DecisionContext:
    outlier: bool = False
    risky: bool = False
    #: the reply won the random draw that keeps some confident replies asked too
    sampled: bool = False
    #: the end user's asking allowance is not used up
    may_ask: bool = True
    #: a drift was detected recently: ask more widely
    drifting: bool = False


#: Which limit of the review budget kept a candidate from people (stable names: logs,
#: ``GET /v1/replies/{id}`` and stored reasons spell them).
BudgetRule = Literal[
    "no_review_budget",  # [policy] review_budget = 0
    "hourly_cap",  # this process reached max_reviews_per_hour
    "review_share",  # the escalated share of recent decisions would pass the budget
    "least_confident",  # not among the least confident of recent scores
    "fleet_hourly_cap",  # the fleet's shared hourly cap refused its slot
]
BUDGET_RULES: tuple[BudgetRule, ...] = get_args(BudgetRule)


@dataclass(frozen=True, slots=True)
class BudgetState:
    #: the review budget (share of recent decisions, hourly cap, running quantile)
    #: has room for this reply
    allows_review: bool = True
    #: when it has not: the limit that is reached, and how (a clause for a person)
    refused_by: BudgetRule | None = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Why a review candidate was not escalated: a rule of ``BUDGET_RULES`` and a sentence."""

    rule: BudgetRule
    message: str

    def reason(self) -> str:
        """As one of a decision's stored reasons (``held_back_of`` reads it back)."""
        return f"held back ({self.rule}): {self.message}"


_HELD_BACK = re.compile(r"held back \(([a-z_]+)\): (.+)", re.DOTALL)


def held_back_of(reasons: Iterable[object]) -> HeldBack | None:
    """The ``HeldBack`` among stored reasons (pure; None when there is none)."""
    for reason in reasons:
        match = _HELD_BACK.fullmatch(reason) if isinstance(reason, str) else None
        if match and match[1] in BUDGET_RULES:
            return HeldBack(match[1], match[2])
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    kind: DecisionKind
    ask_feedback: bool
    reasons: tuple[str, ...] = field(default=())
    #: a review candidate the budget kept from people: which rule, and why
    held_back: HeldBack | None = None

    @property
    def reviewed(self) -> bool:
        return self.kind in REVIEWED_DECISIONS


def is_risky(risk_header: str | None, model: str, risky_models: frozenset[str]) -> bool:
    """A risky route: the client said ``X-HITL-Risk: high``, or the model it asked for is
    one of ``[policy] risky_models``. Known before the upstream answers, so a risky reply
    is never relayed before it is judged."""
    return (risk_header or "").strip().lower() == "high" or model in risky_models


def is_candidate(confidence: float, outlier: bool, thresholds: Thresholds) -> bool:
    """Whether a reply should go to people if the budget allows."""
    return confidence < thresholds.escalate_below or outlier


def decide(
    confidence: float,
    context: DecisionContext,
    budget: BudgetState,
    thresholds: Thresholds,
) -> Decision:
    reasons: list[str] = []
    margin = thresholds.ask_margin * (2.0 if context.drifting else 1.0)
    uncertain = abs(confidence - thresholds.boundary) < margin
    ask = context.may_ask and (uncertain or context.sampled)
    if context.risky and confidence < thresholds.hold_below:
        reasons.append(f"risky route, confidence {confidence:.2f} < {thresholds.hold_below:g}")
        if context.outlier:
            reasons.append("outlier")
        return Decision("hold", ask, tuple(reasons))
    if confidence < thresholds.escalate_below:
        reasons.append(f"confidence {confidence:.2f} < {thresholds.escalate_below:g}")
    if context.outlier:
        reasons.append("outlier")
    if reasons and budget.allows_review:
        return Decision("escalate", ask, tuple(reasons))
    held = _held_back(reasons, budget)
    kept = () if held is None else (held.reason(),)
    if ask:
        return Decision("ask", True, ("uncertain" if uncertain else "sampled", *kept), held)
    return Decision("deliver", False, kept, held)


def _held_back(candidate: list[str], budget: BudgetState) -> HeldBack | None:
    """A candidate (why it is one: ``candidate``) that the budget refused, and the rule."""
    if not candidate or budget.allows_review or budget.refused_by is None:
        return None
    why = f", but {budget.why}" if budget.why else ", but the review budget had no room"
    return HeldBack(budget.refused_by, f"{' and '.join(candidate)} made it a review candidate{why}")


#: what ``downgrade`` says when the fleet refused an escalation its slot
FLEET_CAP_WHY = (
    "the fleet's hourly review cap ([policy] max_reviews_per_hour) is used up, "
    "or the fleet's shared counters did not answer in time"
)


def downgrade(
    decision: Decision,
    confidence: float,
    context: DecisionContext,
    thresholds: Thresholds,
    *,
    review: bool,
    ask: bool,
) -> Decision:
    """``decision`` once the fleet answered its claims: ``review`` False when no slot of
    the hourly cap was granted to an escalation, ``ask`` False when the user's asks were
    used up. A refused claim decides again exactly as if this process's own cap or the
    user's allowance had been reached; a hold stays a hold (the budget never limits it).
    """
    context = replace(context, may_ask=context.may_ask and ask)
    if decision.kind == "escalate":
        budget = BudgetState() if review else _refused("fleet_hourly_cap", FLEET_CAP_WHY)
        return decide(confidence, context, budget, thresholds)
    again = decide(confidence, context, BudgetState(allows_review=False), thresholds)
    held = decision.held_back
    if held is None:
        return again
    # Not escalated here either: still held back by the rule that held it back.
    return replace(again, reasons=(*again.reasons, held.reason()), held_back=held)


ComplaintAction = Literal["skip", "open", "redraw"]


def complaint_wanted(*, enabled: bool, rating: str, comment: str | None) -> bool:
    """Whether a vote is a complaint that may ask for a review: a thumbs-down that says
    something, while ``[policy] review_downvotes`` is on."""
    return enabled and rating == "down" and bool(comment and comment.strip())


def complaint_action(*, under_review: bool, within_budget: bool) -> ComplaintAction:
    """What a complaint does: a reply already under review has its card redrawn with the
    complaint; otherwise a new review opens when the review budget allows it."""
    if under_review:
        return "redraw"
    return "open" if within_budget else "skip"


class ReviewBudget:
    """Keeps escalations within a share of recent decisions and an hourly cap.

    The least confident go first: a candidate is allowed when its confidence is at or
    below the ``share``-quantile of the last ``quantile_window`` scores, and escalating
    it keeps the escalated share of the last ``window`` decisions at or below
    ``share + slack`` (counted over ``1 / (share + slack)`` decisions while there are
    fewer: a new process may escalate its first candidate). A short quantile window
    follows a learning model's scores as they move; the slack (one percentage point by
    default) lets a run of low scores use the budget a run of high ones left (measured
    in ``bench/learning_candidates.py``).

    In a fleet each process keeps its own budget: a share bound that every process keeps
    of its own decisions is kept by the union of them, so only the hourly cap must be
    counted for the fleet (``middleware.quotas.FleetCaps``). This process's own count of
    the hour is a first filter: it is never above the fleet's.
    """

    def __init__(
        self,
        *,
        share: float,
        per_hour: int | None,
        window: int = 1000,
        quantile_window: int = 100,
        slack: float = 0.01,
    ) -> None:
        self.share = share
        self.per_hour = per_hour
        self.window = window
        self.quantile_window = quantile_window
        self.slack = slack
        self._decisions: deque[bool] = deque()
        self._escalated = 0
        self._scores: deque[float] = deque()
        self._sorted: list[float] = []
        self._hour: deque[float] = deque()

    def threshold(self) -> float:
        """The running ``share``-quantile of recent scores (1.0 until there are any)."""
        if self.share >= 1.0 or not self._sorted:
            return 1.0
        index = max(0, math.ceil(self.share * len(self._sorted)) - 1)
        return self._sorted[index]

    def allows(self, confidence: float, now: float, *, recorded: bool = False) -> bool:
        return self.check(confidence, now, recorded=recorded).allows_review

    def check(self, confidence: float, now: float, *, recorded: bool = False) -> BudgetState:
        """Whether a candidate scored ``confidence`` may go to people now, and if not,
        which limit keeps it back. ``recorded``: its reply's decision is already among
        the recent ones (a deeper look or a complaint reconsiders a delivered reply), so
        escalating it adds no decision (``escalated_later``)."""
        if self.share <= 0.0:
            return _refused("no_review_budget", "[policy] review_budget is 0: nothing is escalated")
        if self.per_hour is not None:
            while self._hour and self._hour[0] <= now - 3600.0:
                self._hour.popleft()
            if len(self._hour) >= self.per_hour:
                return _refused(
                    "hourly_cap",
                    f"{len(self._hour)} replies were already escalated in the last hour "
                    f"([policy] max_reviews_per_hour = {self.per_hour})",
                )
        if self.share >= 1.0:
            return BudgetState()
        n = max(1, len(self._decisions) + (0 if recorded else 1))
        bound = self.share + self.slack
        # Fewer decisions than one escalation's worth: counted as that many, so a new
        # gateway's first candidate goes to people rather than waiting to be one of ten.
        per_one = math.ceil(1.0 / bound)
        if (self._escalated + 1) / max(n, per_one) > bound:
            return _refused("review_share", self._share_used(n, per_one))
        # Too few scores for a quantile: the share limit alone decides.
        if len(self._sorted) < 20 or confidence <= self.threshold():
            return BudgetState()
        return _refused(
            "least_confident",
            f"under the review budget only the least confident go to people, and its "
            f"confidence {confidence:.2f} is above {self.threshold():.2f}, the "
            f"{self.share:.0%} quantile of the last {len(self._sorted)} scores",
        )

    def _share_used(self, n: int, per_one: int) -> str:
        limits = (
            f"[policy] review_budget = {self.share:g} plus review_budget_slack = {self.slack:g}"
        )
        if n < per_one:
            return (
                f"escalating it would make {self._escalated + 1} escalations in the first "
                f"{n} decisions, and {limits} allow one per {per_one}"
            )
        return (
            f"escalating it would make {self._escalated + 1} of the last {n} decisions "
            f"escalations, above {limits}"
        )

    def record(self, confidence: float, escalated: bool, now: float) -> None:
        self._decisions.append(escalated)
        self._escalated += escalated
        if len(self._decisions) > self.window:
            self._escalated -= self._decisions.popleft()
        self._scores.append(confidence)
        bisect.insort(self._sorted, confidence)
        if len(self._scores) > self.quantile_window:
            old = self._scores.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        if escalated:
            self._hour.append(now)

    def resume(self, decisions: Iterable[tuple[float, str, float]]) -> None:
        """Take up recent ``(confidence, decision, at)``, oldest first, as if decided here:
        a process that starts knows the share, the quantile and the hour it joins."""
        for confidence, decision, at in decisions:
            self.record(confidence, decision == "escalate", at)

    def escalated_later(self, now: float) -> None:
        """A reply recorded as not escalated goes to people after all: its decision
        becomes an escalation, and no decision or score is added (recording it again
        would count the reply twice in the share and in the quantile)."""
        self._hour.append(now)
        # As in ``refused``: the share counts escalations, not which reply's.
        for i in range(len(self._decisions) - 1, -1, -1):
            if not self._decisions[i]:
                self._decisions[i] = True
                self._escalated += 1
                return
        # Its decision has left the window (or was never this process's): count it anew.
        self._decisions.append(True)
        self._escalated += 1
        if len(self._decisions) > self.window:
            self._escalated -= self._decisions.popleft()

    def refused(self, now: float) -> None:
        """The escalation recorded at ``now`` was refused a slot of the fleet's hourly cap:
        it counts as a decision that escalated nothing."""
        with contextlib.suppress(ValueError):
            self._hour.remove(now)
        # The newest escalation stands for it (others may have been decided since, while
        # the claim was out): the share counts escalations, not which one.
        for i in range(len(self._decisions) - 1, -1, -1):
            if self._decisions[i]:
                self._decisions[i] = False
                self._escalated -= 1
                return

    @property
    def escalated_share(self) -> float:
        return self._escalated / len(self._decisions) if self._decisions else 0.0


def _refused(rule: BudgetRule, why: str) -> BudgetState:
    return BudgetState(allows_review=False, refused_by=rule, why=why)


class AskLimiter:
    """At most ``per_hour`` feedback requests per end user per hour (sliding window)."""

    def __init__(self, per_hour: int, *, max_users: int = 100_000) -> None:
        self.per_hour = per_hour
        self.max_users = max_users
        self._asked: dict[str, deque[float]] = {}

    def may_ask(self, user: str | None, now: float) -> bool:
        if user is None:
            return self.per_hour > 0
        times = self._asked.get(user)
        if times is None:
            return self.per_hour > 0
        while times and times[0] <= now - 3600.0:
            times.popleft()
        return len(times) < self.per_hour

    def record(self, user: str | None, now: float) -> None:
        if user is None:
            return
        if user not in self._asked and len(self._asked) >= self.max_users:
            # Bounded memory: forget the oldest user (dicts keep insertion order).
            self._asked.pop(next(iter(self._asked)))
        self._asked.setdefault(user, deque()).append(now)

    def refused(self, user: str | None, now: float) -> None:
        """The ask recorded for ``user`` at ``now`` was refused by the fleet's count."""
        times = self._asked.get(user) if user is not None else None
        if times is not None:
            with contextlib.suppress(ValueError):
                times.remove(now)
