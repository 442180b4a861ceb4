"""The tables. The store is the truth; everything else (model snapshots) is a cache.

Times are UNIX seconds (float, UTC) so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from typing import ClassVar

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlmodel import Field, SQLModel


class Exchange(SQLModel, table=True):
    """One chat request and the reply the gateway delivered."""

    id: str = Field(primary_key=True, max_length=40)  # the reply id
    created_at: float = Field(index=True)
    model: str = Field(default="", max_length=200)
    route: str = Field(default="", max_length=200)
    end_user: str | None = Field(default=None, max_length=200, index=True)
    stream: bool = False
    request_json: str = Field(default="", sa_column=Column(Text, nullable=False))
    question: str = Field(default="", sa_column=Column(Text, nullable=False))
    reply_text: str = Field(default="", sa_column=Column(Text, nullable=False))
    finish_reason: str | None = Field(default=None, max_length=40)
    #: complete | incomplete (stream broke) | upstream_error
    status: str = Field(default="complete", max_length=20)
    upstream_status: int = 200
    upstream_ms: float = 0.0
    total_ms: float = 0.0
    confidence: float = 0.5
    decision: str = Field(default="deliver", max_length=20, index=True)
    ask_feedback: bool = False
    outlier: bool = False
    #: JSON: the feature dict the model scored, so learning sees exactly that
    features_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    #: the feature code version (``FEATURES_VERSION``) that computed ``features_json``;
    #: None for exchanges stored before it was recorded
    features_version: int | None = None
    #: JSON: why the policy decided as it did (low-scoring features, outlier, drift)
    reasons_json: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    #: JSON: free request metadata for report segments (e.g. locale)
    meta_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class Feedback(SQLModel, table=True):
    """The current vote of one voter on one reply (last vote wins)."""

    __table_args__ = (UniqueConstraint("reply_id", "voter", name="uq_feedback_reply_voter"),)

    id: int | None = Field(default=None, primary_key=True)
    reply_id: str = Field(foreign_key="exchange.id", index=True, max_length=40)
    voter: str = Field(max_length=200)
    rating: str = Field(max_length=4)  # up | down
    reason: str | None = Field(default=None, max_length=20)
    comment: str | None = Field(default=None, sa_column=Column(Text))
    correction: str | None = Field(default=None, sa_column=Column(Text))
    created_at: float
    updated_at: float
    changes: int = 0


class Label(SQLModel, table=True):
    """An append-only learning event: what the learner consumes, in id order.

    The first end-user vote of a reply and every reviewer verdict append one row,
    in the same transaction as the vote or verdict itself.
    """

    id: int | None = Field(default=None, primary_key=True)
    reply_id: str = Field(foreign_key="exchange.id", index=True, max_length=40)
    source: str = Field(max_length=10)  # user | reviewer
    value: int  # 1 helpful, 0 not
    weight: float = 1.0
    created_at: float


class Escalation(SQLModel, table=True):
    """A review item and its outbox state."""

    id: int | None = Field(default=None, primary_key=True)
    reply_id: str = Field(foreign_key="exchange.id", index=True, max_length=40)
    #: pending (not yet in the channel) | posted | approved | rejected | corrected
    #: | expired | failed (dead letter)
    state: str = Field(default="pending", max_length=12, index=True)
    hold: bool = False
    trigger: str = Field(default="policy", max_length=20)  # policy | downvote | outlier
    created_at: float
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    channel: str | None = Field(default=None, max_length=40)
    message_ts: str | None = Field(default=None, max_length=40)
    posted_at: float | None = None
    decided_by: str | None = Field(default=None, max_length=200)
    decided_at: float | None = None
    decision_reason: str | None = Field(default=None, max_length=20)
    correction: str | None = Field(default=None, sa_column=Column(Text))
    #: the card needs updating in the channel (after a decision, or a vote's tally)
    card_stale: bool = False
    #: a hold's release, the first one on record: original | correction | fallback
    released: str | None = Field(default=None, max_length=12)
    released_at: float | None = None
    #: the hold was released with the fallback because nobody decided in time
    timed_out: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class ReviewVote(SQLModel, table=True):
    """One reviewer's vote on one escalation (several may be needed to decide it).

    Every vote is kept (and learned, as a label); the escalation holds the decision the
    votes reached. An audit record of its own: it names no message text but the
    reviewer's correction.
    """

    __tablename__: ClassVar[str] = "review_vote"
    __table_args__ = (
        UniqueConstraint("escalation_id", "reviewer", name="uq_review_vote_escalation_reviewer"),
    )

    id: int | None = Field(default=None, primary_key=True)
    escalation_id: int = Field(foreign_key="escalation.id", index=True)
    reply_id: str = Field(index=True, max_length=40)
    reviewer: str = Field(max_length=200)
    verdict: str = Field(max_length=12)  # approve | reject | correct
    reason: str | None = Field(default=None, max_length=20)
    correction: str | None = Field(default=None, sa_column=Column(Text))
    created_at: float


class ModelSnapshot(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    created_at: float
    #: the id of the newest Label folded into this snapshot
    last_label_id: int = 0
    labels: int = 0
    blob: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: +1 at every promotion or rollback: the newest generation is the live model
    generation: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    #: the model version (``model_version.id``) this snapshot continues
    version: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    #: the feature and model settings it was built with (``learning.versions``)
    fingerprint: str = Field(default="", max_length=80, sa_column_kwargs={"server_default": ""})


class ModelVersion(SQLModel, table=True):
    """A model that went live: the online one, each promoted retrain. Kept for rollback:
    ``blob`` is the model as it was when it last stopped being live (or went live)."""

    __tablename__: ClassVar[str] = "model_version"

    id: int | None = Field(default=None, primary_key=True)
    created_at: float
    kind: str = Field(max_length=20)  # online | retrain
    fingerprint: str = Field(default="", max_length=80)
    #: JSON: the settings the fingerprint is made of
    settings_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    #: JSON: the comparison that promoted it (or that it lost to its successor)
    figures_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    created_by: str = Field(default="", max_length=200)
    last_label_id: int = 0
    labels: int = 0
    blob: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Event(SQLModel, table=True):
    """Things worth reporting: drift, dead letters, start-ups."""

    id: int | None = Field(default=None, primary_key=True)
    created_at: float = Field(index=True)
    kind: str = Field(max_length=40, index=True)
    data_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    #: when the event was announced in the review channel (drift), None: not yet
    announced_at: float | None = None


class KeyValue(SQLModel, table=True):
    """Small durable settings the gateway generates itself (the token secret)."""

    key: str = Field(primary_key=True, max_length=80)
    value: str = Field(sa_column=Column(Text, nullable=False))


class QuotaHit(SQLModel, table=True):
    """One counted use of a limit the fleet shares (a review of the hourly cap, a question
    to a user, a vote from a client), kept until its window has passed: PostgreSQL's
    sliding windows (``quotas.py``). Created on SQLite too, where it stays empty.
    """

    __tablename__: ClassVar[str] = "quota_hit"
    __table_args__ = (Index("ix_quota_hit_name_key_expires_at", "name", "key", "expires_at"),)

    #: 64 bits: every vote of a fleet is one row
    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    )
    name: str = Field(max_length=40)
    key: str = Field(max_length=200)
    #: when this use leaves its window (its time plus the window's length)
    expires_at: float = Field(index=True)


# The same tables as SQLAlchemy Core sees them: what the store's queries are built on.
exchange_t: Table = Exchange.__table__  # type: ignore[attr-defined]
feedback_t: Table = Feedback.__table__  # type: ignore[attr-defined]
label_t: Table = Label.__table__  # type: ignore[attr-defined]
escalation_t: Table = Escalation.__table__  # type: ignore[attr-defined]
review_vote_t: Table = ReviewVote.__table__  # type: ignore[attr-defined]
snapshot_t: Table = ModelSnapshot.__table__  # type: ignore[attr-defined]
model_version_t: Table = ModelVersion.__table__  # type: ignore[attr-defined]
event_t: Table = Event.__table__  # type: ignore[attr-defined]
kv_t: Table = KeyValue.__table__  # type: ignore[attr-defined]
quota_hit_t: Table = QuotaHit.__table__  # type: ignore[attr-defined]
