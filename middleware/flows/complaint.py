"""A complaint asks for a review: a thumbs-down with a comment may open one.

Whether it does is ``scoring.policy.complaint_action`` (pure); this flow reads what
that rule needs and carries out its answer. A new review within this process's budget
also needs a slot of the fleet's hourly cap (``caps``); refused, or with the shared
counters down, the complaint opens no review.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from feedback_store import Store, StoreError
from middleware.flows.hooks import Hooks
from middleware.quotas import FleetCaps
from middleware.scoring.policy import ReviewBudget, complaint_action, complaint_wanted
from middleware.vocabulary import Rating

log = logging.getLogger("hitl.review")


class ComplaintFlow:
    def __init__(
        self,
        *,
        store: Store,
        budget: ReviewBudget,
        enabled: bool,
        hooks: Hooks,
        caps: FleetCaps | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.budget = budget
        self.enabled = enabled
        self.hooks = hooks
        self.caps = caps
        self.clock = clock

    async def __call__(self, reply_id: str, rating: Rating, comment: str | None) -> None:
        """Open (or redraw) a review for a complaint. Never raises: the vote is stored."""
        if not complaint_wanted(enabled=self.enabled, rating=rating, comment=comment):
            return
        try:
            exchange = await self.store.get_exchange(reply_id)
            if exchange is None:
                return
            now = self.clock()
            under_review = await self.store.escalation_for(reply_id) is not None
            budget = self.budget
            # A complaint ranks with the least confident replies: only the share of
            # traffic and the hourly cap limit it.
            within_budget = under_review or (
                budget.allows(min(exchange.confidence, budget.threshold()), now, recorded=True)
                and (self.caps is None or await self.caps.review())
            )
            action = complaint_action(under_review=under_review, within_budget=within_budget)
            if action == "skip":
                log.info("thumbs-down on %s not reviewed: the review budget is used up", reply_id)
                return
            opened = await self.store.open_review(reply_id, trigger="downvote", now=now)
            if opened is not None:
                budget.escalated_later(now)
            self.hooks.review_queued()
        except StoreError as exc:
            # The vote itself is stored; only the extra review card is lost.
            log.error("thumbs-down on %s: review card not queued (%s)", reply_id, exc)
