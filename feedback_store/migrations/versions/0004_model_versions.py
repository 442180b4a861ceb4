"""model versions: snapshots carry a generation, a version and a fingerprint

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-16 09:00:00.000000

``hitl retrain --promote`` and ``hitl models rollback`` make a model live by writing a
snapshot of a newer generation; the learner and the serving processes follow the
newest generation. ``model_version`` keeps every model that went live, for rollback.
Snapshots written before this migration are generation 0 of version 1 with an empty
fingerprint (the learner reads the settings they were built with from the snapshot).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("modelsnapshot", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("generation", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(
            sa.Column(
                "fingerprint",
                sqlmodel.sql.sqltypes.AutoString(length=80),
                nullable=False,
                server_default="",
            )
        )
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("settings_json", sa.Text(), nullable=False),
        sa.Column("figures_json", sa.Text(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("last_label_id", sa.Integer(), nullable=False),
        sa.Column("labels", sa.Integer(), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("model_version")
    with op.batch_alter_table("modelsnapshot", schema=None) as batch_op:
        batch_op.drop_column("fingerprint")
        batch_op.drop_column("version")
        batch_op.drop_column("generation")
