"""admin console: Key Vault recovery options, the own-passphrase policy, one-use form tokens

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 11:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_vault_settings",
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("recovery_method", sa.String(length=32), nullable=False),
        sa.Column("sign_profiles", sa.Boolean(), nullable=False),
        sa.Column("signing_key_id", sa.Integer(), nullable=True),
        sa.Column("exchange_enabled", sa.Boolean(), nullable=False),
        sa.Column("exchange_host", sa.String(length=253), nullable=False),
        sa.Column("exchange_use_ssl", sa.Boolean(), nullable=False),
        sa.Column("exchange_past_days", sa.Integer(), nullable=False),
        sa.Column("exchange_prevent_move", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_key_vault_settings_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["signing_key_id"],
            ["service_keys.id"],
            name=op.f("fk_key_vault_settings_signing_key_id_service_keys"),
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_key_vault_settings")),
    )
    op.create_table(
        "form_nonces",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("sealed", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"], ["web_sessions.id"], name=op.f("fk_form_nonces_session_id_web_sessions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_form_nonces")),
    )
    with op.batch_alter_table("form_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_form_nonces_session_id"), ["session_id"], unique=False)
    # A plain ADD COLUMN: a batch copy of ``accounts`` would trip SQLite's foreign keys.
    op.add_column(
        "accounts",
        sa.Column("allow_own_passphrase", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    op.drop_column("accounts", "allow_own_passphrase")
    with op.batch_alter_table("form_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_form_nonces_session_id"))
    op.drop_table("form_nonces")
    op.drop_table("key_vault_settings")
