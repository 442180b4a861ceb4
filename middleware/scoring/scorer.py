"""Scoring a reply on the request path: features, the model's prediction, the policy.

The scorer only *reads* the model; the learner task is its single writer. Both run on
the same event loop and neither awaits mid-update, so a prediction never sees a
half-learned model.

``assess`` decides with this process's own limits and counts what it decided. In a fleet
the reply flow then claims the escalation's slot and the ask from the shared counts;
``refused`` takes back what was not granted and decides again (``policy.downgrade``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from middleware.scoring.completion import ReplySummary
from middleware.scoring.conversation import SiblingIndex, Thumbs, sibling_key
from middleware.scoring.features import ExchangeView, features, sibling_of
from middleware.scoring.policy import (
    AskLimiter,
    BudgetState,
    Decision,
    DecisionContext,
    ReviewBudget,
    Thresholds,
    decide,
    downgrade,
    is_candidate,
)


class Brain(Protocol):
    """What the scorer reads from the learning side (``middleware.learning.brain.Brain``)."""

    def predict(self, x: dict[str, Any]) -> float | None:
        """P(helpful), or None while the model has learned nothing."""
        ...

    def is_outlier(self, x: dict[str, Any]) -> bool: ...

    def user_rate(self, user: str | None) -> tuple[float | None, int]: ...

    def recent_thumbs(self, user: str | None) -> Thumbs | None: ...

    def drifting(self, now: float) -> bool: ...

    def explain(self, x: dict[str, Any]) -> list[tuple[str, float]]: ...


@dataclass(slots=True)
class Assessment:
    confidence: float
    decision: Decision
    features: dict[str, Any]
    outlier: bool = False
    #: why it was flagged, for the review card: features pulling the score down, etc.
    reasons: list[str] = field(default_factory=list)
    #: what the decision was taken on, and when: for ``Scorer.refused``
    context: DecisionContext = field(default_factory=DecisionContext)
    at: float = 0.0
    end_user: str | None = None


class Scorer:
    def __init__(
        self,
        *,
        brain: Brain | None,
        prior: float,
        thresholds: Thresholds,
        budget: ReviewBudget,
        asker: AskLimiter,
        ask_sample_rate: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
        siblings: SiblingIndex | None = None,
    ) -> None:
        self.brain = brain
        self.prior = prior
        self.thresholds = thresholds
        self.budget = budget
        self.asker = asker
        self.ask_sample_rate = ask_sample_rate
        self.rng = rng or random.Random()
        self.clock = clock
        self.siblings = SiblingIndex() if siblings is None else siblings

    def assess(
        self,
        *,
        question: str,
        history: tuple[tuple[str, str], ...],
        reply: ReplySummary,
        signals: dict[str, float],
        model: str,
        route: str,
        end_user: str | None,
        risky: bool = False,
    ) -> Assessment:
        now = self.clock()
        brain = self.brain
        rate, votes = brain.user_rate(end_user) if brain is not None else (None, 0)
        key = sibling_key(end_user, question, history)
        view = ExchangeView(
            question=question,
            reply=reply.text,
            history=history,
            finish_reason=reply.finish_reason,
            tool_calls=reply.tool_calls,
            logprob_mean=reply.logprob_mean,
            retrieval_score=signals.get("retrieval_score"),
            route=route,
            model=model,
            user_helpful_rate=rate,
            user_votes=votes,
            thumbs=brain.recent_thumbs(end_user) if brain is not None else None,
            sibling=self.siblings.get(key),
        )
        x = features(view)
        predicted = brain.predict(x) if brain is not None else None
        confidence = self.prior if predicted is None else predicted
        if key is not None:
            self.siblings.put(key, sibling_of(reply.text, confidence))
        outlier = brain.is_outlier(x) if brain is not None else False
        drifting = brain.drifting(now) if brain is not None else False
        candidate = is_candidate(confidence, outlier, self.thresholds)
        # Only a candidate asks the budget; what refuses it is said on the decision.
        room = self.budget.check(confidence, now) if candidate else BudgetState(False)
        context = DecisionContext(
            outlier=outlier,
            risky=risky,
            sampled=self.rng.random() < self.ask_sample_rate * (3.0 if drifting else 1.0),
            may_ask=self.asker.may_ask(end_user, now),
            drifting=drifting,
        )
        decision = decide(confidence, context, room, self.thresholds)
        self.budget.record(confidence, decision.kind == "escalate", now)
        if decision.ask_feedback:
            self.asker.record(end_user, now)
        reasons = list(decision.reasons)
        if decision.reviewed and brain is not None and predicted is not None:
            reasons += [f"{name} pulled the score down" for name, _ in brain.explain(x)]
        if drifting and decision.reviewed:
            reasons.append("recent drift in the model's error rate")
        return Assessment(confidence, decision, x, outlier, reasons, context, now, end_user)

    def refused(self, assessment: Assessment, *, review: bool, ask: bool) -> Assessment:
        """``assessment`` once the fleet refused its escalation a slot of the hourly cap
        (``review`` False) or its ask (``ask`` False): the local counts take back what
        was refused, and the decision is what ``decide`` answers with that limit reached."""
        before = assessment.decision
        decision = downgrade(
            before,
            assessment.confidence,
            assessment.context,
            self.thresholds,
            review=review,
            ask=ask,
        )
        if before.kind == "escalate" and decision.kind != "escalate":
            self.budget.refused(assessment.at)
        if before.ask_feedback and not decision.ask_feedback:
            self.asker.refused(assessment.end_user, assessment.at)
        # A downgraded escalation is reviewed no more: its reasons are the new decision's.
        reasons = assessment.reasons if decision.kind == before.kind else list(decision.reasons)
        return replace(assessment, decision=decision, reasons=reasons)
