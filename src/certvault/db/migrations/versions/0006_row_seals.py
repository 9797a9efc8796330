"""row seals: a uuid on every sealed row, its MAC, the grant generation, admins' organization ids

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 09:00:00.000000

The MACs themselves are written by `certvault init` (services/kernel/seals.py), which holds the
master key; this migration leaves them empty.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The tables whose rows are sealed, with their primary key.
SEALED = {
    "accounts": "id",
    "persons": "id",
    "certificates": "id",
    "trusted_issuers": "id",
    "admins": "id",
    "api_tokens": "id",
    "web_sessions": "id",
    "key_vault_settings": "account_id",
}
WITHOUT_UUID = (
    "persons",
    "trusted_issuers",
    "admins",
    "api_tokens",
    "web_sessions",
    "key_vault_settings",
)
# Rows that grant access or decide policy carry the account's grant generation.
GRANTS = (
    "accounts",
    "trusted_issuers",
    "admins",
    "api_tokens",
    "web_sessions",
    "key_vault_settings",
)


def upgrade() -> None:
    conn = op.get_bind()
    # Plain ADD COLUMNs and a unique index: a batch copy of these tables would trip SQLite's
    # foreign keys.
    for name in WITHOUT_UUID:
        op.add_column(
            name, sa.Column("uuid", sa.String(length=36), nullable=False, server_default="")
        )
        key = SEALED[name]
        table = sa.table(name, sa.column(key), sa.column("uuid"))
        ids = conn.execute(sa.select(table.c[key])).scalars().all()
        if ids:
            conn.execute(
                table.update().where(table.c[key] == sa.bindparam("row_key")),
                [{"row_key": row_key, "uuid": str(uuid.uuid4())} for row_key in ids],
            )
        op.create_index(op.f(f"ix_{name}_uuid"), name, ["uuid"], unique=True)
    for name in SEALED:
        op.add_column(name, sa.Column("mac", sa.String(length=64), nullable=True))
    for name in GRANTS:
        op.add_column(
            name, sa.Column("grant_generation", sa.Integer(), nullable=False, server_default="0")
        )
    op.add_column(
        "admins", sa.Column("organization_ids", sa.Text(), nullable=False, server_default="")
    )
    links = sa.table("admin_organizations", sa.column("admin_id"), sa.column("organization_id"))
    by_admin: dict[int, list[int]] = {}
    for admin_id, organization_id in conn.execute(
        sa.select(links.c.admin_id, links.c.organization_id)
    ):
        by_admin.setdefault(admin_id, []).append(organization_id)
    if by_admin:
        admins = sa.table("admins", sa.column("id"), sa.column("organization_ids"))
        conn.execute(
            admins.update().where(admins.c.id == sa.bindparam("admin_id")),
            [
                {"admin_id": admin_id, "organization_ids": " ".join(map(str, sorted(ids)))}
                for admin_id, ids in by_admin.items()
            ],
        )


def downgrade() -> None:
    with op.batch_alter_table("admins", schema=None) as batch_op:
        batch_op.drop_column("organization_ids")
    for name in GRANTS:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("grant_generation")
    for name in SEALED:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("mac")
    for name in WITHOUT_UUID:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{name}_uuid"))
            batch_op.drop_column("uuid")
