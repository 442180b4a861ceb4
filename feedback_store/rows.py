"""The store's vocabulary of values: the rows it hands upward and the rows it takes.

A row class's attributes are exactly its table's column names (``tables.py``), so the
column ``exchange.confidence`` is read as ``exchange.confidence``. Rows are frozen (a
row read is a fact about one moment) and built from a database row in one place,
``Columns.from_row``; the new rows a caller hands in become insert values in one place,
``Columns.values``. Callers never see a ``dict``, a SQLAlchemy ``Row`` or a table model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from sqlalchemy import Row


class Columns:
    """A value whose attributes are columns: built from a result row, or inserted as one."""

    __slots__ = ()
    __dataclass_fields__: ClassVar[dict[str, Any]]

    @classmethod
    def from_row(cls, row: Row[*tuple[Any, ...]] | Mapping[str, Any]) -> Self:
        return cls(**(row._mapping if isinstance(row, Row) else row))

    def values(self) -> dict[str, Any]:
        """The columns and their values, as an insert takes them."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# -- exchanges -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _ExchangeColumns(Columns):
    """Every column of ``exchange``; the defaults are the table's."""

    id: str
    created_at: float
    model: str = ""
    route: str = ""
    end_user: str | None = None
    stream: bool = False
    request_json: str = ""
    question: str = ""
    reply_text: str = ""
    finish_reason: str | None = None
    status: str = "complete"
    upstream_status: int = 200
    upstream_ms: float = 0.0
    total_ms: float = 0.0
    confidence: float = 0.5
    decision: str = "deliver"
    ask_feedback: bool = False
    outlier: bool = False
    features_json: str = "{}"
    #: the feature code version that computed ``features_json`` (None: not recorded)
    features_version: int | None = None
    reasons_json: str = "[]"
    meta_json: str = "{}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewExchange(_ExchangeColumns):
    """An exchange to record. The gateway names it (``id`` is the reply id)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeRow(_ExchangeColumns):
    """A recorded exchange."""


# -- escalations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _EscalationColumns(Columns):
    """Every column of ``escalation`` but its id; the defaults are the table's."""

    reply_id: str
    created_at: float
    #: pending | posted | approved | rejected | corrected | expired | failed
    state: str = "pending"
    hold: bool = False
    trigger: str = "policy"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    channel: str | None = None
    message_ts: str | None = None
    posted_at: float | None = None
    decided_by: str | None = None
    decided_at: float | None = None
    decision_reason: str | None = None
    correction: str | None = None
    card_stale: bool = False
    #: a hold's release (the first on record): original | correction | fallback
    released: str | None = None
    released_at: float | None = None
    timed_out: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEscalation(_EscalationColumns):
    """A review item to queue (the outbox row); the database gives it its id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EscalationRow(_EscalationColumns):
    """A review item and its outbox state."""

    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewCounts:
    """Escalations per state."""

    pending: int = 0
    posted: int = 0
    approved: int = 0
    rejected: int = 0
    corrected: int = 0
    expired: int = 0
    failed: int = 0


# -- votes and labels ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedbackRow(Columns):
    """The current vote of one voter on one reply (last vote wins)."""

    id: int
    reply_id: str
    voter: str
    rating: str  # up | down
    created_at: float
    updated_at: float
    reason: str | None = None
    comment: str | None = None
    correction: str | None = None
    changes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelRow(Columns):
    """A ``label`` row with its exchange's ``confidence``, ``features_json`` and
    ``end_user``: what the model predicted, for the learner to learn from."""

    id: int
    reply_id: str
    source: str  # user | reviewer
    value: int  # 1 helpful, 0 not
    weight: float
    created_at: float
    confidence: float
    features_json: str
    end_user: str | None
    #: the feature code version that computed ``features_json`` (None: not recorded)
    features_version: int | None = None
    #: the texts ``features_json`` leaves out, read only for learning (else "")
    reply_text: str = ""
    question: str = ""


@dataclass(frozen=True, slots=True)
class VoteResult:
    created: bool  # a new vote (201) rather than a changed or repeated one (200)
    label_id: int | None  # the Label appended for the learner, if this vote is learned
    previous_rating: str | None
    found: bool = True  # False: no exchange with that reply id; nothing was stored


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewVoteRow(Columns):
    """One reviewer's vote on one escalation (``review_vote``)."""

    id: int
    escalation_id: int
    reply_id: str
    reviewer: str
    verdict: str  # approve | reject | correct
    created_at: float
    reason: str | None = None
    correction: str | None = None


@dataclass(frozen=True, slots=True)
class ReviewResult:
    #: this vote was committed (False: the item was decided already, or this reviewer
    #: voted on it already; nothing was stored)
    applied: bool
    label_id: int | None  # the Label appended for the learner, when applied
    escalation: EscalationRow  # the escalation row after the call
    #: this vote decided the item (its side reached the votes required)
    decided: bool = False
    #: every vote on the escalation after the call, oldest first
    votes: tuple[ReviewVoteRow, ...] = ()


# -- snapshots, events, gauges -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRow(Columns):
    id: int
    created_at: float
    #: the id of the newest label folded into this snapshot
    last_label_id: int
    labels: int
    blob: bytes
    #: +1 at every promotion or rollback; the newest generation is live
    generation: int = 0
    #: the model version it continues, and the settings it was built with
    version: int = 1
    fingerprint: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersionRow(Columns):
    """A model that went live (``model_version``); ``blob`` is for rollback."""

    id: int
    created_at: float
    kind: str  # online | retrain
    fingerprint: str
    settings_json: str
    figures_json: str
    created_by: str
    last_label_id: int
    labels: int
    blob: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow(Columns):
    id: int
    created_at: float
    kind: str
    data_json: str = "{}"
    #: when it was announced in the review channel (None: not yet)
    announced_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreGauges:
    """What the metrics scrape reads from the store, computed there in one read."""

    #: escalations not yet in the reviewer channel
    unposted: int
    #: escalations in the channel, waiting for a verdict
    posted: int
    #: escalations the channel refused (dead letters)
    failed: int
    #: when the oldest unposted escalation was opened (None: there is none)
    oldest_unposted_at: float | None
    #: the newest label's id (None: no labels yet)
    newest_label_id: int | None
    #: ROC AUC of the stored confidence over the newest labels (None: one class only)
    recent_roc_auc: float | None
