"""exchanges record the feature code version that computed their features

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-17 09:00:00.000000

``hitl retrain`` recomputes the features of exchanges that other feature code stored.
Before this migration it could tell only by the keys, so a change that kept the keys
but computed them differently went unnoticed; exchanges stored before it keep NULL and
are still judged by their keys.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exchange", schema=None) as batch_op:
        batch_op.add_column(sa.Column("features_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exchange", schema=None) as batch_op:
        batch_op.drop_column("features_version")
