"""agents: MS agents, their tokens and template maps, and the trail of their archival requests

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-20 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import SchemaItem

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _common(table: str) -> list[SchemaItem]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f(f"fk_{table}_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    ]


def _agent_id(table: str) -> list[SchemaItem]:
    return [
        sa.Column("agent_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f(f"fk_{table}_agent_id_agents")
        ),
    ]


def _indexes(table: str, *, agent: bool) -> None:
    op.create_index(op.f(f"ix_{table}_account_id"), table, ["account_id"], unique=False)
    op.create_index(op.f(f"ix_{table}_uuid"), table, ["uuid"], unique=True)
    if agent:
        op.create_index(op.f(f"ix_{table}_agent_id"), table, ["agent_id"], unique=False)


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "agents",
        *_common("agents"),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("last_contact_at", when, nullable=True),
        sa.Column("grant_generation", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.UniqueConstraint("account_id", "name", name=op.f("uq_agents_account_id_name")),
    )
    _indexes("agents", agent=False)
    op.create_table(
        "agent_credentials",
        *_common("agent_credentials"),
        *_agent_id("agent_credentials"),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("revoked_at", when, nullable=True),
        sa.Column("grant_generation", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_agent_credentials_token_sha256")),
    )
    _indexes("agent_credentials", agent=True)
    op.create_table(
        "agent_templates",
        *_common("agent_templates"),
        *_agent_id("agent_templates"),
        sa.Column("template", sa.String(length=200), nullable=False),
        sa.Column("profile", sa.String(length=32), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("archive_key", sa.Boolean(), nullable=False),
        sa.Column("require_archival", sa.Boolean(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("grant_generation", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_agent_templates_organization_id_organizations"),
        ),
        sa.UniqueConstraint(
            "agent_id", "template", name=op.f("uq_agent_templates_agent_id_template")
        ),
    )
    _indexes("agent_templates", agent=True)
    op.create_table(
        "agent_requests",
        *_common("agent_requests"),
        *_agent_id("agent_requests"),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("replay_key", sa.String(length=64), nullable=True),
        sa.Column("template", sa.String(length=200), nullable=False),
        sa.Column("requester_upn", sa.String(length=320), nullable=False),
        sa.Column("requester_email", sa.String(length=320), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("windows_status", sa.BigInteger(), nullable=True),
        sa.Column("certificate_id", sa.Integer(), nullable=True),
        sa.Column("response", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name=op.f("fk_agent_requests_certificate_id_certificates"),
        ),
        sa.UniqueConstraint(
            "account_id", "replay_key", name=op.f("uq_agent_requests_account_id_replay_key")
        ),
    )
    _indexes("agent_requests", agent=True)
    op.create_index(
        "ix_agent_requests_account_time", "agent_requests", ["account_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_agent_requests_account_time", table_name="agent_requests")
    for table in ("agent_requests", "agent_templates", "agent_credentials", "agents"):
        for index in ("agent_id", "uuid", "account_id"):
            if index != "agent_id" or table != "agents":
                op.drop_index(op.f(f"ix_{table}_{index}"), table_name=table)
        op.drop_table(table)
