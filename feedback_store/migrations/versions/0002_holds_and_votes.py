"""holds and votes: a hold's release on its escalation, one row per reviewer's vote,
and when an event was announced in the review channel

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 09:00:00.000000

Every decision taken before this revision becomes the one vote that took it, so the
audit export and the report's reviewer figures cover old decisions too; the events
before it count as announced (old drift is not news to the review channel).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Each decision before votes existed, as the vote that took it.
_BACKFILL = """
INSERT INTO review_vote
    (escalation_id, reply_id, reviewer, verdict, reason, correction, created_at)
SELECT id, reply_id, decided_by,
       CASE state WHEN 'approved' THEN 'approve' WHEN 'rejected' THEN 'reject'
            ELSE 'correct' END,
       decision_reason, correction, COALESCE(decided_at, created_at)
FROM escalation
WHERE state IN ('approved', 'rejected', 'corrected') AND decided_by IS NOT NULL
ORDER BY id
"""


def upgrade() -> None:
    # SQLite adds columns in place; batch mode copies the table only where it must.
    with op.batch_alter_table("escalation", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("released", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=True)
        )
        batch_op.add_column(sa.Column("released_at", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("timed_out", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.add_column(sa.Column("announced_at", sa.Float(), nullable=True))

    op.create_table(
        "review_vote",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("escalation_id", sa.Integer(), nullable=False),
        sa.Column("reply_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("reviewer", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("verdict", sqlmodel.sql.sqltypes.AutoString(length=12), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["escalation_id"], ["escalation.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("escalation_id", "reviewer", name="uq_review_vote_escalation_reviewer"),
    )
    with op.batch_alter_table("review_vote", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_review_vote_escalation_id"), ["escalation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_review_vote_reply_id"), ["reply_id"], unique=False)

    op.execute(sa.text(_BACKFILL))
    # Events before this revision are history, not news: none is announced now.
    op.execute(sa.text("UPDATE event SET announced_at = created_at"))


def downgrade() -> None:
    with op.batch_alter_table("review_vote", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_review_vote_reply_id"))
        batch_op.drop_index(batch_op.f("ix_review_vote_escalation_id"))
    op.drop_table("review_vote")
    with op.batch_alter_table("event", schema=None) as batch_op:
        batch_op.drop_column("announced_at")
    with op.batch_alter_table("escalation", schema=None) as batch_op:
        batch_op.drop_column("timed_out")
        batch_op.drop_column("released_at")
        batch_op.drop_column("released")
