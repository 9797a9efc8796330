"""sealed outbox: a uuid and a MAC on every queued mail

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 09:00:00.000000

The MACs are written by `certvault init` (services/kernel/seals.py), which holds the master key;
this migration leaves them empty.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column(
        "mail_outbox", sa.Column("uuid", sa.String(length=36), nullable=False, server_default="")
    )
    table = sa.table("mail_outbox", sa.column("id"), sa.column("uuid"))
    ids = conn.execute(sa.select(table.c.id)).scalars().all()
    if ids:
        conn.execute(
            table.update().where(table.c.id == sa.bindparam("row_id")),
            [{"row_id": row_id, "uuid": str(uuid.uuid4())} for row_id in ids],
        )
    op.create_index(op.f("ix_mail_outbox_uuid"), "mail_outbox", ["uuid"], unique=True)
    op.add_column("mail_outbox", sa.Column("mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("mail_outbox", schema=None) as batch_op:
        batch_op.drop_column("mac")
        batch_op.drop_index(batch_op.f("ix_mail_outbox_uuid"))
        batch_op.drop_column("uuid")
