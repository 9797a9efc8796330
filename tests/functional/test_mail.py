"""The mail outbox against a real SMTP server (aiosmtpd), on SQLite and PostgreSQL.

Mail is written in the transaction that causes it, delivered exactly once, retried with backoff
while the server is down, never lost, and never carries a passphrase or key material.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select, text, update

from certvault.crypto import keys as keylib
from certvault.db.models import MailMessage
from certvault.services.access import admins
from certvault.services.audit import log as audit
from certvault.services.directory import accounts
from certvault.services.kernel import notify, seals, tenancy
from certvault.services.kernel.notify import SendResult, send_pending
from certvault.services.kernel.ports import Ports, open_ports
from certvault.services.kernel.seal_events import UNBOUND_ONLY
from certvault.services.vault.archive import (
    CertificateConflict,
    EscrowRequest,
    KeyVaultDisabled,
    archive_entry,
)
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import ReasonRequired, release_key
from tests.conftest import make_settings
from tests.factories import make_ca, make_cert, make_p12, new_key, pool_key
from tests.functional.helpers import counts, events, mails
from tests.functional.smtp_server import SmtpServer, smtp_server  # noqa: F401 - the fixture

PW = "import-password-1"
FROM_ADDR = "vault@certvault.test"
FROM = f"Acme Key Vault <{FROM_ADDR}>"
SERIAL = 0xC0FFEE5EED
SUBJECT_CN = "Alice Example"
ESCROWED = "Your private key has been escrowed"
RECOVERED = "Your private key was recovered"
OPERATOR_RELEASE = "An operator released a private key"


@pytest.fixture
def mail_ports(tmp_path: Path, database_url: str | None, smtp_server: SmtpServer, operator):  # noqa: F811
    settings = make_settings(
        tmp_path / "home",
        database_url,
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        smtp_from=FROM,
        smtp_security="none",
    )
    p = open_ports(settings)
    accounts.initialize(p, operator)
    accounts.create_account(p, operator, "Acme Corp", "acme", key_vault_enabled=True)
    yield p
    p.close()


def _import(ports, operator, key, email="alice@example.org", cert=None):  # type: ignore[no-untyped-def]
    cert = cert or make_cert(key, email)
    [entry] = import_p12(ports, operator, "acme", make_p12(key, cert, PW), PW)
    return cert, entry


def _queue(ports: Ports, n: int, prefix: str = "message") -> list[str]:
    subjects = [f"{prefix} {i}" for i in range(n)]
    with ports.db.transaction() as s:
        for i, subject in enumerate(subjects):
            notify.queue_mail(s, None, f"user{i}@example.org", subject, f"body of {subject}\n")
    return subjects


def _new_rows(ports: Ports, after: int) -> list[tuple[str, str]]:
    return sorted((m.to_addr, m.subject) for m in mails(ports)[after:])


# --- 1. mail is written with the work that causes it --------------------------------------------


class _Abort(Exception):
    pass


def test_archive_queues_one_mail_in_its_own_transaction(mail_ports, operator):
    key = pool_key("ec256")
    cert = make_cert(key, "alice@example.org")
    with pytest.raises(_Abort):
        with mail_ports.db.transaction() as s:
            acct = tenancy.get_account(s, "acme")
            archive_entry(s, mail_ports, acct, operator, EscrowRequest(key=key, certificate=cert))
            s.flush()
            assert s.scalar(select(func.count()).select_from(MailMessage)) == 1
            raise _Abort
    # Rolled back with the archive: the mail was not committed on its own.
    assert counts(mail_ports)["mail"] == 0 and counts(mail_ports)["certs"] == 0

    _import(mail_ports, operator, key, cert=cert)
    [row] = mails(mail_ports)
    with mail_ports.db.read() as s:
        acme_id = tenancy.get_account(s, "acme").id
    assert (row.to_addr, row.subject, row.account_id) == ("alice@example.org", ESCROWED, acme_id)
    assert row.sent_at is None and row.attempts == 0 and row.last_error is None


def test_refused_archive_queues_no_mail(mail_ports, operator):
    ca = make_ca()
    key = pool_key("ec256")
    _import(mail_ports, operator, key, cert=make_cert(key, issuer=ca, serial=4242))
    assert counts(mail_ports)["mail"] == 1
    other = new_key()
    _, entry = _import(
        mail_ports,
        operator,
        other,
        cert=make_cert(other, "bob@example.org", issuer=ca, serial=4242),
    )
    assert entry.code == CertificateConflict.code
    assert counts(mail_ports)["mail"] == 1
    accounts.set_key_vault(mail_ports, operator, "acme", False)
    with pytest.raises(KeyVaultDisabled):
        _import(mail_ports, operator, new_key(), "carol@example.org")
    assert [m.to_addr for m in mails(mail_ports)] == ["alice@example.org"]


def test_operator_release_mails_owner_and_each_account_admin_with_an_address(mail_ports, operator):
    with mail_ports.db.read() as s:
        default_org = str(tenancy.default_organization(s, tenancy.get_account(s, "acme")).id)
    admins.create_admin(mail_ports, operator, "acme", "boss", email="boss@example.org")
    admins.create_admin(mail_ports, operator, "acme", "deputy", email="deputy@example.org")
    admins.create_admin(mail_ports, operator, "acme", "quiet")  # no address: nothing to send
    admins.create_admin(
        mail_ports,
        operator,
        "acme",
        "unit",
        role="organization",
        organizations=[default_org],
        email="unit@example.org",
    )
    accounts.create_account(mail_ports, operator, "Other", "other", key_vault_enabled=True)
    admins.create_admin(mail_ports, operator, "other", "foreign", email="foreign@example.org")
    _, entry = _import(mail_ports, operator, pool_key("ec256"), "dave@example.org")
    before = len(mails(mail_ports))

    with pytest.raises(ReasonRequired):  # refused: nothing queued
        release_key(mail_ports, operator, "acme", entry.client_cert_id, passphrase=None)
    assert len(mails(mail_ports)) == before

    release_key(
        mail_ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="ticket 42"
    )
    assert _new_rows(mail_ports, before) == [
        ("boss@example.org", OPERATOR_RELEASE),
        ("dave@example.org", RECOVERED),
        ("deputy@example.org", OPERATOR_RELEASE),
    ]


# --- 2. delivery ---------------------------------------------------------------------------------


def test_send_pending_delivers_each_message_once(mail_ports, operator, smtp_server):  # noqa: F811
    admins.create_admin(mail_ports, operator, "acme", "boss", email="boss@example.org")
    key = pool_key("ec384")
    cert = make_cert(key, "alice@example.org", serial=SERIAL, cn=SUBJECT_CN)
    _, entry = _import(mail_ports, operator, key, cert=cert)
    release_key(
        mail_ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="lost laptop"
    )
    assert smtp_server.messages == []

    assert send_pending(mail_ports) == SendResult(sent=3, failed=0, pending=0)

    got = smtp_server.messages
    assert sorted((m.rcpt_tos, m.subject) for m in got) == [
        (("alice@example.org",), ESCROWED),
        (("alice@example.org",), RECOVERED),
        (("boss@example.org",), OPERATOR_RELEASE),
    ]
    serial_hex = format(SERIAL, "x")
    for m in got:
        assert m.mail_from == FROM_ADDR
        assert m.message["From"] == FROM
        assert m.message["To"] == m.rcpt_tos[0]
        assert f"CN={SUBJECT_CN}" in m.body and serial_hex in m.body
    assert "lost laptop" in next(m.body for m in got if m.subject == RECOVERED)
    for row in mails(mail_ports):
        assert row.sent_at is not None and row.attempts == 1
        assert row.last_error is None and row.claimed_until is None

    assert send_pending(mail_ports) == SendResult(sent=0, failed=0, pending=0)
    assert len(smtp_server.messages) == 3


# --- 3. the server is down -----------------------------------------------------------------------


def test_server_down_retries_with_backoff_and_loses_nothing(mail_ports, smtp_server):  # noqa: F811
    smtp_server.stop()
    subjects = _queue(mail_ports, 3)
    t0 = datetime.now(UTC) + timedelta(seconds=1)  # every row is due
    mail_ports.clock = lambda: t0

    assert send_pending(mail_ports) == SendResult(sent=0, failed=3, pending=3)
    first = notify.backoff(1)
    assert first > timedelta(0)
    for row in mails(mail_ports):
        assert row.sent_at is None and row.attempts == 1 and row.claimed_until is None
        assert row.last_error and row.last_error.startswith("ConnectionRefusedError")
        assert row.next_attempt_at == t0 + first

    mail_ports.clock = lambda: t0 + first - timedelta(seconds=1)  # not yet due
    assert send_pending(mail_ports) == SendResult(sent=0, failed=0, pending=3)
    assert {row.attempts for row in mails(mail_ports)} == {1}

    t1 = t0 + first
    mail_ports.clock = lambda: t1  # due, and the server is still down: the wait grows
    assert send_pending(mail_ports) == SendResult(sent=0, failed=3, pending=3)
    second = notify.backoff(2)
    assert second > first
    for row in mails(mail_ports):
        assert row.sent_at is None and row.attempts == 2 and row.next_attempt_at == t1 + second

    smtp_server.start()
    t2 = t1 + second
    mail_ports.clock = lambda: t2
    assert send_pending(mail_ports) == SendResult(sent=3, failed=0, pending=0)
    assert sorted(m.subject for m in smtp_server.messages) == subjects
    for row in mails(mail_ports):
        assert row.sent_at == t2 and row.attempts == 3 and row.last_error is None

    mail_ports.clock = lambda: t2 + timedelta(days=1)
    assert send_pending(mail_ports) == SendResult(sent=0, failed=0, pending=0)
    assert len(smtp_server.messages) == 3


# --- 4. several senders --------------------------------------------------------------------------


def test_a_message_claimed_by_one_sender_is_not_sent_by_another(mail_ports, smtp_server):  # noqa: F811
    subjects = _queue(mail_ports, 6)
    other = open_ports(mail_ports.settings)
    try:
        hold = smtp_server.hold_next()
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(send_pending, mail_ports, limit=3)
            # The first sender has claimed three messages and is stuck delivering one of them.
            assert hold.arrived.wait(30)
            assert send_pending(other) == SendResult(sent=3, failed=0, pending=3)
            hold.release()
            assert first.result(30) == SendResult(sent=3, failed=0, pending=0)
        assert send_pending(other) == SendResult(sent=0, failed=0, pending=0)
    finally:
        other.close()
    assert Counter(m.subject for m in smtp_server.messages) == Counter(subjects)
    assert all(row.sent_at is not None and row.attempts == 1 for row in mails(mail_ports))


def test_two_concurrent_senders_deliver_each_message_exactly_once(mail_ports, smtp_server):  # noqa: F811
    subjects = _queue(mail_ports, 30)
    other = open_ports(mail_ports.settings)
    start = threading.Barrier(2)

    def sender(ports: Ports) -> tuple[int, int]:
        start.wait(30)
        sent = failed = 0
        while True:
            result = send_pending(ports, limit=2)
            if result.sent + result.failed == 0:  # nothing left to claim
                return sent, failed
            sent, failed = sent + result.sent, failed + result.failed

    try:
        with ThreadPoolExecutor(2) as pool:
            results = [f.result(120) for f in [pool.submit(sender, p) for p in (mail_ports, other)]]
    finally:
        other.close()
    assert sum(sent for sent, _ in results) == 30 and sum(f for _, f in results) == 0
    received = Counter(m.subject for m in smtp_server.messages)
    assert received == Counter(subjects) and set(received.values()) == {1}
    assert all(row.sent_at is not None and row.attempts == 1 for row in mails(mail_ports))


# --- 5. the database is not trusted: no mail redirected ------------------------------------------


def _sql(ports: Ports, statement: str, **params: object) -> None:
    with ports.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def _held(ports: Ports) -> dict[str, str]:
    """uuid -> problem of every outbox row refused and audited."""
    found = {}
    for e in events(ports, audit.ROW_REFUSED):
        assert e.target_type == "mail_outbox" and e.outcome == "refused"
        found[e.target_id] = json.loads(e.details)["problem"]
    return found


def test_a_queued_mail_changed_in_the_database_is_held_and_the_others_go_out(
    mail_ports,
    operator,
    smtp_server,  # noqa: F811
):
    other = accounts.create_account(mail_ports, operator, "Other Corp", "other")
    with mail_ports.db.transaction() as s:
        acme = tenancy.get_account(s, "acme")
        for i, account in enumerate((acme, None, acme, acme, None, acme)):
            notify.queue_mail(s, account, f"user{i}@example.org", f"message {i}", f"code {i}\n")
    rows = {row.subject: row for row in mails(mail_ports)}
    attacker = "attacker@evil.example"
    # Redirected, reworded, moved to another tenant, an installation mail given to a tenant, and
    # one inserted with a MAC copied from a real row: all by SQL, without the master key.
    _sql(
        mail_ports,
        "UPDATE mail_outbox SET to_addr = :a WHERE id = :id",
        a=attacker,
        id=rows["message 0"].id,
    )
    _sql(
        mail_ports,
        "UPDATE mail_outbox SET body = 'click http://evil.example' WHERE id = :id",
        id=rows["message 2"].id,
    )
    _sql(
        mail_ports,
        "UPDATE mail_outbox SET account_id = :o WHERE id = :id",
        o=other.id,
        id=rows["message 3"].id,
    )
    _sql(
        mail_ports,
        "UPDATE mail_outbox SET account_id = :a WHERE id = :id",
        a=acme.id,
        id=rows["message 4"].id,
    )
    copied = rows["message 5"]
    forged = str(uuid.uuid4())
    _sql(
        mail_ports,
        "INSERT INTO mail_outbox (uuid, account_id, to_addr, subject, body, created_at, attempts,"
        " next_attempt_at, mac) VALUES (:u, :a, :t, :s, :b, :c, 0, :c, :m)",
        u=forged,
        a=acme.id,
        t=attacker,
        s=copied.subject,
        b=copied.body,
        c=copied.created_at,
        m=copied.mac,
    )
    bad = {rows[f"message {i}"].uuid for i in (0, 2, 3, 4)} | {forged}

    assert send_pending(mail_ports) == SendResult(sent=2, failed=0, pending=0, held=5)
    assert sorted((m.rcpt_tos, m.subject) for m in smtp_server.messages) == [
        (("user1@example.org",), "message 1"),
        (("user5@example.org",), "message 5"),
    ]
    assert _held(mail_ports) == dict.fromkeys(bad, "altered")
    reported = {p.uuid: p.reason for p in seals.check_rows(mail_ports).problems}
    assert set(reported) == bad
    for row in mails_raw(mail_ports):
        if row["uuid"] in bad:
            assert row["sent_at"] is None and row["last_error"] == notify.HELD

    # Held, not retried: nothing goes out, nothing is refused again on the next runs.
    assert send_pending(mail_ports) == SendResult(sent=0, failed=0, pending=0, held=0)
    assert len(smtp_server.messages) == 2 and len(_held(mail_ports)) == 5


def mails_raw(ports: Ports) -> list[dict[str, object]]:
    """The outbox as stored, without the ORM (which refuses a row that fails its seal)."""
    with ports.db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text("SELECT * FROM mail_outbox")).mappings()]


def test_a_mail_changed_after_its_claim_is_held(mail_ports, smtp_server, monkeypatch):  # noqa: F811
    _queue(mail_ports, 2)
    first, second = mails(mail_ports)
    real = notify._message

    def change_then_build(ports, row):  # type: ignore[no-untyped-def]
        if row.id == second.id:
            raise AssertionError("the changed row must be refused before it is built")
        # The claim is done and the first message is being built: the attacker changes the
        # second one now.
        _sql(
            mail_ports,
            "UPDATE mail_outbox SET to_addr = 'x@evil.example' WHERE id = :id",
            id=second.id,
        )
        return real(ports, row)

    monkeypatch.setattr(notify, "_message", change_then_build)
    assert send_pending(mail_ports) == SendResult(sent=1, failed=0, pending=0, held=1)
    assert [m.rcpt_tos for m in smtp_server.messages] == [(first.to_addr,)]
    assert _held(mail_ports) == {second.uuid: "altered"}


def test_an_outbox_from_before_its_seal_is_sealed_once_by_init(mail_ports, operator, smtp_server):  # noqa: F811
    subjects = _queue(mail_ports, 2)
    # What the version before the outbox was sealed leaves after migration 0007: queued mail
    # without MACs, the installation sealed up to the first version of the seals.
    _sql(mail_ports, "UPDATE mail_outbox SET mac = NULL")
    (mail_ports.audit_heads.directory / f"{seals.INSTALLATION}.generation").unlink()
    mail_ports.audit_heads.advance_generation(seals.INSTALLATION, 1)
    upgraded = open_ports(mail_ports.settings)
    try:
        assert accounts.initialize(upgraded, operator).sealed_rows == 2  # the mail, nothing else
        assert seals.check_rows(upgraded).ok
        assert accounts.initialize(upgraded, operator).sealed_rows == 0
        assert send_pending(upgraded) == SendResult(sent=2, failed=0, pending=0)
    finally:
        upgraded.close()
    assert sorted(m.subject for m in smtp_server.messages) == subjects


def test_a_secret_body_is_sealed_at_rest_and_discarded_or_expired_mail_is_never_sent(
    mail_ports,
    smtp_server,  # noqa: F811
):
    code = "CODE-83920174"
    sealed = notify.seal_body(mail_ports, f"Your code is {code}\n")
    later = datetime.now(UTC) + timedelta(minutes=10)
    with mail_ports.db.transaction() as s:
        notify.queue_mail(s, None, "alice@example.org", "your code", sealed, expires_at=later)
        notify.queue_mail(s, None, "nobody@example.org", "your code", "decoy\n", discard=True)
        notify.queue_mail(
            s, None, "late@example.org", "your code", "late\n", expires_at=datetime.now(UTC)
        )
    stored = mails_raw(mail_ports)
    assert not any(code in str(row["body"]) for row in stored)
    assert [bool(row["body_sealed"]) for row in stored] == [True, False, False]

    assert send_pending(mail_ports) == SendResult(sent=1, dropped=2)
    [got] = smtp_server.messages
    assert got.rcpt_tos == ("alice@example.org",) and code in got.body
    for row in mails(mail_ports):
        assert row.sent_at is not None
        assert (row.last_error == notify.DROPPED) == (row.to_addr != "alice@example.org")
    # A sealed body copied into another message: refused by its seal, held, not sent.
    with mail_ports.db.transaction() as s:
        notify.queue_mail(
            s, None, "bob@example.org", "your code", notify.seal_body(mail_ports, "x")
        )
    _sql(
        mail_ports,
        "UPDATE mail_outbox SET body = :b WHERE to_addr = 'bob@example.org'",
        b=stored[0]["body"],
    )
    assert send_pending(mail_ports).held == 1
    assert len(smtp_server.messages) == 1


# --- 6. no secrets in mail -----------------------------------------------------------------------


def _pem_lines(data: bytes) -> list[str]:
    text = base64.encodebytes(data).decode()
    return [line for line in text.splitlines() if len(line) >= 40]


def test_mail_never_carries_a_passphrase_or_key_material(mail_ports, operator, smtp_server):  # noqa: F811
    admins.create_admin(mail_ports, operator, "acme", "boss", email="boss@example.org")
    key = pool_key("rsa2048-1")
    _, entry = _import(mail_ports, operator, key)
    canary = "Canary-Passphrase-Zebra-7731"
    mine = release_key(
        mail_ports, operator, "acme", entry.client_cert_id, passphrase=canary, reason="ticket 7"
    )
    generated = release_key(
        mail_ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="ticket 8"
    )
    assert generated.generated_passphrase
    assert send_pending(mail_ports) == SendResult(sent=5, failed=0, pending=0)

    der = keylib.to_pkcs8_der(key)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    d = key.private_numbers().d
    forbidden = [
        canary,
        generated.generated_passphrase,
        PW,
        base64.b64encode(der).decode(),
        der.hex()[200:264],
        format(d, "x")[:64],
        str(d)[:64],
        *[line for line in pem.splitlines() if "-----" not in line],
        *_pem_lines(der),
        *_pem_lines(mine.releases[0].data),
        *_pem_lines(generated.releases[0].data),
    ]
    texts = [f"{row.subject}\n{row.body}" for row in mails(mail_ports)]
    texts += [f"{m.subject}\n{m.body}\n{m.raw.decode('latin-1')}" for m in smtp_server.messages]
    assert len(texts) == 10
    for said in texts:
        for secret in forbidden:
            assert secret not in said


# --- the CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_cli_mail_send(mail_ports, operator, smtp_server, tmp_path):  # noqa: F811
    _import(mail_ports, operator, pool_key("ec256"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTVAULT_")}
    env.update(
        CERTVAULT_HOME=str(tmp_path / "home"),
        CERTVAULT_SMTP_HOST=smtp_server.host,
        CERTVAULT_SMTP_PORT=str(smtp_server.port),
        CERTVAULT_SMTP_FROM=FROM,
    )
    command = [str(Path(sys.executable).parent / "certvault"), "mail", "send"]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=60, check=False
        )

    smtp_server.stop()
    down = run()
    assert down.returncode == 1, down.stderr
    assert "sent 0, failed 1, still pending 1" in down.stdout
    [row] = mails(mail_ports)
    assert row.attempts == 1 and row.last_error and row.sent_at is None

    smtp_server.start()
    with mail_ports.db.transaction() as s:  # the backoff has passed
        s.execute(
            update(MailMessage)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(1))
            .execution_options(**{UNBOUND_ONLY: True})
        )
    up = run()
    assert up.returncode == 0, up.stderr
    assert "sent 1, failed 0, still pending 0" in up.stdout
    [got] = smtp_server.messages
    assert got.rcpt_tos == ("alice@example.org",) and got.subject == ESCROWED
    assert mails(mail_ports)[0].sent_at is not None


def test_without_smtp_configuration_nothing_is_claimed(ports, operator, account):
    from certvault.errors import ConfigurationError

    key = pool_key("ec256")
    import_p12(ports, operator, "acme", make_p12(key, make_cert(key), PW), PW)
    with pytest.raises(ConfigurationError, match="CERTVAULT_SMTP_HOST"):
        send_pending(ports)
    [row] = mails(ports)
    assert row.attempts == 0 and row.claimed_until is None and row.sent_at is None
