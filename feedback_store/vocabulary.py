"""The words the store keeps: every decision kind, rating, reason and review state.

Each is a ``Literal`` for the type checker and a tuple of the same words for code that
validates or iterates. They are defined here, once, because they are stored values;
``middleware.vocabulary`` re-exports them for the rest of the gateway.
"""

from __future__ import annotations

from typing import Literal

DecisionKind = Literal["deliver", "ask", "escalate", "hold"]
DECISION_KINDS: tuple[DecisionKind, ...] = ("deliver", "ask", "escalate", "hold")
#: decisions that put a reply in front of a reviewer
REVIEWED_DECISIONS: tuple[DecisionKind, ...] = ("escalate", "hold")

Rating = Literal["up", "down"]
RATINGS: tuple[Rating, ...] = ("up", "down")

Reason = Literal["incorrect", "incomplete", "unsafe", "off-topic", "tone", "other"]
REASONS: tuple[Reason, ...] = ("incorrect", "incomplete", "unsafe", "off-topic", "tone", "other")

ReviewState = Literal[
    "pending", "posted", "approved", "rejected", "corrected", "expired", "failed", "replayed"
]
REVIEW_STATES: tuple[ReviewState, ...] = (
    "pending",
    "posted",
    "approved",
    "rejected",
    "corrected",
    "expired",
    "failed",
    "replayed",
)
#: waiting for a reviewer: not yet in the channel, or posted there
AWAITING_STATES: tuple[ReviewState, ...] = ("pending", "posted")
#: a reviewer decided
DECIDED_STATES: tuple[ReviewState, ...] = ("approved", "rejected", "corrected")
#: the outbox gave up posting the card (a dead letter)
FAILED_STATE: ReviewState = "failed"
#: nothing more will happen to the review: decided, timed out (a hold) or dead-lettered
FINAL_STATES: tuple[ReviewState, ...] = (*DECIDED_STATES, "expired", FAILED_STATE)
#: an escalation ``hitl replay`` recorded: what the policy would have sent to people,
#: kept for the figures, never posted nor queued (nobody is waiting for it)
REPLAYED_STATE: ReviewState = "replayed"
#: the route ``hitl replay`` records its exchanges on (live ones are on "chat")
REPLAY_ROUTE = "replay"

#: a reviewer's vote, as ``review_vote.verdict`` keeps it: approve is one side, reject
#: and correct the other (a correction counts as a rejection plus its text)
Verdict = Literal["approve", "reject", "correct"]
VERDICTS: tuple[Verdict, ...] = ("approve", "reject", "correct")
#: the vote a decided state stands for
VERDICT_OF: dict[str, Verdict] = {
    "approved": "approve",
    "rejected": "reject",
    "corrected": "correct",
}

#: what a hold released to its client (``escalation.released``)
Released = Literal["original", "correction", "fallback"]
RELEASES: tuple[Released, ...] = ("original", "correction", "fallback")

Trigger = Literal["policy", "outlier", "downvote", "api", "deep"]
TRIGGERS: tuple[Trigger, ...] = ("policy", "outlier", "downvote", "api", "deep")
#: reviews opened after the reply went out (not by the policy's decision at reply time)
AFTER_REPLY_TRIGGERS: tuple[Trigger, ...] = ("downvote", "api", "deep")

LabelSource = Literal["user", "reviewer"]
LABEL_SOURCES: tuple[LabelSource, ...] = ("user", "reviewer")
