"""Report aggregates: what the engineers' report says, computed from the store's rows.

``load_rows(store, since=, until=)`` is the only I/O here (``rows.py``). Everything
else is a pure function of plain rows, so the command line, the web route and the tests
share one computation and a test can hand in a few rows it wrote itself:

- ``metrics``: quantiles, ROC AUC, log loss, Cohen's kappa (numpy only)
- ``aggregates``: feedback, decisions, reviews, segments
- ``panel``: several reviewers on one item (kappa between them, agreement with decisions)
- ``model``: is the model learning (progressive AUC, calibration, drift)
- ``versions``: promotions, rollbacks and the learner's mode, over the period
- ``topics``: what users complain about, clustered
- ``periods``: time buckets, the timeline, and parsing the points in time users write
- ``build``: the whole report, and its table of exchanges (the CSV)
"""

from feedback_store.report.aggregates import (
    agreement_pairs,
    by_reviewer,
    decision_counts,
    feedback_summary,
    review_summary,
    reviewer_votes,
    segment_keys_of,
    segments,
    user_votes,
    waiting_times,
)
from feedback_store.report.build import CSV_COLUMNS, build_report, exchange_table
from feedback_store.report.metrics import cohen_kappa, iso, log_loss, quantile, roc_auc
from feedback_store.report.model import (
    calibration,
    confidence_by_outcome,
    learning_curve,
    model_summary,
)
from feedback_store.report.panel import (
    disagreements,
    panel_summary,
    reviewer_pairs,
    vote_pairs,
    with_decision,
)
from feedback_store.report.periods import (
    BUCKET_WIDTHS,
    MAX_BUCKETS,
    bucket_width,
    parse_when,
    timeline,
)
from feedback_store.report.rows import (
    DEEP_FIGURES_KEY,
    BallotRow,
    EventRow,
    ExchangeRow,
    LabelPoint,
    ReportRows,
    ReviewerVote,
    ReviewRow,
    VoteRow,
    load_rows,
)
from feedback_store.report.topics import complaints, topics
from feedback_store.report.versions import learner_modes, model_changes

__all__ = [
    "BUCKET_WIDTHS",
    "CSV_COLUMNS",
    "DEEP_FIGURES_KEY",
    "MAX_BUCKETS",
    "BallotRow",
    "EventRow",
    "ExchangeRow",
    "LabelPoint",
    "ReportRows",
    "ReviewRow",
    "ReviewerVote",
    "VoteRow",
    "agreement_pairs",
    "bucket_width",
    "build_report",
    "by_reviewer",
    "calibration",
    "cohen_kappa",
    "complaints",
    "confidence_by_outcome",
    "decision_counts",
    "disagreements",
    "exchange_table",
    "feedback_summary",
    "iso",
    "learner_modes",
    "learning_curve",
    "load_rows",
    "log_loss",
    "model_changes",
    "model_summary",
    "panel_summary",
    "parse_when",
    "quantile",
    "review_summary",
    "reviewer_pairs",
    "reviewer_votes",
    "roc_auc",
    "segment_keys_of",
    "segments",
    "timeline",
    "topics",
    "user_votes",
    "vote_pairs",
    "waiting_times",
    "with_decision",
]
