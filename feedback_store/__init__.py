"""The truth: tables, transactions, queries. Imports nothing of the gateway's.

``Store`` is the one facade (``engine.py``); its queries return the frozen rows of
``rows.py``, whose attributes are their table's column names, and take ``NewExchange``
and ``NewEscalation`` to insert. Database errors reach callers as ``StoreError``.
"""

from feedback_store.engine import Store
from feedback_store.errors import ReplayedReply, SchemaError, StoreError
from feedback_store.rows import (
    EscalationRow,
    EventRow,
    ExchangeRow,
    FeedbackRow,
    LabelRow,
    ModelVersionRow,
    NewEscalation,
    NewExchange,
    ReviewCounts,
    ReviewResult,
    ReviewVoteRow,
    SnapshotRow,
    StoreGauges,
    VoteResult,
)
from feedback_store.schema import current_revision, ensure_schema, head_revision, upgrade
from feedback_store.tables import (
    Escalation,
    Event,
    Exchange,
    Feedback,
    KeyValue,
    Label,
    ModelSnapshot,
    ModelVersion,
    QuotaHit,
    ReviewVote,
)

__all__ = [
    "Escalation",
    "EscalationRow",
    "Event",
    "EventRow",
    "Exchange",
    "ExchangeRow",
    "Feedback",
    "FeedbackRow",
    "KeyValue",
    "Label",
    "LabelRow",
    "ModelSnapshot",
    "ModelVersion",
    "ModelVersionRow",
    "NewEscalation",
    "NewExchange",
    "QuotaHit",
    "ReplayedReply",
    "ReviewCounts",
    "ReviewResult",
    "ReviewVote",
    "ReviewVoteRow",
    "SchemaError",
    "SnapshotRow",
    "Store",
    "StoreError",
    "StoreGauges",
    "VoteResult",
    "current_revision",
    "ensure_schema",
    "head_revision",
    "upgrade",
]
