"""Report aggregates: what the engineers' report says, computed from the store's rows.

``load_rows(store, since=, until=)`` is the only I/O here. Everything else is a pure
function of plain rows, so the command line, the web route and the tests share one
computation and a test can hand in a few rows it wrote itself.

A period selects exchanges by their creation time; votes, labels and reviews follow
their exchange (a vote cast on Tuesday for Monday's reply counts for Monday), and
events (drift) are selected by their own time.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, select

from feedback_store.store import Store, escalation_t, event_t, exchange_t, feedback_t, label_t

DECISIONS = ("deliver", "ask", "escalate", "hold")
DECIDED = ("approved", "rejected", "corrected")
AWAITING = ("pending", "posted")
REVIEWED_DECISIONS = ("escalate", "hold")
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


# -- rows ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExchangeRow:
    id: str
    created_at: float
    model: str = ""
    route: str = "chat"
    decision: str = "deliver"
    confidence: float = 0.5
    question: str = ""
    status: str = "complete"
    upstream_ms: float = 0.0
    total_ms: float = 0.0
    outlier: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VoteRow:
    """A current vote (last vote wins). Voters named ``reviewer:...`` are reviewers."""

    reply_id: str
    rating: str  # up | down
    voter: str = "user"
    reason: str | None = None
    comment: str | None = None
    correction: str | None = None
    updated_at: float = 0.0

    @property
    def by_reviewer(self) -> bool:
        return self.voter.startswith("reviewer")


@dataclass(frozen=True, slots=True)
class LabelPoint:
    """A learning event with the confidence predicted at reply time (before learning it)."""

    id: int
    reply_id: str
    value: int
    confidence: float
    created_at: float
    source: str = "user"


@dataclass(frozen=True, slots=True)
class ReviewRow:
    id: int
    reply_id: str
    state: str
    created_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    reason: str | None = None
    correction: str | None = None
    hold: bool = False
    trigger: str = "policy"


@dataclass(frozen=True, slots=True)
class EventRow:
    created_at: float
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ReportRows:
    exchanges: list[ExchangeRow] = field(default_factory=list)
    votes: list[VoteRow] = field(default_factory=list)
    labels: list[LabelPoint] = field(default_factory=list)
    reviews: list[ReviewRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReviewerVote:
    reply_id: str
    reviewer: str
    value: int  # 1 helpful (approve), 0 not (reject, correct)
    at: float


# -- loading (the only I/O) --------------------------------------------------------


def _json_object(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _queries(since: float | None, until: float | None) -> list[Any]:
    period = []
    if since is not None:
        period.append(exchange_t.c.created_at >= since)
    if until is not None:
        period.append(exchange_t.c.created_at < until)
    in_period = select(exchange_t.c.id).where(*period)
    ex, fb, lb, es, ev = exchange_t.c, feedback_t.c, label_t.c, escalation_t.c, event_t.c
    exchanges = (
        select(
            ex.id,
            ex.created_at,
            ex.model,
            ex.route,
            ex.decision,
            ex.confidence,
            ex.question,
            ex.status,
            ex.upstream_ms,
            ex.total_ms,
            ex.outlier,
            ex.meta_json,
        )
        .where(*period)
        .order_by(ex.created_at, ex.id)
    )
    votes = select(
        fb.reply_id, fb.rating, fb.voter, fb.reason, fb.comment, fb.correction, fb.updated_at
    ).order_by(fb.id)
    labels = (
        select(lb.id, lb.reply_id, lb.value, ex.confidence, lb.created_at, lb.source)
        .join(exchange_t, ex.id == lb.reply_id)
        .where(*period)
        .order_by(lb.id)
    )
    reviews = select(
        es.id,
        es.reply_id,
        es.state,
        es.created_at,
        es.decided_by,
        es.decided_at,
        es.decision_reason,
        es.correction,
        es.hold,
        es.trigger,
    ).order_by(es.id)
    if period:
        votes = votes.where(fb.reply_id.in_(in_period))
        reviews = reviews.where(es.reply_id.in_(in_period))
    events = select(ev.created_at, ev.kind, ev.data_json).order_by(ev.created_at)
    if since is not None:
        events = events.where(ev.created_at >= since)
    if until is not None:
        events = events.where(ev.created_at < until)
    return [exchanges, votes, labels, reviews, events]


def _read_rows(conn: Connection, queries: list[Any]) -> ReportRows:
    # One connection, one transaction: every table seen at the same moment.
    exchanges, votes, labels, reviews, events = (conn.execute(q).all() for q in queries)
    return ReportRows(
        exchanges=[
            ExchangeRow(
                id=r.id,
                created_at=float(r.created_at),
                model=r.model or "",
                route=r.route or "",
                decision=r.decision,
                confidence=float(r.confidence),
                question=r.question or "",
                status=r.status,
                upstream_ms=float(r.upstream_ms or 0.0),
                total_ms=float(r.total_ms or 0.0),
                outlier=bool(r.outlier),
                meta=_json_object(r.meta_json),
            )
            for r in exchanges
        ],
        votes=[
            VoteRow(
                reply_id=r.reply_id,
                rating=r.rating,
                voter=r.voter,
                reason=r.reason,
                comment=r.comment,
                correction=r.correction,
                updated_at=float(r.updated_at),
            )
            for r in votes
        ],
        labels=[
            LabelPoint(
                id=int(r.id),
                reply_id=r.reply_id,
                value=int(r.value),
                confidence=float(r.confidence),
                created_at=float(r.created_at),
                source=r.source,
            )
            for r in labels
        ],
        reviews=[
            ReviewRow(
                id=int(r.id),
                reply_id=r.reply_id,
                state=r.state,
                created_at=float(r.created_at),
                decided_by=r.decided_by,
                decided_at=None if r.decided_at is None else float(r.decided_at),
                reason=r.decision_reason,
                correction=r.correction,
                hold=bool(r.hold),
                trigger=r.trigger,
            )
            for r in reviews
        ],
        events=[
            EventRow(created_at=float(r.created_at), kind=r.kind, data=_json_object(r.data_json))
            for r in events
        ],
    )


async def load_rows(
    store: Store, *, since: float | None = None, until: float | None = None
) -> ReportRows:
    """Read what the report needs for exchanges created in ``[since, until)``."""
    queries = _queries(since, until)
    return await store.read(lambda conn: _read_rows(conn, queries))


# -- small numeric helpers ---------------------------------------------------------


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _rate(part: int, whole: int) -> float | None:
    return _round(part / whole) if whole else None


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (numpy's default), None for no values."""
    if not values:
        return None
    return _round(float(np.quantile(np.asarray(values, dtype=float), q)), 3)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (scipy's ``rankdata``, without
    importing scipy.stats, which costs half a second)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = average[np.cumsum(new_group) - 1]
    return ranks


