"""shared quotas: one row per counted use of a limit the fleet shares

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09 09:00:00.000000

The hourly review cap, each user's asks and each client's votes are counted here when
several gateways share one PostgreSQL and no Redis is configured (``quotas.py``). SQLite
gets the table too, so both stores stay at one schema; it stays empty there.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quota_hit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("quota_hit", schema=None) as batch_op:
        batch_op.create_index(
            "ix_quota_hit_name_key_expires_at", ["name", "key", "expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_quota_hit_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("quota_hit", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quota_hit_expires_at"))
        batch_op.drop_index("ix_quota_hit_name_key_expires_at")
    op.drop_table("quota_hit")
