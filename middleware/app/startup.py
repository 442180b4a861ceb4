"""What a serving process says and takes up as it starts: the one line naming what
runs, and the review budget of the decisions made before it (by the fleet, or by this
process before a restart)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from feedback_store import Store, StoreError
from feedback_store.history import recent_decisions
from feedback_store.urls import describe_url
from middleware.scoring.policy import ReviewBudget

if TYPE_CHECKING:
    from middleware.app.parts import Parts

log = logging.getLogger("hitl")


async def resume_budget(store: Store, budget: ReviewBudget) -> int:
    """Give ``budget`` the newest decisions in the store; how many it took up.

    A process starting with an empty budget knows neither the share its fleet (or its
    last run) has used nor the quantile of recent scores: it would escalate its first
    candidate whatever the share. A store that cannot be read leaves the budget empty.
    """
    try:
        decisions = await recent_decisions(store, budget.window)
    except StoreError as exc:
        log.warning("review budget starts empty: recent decisions unreadable (%s)", exc)
        return 0
    budget.resume(decisions)
    return len(decisions)


def startup_line(parts: Parts) -> str:
    """One line that says what runs: upstream, store, review, policy, model (no secret)."""
    settings = parts.settings
    upstream = settings.upstream
    where = "embedded FAQ model" if upstream.kind == "local" else upstream.base_url
    slack = settings.slack
    review = (
        f"Slack channel {slack.channel} ({slack.mode} mode)"
        if parts.review.slack is not None
        else "review API and /review page only (no Slack)"
    )
    policy = settings.policy
    learner = "learning here" if parts.learner.leading else "following the fleet's learner"
    unsafe = " (commits not forced to disk)" if settings.store.lose_recent_on_power_loss else ""
    return (
        f"hitl-gateway ({parts.role}): upstream {upstream.kind} {where} · store "
        f"{describe_url(settings.store.url)}{unsafe} · review: {review} · policy: review below "
        f"{policy.escalate_below:g}, hold below {policy.hold_below:g}, budget "
        f"{policy.review_budget:.0%}, {policy.max_reviews_per_hour} an hour · model: "
        f"version {parts.brain.version} ({parts.brain.fingerprint}), {parts.brain.labels} "
        f"labels learned, {learner}"
    )