def roc_auc(y: Sequence[int], p: Sequence[float]) -> float | None:
    """ROC AUC by ranks (ties averaged, as scikit-learn); None unless both classes occur."""
    y_arr = np.asarray(y, dtype=int)
    positives = int(y_arr.sum())
    negatives = len(y_arr) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = average_ranks(np.asarray(p, dtype=float))
    auc = (ranks[y_arr == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    return _round(float(auc))


def log_loss(y: Sequence[int], p: Sequence[float], eps: float = 1e-6) -> float | None:
    if len(y) == 0:
        return None
    y_arr = np.asarray(y, dtype=float)
    p_arr = np.clip(np.asarray(p, dtype=float), eps, 1 - eps)
    losses = -(y_arr * np.log(p_arr) + (1 - y_arr) * np.log(1 - p_arr))
    return _round(float(losses.mean()))


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
        "helpful_rate": _rate(up, up + down),
        "by_reason": dict(reasons.most_common()),
        "comments": sum(bool(v.comment) for v in mine),
        "corrections": sum(bool(v.correction) for v in mine),
    }


def decision_counts(exchanges: Iterable[ExchangeRow]) -> dict[str, int]:
    counts = dict.fromkeys(DECISIONS, 0)
    for e in exchanges:
        counts[e.decision] = counts.get(e.decision, 0) + 1
    return counts


# -- reviews -----------------------------------------------------------------------


def reviewer_votes(reviews: Iterable[ReviewRow], votes: Iterable[VoteRow]) -> list[ReviewerVote]:
    """Every reviewer's verdict per item: decided escalations, plus reviewer-sourced votes.

    One verdict per (item, reviewer): a reviewer who decided an escalation and also
    voted counts once, by the escalation.
    """
    found: dict[tuple[str, str], ReviewerVote] = {}
    for r in reviews:
        if r.state in DECIDED and r.decided_by:
            at = r.decided_at if r.decided_at is not None else r.created_at
            value = 1 if r.state == "approved" else 0
            found[(r.reply_id, r.decided_by)] = ReviewerVote(r.reply_id, r.decided_by, value, at)
    for v in votes:
        if v.by_reviewer:
            who = v.voter.partition(":")[2] or v.voter
            value = 1 if v.rating == "up" else 0
            found.setdefault((v.reply_id, who), ReviewerVote(v.reply_id, who, value, v.updated_at))
    return sorted(found.values(), key=lambda vote: (vote.at, vote.reply_id, vote.reviewer))


def cohen_kappa(pairs: Sequence[tuple[int, int]]) -> float | None:
    """Cohen's kappa of (first rater, second rater) pairs; None without pairs.

    When both raters put every item in one and the same category the chance agreement
    is 1 and kappa is undefined (0/0); the raters agreed on everything, so say 1.0.
    """
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected >= 1.0:
        return 1.0 if observed == 1.0 else None
    return _round((observed - expected) / (1.0 - expected))


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


def review_summary(reviews: Sequence[ReviewRow], votes: Sequence[VoteRow]) -> dict[str, Any]:
    states = Counter(r.state for r in reviews)
    decided = [r for r in reviews if r.state in DECIDED]
    waits = waiting_times(decided)
    verdicts = reviewer_votes(reviews, votes)
    per_item = Counter(v.reply_id for v in verdicts)
    return {
        "escalated": len(reviews),
        "holds": sum(r.hold for r in reviews),
        "decided": len(decided),
        "approved": states["approved"],
        "rejected": states["rejected"],
        "corrected": states["corrected"],
        "pending": sum(states[s] for s in AWAITING),
        "expired": states["expired"],
        "dead_letter": states["failed"],
        "median_seconds_to_decision": quantile(waits, 0.5),
        "p90_seconds_to_decision": quantile(waits, 0.9),
        "agreement": cohen_kappa(agreement_pairs(verdicts)),
        "items_with_several_reviewers": sum(n >= 2 for n in per_item.values()),
        "by_reviewer": by_reviewer(decided),
    }


def by_reviewer(decided: Iterable[ReviewRow]) -> list[dict[str, Any]]:
    groups: dict[str, list[ReviewRow]] = defaultdict(list)
    for r in decided:
        groups[r.decided_by or "unknown"].append(r)
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
            }
        )
    out.sort(key=lambda row: (-row["decided"], row["reviewer"]))
    return out


