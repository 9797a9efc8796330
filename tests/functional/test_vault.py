"""The one way in and the one way out, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.errors import CertvaultError, Forbidden, KeyMismatch, NotFound
from certvault.services.access import admins
from certvault.services.directory import accounts
from certvault.services.kernel import keyring, tenancy
from certvault.services.kernel.ratelimit import (
    DatabaseRateLimiter,
    Decision,
    Limit,
    Quota,
    RateLimited,
)
from certvault.services.vault import release
from certvault.services.vault.archive import (
    ALREADY_EXISTS,
    IMPORTED,
    CertificateConflict,
    EscrowRequest,
    KeyVaultDisabled,
    ServiceKeyRefused,
    UntrustedIssuer,
    archive_entry,
)
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import NoEscrowedKey, ReasonRequired, release_key
from certvault.services.vault.verification import verify_escrow
from tests.factories import make_ca, make_cert, make_p12, new_key, pool_key
from tests.functional.helpers import counts, events, mails

PW = "import-password-1"
OWN_PASSPHRASE = "an own passphrase, long enough 1"
KEY_KINDS = ["rsa2048-1", "rsa4096", "ec256", "ec384", "ec521", "ed25519"]


def _der(key) -> bytes:  # type: ignore[no-untyped-def]
    return keylib.to_pkcs8_der(key)


def _import(ports, operator, key, email="alice@example.org", **kw):  # type: ignore[no-untyped-def]
    cert = kw.pop("cert", None) or make_cert(key, email)
    return cert, import_p12(ports, operator, "acme", make_p12(key, cert, PW, **kw), PW)


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_round_trip_every_key_type(ports, operator, account, kind):
    key = pool_key(kind)
    cert, [entry] = _import(ports, operator, key)
    assert entry.message == IMPORTED and entry.client_cert_id is not None
    assert entry.alias == "alias"
    batch = release_key(
        ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="test"
    )
    back = read_pkcs12(batch.releases[0].data, batch.generated_passphrase)
    assert _der(back.entries[0].key) == _der(key)
    assert back.entries[0].certificate == cert


def test_same_certificate_again_is_already_exists(ports, operator, account):
    key = pool_key("ec256")
    cert, [first] = _import(ports, operator, key)
    before = counts(ports)
    _, [again] = _import(ports, operator, key, cert=cert)
    assert again.message == ALREADY_EXISTS and again.client_cert_id == first.client_cert_id
    assert counts(ports) == before


def test_renewed_certificate_with_same_key_is_linked_not_escrowed_twice(ports, operator, account):
    key = pool_key("ec384")
    ca = make_ca()
    _, [old] = _import(ports, operator, key, cert=make_cert(key, issuer=ca))
    _, [new] = _import(ports, operator, key, cert=make_cert(key, issuer=ca))
    assert old.client_cert_id != new.client_cert_id
    c = counts(ports)
    assert c["keys"] == 1 and c["certs"] == 2 and c["persons"] == 1


def test_same_issuer_and_serial_with_other_der_is_a_conflict(ports, operator, account):
    key = pool_key("ec256")
    ca = make_ca()
    _import(ports, operator, key, cert=make_cert(key, issuer=ca, serial=4242))
    before = counts(ports)
    other = new_key()
    _, [entry] = _import(ports, operator, other, cert=make_cert(other, issuer=ca, serial=4242))
    assert entry.code == CertificateConflict.code and entry.client_cert_id is None
    after = counts(ports)
    assert after == before
    refused = [e for e in events(ports, "key.archive") if e.outcome == "refused"]
    assert json.loads(refused[-1].details)["reason"] == "certificate_conflict"


def test_key_vault_disabled_refuses_archive_and_release(ports, operator, account):
    key = pool_key("ec256")
    _, [entry] = _import(ports, operator, key)
    accounts.set_key_vault(ports, operator, "acme", False)
    before = counts(ports)
    with pytest.raises(KeyVaultDisabled):
        _import(ports, operator, new_key(), email="bob@example.org")
    with pytest.raises(KeyVaultDisabled):
        release_key(ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="x")
    assert counts(ports) == before
    reasons = [json.loads(e.details)["reason"] for e in events(ports) if e.outcome == "refused"]
    assert reasons.count("key_vault_disabled") == 2


def test_unknown_account(ports, operator, account):
    with pytest.raises(NotFound):
        import_p12(ports, operator, "nope", b"x", PW)
    with pytest.raises(NotFound):
        release_key(ports, operator, "nope", 1, passphrase=None, reason="x")


def test_expired_certificate_is_accepted(ports, operator, account):
    key = pool_key("ec256")
    old = dt.datetime(2015, 1, 1, tzinfo=dt.UTC)
    _, [entry] = _import(ports, operator, key, cert=make_cert(key, not_before=old, days=365))
    assert entry.message == IMPORTED


def test_archive_refuses_mismatched_key(ports, operator, account):
    key, other = new_key(), new_key()
    req = EscrowRequest(key=key, certificate=make_cert(other))
    with ports.db.transaction() as s:
        acct = tenancy.get_account(s, "acme")
        with pytest.raises(KeyMismatch):
            archive_entry(s, ports, acct, operator, req)


def test_service_keys_are_never_escrowed(ports, operator, account):
    key = pool_key("ec521")
    spki = keylib.spki_sha256(key.public_key())
    with ports.db.transaction() as s:
        keyring.create_service_key(
            s, ports, purpose="ca-signing", material=_der(key), spki_sha256=spki
        )
    _, [entry] = _import(ports, operator, key)
    assert entry.code == ServiceKeyRefused.code
    assert counts(ports)["keys"] == 0


def test_trusted_issuer_is_recorded_and_can_be_required(ports, operator, account):
    ca = make_ca("Acme Issuing CA")
    accounts.add_trusted_issuer(ports, operator, "acme", ca[1])
    key = pool_key("ec256")
    _import(ports, operator, key, cert=make_cert(key, issuer=ca))
    from sqlalchemy import select

    from certvault.db.models import Certificate

    with ports.db.read() as s:
        assert s.scalars(select(Certificate.trusted_issuer)).one() is True
    accounts.set_require_trusted_issuer(ports, operator, "acme", True)
    other = new_key()
    _, [entry] = _import(ports, operator, other, email="bob@example.org")
    assert entry.code == UntrustedIssuer.code


def test_archive_writes_audit_and_notification(ports, operator, account):
    _import(ports, operator, pool_key("ec256"), email="carol@example.org")
    [ev] = events(ports, "key.archive")
    assert ev.outcome == "success" and ev.actor == operator.name
    assert json.loads(ev.details)["new_key"] is True
    [mail] = mails(ports)
    assert mail.to_addr == "carol@example.org" and "escrowed" in mail.subject


def test_release_policy(ports, operator, account):
    _, [entry] = _import(ports, operator, pool_key("ec256"))
    cid = entry.client_cert_id
    with pytest.raises(ReasonRequired):
        release_key(ports, operator, "acme", cid, passphrase=None, reason=None)
    with pytest.raises(CertvaultError) as short:
        release_key(ports, operator, "acme", cid, passphrase="short", reason="r")
    assert short.value.code == "weak_passphrase"
    with pytest.raises(CertvaultError):
        release_key(ports, operator, "acme", cid, passphrase="", reason="r")
    with pytest.raises(CertvaultError) as enc:
        release_key(ports, operator, "acme", cid, passphrase=None, reason="r", encryption="DES")
    assert enc.value.code == "unsupported_encryption"
    with pytest.raises(NotFound):
        release_key(ports, operator, "acme", cid + 100, passphrase=None, reason="r")
    refused = [e for e in events(ports, "key.release") if e.outcome == "refused"]
    assert len(refused) == 5
    assert not [e for e in events(ports, "key.release") if e.outcome == "success"]


def test_generated_passphrase_has_at_least_112_bits(ports, operator, account):
    from certvault.crypto.passphrase import GENERATED_BITS

    _, [entry] = _import(ports, operator, pool_key("ec256"))
    batch = release_key(ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="r")
    assert GENERATED_BITS >= 112
    assert batch.generated_passphrase and len(batch.generated_passphrase.replace("-", "")) == 24


def test_non_ascii_passphrase_and_legacy_encryption(ports, operator, account):
    key = pool_key("rsa2048-2")
    _, [entry] = _import(ports, operator, key)
    phrase = "Grüße-aus-Köln-Ω-2026"
    batch = release_key(
        ports,
        operator,
        "acme",
        entry.client_cert_id,
        passphrase=phrase,
        reason="r",
        encryption="TripleDES-SHA1",
    )
    assert batch.generated_passphrase is None
    assert batch.releases[0].encryption is EncryptionType.TRIPLEDES_SHA1
    back = read_pkcs12(batch.releases[0].data, phrase)
    assert _der(back.entries[0].key) == _der(key)


def test_release_audited_and_notifies_owner_and_admins(ports, operator, account):
    admins.create_admin(
        ports, operator, "acme", "boss", email="boss@example.org", privileges=["key_vault_download"]
    )
    _, [entry] = _import(ports, operator, pool_key("ec256"), email="dave@example.org")
    release_key(ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="ticket 1")
    [ev] = [e for e in events(ports, "key.release") if e.outcome == "success"]
    details = json.loads(ev.details)
    assert details["reason"] == "ticket 1" and details["generated_passphrase"] is True
    to = [(m.to_addr, m.subject) for m in mails(ports)]
    assert ("dave@example.org", "Your private key was recovered") in to
    assert ("boss@example.org", "An operator released a private key") in to


def _admin_actor(ports, login):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from certvault.db.models import Admin

    with ports.db.read() as s:
        admin = s.scalars(select(Admin).where(Admin.login == login)).one()
        return admins.actor_for(admin)


def test_release_authorization_per_certificate(ports, operator, account):
    from certvault.db.models import Organization

    _, [entry] = _import(ports, operator, pool_key("ec256"))
    cid = entry.client_cert_id
    with ports.db.transaction() as s:
        acct = tenancy.get_account(s, "acme")
        s.add(Organization(account_id=acct.id, name="Sales"))
    admins.create_admin(ports, operator, "acme", "noprivs")
    admins.create_admin(
        ports,
        operator,
        "acme",
        "sales",
        role="organization",
        organizations=["Sales"],
        privileges=["key_vault_download"],
    )
    admins.create_admin(ports, operator, "acme", "keys", privileges=["key_vault_download"])
    accounts.create_account(ports, operator, "Other", "other", key_vault_enabled=True)
    admins.create_admin(ports, operator, "other", "foreign", privileges=["key_vault_download"])

    with pytest.raises(Forbidden):
        release_key(ports, _admin_actor(ports, "noprivs"), "acme", cid, passphrase=None)
    with pytest.raises(NotFound):  # another organization: invisible, like a missing one
        release_key(ports, _admin_actor(ports, "sales"), "acme", cid, passphrase=None)
    with pytest.raises(NotFound):  # another account
        release_key(ports, _admin_actor(ports, "foreign"), "acme", cid, passphrase=None)
    batch = release_key(ports, _admin_actor(ports, "keys"), "acme", cid, passphrase=None)
    assert batch.releases
    outcomes = [(e.actor, e.outcome) for e in events(ports, "key.release")]
    assert outcomes == [
        ("admin:noprivs", "refused"),
        ("admin:sales", "refused"),
        ("admin:foreign", "refused"),
        ("admin:keys", "success"),
    ]


def test_certificate_without_key_cannot_be_released(ports, operator, account):
    from certvault.db.models import Certificate

    _, [entry] = _import(ports, operator, pool_key("ec256"))
    with ports.db.transaction() as s:
        s.get_one(Certificate, entry.client_cert_id).escrowed_key_id = None
    with pytest.raises(NoEscrowedKey):
        release_key(ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="r")


def test_verification_drill_finds_a_damaged_key(ports, operator, account):
    from certvault.db.models import EscrowedKey

    for kind in ("ec256", "rsa2048-3"):
        _import(ports, operator, pool_key(kind), email=f"{kind}@example.org")
    report = verify_escrow(ports, operator)
    assert report.ok and report.keys == 2 and report.certificates == 2
    with ports.db.transaction() as s:
        row = s.get_one(EscrowedKey, 1)
        row.ciphertext = bytes([row.ciphertext[0] ^ 1]) + row.ciphertext[1:]
    report = verify_escrow(ports, operator)
    assert not report.ok and len(report.failures) == 1
    assert report.failures[0].reason == "cannot_open"
    assert report.failures[0].detail == "seal_broken"


def test_stored_key_is_not_plaintext(ports, operator, account):
    from certvault.db.models import EscrowedKey

    key = pool_key("rsa2048-4")
    _import(ports, operator, key)
    der = _der(key)  # its last bytes are the private CRT coefficient, nothing public
    with ports.db.read() as s:
        row = s.get_one(EscrowedKey, 1)
        stored = row.ciphertext + row.wrapped_data_key
    assert der[-100:-60] not in stored
    if ports.db.is_sqlite:
        files = ports.settings.database_dir.glob("certvault.sqlite3*")  # the database and its WAL
        raw = b"".join(f.read_bytes() for f in files)
        assert der[-100:-60] not in raw


def test_profile_without_escrow_is_refused_by_the_way_in(ports, operator, account):
    from certvault.crypto.profiles import get_profile
    from certvault.services.vault.archive import EscrowNotAllowed

    key = new_key()
    for name, allowed in (("smime-signing", False), ("smime-encryption", True)):
        req = EscrowRequest(
            key=key,
            certificate=make_cert(key, f"{name}@example.org"),
            profile=get_profile(name),
            source="enroll",
        )
        with ports.db.transaction() as s:
            acct = tenancy.get_account(s, "acme")
            if allowed:
                assert archive_entry(s, ports, acct, operator, req).message == IMPORTED
            else:
                with pytest.raises(EscrowNotAllowed):
                    archive_entry(s, ports, acct, operator, req)
    assert counts(ports)["keys"] == 1


class _RoomAtTheCheck(DatabaseRateLimiter):
    """A limiter whose check always finds room: what two concurrent releases at the edge of a
    limit both see before either has counted."""

    def check(self, *limits: Limit, session: Session | None = None) -> Decision:
        return Decision(True, 0)


def test_a_release_over_the_quota_at_its_count_releases_nothing_and_is_audited(
    ports, operator, account
):
    """The quota is counted in the release's own transaction: refused there, the whole release
    rolls back (no event, no notice, no count) and the refusal is audited on its own; on
    PostgreSQL inside a request's one transaction too."""
    _, [entry] = _import(ports, operator, new_key("ec256"))
    limiter = _RoomAtTheCheck(ports.db)
    quota = Quota(limiter, (Limit("dl-test", 1, 3600),))
    ports.db.run(quota.count)  # someone else took the one download of the hour
    before = counts(ports)
    with pytest.raises(RateLimited):
        ports.db.run_request(
            lambda session: release_key(
                ports,
                operator,
                "acme",
                entry.client_cert_id,
                passphrase=OWN_PASSPHRASE,
                reason="test",
                admit=quota,
                session=session,
            )
        )
    assert counts(ports) == before  # no notice queued
    [refused] = events(ports, "key.release")  # and no release event
    assert json.loads(refused.details)["reason"] == "rate_limited"
    assert refused.target_id == str(entry.client_cert_id)
    assert refused.outcome == "refused"
    # The refused release counted nothing: one download so far, this hit is the second.
    assert limiter.hit(Limit("dl-test", 2, 3600)).allowed


