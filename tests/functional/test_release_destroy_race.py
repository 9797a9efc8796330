"""A key destroyed after its release read it, before the release committed, is never handed out.

The window: the key is opened and its PKCS#12 file's writer made (``pkcs12_writer``, where these
tests step in), then the release's transaction commits while the file is written. On PostgreSQL
a request's release reads the key's row with a share lock, in the transaction that commits it:
the destruction waits for the release. On SQLite the release writes in a transaction of its own,
which reads again whether the key still exists.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import OperationalError

from certvault.db.models import AuditEvent, Certificate, EscrowedKey
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.vault import release
from certvault.services.vault.imports import import_p12
from tests.factories import make_cert, make_p12, new_key

PW = "import-password-1"


def _escrow(ports: Ports, operator: Actor) -> tuple[int, int]:
    key = new_key("ec256")
    data = make_p12(key, make_cert(key, "race@acme.example"), PW)
    [entry] = import_p12(ports, operator, "acme", data, PW)
    assert entry.client_cert_id is not None
    with ports.db.read() as s:
        key_id = s.scalar(
            select(Certificate.escrowed_key_id).where(Certificate.id == entry.client_cert_id)
        )
    assert key_id is not None
    return entry.client_cert_id, key_id


def _destroy(ports: Ports, key_id: int) -> str:
    """Mark the key destroyed from another connection: "committed", or "waited" when its row is
    locked (PostgreSQL, given up after a short lock timeout and rolled back)."""
    with ports.db.engine.connect() as conn:
        if not ports.db.is_sqlite:
            conn.exec_driver_sql("SET lock_timeout = '300ms'")
        try:
            conn.execute(
                update(EscrowedKey)
                .where(EscrowedKey.id == key_id)
                .values(destroyed_at=func.current_timestamp())
            )
        except OperationalError as exc:
            assert getattr(exc.orig, "sqlstate", None) == "55P03"  # lock_not_available
            conn.rollback()
            return "waited"
        conn.commit()
        return "committed"


def test_a_key_destroyed_during_its_release_is_never_handed_out(
    ports, operator, account, monkeypatch
):
    cert_id, key_id = _escrow(ports, operator)
    seen: list[str] = []
    real = release.pkcs12_writer

    def destroyed_before_the_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(_destroy(ports, key_id))
        return real(*args, **kwargs)

    monkeypatch.setattr(release, "pkcs12_writer", destroyed_before_the_commit)
    statements: list[str] = []

    def run(session):  # type: ignore[no-untyped-def]
        return release.release_key(
            ports, operator, "acme", cert_id, passphrase=None, reason="r", session=session
        )

    def on_sql(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(ports.db.engine, "before_cursor_execute", on_sql)
    try:
        if ports.db.is_sqlite:
            with pytest.raises(keyring.AccountKeyDestroyed):
                ports.db.run_request(run)
        else:
            batch = ports.db.run_request(run)
    finally:
        event.remove(ports.db.engine, "before_cursor_execute", on_sql)

    with ports.db.read() as s:
        last = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "key.release").order_by(AuditEvent.id)
        ).all()[-1]
    if ports.db.is_sqlite:
        # The destruction committed before the write transaction, which found it.
        assert seen == ["committed"]
        assert last.outcome == "refused"
        assert json.loads(last.details)["reason"] == "account_key_destroyed"
    else:
        # The destruction had to wait for the release, which committed without reading the key
        # again: the lock made that read unneeded.
        assert seen == ["waited"]
        assert len(batch.releases) == 1 and last.outcome == "success"
        assert any("FOR SHARE OF escrowed_keys" in s for s in statements)
        assert not any(s.lstrip().startswith("SELECT escrowed_keys.id") for s in statements)
        # Once the release has committed, the destruction goes through.
        assert _destroy(ports, key_id) == "committed"


def test_a_release_does_not_wait_for_another_release_of_the_same_key(
    ports, operator, account, monkeypatch
):
    """Share locks do not conflict: a second release of the key runs while the first holds its
    row (on SQLite neither holds a lock there)."""
    cert_id, _ = _escrow(ports, operator)
    real = release.pkcs12_writer
    inner: list[int] = []

    def second_release_meanwhile(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not inner:
            inner.append(0)
            batch = release.release_key(
                ports, operator, "acme", cert_id, passphrase=None, reason="inner"
            )
            inner.append(len(batch.releases))
        return real(*args, **kwargs)

    monkeypatch.setattr(release, "pkcs12_writer", second_release_meanwhile)
    batch = ports.db.run_request(
        lambda s: release.release_key(
            ports, operator, "acme", cert_id, passphrase=None, reason="outer", session=s
        )
    )
    assert inner == [0, 1] and len(batch.releases) == 1
