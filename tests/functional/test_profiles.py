"""iOS configuration profiles out of the vault: the plist's keys and values, the Exchange account's
wiring, stable UUIDs, the CMS signature as openssl verifies it, the expired signing identity, and
the audit and notice of a profile release."""

from __future__ import annotations

import datetime as dt
import json
import plistlib
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from certvault.db.models import ServiceKey
from certvault.services.directory import accounts
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.vault import settings as kv_settings
from certvault.services.vault.imports import import_p12
from certvault.services.vault.person_keys import release_person_keys
from certvault.services.vault.profiles import (
    ProfileEncryptionFixed,
    SigningIdentityExpired,
    SigningIdentityMissing,
    UnsupportedFormat,
)
from certvault.services.vault.release import Release, release_key, release_keys
from certvault.services.vault.settings import RecoveryOptions, SigningIdentityInvalid
from tests.factories import NOW, make_ca, make_cert, make_p12, new_key
from tests.functional.helpers import events, mails

PASSPHRASE = "profile-passphrase-4711"
P12_PASSWORD = "import-pass-1234"
SIGNING_PASSWORD = "signing-pass-5678"
MOBILECONFIG = "mobileconfig"
TOP_KEYS = {
    "PayloadType",
    "PayloadVersion",
    "PayloadIdentifier",
    "PayloadUUID",
    "PayloadDisplayName",
    "PayloadOrganization",
    "PayloadContent",
}
PKCS12_KEYS = {
    "PayloadType",
    "PayloadVersion",
    "PayloadIdentifier",
    "PayloadUUID",
    "PayloadDisplayName",
    "PayloadCertificateFileName",
    "PayloadContent",
}
EAS_KEYS = {
    "PayloadType",
    "PayloadVersion",
    "PayloadIdentifier",
    "PayloadUUID",
    "PayloadDisplayName",
    "Host",
    "SSL",
    "MailNumberOfPastDaysToSync",
    "PreventMove",
    "EmailAddress",
    "SMIMEEncryptionCertificateUUID",
}
EXCHANGE = RecoveryOptions(
    exchange_enabled=True,
    exchange_host="mail.acme.example",
    exchange_use_ssl=True,
    exchange_past_days=14,
    exchange_prevent_move=True,
)
OID_3DES = bytes.fromhex("060a2a864886f70d010c0103")  # pbeWithSHAAnd3-KeyTripleDES-CBC


# --- certificates -------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(
    cn: str, issuer: tuple[Any, x509.Certificate] | None = None
) -> tuple[Any, x509.Certificate]:
    """A CA certificate: self-signed, or issued by ``issuer`` (an intermediate)."""
    key = new_key("ec256")
    signer_key, signer_name = (key, _name(cn)) if issuer is None else (issuer[0], issuer[1].subject)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=2))
        .not_valid_after(NOW + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(signer_key, hashes.SHA256())
    )
    return key, cert


