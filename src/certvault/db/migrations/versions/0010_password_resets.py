"""password resets: single-use set-password links mailed to administrators

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-21 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLE = "password_resets"


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        TABLE,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("admin_id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.String(length=320), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.Column("used_at", when, nullable=True),
        sa.Column("superseded_at", when, nullable=True),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f(f"fk_{TABLE}_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["admin_id"], ["admins.id"], name=op.f(f"fk_{TABLE}_admin_id_admins")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{TABLE}")),
        sa.UniqueConstraint("token_sha256", name=op.f(f"uq_{TABLE}_token_sha256")),
    )
    for column, unique in (("account_id", False), ("admin_id", False), ("uuid", True)):
        op.create_index(op.f(f"ix_{TABLE}_{column}"), TABLE, [column], unique=unique)


def downgrade() -> None:
    for column in ("uuid", "admin_id", "account_id"):
        op.drop_index(op.f(f"ix_{TABLE}_{column}"), table_name=TABLE)
    op.drop_table(TABLE)
