"""ca and enrollment

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 09:22:57.176034
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificate_authorities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("certificate_der", sa.LargeBinary(), nullable=False),
        sa.Column("service_key_id", sa.Integer(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("crl_number", sa.Integer(), nullable=False),
        sa.Column("crl_der", sa.LargeBinary(), nullable=True),
        sa.Column("crl_next_update", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_certificate_authorities_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["certificate_authorities.id"],
            name=op.f("fk_certificate_authorities_parent_id_certificate_authorities"),
        ),
        sa.ForeignKeyConstraint(
            ["service_key_id"],
            ["service_keys.id"],
            name=op.f("fk_certificate_authorities_service_key_id_service_keys"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate_authorities")),
        sa.UniqueConstraint(
            "account_id", "name", name=op.f("uq_certificate_authorities_account_id_name")
        ),
        sa.UniqueConstraint("uuid", name=op.f("uq_certificate_authorities_uuid")),
    )
    with op.batch_alter_table("certificate_authorities", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_certificate_authorities_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "enrollment_forms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("access_code_hash", sa.String(length=255), nullable=True),
        sa.Column("domains", sa.Text(), nullable=False),
        sa.Column("key_types", sa.Text(), nullable=False),
        sa.Column("dual_key", sa.Boolean(), nullable=False),
        sa.Column("allow_own_passphrase", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_enrollment_forms_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_enrollment_forms_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_forms")),
        sa.UniqueConstraint("account_id", "slug", name=op.f("uq_enrollment_forms_account_id_slug")),
    )
    with op.batch_alter_table("enrollment_forms", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_enrollment_forms_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "enrollment_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("form_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("certificate_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name=op.f("fk_enrollment_codes_certificate_id_certificates"),
        ),
        sa.ForeignKeyConstraint(
            ["form_id"],
            ["enrollment_forms.id"],
            name=op.f("fk_enrollment_codes_form_id_enrollment_forms"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_codes")),
    )
    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.create_index("ix_enrollment_codes_form_email", ["form_id", "email"], unique=False)

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("profile", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("ca_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_certificates_ca_id_certificate_authorities"),
            "certificate_authorities",
            ["ca_id"],
            ["id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_certificates_ca_id_certificate_authorities"), type_="foreignkey"
        )
        batch_op.drop_column("ca_id")
        batch_op.drop_column("profile")

    with op.batch_alter_table("enrollment_codes", schema=None) as batch_op:
        batch_op.drop_index("ix_enrollment_codes_form_email")

    op.drop_table("enrollment_codes")
    with op.batch_alter_table("enrollment_forms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_enrollment_forms_account_id"))

    op.drop_table("enrollment_forms")
    with op.batch_alter_table("certificate_authorities", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificate_authorities_account_id"))

    op.drop_table("certificate_authorities")
