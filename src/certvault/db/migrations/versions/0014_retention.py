"""retention policies, legal holds and key destruction records

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "retention_policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("profile", sa.String(32), nullable=True),
        sa.Column("days", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_by", sa.String(320), nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.Column("mac", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_retention_policies_account_id_accounts"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_policies")),
    )
    op.create_index(op.f("ix_retention_policies_uuid"), "retention_policies", ["uuid"], unique=True)
    op.create_index(
        "ix_retention_policies_account_profile", "retention_policies", ["account_id", "profile"]
    )
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("certificate_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(320), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("released_at", when, nullable=True),
        sa.Column("released_by", sa.String(320), nullable=True),
        sa.Column("release_reason", sa.Text(), nullable=True),
        sa.Column("mac", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_legal_holds_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["person_id"], ["persons.id"], name=op.f("fk_legal_holds_person_id_persons")
        ),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name=op.f("fk_legal_holds_certificate_id_certificates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_legal_holds")),
    )
    op.create_index(op.f("ix_legal_holds_uuid"), "legal_holds", ["uuid"], unique=True)
    op.create_index("ix_legal_holds_account_released", "legal_holds", ["account_id", "released_at"])
    op.create_table(
        "key_destructions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("escrowed_key_id", sa.Integer(), nullable=False),
        sa.Column("key_uuid", sa.String(36), nullable=False),
        sa.Column("spki_sha256", sa.String(64), nullable=False),
        sa.Column("certificates", sa.Text(), nullable=False),
        sa.Column("destroyed_at", when, nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("policy_profile", sa.String(32), nullable=True),
        sa.Column("policy_days", sa.Integer(), nullable=True),
        sa.Column("destroyed_by", sa.String(320), nullable=False),
        sa.Column("mac", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_key_destructions_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["escrowed_key_id"],
            ["escrowed_keys.id"],
            name=op.f("fk_key_destructions_escrowed_key_id_escrowed_keys"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_destructions")),
        sa.UniqueConstraint("escrowed_key_id", name=op.f("uq_key_destructions_escrowed_key_id")),
    )
    op.create_index(op.f("ix_key_destructions_uuid"), "key_destructions", ["uuid"], unique=True)
    op.create_index(
        op.f("ix_key_destructions_account_id"), "key_destructions", ["account_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("key_destructions")
    op.drop_table("legal_holds")
    op.drop_table("retention_policies")
