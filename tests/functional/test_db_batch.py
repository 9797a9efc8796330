"""Statements over a batch of rows (db/batch.py): lookups by many values, through the index they
name; set-based INSERTs that give each row what an executemany would."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import event, select, text

from certvault.db.batch import among, insert_rows, new_ids
from certvault.db.engine import Database
from certvault.db.models import Account, EscrowedKey, MailMessage, Person
from certvault.services.vault.imports import ImportItem, import_files
from tests.conftest import PG_COPIES, _sqla_url
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


@pytest.mark.parametrize("backend", ["postgresql"])  # ids come from a sequence only there
def test_a_few_new_ids_come_from_a_block_the_connection_drew_ahead(ports, account):
    drawn: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "nextval" in statement:
            drawn.append(statement)

    def take(count: int) -> list[int]:
        with ports.db.transaction() as session:
            return new_ids(session.connection(), MailMessage, count)

    event.listen(ports.db.engine, "before_cursor_execute", record)
    try:
        few = [i for count in [1, 2, 3, 4] * 10 for i in take(count)]  # one thread: one connection
        statements_for_few = len(drawn)
        many = take(50)  # more than a few: drawn for this call alone
        with ThreadPoolExecutor(4) as pool:  # connections in parallel, each with its own block
            parallel = [i for ids in pool.map(take, [1, 2, 3, 4] * 10) for i in ids]
    finally:
        event.remove(ports.db.engine, "before_cursor_execute", record)
    # 100 ids for 40 inserts: each handed out once, in 4 statements or fewer, not 40.
    assert len(few) == len(set(few)) == 100
    assert 1 <= statements_for_few <= 4
    assert len(many) == 50
    everything = few + many + parallel
    assert len(everything) == len(set(everything)) == 250
    # Every id is a value the table's sequence gave out.
    with ports.db.engine.begin() as connection:
        assert max(everything) <= connection.exec_driver_sql(_LAST_ID).scalar_one()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_ids_drawn_ahead_are_never_handed_out_twice_or_after_a_reconnect(
    ports, account, pg_template
):
    # Each process (here: each engine on the one database) holds its own blocks, so ids do not
    # follow the order they are handed out in across processes, but none is handed out twice.
    same = Database(ports.settings.effective_database_url)
    other_name = PG_COPIES.take(pg_template)
    other = Database(_sqla_url(other_name))
    try:
        taken = []
        for _ in range(40):
            for db in (ports.db, same):
                with db.transaction() as session:
                    taken += new_ids(session.connection(), MailMessage, 3)
        # A new connection (after a restart of the database, or on a restored one) does not
        # hand out what the old one drew: its block comes from the sequence as it is now.
        with same.transaction() as session:
            session.execute(text("SELECT setval('mail_outbox_id_seq', 1000000)"))
        same.engine.dispose()
        with same.transaction() as session:
            [fresh] = new_ids(session.connection(), MailMessage, 1)
        # Another database: its id comes from its own sequence, not from a block drawn here.
        with other.transaction() as session:
            [elsewhere] = new_ids(session.connection(), MailMessage, 1)
            drawn = session.connection().exec_driver_sql(_LAST_ID).scalar_one()
    finally:
        same.dispose()
        other.dispose()
        PG_COPIES.drop(other_name)
    assert len(taken) == len(set(taken)) == 240
    assert fresh == 1000001
    assert elsewhere <= drawn


_LAST_ID = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM mail_outbox_id_seq"
