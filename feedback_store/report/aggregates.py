"""Feedback, decisions, reviews and segments: pure functions of the report's rows."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from feedback_store.report.metrics import cohen_kappa, quantile, rate, rounded
from feedback_store.report.panel import agrees_with_decision, panel_summary, with_decision
from feedback_store.report.panel import votes_by_reviewer as count_votes
from feedback_store.report.rows import (
    BallotRow,
    ExchangeRow,
    ReportRows,
    ReviewerVote,
    ReviewRow,
    VoteRow,
)
from feedback_store.vocabulary import (
    AFTER_REPLY_TRIGGERS,
    AWAITING_STATES,
    DECIDED_STATES,
    DECISION_KINDS,
    REPLAYED_STATE,
    REVIEWED_DECISIONS,
)

# -- feedback and decisions ----------------------------------------------------------


def user_votes(votes: Iterable[VoteRow]) -> list[VoteRow]:
    return [v for v in votes if not v.by_reviewer]


def feedback_summary(votes: Iterable[VoteRow]) -> dict[str, Any]:
    mine = user_votes(votes)
    up = sum(v.rating == "up" for v in mine)
    down = sum(v.rating == "down" for v in mine)
    reasons = Counter(v.reason or "unspecified" for v in mine if v.rating == "down")
    return {
        "up": up,
        "down": down,
        "helpful_rate": rate(up, up + down),
        "by_reason": dict(reasons.most_common()),
        # "" is a comment or correction whose text was purged: it was given all the same
        "comments": sum(v.comment is not None for v in mine),
        "corrections": sum(v.correction is not None for v in mine),
    }


def decision_counts(exchanges: Iterable[ExchangeRow]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(DECISION_KINDS, 0)
    for e in exchanges:
        counts[e.decision] = counts.get(e.decision, 0) + 1
    return counts


# -- reviews -----------------------------------------------------------------------


def reviewer_votes(
    reviews: Iterable[ReviewRow], votes: Iterable[VoteRow], ballots: Iterable[BallotRow] = ()
) -> list[ReviewerVote]:
    """Every reviewer's verdict per item: decided escalations, the reviewers' votes on
    them (``review_vote``), plus reviewer-sourced votes.

    One verdict per (item, reviewer): a reviewer who decided an escalation and also
    voted counts once, by the escalation.
    """
    found: dict[tuple[str, str], ReviewerVote] = {}
    for r in reviews:
        if r.state in DECIDED_STATES and r.decided_by:
            at = r.decided_at if r.decided_at is not None else r.created_at
            value = 1 if r.state == "approved" else 0
            found[(r.reply_id, r.decided_by)] = ReviewerVote(r.reply_id, r.decided_by, value, at)
    for b in ballots:
        vote = ReviewerVote(b.reply_id, b.reviewer, b.value, b.at)
        found.setdefault((b.reply_id, b.reviewer), vote)
    for v in votes:
        if v.by_reviewer:
            who = v.voter.partition(":")[2] or v.voter
            value = 1 if v.rating == "up" else 0
            found.setdefault((v.reply_id, who), ReviewerVote(v.reply_id, who, value, v.updated_at))
    return sorted(found.values(), key=lambda vote: (vote.at, vote.reply_id, vote.reviewer))


def agreement_pairs(votes: Iterable[ReviewerVote]) -> list[tuple[int, int]]:
    """(earlier verdict, later verdict) for every pair of reviewers on the same item."""
    by_item: dict[str, list[ReviewerVote]] = defaultdict(list)
    for vote in votes:
        by_item[vote.reply_id].append(vote)
    pairs = []
    for item in by_item.values():
        item.sort(key=lambda vote: vote.at)
        for i, earlier in enumerate(item):
            for later in item[i + 1 :]:
                pairs.append((earlier.value, later.value))
    return pairs


def waiting_times(decided: Iterable[ReviewRow]) -> list[float]:
    """Seconds from escalation to verdict. A verdict on a reply nobody escalated (the
    review API opens its row at the verdict, trigger "api") waited for nothing: left out."""
    return [
        r.decided_at - r.created_at
        for r in decided
        if r.decided_at is not None and r.trigger != "api"
    ]


def review_summary(
    reviews: Sequence[ReviewRow], votes: Sequence[VoteRow], ballots: Sequence[BallotRow] = ()
) -> dict[str, Any]:
    states = Counter(r.state for r in reviews)
    decided = [r for r in reviews if r.state in DECIDED_STATES]
    waits = waiting_times(decided)
    verdicts = reviewer_votes(reviews, votes, ballots)
    per_item = Counter(v.reply_id for v in verdicts)
    return {
        "escalated": len(reviews),
        "holds": sum(r.hold for r in reviews),
        "decided": len(decided),
        "approved": states["approved"],
        "rejected": states["rejected"],
        "corrected": states["corrected"],
        "pending": sum(states[s] for s in AWAITING_STATES),
        "expired": states["expired"],
        "dead_letter": states["failed"],
        # recorded by ``hitl replay``: what the policy would have sent, never put to people
        "replayed": states[REPLAYED_STATE],
        # opened after the reply went out: a thumbs-down, the deeper look, the review API
        "after_reply": sum(
            r.trigger in AFTER_REPLY_TRIGGERS for r in reviews if r.state != REPLAYED_STATE
        ),
        "median_seconds_to_decision": quantile(waits, 0.5),
        "p90_seconds_to_decision": quantile(waits, 0.9),
        "agreement": cohen_kappa(agreement_pairs(verdicts)),
        "items_with_several_reviewers": sum(n >= 2 for n in per_item.values()),
        # several reviewers' votes on one item: kappa between them, split votes
        **panel_summary(ballots),
        "by_reviewer": by_reviewer(decided, ballots),
    }


def by_reviewer(
    decided: Sequence[ReviewRow], ballots: Sequence[BallotRow] = ()
) -> list[dict[str, Any]]:
    """Per reviewer: the decisions they took, the votes they cast, and the share of
    those votes (on decided items) that agreed with the decision."""
    groups: dict[str, list[ReviewRow]] = defaultdict(list)
    for r in decided:
        groups[r.decided_by or "unknown"].append(r)
    cast = count_votes(ballots)
    agreed = with_decision(ballots, decided)
    for reviewer in cast:
        groups.setdefault(reviewer, [])
    out: list[dict[str, Any]] = []
    for reviewer, rows in groups.items():
        states = Counter(r.state for r in rows)
        waits = waiting_times(rows)
        out.append(
            {
                "reviewer": reviewer,
                "decided": len(rows),
                "approved": states["approved"],
                "rejected": states["rejected"],
                "corrected": states["corrected"],
                "median_seconds_to_decision": quantile(waits, 0.5),
                "votes": cast.get(reviewer, 0),
                "agrees_with_decision": agrees_with_decision(agreed, reviewer),
            }
        )
    out.sort(key=lambda row: (-row["decided"], -row["votes"], row["reviewer"]))
    return out


# -- segments ----------------------------------------------------------------------------


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | int | float):
        return str(value)[:80]
    return None


def segment_keys_of(exchanges: Iterable[ExchangeRow], *, max_values: int = 20) -> list[str]:
    """Request-metadata keys worth a breakdown: scalar values that repeat (a key whose
    every value is new, such as a request id, is not a group)."""
    values: dict[str, set[str]] = defaultdict(set)
    seen: Counter[str] = Counter()
    for e in exchanges:
        for key, value in e.meta.items():
            text = _scalar(value)
            if text is not None:
                values[key].add(text)
                seen[key] += 1
    return sorted(
        key
        for key, distinct in values.items()
        if len(distinct) <= max_values and (len(distinct) <= 2 or 2 * len(distinct) <= seen[key])
    )


def segments(rows: ReportRows, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rates per model, route and metadata value, so a bias toward one group shows."""
    keys = segment_keys_of(rows.exchanges) if keys is None else list(keys)
    ratings: dict[str, list[str]] = defaultdict(list)
    for v in user_votes(rows.votes):
        ratings[v.reply_id].append(v.rating)
    verdicts: dict[str, str] = {}
    for r in rows.reviews:
        if r.state in DECIDED_STATES:
            verdicts[r.reply_id] = r.state
    groups: dict[tuple[str, str], list[ExchangeRow]] = defaultdict(list)
    for e in rows.exchanges:
        groups[("model", e.model or "(none)")].append(e)
        groups[("route", e.route or "(none)")].append(e)
        for key in keys:
            value = _scalar(e.meta.get(key))
            if value is not None:
                groups[(key, value)].append(e)
    dimensions = ["model", "route", *keys]
    out: list[dict[str, Any]] = []
    for (dimension, value), members in groups.items():
        up = sum(r == "up" for e in members for r in ratings.get(e.id, ()))
        down = sum(r == "down" for e in members for r in ratings.get(e.id, ()))
        escalated = sum(e.decision in REVIEWED_DECISIONS for e in members)
        decided = [verdicts[e.id] for e in members if e.id in verdicts]
        out.append(
            {
                "segment": f"{dimension}={value}",
                "dimension": dimension,
                "value": value,
                "exchanges": len(members),
                "votes": up + down,
                "helpful_rate": rate(up, up + down),
                "escalated_rate": rate(escalated, len(members)),
                "reviewed": len(decided),
                "review_rejected_rate": rate(sum(s != "approved" for s in decided), len(decided)),
                "mean_confidence": rounded(float(np.mean([e.confidence for e in members]))),
            }
        )
    out.sort(key=lambda s: (dimensions.index(s["dimension"]), -s["exchanges"], s["value"]))
    return out