# -- the model -----------------------------------------------------------------------


def learning_curve(
    labels: Sequence[LabelPoint], *, points: int = 50, window: int = 200
) -> list[dict[str, Any]]:
    """Progressive ROC AUC as labels arrive: cumulative, and over the last ``window``.

    Each label is judged by the confidence stored at reply time, before the model
    learned it, so a rising curve means the model got better at judging new replies.
    """
    n = len(labels)
    if n == 0:
        return []
    y = [label.value for label in labels]
    p = [label.confidence for label in labels]
    step = max(1, math.ceil(n / points))
    ends = [*range(step, n, step), n]
    return [
        {
            "labels": end,
            "at": iso(labels[end - 1].created_at),
            "ts": labels[end - 1].created_at,
            "roc_auc": roc_auc(y[:end], p[:end]),
            "rolling_roc_auc": roc_auc(
                y[max(0, end - window) : end], p[max(0, end - window) : end]
            ),
        }
        for end in ends
    ]


def calibration(labels: Sequence[LabelPoint], *, bins: int = 10) -> list[dict[str, Any]]:
    """The reliability diagram's points: per confidence bin, predicted vs observed."""
    if not labels:
        return []
    y = np.asarray([label.value for label in labels], dtype=int)
    p = np.clip(np.asarray([label.confidence for label in labels], dtype=float), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # The same bin assignment as sklearn.calibration.calibration_curve (strategy "uniform").
    ids = np.searchsorted(edges[1:-1], p)
    counts = np.bincount(ids, minlength=bins)
    if len(set(y.tolist())) == 2:
        from sklearn.calibration import calibration_curve

        observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    else:  # calibration_curve needs both classes; the arithmetic is the same
        nonzero = counts > 0
        observed = (np.bincount(ids, weights=y, minlength=bins)[nonzero]) / counts[nonzero]
        predicted = (np.bincount(ids, weights=p, minlength=bins)[nonzero]) / counts[nonzero]
    filled = [i for i in range(bins) if counts[i] > 0]
    return [
        {
            "bin_low": _round(float(edges[i])),
            "bin_high": _round(float(edges[i + 1])),
            "count": int(counts[i]),
            "mean_confidence": _round(float(pred)),
            "helpful_fraction": _round(float(obs)),
        }
        for i, pred, obs in zip(filled, predicted, observed, strict=True)
    ]


def confidence_by_outcome(labels: Sequence[LabelPoint], *, bins: int = 10) -> dict[str, Any]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: dict[str, Any] = {"bin_edges": [_round(float(e)) for e in edges]}
    for name, value in (("helpful", 1), ("unhelpful", 0)):
        conf = [label.confidence for label in labels if label.value == value]
        counts, _ = np.histogram(np.clip(conf, 0.0, 1.0), bins=edges)
        out[name] = {
            "count": len(conf),
            "mean_confidence": _round(float(np.mean(conf))) if conf else None,
            "histogram": [int(c) for c in counts],
        }
    return out


def model_summary(
    labels: Sequence[LabelPoint], events: Sequence[EventRow], *, window: int = 200
) -> dict[str, Any]:
    ordered = sorted(labels, key=lambda label: label.id)
    y = [label.value for label in ordered]
    p = [label.confidence for label in ordered]
    recent = slice(max(0, len(ordered) - window), None)
    drifts = [e for e in events if e.kind == "drift"]
    return {
        "labels": len(ordered),
        "by_source": dict(Counter(label.source for label in ordered)),
        "roc_auc": roc_auc(y, p),
        "log_loss": log_loss(y, p),
        "accuracy": _rate(
            sum((pi >= 0.5) == bool(yi) for yi, pi in zip(y, p, strict=True)), len(y)
        ),
        "brier": _round(float(np.mean((np.asarray(p) - np.asarray(y)) ** 2))) if y else None,
        "rolling_window": window,
        "rolling_roc_auc": roc_auc(y[recent], p[recent]),
        "drift_events": len(drifts),
        "drifts": [{"at": iso(e.created_at), "ts": e.created_at, **e.data} for e in drifts],
        "learning_curve": learning_curve(ordered, window=window),
        "calibration": calibration(ordered),
        "confidence_by_outcome": confidence_by_outcome(ordered),
    }


# -- complaint topics -------------------------------------------------------------------


def complaints(rows: ReportRows) -> list[tuple[str, str, str | None]]:
    """(reply id, question, reason) behind thumbs-down, rejected and corrected replies."""
    reasons: dict[str, str | None] = {}
    for v in user_votes(rows.votes):
        if v.rating == "down":
            reasons[v.reply_id] = v.reason
    for r in rows.reviews:
        if r.state in ("rejected", "corrected"):
            reasons.setdefault(r.reply_id, r.reason or r.state)
    return [
        (e.id, e.question.strip(), reasons[e.id])
        for e in rows.exchanges
        if e.id in reasons and e.question.strip()
    ]


def topics(
    items: Sequence[tuple[str, str, str | None]],
    *,
    max_topics: int = 8,
    examples: int = 3,
    terms: int = 3,
) -> list[dict[str, Any]]:
    """Cluster complaint questions (TF-IDF, then NMF) and name each cluster by its top terms.

    Each question joins the topic it weighs most on; questions with no usable word
    (only stop words, say) form an "(other)" topic.
    """
    if not items:
        return []
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = [question for _, question, _ in items]
    vectorizer = TfidfVectorizer(
        stop_words="english", ngram_range=(1, 2), max_features=5000, sublinear_tf=True
    )
    try:
        matrix = vectorizer.fit_transform(docs)
    except ValueError:  # an empty vocabulary: nothing but stop words
        return [_topic("(other)", list(range(len(items))), items, examples)]
    vocabulary = vectorizer.get_feature_names_out()
    distinct = len(set(docs))
    # NMF's nndsvda start needs no more topics than questions or words.
    k = max(1, min(max_topics, round(1.5 * math.sqrt(distinct)), matrix.shape[1], len(docs)))
    if k == 1:
        weights = np.ones((len(docs), 1))
    else:
        nmf = NMF(n_components=k, init="nndsvda", max_iter=400, random_state=0)
        # A rough factorisation is enough to group questions: neither an unconverged fit
        # nor the rounding that makes a tiny residual negative should stop a report.
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", ConvergenceWarning)
            weights = nmf.fit_transform(matrix)
    has_words = np.asarray(matrix.sum(axis=1)).ravel() > 0
    assigned = weights.argmax(axis=1)
    found = []
    for t in range(k):
        members = [i for i in range(len(docs)) if has_words[i] and assigned[i] == t]
        if not members:
            continue
        members.sort(key=lambda i: -weights[i, t])
        # Named by its members' mean TF-IDF: words its questions actually share.
        rows = matrix[members]
        centroid = np.asarray(rows.mean(axis=0)).ravel()
        # A name word must be shared: in at least a sixth of the topic's questions, so one
        # long question can't name a topic of short ones.
        shared = np.asarray((rows > 0).sum(axis=0)).ravel() >= max(1.0, len(members) / 6)
        order = [j for j in np.argsort(centroid)[::-1][: terms * 4] if centroid[j] > 0]
        top = [str(vocabulary[j]) for j in order if shared[j]] or [str(vocabulary[order[0]])]
        found.append(_topic(_name(top, terms), members, items, examples))
    rest = [i for i in range(len(docs)) if not has_words[i]]
    if rest:
        found.append(_topic("(other)", rest, items, examples))
    found.sort(key=lambda topic: -topic["count"])
    return found


def _name(top_terms: list[str], terms: int) -> str:
    """Top terms, skipping one inside a chosen phrase ("reset" after "reset password")."""
    chosen: list[str] = []
    for term in top_terms:
        words = set(term.split())
        if any(words <= set(c.split()) or set(c.split()) <= words for c in chosen):
            continue
        chosen.append(term)
        if len(chosen) == terms:
            break
    return ", ".join(chosen)


def _topic(
    label: str, members: list[int], items: Sequence[tuple[str, str, str | None]], examples: int
) -> dict[str, Any]:
    shown: list[str] = []
    seen: set[str] = set()
    for i in members:
        question = items[i][1]
        # "Hi)", "hi" and "Hi!" are one example, not three.
        key = " ".join(re.findall(r"\w+", question.lower()))
        if key in seen:
            continue
        seen.add(key)
        shown.append(question if len(question) <= 200 else question[:199] + "…")
        if len(shown) == examples:
            break
    reasons = Counter(items[i][2] or "unspecified" for i in members)
    return {
        "label": label,
        "count": len(members),
        "examples": shown,
        "reasons": dict(reasons.most_common()),
        "reply_ids": [items[i][0] for i in members[:examples]],
    }


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
        if r.state in DECIDED:
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
                "helpful_rate": _rate(up, up + down),
                "escalated_rate": _rate(escalated, len(members)),
                "reviewed": len(decided),
                "review_rejected_rate": _rate(sum(s != "approved" for s in decided), len(decided)),
                "mean_confidence": _round(float(np.mean([e.confidence for e in members]))),
            }
        )
    out.sort(key=lambda s: (dimensions.index(s["dimension"]), -s["exchanges"], s["value"]))
    return out