def _own_release(ports, operator, cert_id):  # type: ignore[no-untyped-def]
    return ports.db.run_request(
        lambda session: release_key(
            ports,
            operator,
            "acme",
            cert_id,
            passphrase=OWN_PASSPHRASE,
            reason="test",
            session=session,
        )
    )


def test_a_release_commits_while_its_file_is_written(ports, operator, account, monkeypatch):
    """Nothing of the release waits for its KDF: the writer holds the file back until the
    release's audit event and the owner's notice are committed, seen from a connection of its
    own, and the file then comes out whole."""
    _, [entry] = _import(ports, operator, new_key("ec256"))
    real = release.pkcs12_writer
    seen: list[tuple[int, int]] = []

    def held_back(*args, **kwargs):  # type: ignore[no-untyped-def]
        write = real(*args, **kwargs)

        def when_committed() -> bytes:
            deadline = time.monotonic() + 30
            while not events(ports, "key.release") and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append((len(events(ports, "key.release")), len(mails(ports))))
            return write()

        return when_committed

    monkeypatch.setattr(release, "pkcs12_writer", held_back)
    batch = _own_release(ports, operator, entry.client_cert_id)
    assert read_pkcs12(batch.releases[0].data, OWN_PASSPHRASE).entries
    # Every notice (the owner's, and the administrators' of an operator's release) was there.
    assert seen == [(1, len(mails(ports)))] and seen[0][1] >= 1


def test_a_writer_that_fails_after_the_commit_leaves_an_audited_release(
    ports, operator, account, monkeypatch
):
    """The order's one cost, kept in sight: a release is audited before its file exists, so a
    writer that fails once the release has committed leaves an audited release that delivered
    nothing (as a client that hangs up after the commit does), never a file without its event."""
    _, [entry] = _import(ports, operator, new_key("ec256"))
    real = release.pkcs12_writer

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        real(*args, **kwargs)  # every check of the file passes

        def write() -> bytes:
            raise MemoryError

        return write

    monkeypatch.setattr(release, "pkcs12_writer", failing)
    batch = _own_release(ports, operator, entry.client_cert_id)
    with pytest.raises(MemoryError):
        _ = batch.releases[0].data
    [event] = events(ports, "key.release")
    assert event.outcome == "success"
