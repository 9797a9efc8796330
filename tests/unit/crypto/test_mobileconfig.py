"""The .mobileconfig builder on its own: payload UUIDs that never change, the Exchange wiring of a
certificate without usage extensions, and what the signer refuses."""

from __future__ import annotations

import plistlib

import pytest
from cryptography import x509

from certvault.crypto import mobileconfig
from certvault.errors import InvalidInput, KeyMismatch, UnsupportedKey
from tests.factories import make_cert, new_key
from tests.unit.crypto.conftest import VECTOR_DIR

ACCOUNT = "00000000-0000-4000-8000-000000000001"
EXCHANGE = mobileconfig.ExchangeAccount("mail.example.org", True, 7, False)


def _vector_certificate() -> x509.Certificate:
    return x509.load_pem_x509_certificate((VECTOR_DIR / "p256.cert.pem").read_bytes())


def _identity(
    certificate: x509.Certificate, email: str | None = "a@example.org"
) -> mobileconfig.Identity:
    return mobileconfig.Identity(certificate, b"p12", "1.p12", "a", email)


def test_payload_uuids_are_known_answers():
    # Devices replace an installed profile by its identifier: a change of the namespace or of
    # how names are made would make every device add a second copy instead.
    certificate = _vector_certificate()
    assert mobileconfig.payload_uuid(ACCOUNT, mobileconfig.PKCS12, [certificate]) == (
        "B05F7FAF-823A-508C-A7A4-C85A012367F3"
    )
    assert mobileconfig.payload_uuid(ACCOUNT, mobileconfig.PROFILE, [certificate]) == (
        "BFC695CA-BA2B-538A-827F-293C1BA7395C"
    )


def test_a_certificate_without_usage_extensions_is_wired_for_encryption_only():
    certificate = make_cert(new_key("ec256"), "a@example.org")  # no key usage; EKU email only
    profile = plistlib.loads(
        mobileconfig.build_profile(ACCOUNT, "Org", "Name", [_identity(certificate)], EXCHANGE)
    )
    [pkcs12, eas] = profile["PayloadContent"]
    assert eas["SMIMEEncryptionCertificateUUID"] == pkcs12["PayloadUUID"]
    assert not {"SMIMESigningEnabled", "SMIMESigningCertificateUUID", "PayloadCertificateUUID"} & (
        set(eas)
    )


def test_the_vector_certificate_is_wired_for_signing_and_authentication():
    profile = plistlib.loads(
        mobileconfig.build_profile(
            ACCOUNT, "Org", "Name", [_identity(_vector_certificate(), None)], EXCHANGE
        )
    )
    [pkcs12, eas] = profile["PayloadContent"]
    target = pkcs12["PayloadUUID"]
    assert eas["SMIMESigningEnabled"] is True
    assert eas["SMIMESigningCertificateUUID"] == eas["PayloadCertificateUUID"] == target
    assert "EmailAddress" not in eas  # unknown: the device asks


def test_a_profile_needs_a_certificate():
    with pytest.raises(InvalidInput):
        mobileconfig.build_profile(ACCOUNT, "Org", "Name", [])


def test_the_signer_refuses_a_foreign_certificate_and_ed25519_keys():
    key = new_key("ec256")
    other = make_cert(new_key("ec256"))
    with pytest.raises(KeyMismatch):
        mobileconfig.sign_profile(b"<plist/>", mobileconfig.Signer(key, other))
    edwards = new_key("ed25519")
    assert not mobileconfig.can_sign(edwards) and mobileconfig.can_sign(key)
    with pytest.raises(UnsupportedKey):
        mobileconfig.sign_profile(b"<plist/>", mobileconfig.Signer(edwards, make_cert(edwards)))
