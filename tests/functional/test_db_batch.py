"""Statements over a batch of rows (db/batch.py): lookups by many values, through the index they
name; set-based INSERTs that give each row what an executemany would."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select

from certvault.db.batch import among, insert_rows
from certvault.db.models import Account, EscrowedKey, Person
from certvault.services.vault.imports import ImportItem, import_files
from tests.factories import make_ca, make_cert, make_p12, new_key

P = "batch-pass-1234"


def _import(ports: Any, operator: Any, *emails_and_cas: tuple[str, Any]) -> None:
    items = []
    for email, ca in emails_and_cas:
        key = new_key("ec256")
        data = make_p12(key, make_cert(key, email, issuer=ca), P)
        items.append(ImportItem(name=f"{email}.p12", load=lambda d=data: d, password=P))
    assert all(r.ok for r in import_files(ports, operator, "acme", items))


def test_among_answers_the_rows_with_one_of_the_values(ports, operator, account):
    ca = make_ca("Batch CA")
    _import(ports, operator, ("a@example.org", ca), ("b@example.org", ca), ("c@example.org", ca))
    with ports.db.read() as session:
        dialect = session.get_bind().dialect

        def found(values: list[str]) -> list[str]:
            query = select(Person.email).where(among(dialect, Person.email, values))
            return sorted(session.scalars(query))

        assert found(["a@example.org", "c@example.org", "z@example.org"]) == [
            "a@example.org",
            "c@example.org",
        ]
        assert found(["z@example.org"]) == []


def test_a_batch_looks_its_certificates_up_through_the_unique_index(ports, operator, account):
    # By serial alone (the third column of the index), the lookup of a batch's certificates
    # read every certificate of the account, once per batch.
    if ports.db.engine.dialect.name == "postgresql":  # a table large enough for plans to matter
        with ports.db.engine.begin() as connection:
            connection.exec_driver_sql(_MANY_CERTIFICATES)
            connection.exec_driver_sql("ANALYZE certificates")
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.startswith("SELECT certificates.issuer_sha256, certificates.serial"):
            seen.append((statement, params))

    event.listen(ports.db.engine, "before_cursor_execute", record)
    try:
        _import(ports, operator, ("a@example.org", make_ca("Batch CA")))
    finally:
        event.remove(ports.db.engine, "before_cursor_execute", record)
    [(statement, params)] = seen
    with ports.db.engine.connect() as connection:
        explain = "EXPLAIN " if connection.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
        plan = "\n".join(
            str(r[-1]) for r in connection.exec_driver_sql(explain + statement, params)
        )
    if connection.dialect.name == "postgresql":
        assert "Index Scan using uq_certificates_account_id_issuer_sha256_serial" in plan, plan
        assert "Filter" not in plan, plan
    else:
        assert "(account_id=? AND issuer_sha256=? AND serial=?)" in plan, plan


_MANY_CERTIFICATES = """
INSERT INTO certificates (uuid, account_id, organization_id, der, chain_pem, sha256, sha1_hex,
  md5_hex, serial, issuer, issuer_sha256, subject, emails, not_before, not_after, status,
  spki_sha256, source, trusted_issuer, created_at)
SELECT gen_random_uuid()::text, o.account_id, o.id, '\\x00', '', sha256(i::text::bytea), '', '',
  to_hex(i), 'CN=CA', sha256('\\x00'), 'CN=x', '', now(), now(), 'issued',
  sha256(i::text::bytea), 'import', false, now()
FROM generate_series(1, 20000) AS i, organizations AS o
"""


def test_insert_rows_gives_each_row_its_own_defaults(ports, account):
    with ports.db.engine.begin() as connection:
        account_id = connection.execute(select(Account.id).where(Account.slug == "acme")).scalar()
        rows = [
            {
                "account_id": account_id,
                "spki_sha256": bytes([i]) * 32,
                "algorithm": "ec",
                "key_size": "secp256r1",
                "nonce": b"n" * 12,
                "ciphertext": b"c",
                "data_key_nonce": b"d" * 12,
                "wrapped_data_key": b"w",
                "account_key_version": 1,
                "source": "import",
                "created_by": "test",
            }
            for i in range(3)
        ]
        insert_rows(connection, EscrowedKey, rows)  # no uuid, no created_at: their defaults
        stored = connection.execute(
            select(EscrowedKey.uuid, EscrowedKey.created_at, EscrowedKey.spki_sha256)
        ).all()
        connection.rollback()
    assert sorted(bytes(r.spki_sha256) for r in stored) == [bytes([i]) * 32 for i in range(3)]
    assert len({r.uuid for r in stored}) == 3  # called for each row, not once per statement
    assert all(r.created_at is not None for r in stored)
