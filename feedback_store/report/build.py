"""The whole report, and its table of exchanges (the CSV)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from feedback_store.report.aggregates import (
    decision_counts,
    feedback_summary,
    review_summary,
    segments,
    user_votes,
)
from feedback_store.report.metrics import iso, quantile, rounded
from feedback_store.report.model import model_summary
from feedback_store.report.periods import timeline
from feedback_store.report.rows import ReportRows, ReviewRow, VoteRow
from feedback_store.report.topics import complaints, topics
from feedback_store.vocabulary import DECIDED_STATES, REPLAY_ROUTE

CSV_COLUMNS = (
    "reply_id",
    "created_at",
    "model",
    "route",
    "decision",
    "confidence",
    "outlier",
    "status",
    "upstream_ms",
    "total_ms",
    "vote",
    "vote_reason",
    "review_state",
    "reviewed_by",
    "review_reason",
    "seconds_to_decision",
    "label",
)


def build_report(
    rows: ReportRows,
    *,
    since: float | None = None,
    until: float | None = None,
    segment_keys: Sequence[str] | None = None,
    window: int = 200,
    now: float | None = None,
) -> dict[str, Any]:
    """The whole report as JSON-ready data. Pure: the same rows give the same report."""
    times = [e.created_at for e in rows.exchanges]
    start = since if since is not None else (min(times) if times else None)
    end = until if until is not None else (max(times) if times else None)
    report: dict[str, Any] = {
        "period": {"from": iso(start), "until": iso(end)},
        "generated_at": iso(now),
        "exchanges": len(rows.exchanges),
        # from ``hitl replay``, timed when they were replayed (a recorded stream has no
        # clock of its own): the page says so
        "replayed": sum(e.route == REPLAY_ROUTE for e in rows.exchanges),
        "feedback": feedback_summary(rows.votes),
        "decisions": decision_counts(rows.exchanges),
        "reviews": review_summary(rows.reviews, rows.votes, rows.ballots),
        "model": {
            **model_summary(rows.labels, rows.events, window=window, start=start),
            # both tiers, when the deeper look ran: its rolling figures, not the period's
            "deep": rows.deep,
        },
        "topics": topics(complaints(rows)),
        "segments": segments(rows, segment_keys),
        "latency": {
            "upstream_ms_p50": quantile([e.upstream_ms for e in rows.exchanges], 0.5),
            "upstream_ms_p90": quantile([e.upstream_ms for e in rows.exchanges], 0.9),
            "overhead_ms_p50": quantile(
                [max(0.0, e.total_ms - e.upstream_ms) for e in rows.exchanges], 0.5
            ),
        },
    }
    if start is not None and end is not None:
        # Bucket by the data actually present: an open-ended "since" must not stretch
        # the chart over empty months.
        lo = min(times) if times else start
        hi = max(times) if times else end
        report["timeline"] = timeline(rows, start=max(start, lo), end=min(end, hi))
    else:
        report["timeline"] = {"bucket_seconds": 0, "buckets": [], "drift": []}
    return report


def exchange_table(rows: ReportRows) -> list[dict[str, Any]]:
    """One row per exchange (the CSV): its decision, confidence, vote and review."""
    votes: dict[str, VoteRow] = {}
    for v in sorted(user_votes(rows.votes), key=lambda vote: vote.updated_at):
        votes[v.reply_id] = v  # the latest voter's vote
    reviews: dict[str, ReviewRow] = {}
    for r in rows.reviews:
        current = reviews.get(r.reply_id)
        # A decided escalation speaks louder than a newer one still waiting.
        if current is None or (r.state in DECIDED_STATES) >= (current.state in DECIDED_STATES):
            reviews[r.reply_id] = r
    table = []
    for e in rows.exchanges:
        vote = votes.get(e.id)
        review = reviews.get(e.id)
        label: int | None = None
        if review is not None and review.state in DECIDED_STATES:
            label = 1 if review.state == "approved" else 0
        elif vote is not None:
            label = 1 if vote.rating == "up" else 0
        waited = (
            review.decided_at - review.created_at
            if review is not None and review.decided_at is not None
            else None
        )
        table.append(
            {
                "reply_id": e.id,
                "created_at": iso(e.created_at),
                "model": e.model,
                "route": e.route,
                "decision": e.decision,
                "confidence": rounded(e.confidence),
                "outlier": e.outlier,
                "status": e.status,
                "upstream_ms": rounded(e.upstream_ms, 2),
                "total_ms": rounded(e.total_ms, 2),
                "vote": vote.rating if vote else None,
                "vote_reason": vote.reason if vote else None,
                "review_state": review.state if review else None,
                "reviewed_by": review.decided_by if review else None,
                "review_reason": review.reason if review else None,
                "seconds_to_decision": rounded(waited, 3),
                "label": label,
            }
        )
    return table
