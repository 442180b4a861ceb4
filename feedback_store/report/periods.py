"""Time: the report's buckets and timeline, and the points in time a user writes."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from feedback_store.report.aggregates import user_votes, waiting_times
from feedback_store.report.metrics import iso, quantile, rate
from feedback_store.report.rows import ReportRows
from feedback_store.vocabulary import (
    AWAITING_STATES,
    DECIDED_STATES,
    REPLAY_ROUTE,
    REPLAYED_STATE,
)

#: nice time-bucket widths in seconds; the report picks the first giving few enough buckets
BUCKET_WIDTHS = (
    1,
    5,
    10,
    30,
    60,
    300,
    600,
    900,
    1800,
    3600,
    3 * 3600,
    6 * 3600,
    12 * 3600,
    86400,
    7 * 86400,
    30 * 86400,
)
MAX_BUCKETS = 48


def bucket_width(span_seconds: float, *, max_buckets: int = MAX_BUCKETS) -> int:
    for width in BUCKET_WIDTHS:
        if span_seconds / width <= max_buckets:
            return width
    return BUCKET_WIDTHS[-1]


def timeline(rows: ReportRows, *, start: float, end: float) -> dict[str, Any]:
    """Per time bucket: volume, votes, escalations, decisions, time to decision, backlog.

    Votes and decisions follow their exchange, as the period's cards count them: a
    decision taken after the period's last exchange counts in its reply's bucket (with
    the time it took), not in a bucket past the chart's end. The backlog is the one
    figure by the clock: what was still waiting when each bucket ended. Exchanges from
    ``hitl replay`` count in the volume (``replayed``), but their escalations were never
    put to people: they are not among the escalated. The escalated are the review items
    of the bucket's exchanges, however they were opened.
    """
    width = bucket_width(max(end - start, 1.0))
    first = math.floor(start / width) * width
    count = max(1, math.floor((end - first) / width) + 1)
    starts = [first + i * width for i in range(count)]

    def index(ts: float) -> int | None:
        i = math.floor((ts - first) / width)
        return i if 0 <= i < count else None

    exchanges = [0] * count
    escalated = [0] * count
    replayed = [0] * count
    up = [0] * count
    down = [0] * count
    decided = [0] * count
    waits: list[list[float]] = [[] for _ in range(count)]
    bucket_of: dict[str, int] = {}
    for e in rows.exchanges:
        i = index(e.created_at)
        if i is None:
            continue
        bucket_of[e.id] = i
        exchanges[i] += 1
        replayed[i] += e.route == REPLAY_ROUTE
    for v in user_votes(rows.votes):
        i = bucket_of.get(v.reply_id)
        if i is not None:
            up[i] += v.rating == "up"
            down[i] += v.rating == "down"
    # Every item put to people counts, whatever opened it (the policy at reply time, a
    # thumbs-down, the deeper look, a verdict through the review API), so the decided
    # are always among the escalated.
    for r in rows.reviews:
        i = bucket_of.get(r.reply_id)
        if i is None or r.state == REPLAYED_STATE:
            continue
        escalated[i] += 1
        if r.state in DECIDED_STATES:
            decided[i] += 1
            waits[i].extend(waiting_times([r]))
    # Backlog at a bucket's end: created by then, not decided by then. Rows that left the
    # queue without a decision time (expired, dead letters) are left out.
    tracked = [r for r in rows.reviews if r.state in AWAITING_STATES or r.decided_at is not None]
    created = np.sort(np.asarray([r.created_at for r in tracked], dtype=float))
    left = np.sort(np.asarray([r.decided_at for r in tracked if r.decided_at is not None]))
    ends = np.asarray(starts, dtype=float) + width
    backlog = np.searchsorted(created, ends, side="left") - np.searchsorted(left, ends, "left")
    buckets = [
        {
            "start": iso(starts[i]),
            "ts": starts[i],
            "exchanges": exchanges[i],
            "replayed": replayed[i],
            "up": up[i],
            "down": down[i],
            "helpful_rate": rate(up[i], up[i] + down[i]),
            "escalated": escalated[i],
            "decided": decided[i],
            "median_seconds_to_decision": quantile(waits[i], 0.5),
            "backlog": int(backlog[i]),
        }
        for i in range(count)
    ]
    return {
        "bucket_seconds": width,
        "buckets": buckets,
        "drift": [e.created_at for e in rows.events if e.kind == "drift"],
    }


_RELATIVE = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, now: float) -> float:
    """A point in time: an ISO 8601 date or date-time (UTC unless it says otherwise), or
    a span back from ``now`` such as ``30m``, ``12h``, ``7d``, ``2w``."""
    value = text.strip()
    unit = value[-1:].lower()
    if unit in _RELATIVE and value[:-1].replace(".", "", 1).isdigit():
        return _in_range(text, now - float(value[:-1]) * _RELATIVE[unit])
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: use 2024-05-01, 2024-05-01T12:00, or 7d / 12h / 30m ago"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _in_range(text, parsed.timestamp())


#: the instants a report can name: from the UNIX epoch (buckets round down from there)
#: to the last one ``datetime`` can write
_LATEST = datetime.max.replace(tzinfo=UTC).timestamp()


def _in_range(text: str, when: float) -> float:
    if not 0.0 <= when < _LATEST:  # also NaN
        raise ValueError(f"{text!r} is out of range: give a time from 1970 to 9999")
    return when