def _usage_cert(
    key: Any, email: str, ca: Any, *, signing: bool, client_auth: bool, start: dt.datetime
) -> x509.Certificate:
    """A certificate with an explicit key usage (digitalSignature or not) and extended key usage
    (clientAuth beside emailProtection or not)."""
    usages = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(email))
        .issuer_name(ca[1].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(
            x509.KeyUsage(signing, False, False, False, True, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca[0], hashes.SHA256())
    )


def _escrow(ports: Ports, operator: Actor, cert: Any, key: Any, slug: str = "acme") -> int:
    [entry] = import_p12(ports, operator, slug, make_p12(key, cert, P12_PASSWORD), P12_PASSWORD)
    assert entry.ok and entry.client_cert_id is not None, entry
    return entry.client_cert_id


def _escrowed(
    ports: Ports, operator: Actor, email: str = "alice@acme.example", slug: str = "acme"
) -> tuple[int, Any, x509.Certificate]:
    key = new_key("ec256")
    cert = make_cert(key, email)
    return _escrow(ports, operator, cert, key, slug), key, cert


def _set_options(
    ports: Ports, operator: Actor, options: RecoveryOptions, p12: bytes | None = None
) -> None:
    kv_settings.update_recovery_options(
        ports, operator, "acme", options, p12, SIGNING_PASSWORD if p12 else None
    )


def _signing_p12(
    ca: Any, *, days: int = 365, chain: tuple[x509.Certificate, ...] | list[x509.Certificate] = ()
) -> tuple[bytes, x509.Certificate]:
    key = new_key("ec256")
    cert = make_cert(key, "profiles@acme.example", issuer=ca, days=days, cn="Acme Profile Signing")
    return make_p12(key, cert, SIGNING_PASSWORD, chain=list(chain)), cert


# --- reading what came out ----------------------------------------------------------------------


def _plist(data: bytes) -> dict[str, Any]:
    """The profile's plist, signed or not (for a signed one, without checking the signature)."""
    if data.startswith(b"<?xml"):
        return plistlib.loads(data)
    signed = asn1_cms.ContentInfo.load(data)
    assert signed["content_type"].native == "signed_data"
    return plistlib.loads(signed["content"]["encap_content_info"]["content"].native)


def _payloads(profile: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [p for p in profile["PayloadContent"] if p["PayloadType"] == kind]


def _pkcs12_by_file(profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        p["PayloadCertificateFileName"]: p for p in _payloads(profile, "com.apple.security.pkcs12")
    }


def _openssl_key(tmp_path: Path, p12: bytes, passphrase: str) -> Any:
    """The private key in ``p12`` as the real openssl reads it (legacy: TripleDES)."""
    (tmp_path / "in.p12").write_bytes(p12)
    (tmp_path / "pw").write_text(passphrase + "\n")
    done = subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-legacy",
            "-in",
            tmp_path / "in.p12",
            "-passin",
            f"file:{tmp_path / 'pw'}",
            "-nocerts",
            "-nodes",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pem = done.stdout[done.stdout.index("-----BEGIN PRIVATE KEY") :]
    return serialization.load_pem_private_key(pem.encode(), None)


def _same_key(a: Any, b: Any) -> bool:
    return a.private_numbers() == b.private_numbers()


def _verify(tmp_path: Path, signed: bytes, root: x509.Certificate) -> subprocess.CompletedProcess:
    (tmp_path / "signed.mobileconfig").write_bytes(signed)
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            tmp_path / "signed.mobileconfig",
            "-purpose",
            "any",
            "-CAfile",
            tmp_path / "root.pem",
            "-out",
            tmp_path / "content",
        ],
        capture_output=True,
    )


def _profile(
    ports: Ports, operator: Actor, *ids: int, slug: str = "acme", **options: Any
) -> Release:
    """The one release of a profile download of the keys of ``ids``."""
    options.setdefault("format", MOBILECONFIG)
    batch = release_keys(
        ports, operator, slug, list(ids), passphrase=PASSPHRASE, reason="test", **options
    )
    [item] = batch.releases
    return item


def _signing_keys(ports: Ports) -> list[ServiceKey]:
    with ports.db.read() as s:
        return list(s.scalars(select(ServiceKey).where(ServiceKey.purpose == "profile-signing")))


def _release_events(ports: Ports) -> list[dict[str, Any]]:
    return [json.loads(e.details) for e in events(ports, "key.release") if e.outcome == "success"]


# --- the plist ----------------------------------------------------------------------------------


def test_a_profile_holds_the_key_with_exactly_the_expected_keys(ports, account, operator, tmp_path):
    cert_id, key, cert = _escrowed(ports, operator)
    item = _profile(ports, operator, cert_id)
    assert item.filename == f"{cert_id}.mobileconfig" and item.format.value == MOBILECONFIG
    assert item.format.media_type == "application/x-apple-aspen-config"
    assert item.data.startswith(b"<?xml")  # not signed: the account never switched signing on
    profile = plistlib.loads(item.data)
    assert set(profile) == TOP_KEYS
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    assert profile["PayloadOrganization"] == "Acme Corp"
    assert profile["PayloadDisplayName"] == "Certificates and keys of alice@acme.example"
    assert profile["PayloadIdentifier"] == f"certvault.profile.{profile['PayloadUUID']}"
    [payload] = profile["PayloadContent"]
    assert set(payload) == PKCS12_KEYS  # above all: no Password
    assert payload["PayloadType"] == "com.apple.security.pkcs12" and payload["PayloadVersion"] == 1
    assert payload["PayloadCertificateFileName"] == f"{cert_id}.p12"
    assert payload["PayloadDisplayName"].startswith("alice@acme.example (valid until ")
    assert payload["PayloadIdentifier"] == f"certvault.pkcs12.{payload['PayloadUUID']}"
    p12 = payload["PayloadContent"]
    assert isinstance(p12, bytes) and OID_3DES in p12
    assert _same_key(_openssl_key(tmp_path, p12, PASSPHRASE), key)
    assert PASSPHRASE.encode() not in item.data


def test_without_exchange_settings_there_is_no_exchange_payload(ports, account, operator):
    cert_id, _, _ = _escrowed(ports, operator)
    _set_options(
        ports, operator, RecoveryOptions(exchange_enabled=False, exchange_host="x.example")
    )
    item = _profile(ports, operator, cert_id)
    kinds = [p["PayloadType"] for p in _plist(item.data)["PayloadContent"]]
    assert kinds == ["com.apple.security.pkcs12"]


