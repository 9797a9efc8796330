"""more seals: the mail outbox, organizations, enrollment forms and certificate authorities

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


# Tables sealed from this revision on, with whether they need a uuid.
SEALED = {
    "mail_outbox": True,
    "organizations": True,
    "enrollment_forms": True,
    "certificate_authorities": False,
}
GRANTS = ("enrollment_forms",)


def upgrade() -> None:
    conn = op.get_bind()
    for name, needs_uuid in SEALED.items():
        if needs_uuid:
            op.add_column(
                name, sa.Column("uuid", sa.String(length=36), nullable=False, server_default="")
            )
            table = sa.table(name, sa.column("id"), sa.column("uuid"))
            ids = conn.execute(sa.select(table.c.id)).scalars().all()
            if ids:
                conn.execute(
                    table.update().where(table.c.id == sa.bindparam("row_id")),
                    [{"row_id": row_id, "uuid": str(uuid.uuid4())} for row_id in ids],
                )
            op.create_index(op.f(f"ix_{name}_uuid"), name, ["uuid"], unique=True)
        op.add_column(name, sa.Column("mac", sa.String(length=64), nullable=True))
    for name in GRANTS:
        op.add_column(
            name, sa.Column("grant_generation", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    for name in GRANTS:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("grant_generation")
    for name, needs_uuid in SEALED.items():
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("mac")
            if needs_uuid:
                batch_op.drop_index(batch_op.f(f"ix_{name}_uuid"))
                batch_op.drop_column("uuid")
