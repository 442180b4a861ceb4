"""The gateway's words, defined once: decision kinds, ratings, reasons, verdicts, states.

The stored words come from ``feedback_store.vocabulary`` (they are what the store
keeps); the words only reviewers say (verdicts) and how they map onto stored states and
labels are defined here. Settings, validation messages, the review API, the Slack card
and the chat page all spell them from here (a test checks the page's copy).
"""

from __future__ import annotations

from typing import Literal

from feedback_store.vocabulary import (
    AWAITING_STATES,
    DECIDED_STATES,
    DECISION_KINDS,
    FAILED_STATE,
    FINAL_STATES,
    LABEL_SOURCES,
    RATINGS,
    REASONS,
    REPLAY_ROUTE,
    REPLAYED_STATE,
    REVIEW_STATES,
    REVIEWED_DECISIONS,
    TRIGGERS,
    DecisionKind,
    LabelSource,
    Rating,
    Reason,
    ReviewState,
    Trigger,
)

Verdict = Literal["approve", "reject", "correct"]
VERDICTS: tuple[Verdict, ...] = ("approve", "reject", "correct")
#: the review state a verdict leaves behind
STATE_OF: dict[Verdict, ReviewState] = {
    "approve": "approved",
    "reject": "rejected",
    "correct": "corrected",
}
#: the label a verdict teaches: an approval is helpful (1); a rejection or correction not
LABEL_OF: dict[Verdict, int] = {"approve": 1, "reject": 0, "correct": 0}


__all__ = [
    "AWAITING_STATES",
    "DECIDED_STATES",
    "DECISION_KINDS",
    "FAILED_STATE",
    "FINAL_STATES",
    "LABEL_OF",
    "LABEL_SOURCES",
    "RATINGS",
    "REASONS",
    "REPLAYED_STATE",
    "REPLAY_ROUTE",
    "REVIEWED_DECISIONS",
    "REVIEW_STATES",
    "STATE_OF",
    "TRIGGERS",
    "VERDICTS",
    "DecisionKind",
    "LabelSource",
    "Rating",
    "Reason",
    "ReviewState",
    "Trigger",
    "Verdict",
]