@pytest.mark.parametrize(
    ("signing", "client_auth"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_exchange_is_wired_to_the_newest_certificate_as_its_usages_allow(
    ports, account, operator, signing, client_auth
):
    ca = make_ca("Acme CA")
    email = "alice@acme.example"
    old_key, new_key_ = new_key("ec256"), new_key("ec256")
    # The older generation allows the opposite: wiring to the wrong one shows.
    old = _usage_cert(
        old_key,
        email,
        ca,
        signing=not signing,
        client_auth=not client_auth,
        start=NOW - dt.timedelta(days=200),
    )
    new = _usage_cert(
        new_key_,
        email,
        ca,
        signing=signing,
        client_auth=client_auth,
        start=NOW - dt.timedelta(days=1),
    )
    old_id = _escrow(ports, operator, old, old_key)
    new_id = _escrow(ports, operator, new, new_key_)
    _set_options(ports, operator, EXCHANGE)
    # The newest named first, so that neither "the last one" nor list order can pass for it.
    item = _profile(ports, operator, new_id, old_id)
    profile = _plist(item.data)
    [eas] = _payloads(profile, "com.apple.eas.account")
    target = _pkcs12_by_file(profile)[f"{new_id}.p12"]["PayloadUUID"]
    expected = set(EAS_KEYS)
    if signing:
        expected |= {"SMIMESigningEnabled", "SMIMESigningCertificateUUID"}
    if client_auth:
        expected.add("PayloadCertificateUUID")
    assert set(eas) == expected
    assert (
        eas["PayloadVersion"] == 1
        and eas["PayloadIdentifier"] == f"certvault.eas.{eas['PayloadUUID']}"
    )
    assert (eas["Host"], eas["SSL"], eas["MailNumberOfPastDaysToSync"], eas["PreventMove"]) == (
        "mail.acme.example",
        True,
        14,
        True,
    )
    assert eas["EmailAddress"] == email
    assert eas["SMIMEEncryptionCertificateUUID"] == target
    assert eas.get("SMIMESigningCertificateUUID", target) == target
    assert eas.get("SMIMESigningEnabled", True) is True
    assert eas.get("PayloadCertificateUUID", target) == target
    assert "SMIMEEnabled" not in eas and "SMIMEEncryptionEnabled" not in eas


def test_a_persons_profile_holds_every_key_and_wires_the_newest(ports, account, operator, tmp_path):
    ca = make_ca("Acme CA")
    keys = [new_key("ec256"), new_key("ec256")]
    starts = [NOW - dt.timedelta(days=400), NOW - dt.timedelta(days=1)]
    certs = [
        _usage_cert(k, "bob@acme.example", ca, signing=True, client_auth=False, start=s)
        for k, s in zip(keys, starts, strict=True)
    ]
    ids = [_escrow(ports, operator, c, k) for c, k in zip(certs, keys, strict=True)]
    _set_options(ports, operator, EXCHANGE)
    with ports.db.read() as s:
        from certvault.db.models import Person

        person_id = s.scalars(select(Person.id).where(Person.email == "bob@acme.example")).one()
    batch = release_person_keys(
        ports,
        operator,
        "acme",
        person_id,
        passphrase=PASSPHRASE,
        reason="test",
        format=MOBILECONFIG,
    )
    [item] = batch.releases
    assert item.filename == f"person-{person_id}-keys.mobileconfig"
    profile = _plist(item.data)
    by_file = _pkcs12_by_file(profile)
    assert sorted(by_file) == sorted(f"{i}.p12" for i in ids)
    for cert_id, key in zip(ids, keys, strict=True):
        opened = _openssl_key(tmp_path, by_file[f"{cert_id}.p12"]["PayloadContent"], PASSPHRASE)
        assert _same_key(opened, key)
    [eas] = _payloads(profile, "com.apple.eas.account")
    assert eas["SMIMEEncryptionCertificateUUID"] == by_file[f"{ids[1]}.p12"]["PayloadUUID"]
    assert eas["EmailAddress"] == "bob@acme.example"
    # One release event per key, each naming the format.
    released = _release_events(ports)
    assert [d["format"] for d in released] == [MOBILECONFIG, MOBILECONFIG]
    assert {d["encryption"] for d in released} == {"TripleDES-SHA1"}


def test_uuids_are_stable_and_distinct_across_certificates_and_accounts(ports, account, operator):
    accounts.create_account(ports, operator, "Beta Inc", "beta", key_vault_enabled=True)
    first, key, cert = _escrowed(ports, operator)
    second, _, _ = _escrowed(ports, operator)
    foreign = _escrow(ports, operator, cert, key, slug="beta")  # the same certificate elsewhere

    def profile(slug: str, *ids: int) -> dict[str, Any]:
        return _plist(_profile(ports, operator, *ids, slug=slug).data)

    def uuids(made: dict[str, Any]) -> list[str]:
        return [made["PayloadUUID"], *(p["PayloadUUID"] for p in made["PayloadContent"])]

    once, again = profile("acme", first), profile("acme", first)
    assert uuids(once) == uuids(again)
    assert once["PayloadIdentifier"] == again["PayloadIdentifier"]
    other, beta = profile("acme", second), profile("beta", foreign)
    both = profile("acme", first, second)
    everything = [*uuids(once), *uuids(other), *uuids(beta), both["PayloadUUID"]]
    assert len(set(everything)) == len(everything)
    assert uuids(both)[1:] == [uuids(once)[1], uuids(other)[1]]  # a payload keeps its UUID
    assert all(str(uuid.UUID(u)).upper() == u for u in everything)


# --- signing ------------------------------------------------------------------------------------


def test_a_signed_profile_verifies_through_the_stored_intermediate(
    ports, account, operator, tmp_path
):
    root = _ca("Acme Root")
    intermediate = _ca("Acme Intermediate", issuer=root)
    p12, signer = _signing_p12(intermediate, chain=[intermediate[1]])
    _set_options(ports, operator, RecoveryOptions(sign_profiles=True), p12)
    [stored] = _signing_keys(ports)
    assert stored.chain_pem == intermediate[1].public_bytes(serialization.Encoding.PEM).decode()
    cert_id, key, _ = _escrowed(ports, operator)
    item = _profile(ports, operator, cert_id)
    assert not item.data.startswith(b"<?xml")
    verified = _verify(tmp_path, item.data, root[1])
    assert verified.returncode == 0, verified.stderr
    content = (tmp_path / "content").read_bytes()
    profile = plistlib.loads(content)
    assert set(profile) == TOP_KEYS and _plist(item.data) == profile
    # Embedded byte for byte, as built: not turned into CRLF text by the signing.
    assert content == plistlib.dumps(profile, sort_keys=True)
    [payload] = profile["PayloadContent"]
    assert _same_key(_openssl_key(tmp_path, payload["PayloadContent"], PASSPHRASE), key)
    carried = asn1_cms.ContentInfo.load(item.data)["content"]["certificates"]
    assert {c.chosen.sha256 for c in carried} == {
        c.fingerprint(hashes.SHA256()) for c in (signer, intermediate[1])
    }
    # Another root does not vouch for it.
    stranger = _ca("Stranger Root")
    assert _verify(tmp_path, item.data, stranger[1]).returncode != 0


def test_without_the_intermediate_the_signature_does_not_verify_to_the_root(
    ports, account, operator, tmp_path
):
    root = _ca("Acme Root")
    intermediate = _ca("Acme Intermediate", issuer=root)
    p12, _ = _signing_p12(intermediate)  # no chain in the file
    _set_options(ports, operator, RecoveryOptions(sign_profiles=True), p12)
    cert_id, _, _ = _escrowed(ports, operator)
    item = _profile(ports, operator, cert_id)
    assert _verify(tmp_path, item.data, root[1]).returncode != 0
    # Uploading the same identity again with its chain stores the chain, audited.
    p12_with_chain = _replace_chain(p12, [intermediate[1]])
    _set_options(ports, operator, RecoveryOptions(sign_profiles=True), p12_with_chain)
    item = _profile(ports, operator, cert_id)
    assert _verify(tmp_path, item.data, root[1]).returncode == 0
    update = json.loads(events(ports, "key_vault.settings_update")[-1].details)
    assert update["old"]["signing_certificate"]["chain"] == []
    assert update["new"]["signing_certificate"]["chain"] == [
        intermediate[1].fingerprint(hashes.SHA256()).hex()
    ]


def _replace_chain(p12: bytes, chain: list[x509.Certificate]) -> bytes:
    from cryptography.hazmat.primitives.serialization import pkcs12

    loaded = pkcs12.load_pkcs12(p12, SIGNING_PASSWORD.encode())
    assert loaded.key is not None and loaded.cert is not None
    return make_p12(loaded.key, loaded.cert.certificate, SIGNING_PASSWORD, chain=chain)


def test_an_expired_signing_identity_refuses_profiles_unless_unsigned_ones_are_allowed(
    ports, account, operator
):
    p12, signer = _signing_p12(make_ca("Acme Signing CA"), days=10)
    _set_options(ports, operator, RecoveryOptions(sign_profiles=True), p12)
    cert_id, _, _ = _escrowed(ports, operator)
    later = signer.not_valid_after_utc + dt.timedelta(days=1)
    ports.clock = lambda: later
    with pytest.raises(SigningIdentityExpired) as refused:
        _profile(ports, operator, cert_id)
    assert refused.value.code == "signing_identity_expired" and refused.value.status == 409
    assert f"expired on {signer.not_valid_after_utc:%Y-%m-%d}" in refused.value.message
    assert _release_events(ports) == []
    assert [m for m in mails(ports) if "recovered" in m.subject] == []
    [refusal] = [e for e in events(ports, "key.release") if e.outcome == "refused"]
    assert json.loads(refusal.details)["reason"] == "signing_identity_expired"
    # A PKCS#12 needs no signature.
    assert release_key(
        ports, operator, "acme", cert_id, passphrase=PASSPHRASE, reason="test"
    ).releases
    _set_options(ports, operator, RecoveryOptions(sign_profiles=True, unsigned_fallback=True))
    item = _profile(ports, operator, cert_id)
    assert item.data.startswith(b"<?xml") and set(plistlib.loads(item.data)) == TOP_KEYS
    update = json.loads(events(ports, "key_vault.settings_update")[-1].details)
    assert update == {"old": {"unsigned_fallback": False}, "new": {"unsigned_fallback": True}}


def test_signing_on_without_a_signing_certificate_is_a_clear_error(ports, account, operator):
    p12, _ = _signing_p12(make_ca("Acme Signing CA"))
    _set_options(ports, operator, RecoveryOptions(sign_profiles=True, unsigned_fallback=True), p12)
    [stored] = _signing_keys(ports)
    with ports.db.transaction() as s:
        s.get_one(ServiceKey, stored.id).certificate_der = None
    cert_id, _, _ = _escrowed(ports, operator)
    with pytest.raises(SigningIdentityMissing) as refused:
        _profile(ports, operator, cert_id)
    assert refused.value.code == "signing_identity_missing" and refused.value.status == 409
    assert _release_events(ports) == []


def test_an_ed25519_signing_identity_is_refused_on_upload(ports, account, operator):
    key = new_key("ed25519")
    cert = make_cert(key, "profiles@acme.example")
    with pytest.raises(SigningIdentityInvalid, match="RSA or EC"):
        _set_options(
            ports,
            operator,
            RecoveryOptions(sign_profiles=True),
            make_p12(key, cert, SIGNING_PASSWORD),
        )
    assert _signing_keys(ports) == []


# --- audit, notice, bad input -------------------------------------------------------------------


def test_the_audit_event_and_the_owners_notice_name_the_format(ports, account, operator):
    cert_id, _, _ = _escrowed(ports, operator)
    _profile(ports, operator, cert_id)
    release_key(ports, operator, "acme", cert_id, passphrase=PASSPHRASE, reason="test")
    assert [(d["format"], d["encryption"]) for d in _release_events(ports)] == [
        (MOBILECONFIG, "TripleDES-SHA1"),
        ("p12", "AES256-SHA256"),
    ]
    notices = [m.body for m in mails(ports) if m.subject == "Your private key was recovered"]
    assert len(notices) == 2
    assert "Delivered as: iOS configuration profile (.mobileconfig)\n" in notices[0]
    assert "Delivered as: PKCS#12 file (.p12)\n" in notices[1]


def test_an_unknown_format_or_another_encryption_for_a_profile_is_refused(ports, account, operator):
    cert_id, _, _ = _escrowed(ports, operator)
    canary = "zip-Zq7canary"
    with pytest.raises(UnsupportedFormat) as unknown:
        _profile(ports, operator, cert_id, format=canary)
    assert unknown.value.code == "unsupported_format" and unknown.value.status == 422
    assert "canary" not in unknown.value.message.lower()
    with pytest.raises(ProfileEncryptionFixed) as fixed:
        _profile(ports, operator, cert_id, encryption="AES256-SHA256")
    assert fixed.value.code == "profile_encryption_fixed"
    assert _release_events(ports) == []
    reasons = [json.loads(e.details)["reason"] for e in events(ports, "key.release")]
    assert reasons == ["unsupported_format", "profile_encryption_fixed"]
    assert all("canary" not in e.details.lower() for e in events(ports))
    item = _profile(ports, operator, cert_id, format=" MobileConfig ", encryption="TripleDES-SHA1")
    assert item.format.value == MOBILECONFIG
