"""Hostile and broken PKCS#12 uploads through the service layer: a clear error, nothing changed,
and the refusal in the audit log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from certvault.errors import CertvaultError
from certvault.services.vault.archive import IMPORTED
from certvault.services.vault.imports import import_p12
from tests.functional.helpers import counts, events
from tests.unit.crypto.pkcs12.assembly import nested, pfx_from_sections, plain_bags, with_attribute

VECTORS = Path(__file__).parents[1] / "vectors" / "p12"
P = "vector-pass-1234"


def _data(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _deeply_nested() -> bytes:
    # asn1crypto recursed through this until RecursionError: a server error, not a refusal.
    contents = with_attribute(plain_bags(_data("p256-nomac.p12")), nested(3000))
    return pfx_from_sections([{"content_type": "data", "content": contents}])


BAD = [
    ("wrong password", _data("p256.p12"), "not-the-password", "p12_wrong_password"),
    ("truncated", _data("p256.p12")[:700], P, "p12_malformed"),
    ("random bytes", os.urandom(3000), P, "p12_malformed"),
    ("empty", b"", P, "p12_malformed"),
    ("only certificates", _data("certs-only.p12"), P, "p12_no_key"),
    ("only a key", _data("key-only.p12"), P, "p12_no_certificate"),
    ("key not matching its certificate", _data("mismatch.p12"), P, "p12_no_certificate"),
    ("100 million MAC iterations", _data("iter-mac-100m.p12"), P, "p12_kdf_too_expensive"),
    ("100 million key-bag iterations", _data("iter-key-100m.p12"), P, "p12_kdf_too_expensive"),
    ("nested 100 million iterations", _data("iter-nested-100m.p12"), P, "p12_kdf_too_expensive"),
    ("over the size limit", b"\x30\x84" + os.urandom(1024 * 1024 + 10), P, "p12_too_large"),
    ("3,000 nested SEQUENCEs in a bag attribute", _deeply_nested(), P, "p12_malformed"),
]


@pytest.mark.parametrize(("label", "data", "password", "code"), BAD, ids=[b[0] for b in BAD])
def test_bad_p12_is_refused_and_changes_nothing(
    ports, operator, account, label, data, password, code
):
    before = counts(ports)
    with pytest.raises(CertvaultError) as exc:
        import_p12(ports, operator, "acme", data, password)
    assert exc.value.code == code, label
    assert counts(ports) == before
    refused = [e for e in events(ports, "key.archive") if e.outcome == "refused"]
    assert [json.loads(e.details)["reason"] for e in refused] == [code]


def test_two_key_pairs_give_two_entries(ports, operator, account):
    entries = import_p12(ports, operator, "acme", _data("two-pairs.p12"), P)
    assert [e.message for e in entries] == [IMPORTED, IMPORTED]
    assert {e.alias for e in entries} == {"alice rsa2048", "alice p384"}
    assert counts(ports)["keys"] == 2


@pytest.mark.parametrize(
    "name", ["p256-legacy.p12", "rsa2048-legacy.p12", "p384.p12", "ed25519.p12", "p521.p12"]
)
def test_openssl_made_files_import(ports, operator, account, name):
    [entry] = import_p12(ports, operator, "acme", _data(name), P)
    assert entry.message == IMPORTED and len(entry.sha1) == 40 and len(entry.md5) == 32


def test_non_ascii_password(ports, operator, account):
    [entry] = import_p12(ports, operator, "acme", _data("p256-nonascii.p12"), "pässwörd-Ω-12345")
    assert entry.message == IMPORTED


def test_chain_is_kept_for_release(ports, operator, account):
    from certvault.crypto.pkcs12.reader import read_pkcs12
    from certvault.services.vault.release import release_key

    [entry] = import_p12(ports, operator, "acme", _data("rsa2048-chain.p12"), P)
    batch = release_key(
        ports, operator, "acme", entry.client_cert_id, passphrase=None, reason="chain check"
    )
    back = read_pkcs12(batch.releases[0].data, batch.generated_passphrase)
    ca = (VECTORS / "ca.cert.pem").read_bytes()
    from cryptography import x509

    assert back.extra_certificates == [x509.load_pem_x509_certificate(ca)]
