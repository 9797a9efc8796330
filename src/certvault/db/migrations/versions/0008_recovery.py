"""recovery: the Private Key Recovery Form's requests, secret-bearing mail, persons' active flag,
the profile-signing chain, and the unsigned-profile fallback

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs: a batch copy of these tables would trip SQLite's foreign keys.
    false, true = sa.text("false"), sa.text("true")
    op.add_column(
        "mail_outbox", sa.Column("body_sealed", sa.Boolean(), nullable=False, server_default=false)
    )
    op.add_column(
        "mail_outbox", sa.Column("discard", sa.Boolean(), nullable=False, server_default=false)
    )
    op.add_column("mail_outbox", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("persons", sa.Column("active", sa.Boolean(), nullable=False, server_default=true))
    op.add_column(
        "key_vault_settings",
        sa.Column("unsigned_fallback", sa.Boolean(), nullable=False, server_default=false),
    )
    op.add_column("service_keys", sa.Column("chain_pem", sa.Text(), nullable=True))
    op.create_table(
        "recovery_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("certificate_ids", sa.Text(), nullable=False),
        sa.Column("code_mac", sa.String(length=64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=320), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("link_mac", sa.String(length=64), nullable=True),
        sa.Column("session_mac", sa.String(length=64), nullable=True),
        sa.Column("session_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("passphrase_sealed", sa.Text(), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_recovery_requests_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recovery_requests")),
    )
    op.create_index(
        op.f("ix_recovery_requests_account_id"), "recovery_requests", ["account_id"], unique=False
    )
    op.create_index(op.f("ix_recovery_requests_uuid"), "recovery_requests", ["uuid"], unique=True)
    op.create_index(
        "ix_recovery_requests_account_status",
        "recovery_requests",
        ["account_id", "status"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_recovery_requests_account_status", table_name="recovery_requests")
    op.drop_index(op.f("ix_recovery_requests_uuid"), table_name="recovery_requests")
    op.drop_index(op.f("ix_recovery_requests_account_id"), table_name="recovery_requests")
    op.drop_table("recovery_requests")
    with op.batch_alter_table("service_keys", schema=None) as batch_op:
        batch_op.drop_column("chain_pem")
    with op.batch_alter_table("key_vault_settings", schema=None) as batch_op:
        batch_op.drop_column("unsigned_fallback")
    with op.batch_alter_table("persons", schema=None) as batch_op:
        batch_op.drop_column("active")
    with op.batch_alter_table("mail_outbox", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("discard")
        batch_op.drop_column("body_sealed")
