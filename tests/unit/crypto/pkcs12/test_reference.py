"""certvault's reader agrees with cryptography's ``load_pkcs12`` on every committed vector.

Both read the same key, certificate and chain, or both refuse; the exceptions are listed below,
each with its reason. ``load_pkcs12`` returns one key (the first); certvault returns every key,
so the reference's key is compared with certvault's first entry and the certificates as sets.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12 as crypto_pkcs12

from certvault.crypto.pkcs12.reader import (
    CHAIN_CERTIFICATES_SKIPPED,
    LEGACY_PASSWORD_ENCODING,
    read_pkcs12,
)
from certvault.errors import P12Error, P12Malformed, P12NoCertificate, P12NoKey, P12TooExpensive
from tests.unit.crypto.conftest import PASSWORDS, VECTOR_DIR, Vectors
from tests.unit.crypto.pkcs12.assembly import der

# Files the reference must not even be run on: certvault refuses them by policy, before any KDF.
NOT_RUN_BY_THE_REFERENCE = {
    "iter-mac-100m.p12": (P12TooExpensive, "100 million MAC rounds: minutes of work"),
    "iter-certs-100m.p12": (P12TooExpensive, "100 million rounds for the certificates"),
    "iter-key-100m.p12": (P12TooExpensive, "100 million rounds for the key"),
    "iter-legacy-key-100m.p12": (P12TooExpensive, "100 million rounds for the 3DES key"),
    "iter-nested-100m.p12": (P12TooExpensive, "100 million rounds inside an EncryptedData"),
    # A PBKDF2 output of 1,000,000 bytes is 31,250 runs of the 2048-round KDF.
    "pbmac1-keylen-huge.p12": (P12Malformed, "PBMAC1 key length of a million bytes"),
}
# Files certvault refuses by policy where the reference returns something.
REFUSED_BY_POLICY = {
    "certs-only.p12": (P12NoKey, "nothing to escrow: no key"),
    "key-only.p12": (P12NoCertificate, "a key is escrowed only with its certificate"),
    "mismatch.p12": (P12NoCertificate, "the certificate is not the key's"),
    "two-keys-foreign-cert.p12": (P12NoCertificate, "the certificate is neither key's"),
}
# Files certvault reads differently on purpose.
READ_MORE = {
    # The reference refuses: OpenSSL 1.0's non-ASCII password form is tried by certvault only.
    "p256-openssl10-nonascii.p12": LEGACY_PASSWORD_ENCODING,
}
READ_LESS = {
    # Reading the ninth 600,000-round section would go over the KDF budget: one CA certificate
    # fewer, with a warning.
    "certtool-p256-9certs.p12": CHAIN_CERTIFICATES_SKIPPED,
}

ALL_VECTORS = sorted(path.name for path in VECTOR_DIR.glob("*.p12"))


def password_of(name: str) -> str:
    """The README's password labels: N for the non-ASCII files, E for the empty ones, else P."""
    if "nonascii" in name:
        return PASSWORDS["N"]
    return PASSWORDS["E"] if "emptypass" in name else PASSWORDS["P"]


def _certificates(*certs) -> set[bytes]:  # type: ignore[no-untyped-def]
    return {der(cert) for cert in certs if cert is not None}


def test_every_exception_is_a_vector():
    listed = {*NOT_RUN_BY_THE_REFERENCE, *REFUSED_BY_POLICY, *READ_MORE, *READ_LESS}
    assert listed <= set(ALL_VECTORS)


@pytest.mark.parametrize("name", ALL_VECTORS)
def test_certvault_agrees_with_load_pkcs12(vectors: Vectors, name: str):
    data, password = vectors.data(name), password_of(name)
    if name in NOT_RUN_BY_THE_REFERENCE:
        error, _reason = NOT_RUN_BY_THE_REFERENCE[name]
        with pytest.raises(error):
            read_pkcs12(data, password)
        return

    try:
        reference = crypto_pkcs12.load_pkcs12(data, password.encode())
    except ValueError:
        reference = None
    try:
        ours = read_pkcs12(data, password)
    except P12Error as exc:
        if name in REFUSED_BY_POLICY:
            assert isinstance(exc, REFUSED_BY_POLICY[name][0])
            assert reference is not None  # else it would need no exception
            return
        assert reference is None, f"certvault refused what the reference reads: {exc.code}"
        return
    assert name not in REFUSED_BY_POLICY

    if name in READ_MORE:
        assert reference is None
        assert ours.warnings == [READ_MORE[name]]
        return
    assert reference is not None, "certvault read what the reference refuses"
    first = ours.entries[0]
    assert vectors.pkcs8(first.key) == vectors.pkcs8(reference.key)
    assert reference.cert is not None
    assert der(first.certificate) == der(reference.cert.certificate)
    theirs = _certificates(
        reference.cert.certificate, *(c.certificate for c in reference.additional_certs)
    )
    mine = _certificates(*(e.certificate for e in ours.entries), *ours.extra_certificates)
    if name in READ_LESS:
        assert ours.warnings == [READ_LESS[name]]
        assert mine < theirs
    else:
        assert ours.warnings == []
        assert mine == theirs
