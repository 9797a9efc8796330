"""Migrations run over a database that already holds data (not only over an empty one)."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from sqlalchemy import text

from certvault.db.engine import Database
from certvault.db.migrate import alembic_config
from tests.conftest import _pg_exec, _sqla_url


def _upgrade_with_data(db: Database) -> None:
    cfg = alembic_config(db)
    command.upgrade(cfg, "0001")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (id, uuid, slug, name, key_vault_enabled,"
                " require_trusted_issuer, min_passphrase_length, reason_required, created_at)"
                " VALUES (1, :u, 'a', 'A', true, false, 12, false, CURRENT_TIMESTAMP)"
            ),
            {"u": str(uuid.uuid4())},
        )
        conn.execute(
            text(
                "INSERT INTO organizations (id, account_id, name, is_default, created_at)"
                " VALUES (1, 1, 'A', true, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO persons (id, account_id, organization_id, email, first_name,"
                " last_name, created_at)"
                " VALUES (1, 1, 1, 'p@example.org', 'P', 'Q', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(text("INSERT INTO organizations VALUES (2, 1, 'B', false, CURRENT_TIMESTAMP)"))
        for admin_id, role in ((1, "organization"), (2, "account")):
            conn.execute(
                text(
                    "INSERT INTO admins (id, account_id, login, password_hash, role, privileges,"
                    " api_only, active, created_at)"
                    " VALUES (:id, 1, :login, 'h', :role, '', false, true, CURRENT_TIMESTAMP)"
                ),
                {"id": admin_id, "login": f"admin{admin_id}", "role": role},
            )
        conn.execute(text("INSERT INTO admin_organizations VALUES (1, 2), (1, 1)"))
    command.upgrade(cfg, "head")
    with db.engine.connect() as conn:
        row = conn.execute(text("SELECT email, validation_type, middle_name FROM persons")).one()
        assert tuple(row) == ("p@example.org", "STANDARD", "")
        # 0006: a uuid for every row that had none, admins' organizations copied beside them,
        # and no MAC yet (`certvault init` seals the rows; it holds the master key).
        [(person_uuid, person_mac)] = conn.execute(text("SELECT uuid, mac FROM persons")).all()
        assert len(person_uuid) == 36 and person_mac is None
        admins = conn.execute(
            text("SELECT uuid, organization_ids, grant_generation FROM admins ORDER BY id")
        ).all()
    assert [(ids, generation) for _, ids, generation in admins] == [("1 2", 0), ("", 0)]
    assert len({u for u, _, _ in admins}) == 2


def test_upgrade_keeps_rows_sqlite(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    try:
        _upgrade_with_data(db)
    finally:
        db.dispose()


def test_upgrade_keeps_rows_postgresql(pg_template):
    name = f"cvm_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    db = Database(_sqla_url(name))
    try:
        _upgrade_with_data(db)
    finally:
        db.dispose()
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _ask_name_up_and_down(db: Database) -> None:
    """0011 gives existing forms ask_name "off" and takes the column away again on downgrade."""
    cfg = alembic_config(db)
    command.upgrade(cfg, "0010")
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO accounts (id, uuid, slug, name, key_vault_enabled,"
                " require_trusted_issuer, min_passphrase_length, reason_required, created_at)"
                " VALUES (1, :u, 'a', 'A', true, false, 12, false, CURRENT_TIMESTAMP)"
            ),
            {"u": str(uuid.uuid4())},
        )
        conn.execute(
            text(
                "INSERT INTO organizations (id, uuid, account_id, name, is_default, created_at)"
                " VALUES (1, :u, 1, 'A', true, CURRENT_TIMESTAMP)"
            ),
            {"u": str(uuid.uuid4())},
        )
        conn.execute(
            text(
                "INSERT INTO enrollment_forms (id, uuid, account_id, slug, name, profile,"
                " organization_id, domains, key_types, dual_key, allow_own_passphrase, enabled,"
                " created_at, grant_generation)"
                " VALUES (1, :u, 1, 'staff', 'Staff', 'smime', 1, '', '', false, false, true,"
                " CURRENT_TIMESTAMP, 0)"
            ),
            {"u": str(uuid.uuid4())},
        )
    command.upgrade(cfg, "0011")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT slug, ask_name FROM enrollment_forms")).one() == (
            "staff",
            "off",
        )
    command.downgrade(cfg, "0010")
    with db.engine.connect() as conn:
        [row] = conn.execute(text("SELECT * FROM enrollment_forms")).mappings().all()
    assert row["slug"] == "staff" and "ask_name" not in row


def test_ask_name_upgrade_and_downgrade_sqlite(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    try:
        _ask_name_up_and_down(db)
    finally:
        db.dispose()


def test_ask_name_upgrade_and_downgrade_postgresql(pg_template):
    name = f"cvm_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}"')
    db = Database(_sqla_url(name))
    try:
        _ask_name_up_and_down(db)
    finally:
        db.dispose()
        _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_persons_certificates_are_found_through_the_account_person_index(ports):
    # SQLite plans without statistics: through the account index alone it would read every
    # certificate of the account for one person's list (bench/scale.py showed 28x at 100k keys).
    query = (
        "EXPLAIN QUERY PLAN SELECT id FROM certificates WHERE account_id = 1 AND person_id = 2"
        " AND escrowed_key_id IS NOT NULL AND id > 0 ORDER BY id LIMIT 51"
    )
    with ports.db.engine.connect() as conn:
        plan = " ".join(str(row[-1]) for row in conn.execute(text(query)))
    assert "ix_certificates_account_person" in plan, plan
