"""form names: whether an enrollment form asks for the person's first and last name

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-22 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: a batch copy of the table would trip SQLite's foreign keys. Existing
    # forms get "off", the value the row seal leaves out of their MACs (seals.py, `later`).
    op.add_column(
        "enrollment_forms",
        sa.Column("ask_name", sa.String(length=16), nullable=False, server_default="off"),
    )


def downgrade() -> None:
    with op.batch_alter_table("enrollment_forms", schema=None) as batch_op:
        batch_op.drop_column("ask_name")
