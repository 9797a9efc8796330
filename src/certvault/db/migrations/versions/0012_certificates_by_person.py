"""certificates by person: an index on (account_id, person_id) for a person's certificates

Without statistics, SQLite answered "a person's certificates" through the account index and read
every certificate of the account (28x slower at 100,000 keys than at 10,000); with both columns in
one index the lookup stays flat.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 07:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_certificates_account_person", "certificates", ["account_id", "person_id"])


def downgrade() -> None:
    op.drop_index("ix_certificates_account_person", table_name="certificates")
