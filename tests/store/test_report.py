"""Report aggregates: pure functions table-tested on rows, then the whole JSON on a known store."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import cohen_kappa_score, roc_auc_score
from sqlalchemy import create_engine, text

from feedback_store import Store
from feedback_store.report import (
    BallotRow,
    EventRow,
    ExchangeRow,
    LabelPoint,
    ReportRows,
    ReviewerVote,
    ReviewRow,
    VoteRow,
    agreement_pairs,
    bucket_width,
    build_report,
    calibration,
    cohen_kappa,
    complaints,
    decision_counts,
    exchange_table,
    feedback_summary,
    learning_curve,
    load_rows,
    panel_summary,
    parse_when,
    review_summary,
    reviewer_pairs,
    reviewer_votes,
    roc_auc,
    segment_keys_of,
    segments,
    timeline,
    topics,
)
from feedback_store.urls import sync_url
from middleware.cli.main import main
from middleware.reporting import render_html
from tests.support.report_data import ANN, CORRECTION, HOLD_CORRECTION, T0, fill_voted_store

# -- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], None),
        ([(1, 1), (0, 0), (1, 1), (0, 0)], 1.0),
        ([(1, 0), (0, 1), (1, 0), (0, 1)], -1.0),
        ([(0, 0), (0, 1)], 0.0),
        # Both raters always said "unhelpful": chance agreement is 1, they agreed on all.
        ([(0, 0), (0, 0), (0, 0)], 1.0),
    ],
)
def test_cohen_kappa_table(pairs: list[tuple[int, int]], expected: float | None) -> None:
    assert cohen_kappa(pairs) == expected


def test_cohen_kappa_matches_scikit_learn() -> None:
    rng = random.Random(7)
    for _ in range(50):
        pairs = [(rng.randint(0, 1), rng.randint(0, 1)) for _ in range(rng.randint(3, 40))]
        first, second = zip(*pairs, strict=True)
        if len(set(first) | set(second)) < 2:
            continue
        assert cohen_kappa(pairs) == pytest.approx(cohen_kappa_score(first, second), abs=1e-4)


def test_roc_auc_matches_scikit_learn_with_ties_and_is_none_for_one_class() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        y = rng.integers(0, 2, size=30)
        p = rng.integers(0, 6, size=30) / 5  # many ties
        if 0 < y.sum() < len(y):
            assert roc_auc(y.tolist(), p.tolist()) == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert roc_auc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert roc_auc([], []) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01", 1714521600.0),
        ("2024-05-01T12:00", 1714564800.0),
        ("2024-05-01T12:00:00Z", 1714564800.0),
        ("2024-05-01T14:00:00+02:00", 1714564800.0),
        ("7d", 1_000_000.0 - 7 * 86400),
        ("12h", 1_000_000.0 - 12 * 3600),
        ("30m", 1_000_000.0 - 1800),
        ("1.5w", 1_000_000.0 - 1.5 * 7 * 86400),
    ],
)
def test_parse_when(text: str, expected: float) -> None:
    assert parse_when(text, now=1_000_000.0) == expected


@pytest.mark.parametrize("text", ["yesterday", "7x", "2024-13-01", ""])
def test_parse_when_names_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="is not a date: use 2024-05-01"):
        parse_when(text, now=0.0)


@pytest.mark.parametrize(
    ("span", "width"),
    [(0.5, 1), (48, 1), (49, 5), (400, 10), (3600, 300), (86400, 1800), (30 * 86400, 86400)],
)
def test_bucket_width_keeps_charts_to_48_buckets(span: float, width: int) -> None:
    assert bucket_width(span) == width


# -- feedback, decisions, reviews ----------------------------------------------------------


@pytest.mark.parametrize(
    ("votes", "expected"),
    [
        ([], {"up": 0, "down": 0, "helpful_rate": None, "by_reason": {}}),
        (
            [VoteRow("a", "up"), VoteRow("b", "down", reason="tone"), VoteRow("c", "down")],
            {
                "up": 1,
                "down": 2,
                "helpful_rate": 0.3333,
                "by_reason": {"tone": 1, "unspecified": 1},
            },
        ),
        # A reviewer's vote is a verdict, not user feedback.
        (
            [VoteRow("a", "up", voter="user:x"), VoteRow("a", "down", voter="reviewer:U1")],
            {"up": 1, "down": 0, "helpful_rate": 1.0, "by_reason": {}},
        ),
    ],
)
def test_feedback_summary(votes: list[VoteRow], expected: dict[str, object]) -> None:
    summary = feedback_summary(votes)
    assert {k: summary[k] for k in expected} == expected


def test_decision_counts_always_names_the_four_decisions() -> None:
    rows = [ExchangeRow("a", 0, decision="ask"), ExchangeRow("b", 0, decision="ask")]
    assert decision_counts(rows) == {"deliver": 0, "ask": 2, "escalate": 0, "hold": 0}


def review(
    i: int, state: str, wait: float | None = None, by: str | None = None, trigger: str = "policy"
) -> ReviewRow:
    decided = None if wait is None else 100.0 + wait
    return ReviewRow(i, f"r{i}", state, 100.0, decided_by=by, decided_at=decided, trigger=trigger)


def test_review_summary_counts_states_and_times_decisions() -> None:
    reviews = [
        review(1, "approved", 60, "U1"),
        review(2, "rejected", 120, "U1"),
        review(3, "corrected", 600, "U2"),
        review(4, "posted"),
        review(5, "pending"),
        review(6, "failed"),
        review(7, "expired"),
        # A verdict given through the API on a reply nobody escalated waited for nothing.
        review(8, "approved", 0, "U3", trigger="api"),
    ]
    summary = review_summary(reviews, [])
    assert summary["escalated"] == 8
    assert (summary["decided"], summary["pending"], summary["dead_letter"]) == (4, 2, 1)
    assert (summary["approved"], summary["rejected"], summary["corrected"]) == (2, 1, 1)
    assert summary["expired"] == 1
    assert summary["median_seconds_to_decision"] == 120.0
    assert summary["p90_seconds_to_decision"] == pytest.approx(504.0)
    assert summary["agreement"] is None
    assert summary["by_reviewer"][0] == {
        "reviewer": "U1",
        "decided": 2,
        "approved": 1,
        "rejected": 1,
        "corrected": 0,
        "median_seconds_to_decision": 90.0,
        "votes": 0,  # no review_vote rows in this set
        "agrees_with_decision": None,
    }
    assert [r["reviewer"] for r in summary["by_reviewer"]] == ["U1", "U2", "U3"]


def test_reviewer_agreement_pairs_verdicts_on_the_same_item_in_time_order() -> None:
    reviews = [review(1, "approved", 10, "U1"), review(2, "rejected", 10, "U1")]
    votes = [
        VoteRow("r1", "up", voter="reviewer:U2", updated_at=500.0),  # agrees
        VoteRow("r2", "up", voter="reviewer:U2", updated_at=500.0),  # disagrees
        VoteRow("r2", "down", voter="reviewer:U1", updated_at=600.0),  # U1 again: one verdict
        VoteRow("r2", "down", voter="user:x", updated_at=700.0),  # a user: not a reviewer
    ]
    verdicts = reviewer_votes(reviews, votes)
    assert [(v.reply_id, v.reviewer, v.value) for v in verdicts] == [
        ("r1", "U1", 1),
        ("r2", "U1", 0),
        ("r1", "U2", 1),
        ("r2", "U2", 1),
    ]
    assert sorted(agreement_pairs(verdicts)) == [(0, 1), (1, 1)]
    assert review_summary(reviews, votes)["agreement"] == 0.0
    assert review_summary(reviews, votes)["items_with_several_reviewers"] == 2


def test_agreement_pairs_every_two_reviewers_of_an_item() -> None:
    votes = [
        ReviewerVote("x", name, value, at)
        for at, (name, value) in enumerate([("A", 1), ("B", 1), ("C", 0)])
    ]
    assert agreement_pairs(votes) == [(1, 1), (1, 0), (1, 0)]


# Four escalations, each decided when a side had two votes (votes_required = 2):
#   1: A approve, C reject, B approve -> approved (by B)
#   2: A reject, B reject             -> rejected (by B)
#   3: A approve, B reject, C reject  -> rejected (by C)
#   4: B approve, C approve           -> approved (by C)
PANEL = [
    (1, "A", "approve"),
    (1, "C", "reject"),
    (1, "B", "approve"),
    (2, "A", "reject"),
    (2, "B", "correct"),
    (3, "A", "approve"),
    (3, "B", "reject"),
    (3, "C", "correct"),
    (4, "B", "approve"),
    (4, "C", "approve"),
]
PANEL_DECIDED = {
    1: ("approved", "B"),
    2: ("corrected", "B"),
    3: ("corrected", "C"),
    4: ("approved", "C"),
}


def panel_rows() -> tuple[list[BallotRow], list[ReviewRow]]:
    ballots = [
        BallotRow(item, f"r{item}", reviewer, verdict, at=100.0 * item + n)
        for n, (item, reviewer, verdict) in enumerate(PANEL)
    ]
    reviews = [
        ReviewRow(
            item, f"r{item}", state, 100.0 * item, decided_by=by, decided_at=100.0 * item + 50
        )
        for item, (state, by) in PANEL_DECIDED.items()
    ]
    return ballots, reviews


def test_reviewer_kappa_and_disagreements_from_votes() -> None:
    ballots, _ = panel_rows()
    summary = panel_summary(ballots)
    # (earlier, later) pairs per item: 1: (1,0) (1,1) (0,1); 2: (0,0); 3: (1,0) (1,0) (0,0);
    # 4: (1,1). Observed 4/8 = 0.5; earlier raters 5 ones, 3 zeros; later 3 ones, 5 zeros:
    # chance (5*3 + 3*5) / 64 = 0.46875; kappa 0.03125 / 0.53125 = 0.0588.
    assert summary["reviewer_kappa"] == 0.0588
    assert summary["votes"] == 10
    assert summary["disagreements"] == 2  # items 1 and 3 split; 2 and 4 were unanimous
    # A and B share 1, 2, 3: (1,1) (0,0) (1,0): observed 2/3, chance 4/9, kappa 0.4.
    # A and C share 1, 3: (1,0) (1,0): never agree, chance 0: kappa 0.0.
    # B and C share 1, 3, 4: (1,0) (0,0) (1,1): kappa 0.4.
    assert summary["reviewer_pairs"] == [
        {"reviewers": ["A", "B"], "items": 3, "kappa": 0.4},
        {"reviewers": ["B", "C"], "items": 3, "kappa": 0.4},
        {"reviewers": ["A", "C"], "items": 2, "kappa": 0.0},
    ]
    first, second = zip(*[(1, 1), (0, 0), (1, 0)], strict=True)
    assert cohen_kappa_score(first, second) == pytest.approx(0.4)
    assert reviewer_pairs([]) == [] and panel_summary([])["reviewer_kappa"] is None


def test_each_reviewer_s_agreement_with_the_decision() -> None:
    ballots, reviews = panel_rows()
    # One item still open: its votes count as cast, not against any decision.
    ballots.append(BallotRow(5, "r5", "A", "reject", at=600.0))
    reviews.append(ReviewRow(5, "r5", "posted", 600.0))
    summary = review_summary(reviews, [], ballots)
    rows = {r["reviewer"]: r for r in summary["by_reviewer"]}
    # A: 1 approve (approved) yes, 2 reject (corrected) yes, 3 approve (corrected) no: 2/3.
    # B: 1, 2, 3, 4 all with the decision: 1.0. C: 1 reject (approved) no, 3, 4 yes: 2/3.
    assert {name: (r["votes"], r["agrees_with_decision"]) for name, r in rows.items()} == {
        "A": (4, 0.6667),
        "B": (4, 1.0),
        "C": (3, 0.6667),
    }
    assert (rows["A"]["decided"], rows["B"]["decided"], rows["C"]["decided"]) == (0, 2, 2)
    assert [r["reviewer"] for r in summary["by_reviewer"]] == ["B", "C", "A"]
    assert summary["disagreements"] == 2 and summary["reviewer_kappa"] == 0.0588
    # Every vote is a verdict for the older agreement figure too: items with 2+ reviewers.
    assert summary["items_with_several_reviewers"] == 4


# -- the model -------------------------------------------------------------------------------


def labels_from(pairs: list[tuple[int, float]]) -> list[LabelPoint]:
    return [LabelPoint(i + 1, f"r{i}", y, p, float(i)) for i, (y, p) in enumerate(pairs)]


def test_learning_curve_shows_a_model_that_gets_better() -> None:
    rng = random.Random(1)
    pairs = []
    for i in range(400):
        y = rng.randint(0, 1)
        skill = i / 400  # the later a label, the better its prediction was
        p = min(1.0, max(0.0, 0.5 + skill * (y - 0.5) + rng.uniform(-0.3, 0.3)))
        pairs.append((y, p))
    curve = learning_curve(labels_from(pairs), points=20, window=100)
    assert curve[-1]["labels"] == 400
    assert len(curve) == 20
    assert curve[-1]["roc_auc"] == roc_auc(*zip(*pairs, strict=True))
    assert curve[-1]["rolling_roc_auc"] > curve[2]["rolling_roc_auc"] + 0.15
    assert curve[-1]["rolling_roc_auc"] > 0.8


def test_learning_curve_of_few_labels_has_a_point_per_label() -> None:
    curve = learning_curve(labels_from([(1, 0.9), (0, 0.2), (1, 0.1)]), points=50)
    assert [p["labels"] for p in curve] == [1, 2, 3]
    assert [p["roc_auc"] for p in curve] == [None, 1.0, 0.5]


def test_calibration_matches_scikit_learns_curve_and_counts_every_label() -> None:
    rng = np.random.default_rng(5)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    points = calibration(labels_from(list(zip(y.tolist(), p.tolist(), strict=True))))
    observed, predicted = calibration_curve(y, p, n_bins=10)
    assert [pt["helpful_fraction"] for pt in points] == pytest.approx(observed, abs=1e-4)
    assert [pt["mean_confidence"] for pt in points] == pytest.approx(predicted, abs=1e-4)
    assert sum(pt["count"] for pt in points) == 300


def test_calibration_of_one_class_still_draws() -> None:
    points = calibration(labels_from([(1, 0.91), (1, 0.95), (1, 0.15)]))
    assert [(pt["count"], pt["helpful_fraction"]) for pt in points] == [(1, 1.0), (2, 1.0)]


# -- topics and segments -------------------------------------------------------------------------

PASSWORD = [
    "how do I reset my password",
    "password reset email never arrives",
    "reset password link expired",
    "cannot reset my password at all",
    "the password reset page is broken",
    "forgot password reset does nothing",
]
REFUND = [
    "where is my refund",
    "refund for a cancelled order",
    "how long does a refund take",
    "my refund never came",
]


def test_topics_group_similar_complaints_and_name_them_by_their_words() -> None:
    items = [(f"p{i}", q, "incorrect") for i, q in enumerate(PASSWORD)]
    items += [(f"r{i}", q, "incomplete") for i, q in enumerate(REFUND)]
    found = topics(items)
    assert sum(t["count"] for t in found) == len(items)
    for topic in found:
        ids = topic["reply_ids"]
        # No topic mixes the two subjects.
        assert all(i.startswith("p") for i in ids) or all(i.startswith("r") for i in ids)
        subject = "password" if ids[0].startswith("p") else "refund"
        assert subject in topic["label"]
        assert 1 <= len(topic["examples"]) <= 3
        assert set(topic["examples"]) <= set(PASSWORD + REFUND)
    largest = found[0]
    assert "password" in largest["label"]
    assert largest["reasons"] == {"incorrect": largest["count"]}


@pytest.mark.parametrize(
    ("questions", "expected"),
    [
        ([], []),
        (["the the the", "a an"], [("(other)", 2)]),  # nothing but stop words
        (["refund please"], [("refund", 1)]),
    ],
)
def test_topics_edge_cases(questions: list[str], expected: list[tuple[str, int]]) -> None:
    found = topics([(str(i), q, None) for i, q in enumerate(questions)])
    assert [(t["label"], t["count"]) for t in found] == expected


def test_topics_are_not_named_by_contractions() -> None:
    questions = [
        "I don't get my refund",
        "why didn\u2019t the refund arrive?",
        "I can't see the refund",
        "I dont understand, it's my refund!",
        "my refund doesn't show, I'm waiting",
    ]
    found = topics([(str(i), q, "incorrect") for i, q in enumerate(questions)])
    names = " ".join(t["label"] for t in found).replace(",", " ").split()
    assert "refund" in names
    chatter = {"don", "didn", "doesn", "don't", "didn't", "dont", "can't", "it's", "i'm", "t"}
    assert not chatter & set(names), names


def test_greetings_answered_badly_are_a_topic() -> None:
    items = [(f"h{i}", q, None) for i, q in enumerate(["Hi", "hi there", "Hi!", "hi :)"])]
    items += [(f"r{i}", q, None) for i, q in enumerate(REFUND)]
    greeting = [t for t in topics(items) if t["reply_ids"][0].startswith("h")]
    assert greeting and "hi" in greeting[0]["label"].split(", ")


def test_topics_of_a_single_complaint_with_several_words() -> None:
    # One question, three terms: more candidate topics than questions must not fail NMF.
    found = topics([("1", "How do I send feedback?", "incorrect")])
    assert [t["count"] for t in found] == [1]
    assert "feedback" in found[0]["label"]


def test_complaints_are_downvoted_rejected_or_corrected_never_liked() -> None:
    rows = ReportRows(
        exchanges=[ExchangeRow(i, 0.0, question=f"q {i}") for i in ("a", "b", "c", "d", "e")],
        votes=[VoteRow("a", "down", reason="tone"), VoteRow("b", "up")],
        reviews=[review(1, "approved", 5), review(2, "corrected", 5)],
    )
    rows.reviews[:] = [
        ReviewRow(1, "c", "approved", 0.0),
        ReviewRow(2, "d", "corrected", 0.0),
        ReviewRow(3, "e", "rejected", 0.0, reason="unsafe"),
    ]
    assert complaints(rows) == [
        ("a", "q a", "tone"),
        ("d", "q d", "corrected"),
        ("e", "q e", "unsafe"),
    ]


def test_segment_keys_skip_ids_and_nested_values() -> None:
    rows = [
        ExchangeRow(
            str(i),
            0.0,
            meta={"locale": ["en", "fr"][i % 2], "request": f"id{i}", "nested": {"a": 1}},
        )
        for i in range(10)
    ]
    assert segment_keys_of(rows) == ["locale"]


def test_segments_break_rates_down_by_model_route_and_metadata() -> None:
    rows = ReportRows(
        exchanges=[
            ExchangeRow("a", 0.0, model="m1", meta={"locale": "en"}, confidence=0.8),
            ExchangeRow("b", 0.0, model="m1", meta={"locale": "fr"}, decision="escalate"),
            ExchangeRow("c", 0.0, model="m2", meta={"locale": "fr"}, decision="hold"),
            ExchangeRow("d", 0.0, model="m2", meta={}),
        ],
        votes=[VoteRow("a", "up"), VoteRow("b", "down"), VoteRow("c", "down")],
        reviews=[ReviewRow(1, "b", "approved", 0.0), ReviewRow(2, "c", "rejected", 0.0)],
    )
    found = {s["segment"]: s for s in segments(rows, ["locale"])}
    assert list(found) == ["model=m1", "model=m2", "route=chat", "locale=fr", "locale=en"]
    assert found["model=m1"]["helpful_rate"] == 0.5
    assert found["model=m2"]["escalated_rate"] == 0.5
    assert found["locale=fr"] == {
        "segment": "locale=fr",
        "dimension": "locale",
        "value": "fr",
        "exchanges": 2,
        "votes": 2,
        "helpful_rate": 0.0,
        "escalated_rate": 1.0,
        "reviewed": 2,
        "review_rejected_rate": 0.5,
        "mean_confidence": 0.5,
    }
    assert found["locale=en"]["helpful_rate"] == 1.0
    assert found["route=chat"]["exchanges"] == 4


def test_timeline_buckets_volume_votes_and_backlog() -> None:
    rows = ReportRows(
        exchanges=[ExchangeRow(f"x{i}", 10.0 * i, decision="escalate") for i in range(5)],
        votes=[VoteRow("x0", "up"), VoteRow("x4", "down")],
        reviews=[
            ReviewRow(1, "x0", "approved", 0.0, decided_at=25.0),
            ReviewRow(2, "x1", "posted", 10.0),
            ReviewRow(3, "x2", "failed", 20.0),  # left the queue at no known time: not counted
        ],
        events=[EventRow(15.0, "drift")],
    )
    line = timeline(rows, start=0.0, end=40.0)
    assert line["bucket_seconds"] == 1
    assert line["drift"] == [15.0]
    buckets = line["buckets"]
    assert len(buckets) == 41
    assert sum(b["exchanges"] for b in buckets) == 5
    assert buckets[0]["up"] == 1 and buckets[0]["helpful_rate"] == 1.0
    assert buckets[40]["down"] == 1
    # A decision counts in its reply's bucket (x0's, second 0), as the cards count it.
    assert buckets[0]["decided"] == 1 and sum(b["decided"] for b in buckets) == 1
    assert buckets[0]["median_seconds_to_decision"] == 25.0
    # at the end of second 9: x0 waiting; 10-24: x0 and x1; from 25: only x1
    assert [buckets[i]["backlog"] for i in (0, 9, 10, 24, 25, 40)] == [1, 1, 2, 2, 1, 1]


def test_exchange_table_has_one_row_per_exchange_with_its_final_label() -> None:
    rows = ReportRows(
        exchanges=[ExchangeRow("a", 0.0), ExchangeRow("b", 1.0), ExchangeRow("c", 2.0)],
        votes=[VoteRow("a", "up", updated_at=1.0), VoteRow("b", "up", voter="user:2")],
        reviews=[ReviewRow(1, "b", "rejected", 1.0, decided_by="U1", decided_at=31.0)],
    )
    table = {r["reply_id"]: r for r in exchange_table(rows)}
    assert list(table) == ["a", "b", "c"]
    assert (table["a"]["vote"], table["a"]["label"], table["a"]["review_state"]) == ("up", 1, None)
    # The reviewer's verdict decides the label, over the user's vote.
    assert (table["b"]["vote"], table["b"]["label"], table["b"]["reviewed_by"]) == ("up", 0, "U1")
    assert table["b"]["seconds_to_decision"] == 30.0
    assert table["c"]["label"] is None


# -- the whole report on a known store -----------------------------------------------------------


async def test_report_json_on_a_known_store(known_store: Store) -> None:
    rows = await load_rows(known_store)
    report = build_report(rows, now=T0 + 1000)
    assert set(report) >= {
        "period",
        "exchanges",
        "feedback",
        "decisions",
        "reviews",
        "model",
        "topics",
        "segments",
    }
    assert report["period"] == {"from": "2023-11-14T22:13:20Z", "until": "2023-11-14T22:20:20Z"}
    assert report["exchanges"] == 8
    assert report["feedback"]["up"] == 2
    assert report["feedback"]["down"] == 2
    assert report["feedback"]["helpful_rate"] == 0.5
    assert report["feedback"]["by_reason"] == {"incomplete": 1, "incorrect": 1}
    assert report["decisions"] == {"deliver": 3, "ask": 1, "escalate": 3, "hold": 1}

    reviews = report["reviews"]
    assert {k: reviews[k] for k in ("escalated", "holds", "decided", "pending", "dead_letter")} == {
        "escalated": 4,
        "holds": 1,
        "decided": 2,
        "pending": 1,
        "dead_letter": 1,
    }
    assert reviews["median_seconds_to_decision"] == 450.0
    assert reviews["p90_seconds_to_decision"] == 570.0
    assert reviews["agreement"] == 0.0
    assert [(r["reviewer"], r["decided"]) for r in reviews["by_reviewer"]] == [("U1", 1), ("U2", 1)]

    model = report["model"]
    assert model["labels"] == 6
    assert model["by_source"] == {"user": 4, "reviewer": 2}
    assert model["roc_auc"] == 1.0
    expected_loss = -sum(map(math.log, [0.9, 0.45, 0.8, 0.8, 0.75, 0.8])) / 6
    assert model["log_loss"] == pytest.approx(expected_loss, abs=1e-4)
    assert model["drift_events"] == 1
    assert model["drifts"][0]["error_after"] == 0.6
    assert [p["labels"] for p in model["learning_curve"]] == [1, 2, 3, 4, 5, 6]
    assert model["learning_curve"][-1]["roc_auc"] == 1.0

    complaint_questions = {
        "password reset email never arrived",
        "my password reset link is broken",
        "refund for a cancelled order",
    }
    assert sum(t["count"] for t in report["topics"]) == 3
    shown = {q for t in report["topics"] for q in t["examples"]}
    assert shown == complaint_questions

    found = {s["segment"]: s for s in report["segments"]}
    assert {"model=a", "model=b", "route=chat", "locale=en", "locale=fr", "locale=de"} == set(found)
    assert found["model=a"]["helpful_rate"] == pytest.approx(0.6667)
    assert found["model=b"]["escalated_rate"] == 1.0
    assert found["locale=fr"]["helpful_rate"] == 0.0
    assert found["locale=en"]["exchanges"] == 3

    assert report["timeline"]["drift"] == [T0 + 200]
    assert sum(b["exchanges"] for b in report["timeline"]["buckets"]) == 8
    assert CORRECTION not in str(report)  # corrections belong in the export, not the report


async def test_report_period_selects_exchanges_and_what_follows_them(known_store: Store) -> None:
    rows = await load_rows(known_store, since=T0 + 100, until=T0 + 250)
    assert [e.id for e in rows.exchanges] == ["e3", "e4", "e5"]
    assert {v.reply_id for v in rows.votes} == {"e3", "e4"}
    assert {label.reply_id for label in rows.labels} == {"e3", "e4"}
    assert {r.reply_id for r in rows.reviews} == {"e3", "e4", "e5"}
    assert [e.kind for e in rows.events] == ["drift"]
    report = build_report(rows, since=T0 + 100, until=T0 + 250)
    assert report["period"] == {"from": "2023-11-14T22:15:00Z", "until": "2023-11-14T22:17:30Z"}
    assert report["exchanges"] == 3
    assert report["decisions"] == {"deliver": 0, "ask": 0, "escalate": 2, "hold": 1}
    empty = build_report(await load_rows(known_store, since=T0 + 5000))
    assert empty["exchanges"] == 0
    assert empty["model"]["roc_auc"] is None
    assert empty["topics"] == []
    assert empty["timeline"]["buckets"] == []


# -- several reviewers and holds, through the store and the command line --------------------


@pytest.fixture
def voted_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'voted.db'}"

    async def fill() -> None:
        store = Store(url, config_hint="test.toml")
        await store.start()
        try:
            await fill_voted_store(store)
        finally:
            await store.close()

    asyncio.run(fill())
    return url


async def test_report_reads_the_votes_from_the_store(voted_db: str) -> None:
    store = Store(voted_db)
    await store.start()
    try:
        rows = await load_rows(store)
    finally:
        await store.close()
    assert [(b.reply_id, b.reviewer, b.verdict) for b in rows.ballots] == [
        ("h1", "U1", "approve"),
        ("h1", ANN, "approve"),
        ("h2", "U1", "reject"),
        ("h2", ANN, "correct"),
        ("e3", "U1", "approve"),
        ("e3", ANN, "reject"),
    ]
    reviews = build_report(rows)["reviews"]
    assert (reviews["reviewer_kappa"], reviews["disagreements"], reviews["votes"]) == (0.4, 1, 6)
    assert reviews["reviewer_pairs"] == [{"reviewers": [ANN, "U1"], "items": 3, "kappa": 0.4}]
    assert {
        r["reviewer"]: (r["decided"], r["votes"], r["agrees_with_decision"])
        for r in reviews["by_reviewer"]
    } == {
        ANN: (2, 3, 1.0),
        "U1": (0, 3, 1.0),
    }
    page = render_html(build_report(rows))
    assert "agrees with decision" in page and "Agreement between reviewers" in page
    assert "<i>Ann</i>" not in page and html.escape(ANN) in page
    assert f"{html.escape(ANN)} and U1" in page


def _purge_texts(url: str) -> None:
    """What a retention purge leaves: the exchanges without their text."""
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE exchange SET reply_text = '', question = '', request_json = '{}'")
            )
    finally:
        engine.dispose()


def test_cli_export_audit(
    voted_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "audit.jsonl"
    assert main(["export", "--audit", "--store", voted_db, "--out", str(out)], environ={}) == 0
    assert "wrote 4 audit records" in capsys.readouterr().out
    written = out.read_text()
    records = [json.loads(line) for line in written.splitlines()]
    by_id = {r["reply_id"]: r for r in records}
    assert list(by_id) == ["h1", "h2", "e3", "h4"]  # oldest first; e5 was never reviewed
    h2 = by_id["h2"]
    assert {k: h2[k] for k in ("model", "hold", "trigger", "state", "decided_by")} == {
        "model": "a",
        "hold": True,
        "trigger": "policy",
        "state": "corrected",
        "decided_by": ANN,
    }
    assert (h2["created_at"], h2["opened_at"]) == ("2023-11-14T22:14:20Z", "2023-11-14T22:14:20Z")
    assert h2["votes"] == [
        {
            "reviewer": "U1",
            "verdict": "reject",
            "reason": "incorrect",
            "correction_given": False,
            "at": "2023-11-14T22:14:30Z",
        },
        {
            "reviewer": ANN,
            "verdict": "correct",
            "reason": None,
            "correction_given": True,
            "at": "2023-11-14T22:14:40Z",
        },
    ]
    assert (h2["released"], h2["released_at"], h2["timed_out"]) == (
        "correction",
        "2023-11-14T22:14:41Z",
        False,
    )
    assert h2["original_sha256"] == hashlib.sha256(b"answer to question h2").hexdigest()
    assert (by_id["h1"]["state"], by_id["h1"]["released"]) == ("approved", "original")
    assert by_id["e3"]["state"] == "pending" and len(by_id["e3"]["votes"]) == 2
    assert by_id["e3"]["released"] is None and by_id["e3"]["hold"] is False
    h4 = by_id["h4"]
    assert (h4["votes"], h4["released"], h4["timed_out"], h4["decided_by"]) == (
        [],
        "fallback",
        True,
        None,
    )
    # The audit names no message text: not the question, the reply or the correction.
    for secret in ("question h2", "answer to", HOLD_CORRECTION):
        assert secret not in written
    # A purge of the exchanges' text leaves the audit whole, but for the reply's hash.
    _purge_texts(voted_db)
    assert main(["export", "--audit", "--store", voted_db, "--out", str(out)], environ={}) == 0
    purged = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["original_sha256"] for r in purged] == [None] * 4
    assert [{**r, "original_sha256": None} for r in records] == purged
    assert main(["export", "--audit", "--corrections", "--store", voted_db], environ={}) == 2