# -- time series ---------------------------------------------------------------------------


def bucket_width(span_seconds: float, *, max_buckets: int = MAX_BUCKETS) -> int:
    for width in BUCKET_WIDTHS:
        if span_seconds / width <= max_buckets:
            return width
    return BUCKET_WIDTHS[-1]


def timeline(rows: ReportRows, *, start: float, end: float) -> dict[str, Any]:
    """Per time bucket: volume, votes, escalations, decisions, time to decision, backlog."""
    width = bucket_width(max(end - start, 1.0))
    first = math.floor(start / width) * width
    count = max(1, math.floor((end - first) / width) + 1)
    starts = [first + i * width for i in range(count)]

    def index(ts: float) -> int | None:
        i = math.floor((ts - first) / width)
        return i if 0 <= i < count else None

    exchanges = [0] * count
    escalated = [0] * count
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
        escalated[i] += e.decision in REVIEWED_DECISIONS
    for v in user_votes(rows.votes):
        i = bucket_of.get(v.reply_id)
        if i is not None:
            up[i] += v.rating == "up"
            down[i] += v.rating == "down"
    for r in rows.reviews:
        if r.state in DECIDED and r.decided_at is not None:
            i = index(r.decided_at)
            if i is not None:
                decided[i] += 1
                waits[i].extend(waiting_times([r]))
    # Backlog at a bucket's end: created by then, not decided by then. Rows that left the
    # queue without a decision time (expired, dead letters) are left out.
    tracked = [r for r in rows.reviews if r.state in AWAITING or r.decided_at is not None]
    created = np.sort(np.asarray([r.created_at for r in tracked], dtype=float))
    left = np.sort(np.asarray([r.decided_at for r in tracked if r.decided_at is not None]))
    ends = np.asarray(starts, dtype=float) + width
    backlog = np.searchsorted(created, ends, side="left") - np.searchsorted(left, ends, "left")
    buckets = [
        {
            "start": iso(starts[i]),
            "ts": starts[i],
            "exchanges": exchanges[i],
            "up": up[i],
            "down": down[i],
            "helpful_rate": _rate(up[i], up[i] + down[i]),
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


# -- the report ---------------------------------------------------------------------------


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
        "feedback": feedback_summary(rows.votes),
        "decisions": decision_counts(rows.exchanges),
        "reviews": review_summary(rows.reviews, rows.votes),
        "model": model_summary(rows.labels, rows.events, window=window),
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
        if current is None or (r.state in DECIDED) >= (current.state in DECIDED):
            reviews[r.reply_id] = r
    table = []
    for e in rows.exchanges:
        vote = votes.get(e.id)
        review = reviews.get(e.id)
        label: int | None = None
        if review is not None and review.state in DECIDED:
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
                "confidence": _round(e.confidence),
                "outlier": e.outlier,
                "status": e.status,
                "upstream_ms": _round(e.upstream_ms, 2),
                "total_ms": _round(e.total_ms, 2),
                "vote": vote.rating if vote else None,
                "vote_reason": vote.reason if vote else None,
                "review_state": review.state if review else None,
                "reviewed_by": review.decided_by if review else None,
                "review_reason": review.reason if review else None,
                "seconds_to_decision": _round(waited, 3),
                "label": label,
            }
        )
    return table


# -- periods -------------------------------------------------------------------------------

_RELATIVE = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, *, now: float) -> float:
    """A point in time: an ISO 8601 date or date-time (UTC unless it says otherwise), or
    a span back from ``now`` such as ``30m``, ``12h``, ``7d``, ``2w``."""
    value = text.strip()
    unit = value[-1:].lower()
    if unit in _RELATIVE and value[:-1].replace(".", "", 1).isdigit():
        return now - float(value[:-1]) * _RELATIVE[unit]
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: use 2024-05-01, 2024-05-01T12:00, or 7d / 12h / 30m ago"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
