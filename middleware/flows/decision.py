"""Take a reviewer's decision: the one path every review tool takes (Slack clicks, the
review API, the web queue).

A verdict is committed together with its label (approve is 1, reject and correct are 0,
weighted as a reviewer's) in one store job; the first verdict on a reply wins and later
ones learn who was first. Only after the commit are the hooks called: the learner
reads the label, the outbox redraws the card, the metrics count it.

A correction is stored masked (``[privacy] redact``); the outcome carries it as the
reviewer wrote it, which is what a held client waiting in this process receives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from feedback_store import ReplayedReply, Store
from middleware.errors import InvalidVerdict, NotReviewable, UnknownReply, store_errors
from middleware.flows.hooks import Hooks
from middleware.ports import ReviewItem, ReviewOutcome
from middleware.review.items import ReviewItems, votes_of
from middleware.review.privacy import Redactor
from middleware.vocabulary import LABEL_OF, REASONS, STATE_OF, VERDICTS, Reason, Verdict

log = logging.getLogger("hitl.review")

MAX_CORRECTION = 32_000
#: reply ids are "hitl-" and 24 hex digits; a longer one is no reply's
MAX_REPLY_ID = 200


def no_reply_has(reply_id: str) -> bool:
    """Whether no reply can have this id (pure): too long, or with a NUL, which
    PostgreSQL refuses in text (asking it would look like an outage, not a 404)."""
    return len(reply_id) > MAX_REPLY_ID or "\x00" in reply_id


def check_verdict(
    decision: str, reason: str | None, correction: str | None
) -> tuple[str | None, str | None]:
    """The (reason, correction) to store for a verdict, or ``InvalidVerdict`` saying what
    is wrong (pure)."""
    if decision not in VERDICTS:
        raise InvalidVerdict("'decision' must be one of " + ", ".join(VERDICTS), param="decision")
    if reason is not None and reason not in REASONS:
        raise InvalidVerdict("'reason' must be one of " + ", ".join(REASONS), param="reason")
    correction = correction.strip() if correction is not None else None
    if decision == "approve":
        return reason, None
    if decision == "reject":
        if reason is None:
            raise InvalidVerdict(
                "'reason' is required to reject: one of " + ", ".join(REASONS), param="reason"
            )
        return reason, None
    if not correction:
        raise InvalidVerdict(
            "'correction' (the corrected answer) is required to correct", param="correction"
        )
    if len(correction) > MAX_CORRECTION:
        raise InvalidVerdict(
            f"'correction' is longer than {MAX_CORRECTION} characters", param="correction"
        )
    return reason, correction


class DecisionFlow:
    """Commits verdicts (``ports.ReviewDesk``, what the reviewer channels call)."""

    def __init__(
        self,
        *,
        store: Store,
        items: ReviewItems,
        reviewer_weight: float,
        hooks: Hooks,
        votes_required: int = 1,
        redact: Redactor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.items = items
        self.reviewer_weight = reviewer_weight
        self.votes_required = votes_required
        self.hooks = hooks
        self.redact = redact or Redactor(())
        self.clock = clock

    async def decide(
        self,
        reply_id: str,
        verdict: Verdict,
        reviewer: str,
        reason: Reason | None = None,
        correction: str | None = None,
    ) -> ReviewOutcome:
        """Commit a verdict (first one wins; ``outcome.applied`` says whether this one did).

        Raises ``InvalidVerdict``, ``UnknownReply``, ``NotReviewable`` (a replayed
        reply), or ``StoreUnavailable`` when it could not be committed: then nothing
        changed.
        """
        if no_reply_has(reply_id):
            raise UnknownReply(reply_id[:MAX_REPLY_ID])
        stored_reason, written = check_verdict(verdict, reason, correction)
        stored_correction = self.redact.optional(written)
        with store_errors("the verdict could not be stored"):
            try:
                result = await self.store.record_review(
                    reply_id=reply_id,
                    state=STATE_OF[verdict],
                    reviewer=reviewer,
                    reason=stored_reason,
                    correction=stored_correction,
                    value=LABEL_OF[verdict],
                    weight=self.reviewer_weight,
                    now=self.clock(),
                    votes_required=self.votes_required,
                )
            except ReplayedReply:
                # A verdict would be a second label on it, and count as sent to people.
                raise NotReviewable(reply_id) from None
        if result is None:
            raise UnknownReply(reply_id)
        row = result.escalation
        # The decided correction is this one (as written) when it is the one stored.
        decided_correction = (
            written
            if written is not None and row.correction == stored_correction
            else row.correction
        )
        outcome = ReviewOutcome(
            reply_id=reply_id,
            applied=result.applied,
            state=row.state,
            decided_by=row.decided_by,
            decided_at=row.decided_at,
            reason=row.decision_reason,
            correction=decided_correction,
            label_id=result.label_id,
            channel=row.channel,
            message_ts=row.message_ts,
            created_at=row.created_at,
            decided=result.decided,
            votes=votes_of(result.votes),
            votes_required=self.votes_required,
        )
        if result.applied:
            # Every vote is a label, and redraws the card with the tally.
            log.info("review %s: %s by %s (%s)", reply_id, verdict, reviewer, outcome.message)
            self.hooks.label_committed()
            self.hooks.review_queued()
        if result.decided:
            self.hooks.decided(outcome)
        return outcome

    async def item_for(self, reply_id: str) -> ReviewItem | None:
        if no_reply_has(reply_id):
            return None
        with store_errors(f"reply {reply_id} could not be read"):
            return await self.items.for_reply(reply_id)
