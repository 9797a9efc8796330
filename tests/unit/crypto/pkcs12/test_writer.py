"""Writing PKCS#12, checked by our reader and by openssl."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography.hazmat.primitives import serialization

from certvault.crypto.pkcs12 import pfx_der
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.crypto.pkcs12.writer import EncryptionType, write_pkcs12
from certvault.errors import InvalidInput, KeyMismatch, UnsupportedEncryption
from tests.factories import make_p12

KEY_TYPES = ["rsa2048", "rsa4096", "p256", "p384", "p521", "ed25519"]


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [2048, 3000])
@pytest.mark.parametrize("encryption", list(EncryptionType))
@pytest.mark.parametrize("key_name", KEY_TYPES)
def test_round_trip(vectors, key_name, encryption, rounds):
    key, cert, ca = vectors.key(key_name), vectors.cert(key_name), vectors.cert("ca")

    blob = write_pkcs12(key, cert, [ca], "round-trip-ü", encryption, rounds, f"name {key_name}")
    contents = read_pkcs12(blob, "round-trip-ü")

    (entry,) = contents.entries
    assert vectors.pkcs8(entry.key) == vectors.pkcs8(key)
    assert der(entry.certificate) == der(cert)
    assert entry.friendly_name == f"name {key_name}"
    assert [der(c) for c in contents.extra_certificates] == [der(ca)]


@pytest.mark.parametrize("rounds", [3, 2048])
def test_our_aes_files_take_the_readers_fast_path(vectors, rounds):
    key, cert = vectors.key("p256"), vectors.cert("p256")
    blob = write_pkcs12(key, cert, [cert], "pw-1234", EncryptionType.AES256_SHA256, rounds, "n")
    read = pfx_der.pfx(blob)
    assert read is not None
    _, mac, sections = read
    assert mac is not None and mac.iterations == rounds
    assert len(sections) == 2


def test_round_trip_without_chain_or_name(vectors):
    key, cert = vectors.key("p256"), vectors.cert("p256")
    blob = write_pkcs12(key, cert, [], "pw-1234", EncryptionType.AES256_SHA256, 2048, None)
    contents = read_pkcs12(blob, "pw-1234")
    assert contents.entries[0].friendly_name is None
    assert contents.extra_certificates == []


def _openssl(tmp_path: Path, blob: bytes, passphrase: str, *args: str) -> str:
    p12 = tmp_path / "out.p12"
    p12.write_bytes(blob)
    pass_file = tmp_path / "pass.txt"
    pass_file.write_text(passphrase + "\n", encoding="utf-8")
    result = subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-passin", f"file:{pass_file}", *args],
        capture_output=True,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    assert result.returncode == 0, output
    return output


@pytest.mark.parametrize(
    ("encryption", "mac_line", "bag_pattern"),
    [
        (
            EncryptionType.AES256_SHA256,
            "MAC: sha256, Iteration 3000",
            r"PBES2, PBKDF2, AES-256-CBC, Iteration (\d+), PRF hmacWithSHA256",
        ),
        (
            EncryptionType.TRIPLEDES_SHA1,
            "MAC: sha1, Iteration 3000",
            r"pbeWithSHA1And3-KeyTripleDES-CBC, Iteration (\d+)",
        ),
    ],
)
@pytest.mark.parametrize("passphrase", ["plain-ascii-1234", "pässwörd-Ω-12345"])
def test_openssl_sees_mac_as_strong_as_bags(
    vectors, tmp_path, encryption, mac_line, bag_pattern, passphrase
):
    key, cert = vectors.key("p256"), vectors.cert("p256")
    blob = write_pkcs12(key, cert, [vectors.cert("ca")], passphrase, encryption, 3000, "alice")

    info = _openssl(tmp_path, blob, passphrase, "-info", "-nokeys")

    assert mac_line in info
    bag_counts = re.findall(bag_pattern, info)
    assert len(bag_counts) == 2  # the certificates' EncryptedData and the key bag
    assert set(bag_counts) == {"3000"}


@pytest.mark.parametrize("encryption", list(EncryptionType))
@pytest.mark.parametrize("key_name", ["rsa2048", "p256", "ed25519"])
def test_openssl_extracts_the_same_key(vectors, tmp_path, key_name, encryption):
    key, cert = vectors.key(key_name), vectors.cert(key_name)
    passphrase = "pässwörd-Ω-12345"
    blob = write_pkcs12(key, cert, [], passphrase, encryption, 2048, None)

    pem = _openssl(tmp_path, blob, passphrase, "-nocerts", "-nodes")

    block = pem[pem.index("-----BEGIN PRIVATE KEY-----") :]
    extracted = serialization.load_pem_private_key(block.encode(), None)
    assert vectors.pkcs8(extracted) == vectors.pkcs8(key)


@pytest.mark.parametrize("name", ["alice", "Ærøskøbing 😀 " + "x" * 80, None])
@pytest.mark.parametrize("key_name", ["rsa2048", "p384", "ed25519"])
def test_openssl_reads_our_file_as_it_reads_cryptographys(vectors, tmp_path, key_name, name):
    """The DER is built here, not by cryptography's encrypting writer: OpenSSL sees the same
    sections, bags, attributes (friendly name, local key id) and algorithms in both files."""
    key, cert, chain = vectors.key(key_name), vectors.cert(key_name), [vectors.cert("ca")]
    passphrase = "pässwörd-Ω-12345"
    ours = write_pkcs12(key, cert, chain, passphrase, EncryptionType.AES256_SHA256, 2048, name)
    theirs = make_p12(key, cert, passphrase, chain, name.encode() if name else None)

    described = [_openssl(tmp_path, blob, passphrase, "-info", "-nodes") for blob in (ours, theirs)]

    # The one difference: a MAC salt of 16 bytes, cryptography's is 8.
    assert "MAC length: 32, salt length: 16" in described[0]
    assert described[0].replace("salt length: 16", "salt length: 8") == described[1]
    assert "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 2048" in described[0]
    assert ("friendlyName" in described[0]) is (name is not None)


def test_openssl_refuses_a_wrong_passphrase_for_our_mac(vectors, tmp_path):
    blob = write_pkcs12(
        vectors.key("p256"),
        vectors.cert("p256"),
        [],
        "right-passphrase",
        EncryptionType.AES256_SHA256,
        2048,
        None,
    )
    (tmp_path / "out.p12").write_bytes(blob)
    result = subprocess.run(
        ["openssl", "pkcs12", "-in", str(tmp_path / "out.p12"), "-passin", "pass:wrong"],
        capture_output=True,
        check=False,
    )
    assert result.returncode != 0
    assert b"mac verify" in result.stderr.lower()


def test_written_mac_uses_the_requested_iterations(vectors):
    blob = write_pkcs12(
        vectors.key("p384"),
        vectors.cert("p384"),
        [],
        "pw",
        EncryptionType.AES256_SHA256,
        4321,
        None,
    )
    mac = asn1_pkcs12.Pfx.load(blob)["mac_data"]
    assert mac["iterations"].native == 4321
    assert len(mac["mac_salt"].native) == 16


@pytest.mark.parametrize(
    ("passphrase", "friendly_name"), [("", None), ("\ud800", None), ("pw", "\udfff")]
)
def test_unusable_passphrase_or_name_refused(vectors, passphrase, friendly_name):
    with pytest.raises(InvalidInput) as refused:
        write_pkcs12(
            vectors.key("p256"),
            vectors.cert("p256"),
            [],
            passphrase,
            EncryptionType.AES256_SHA256,
            2048,
            friendly_name,
        )
    if passphrase:
        assert passphrase not in refused.value.message


@pytest.mark.parametrize("iterations", [0, -1, 10_000_001])
def test_iterations_out_of_range_refused(vectors, iterations):
    with pytest.raises(InvalidInput):
        write_pkcs12(
            vectors.key("p256"),
            vectors.cert("p256"),
            [],
            "pw",
            EncryptionType.AES256_SHA256,
            iterations,
            None,
        )


def test_key_not_matching_certificate_refused(vectors):
    with pytest.raises(KeyMismatch):
        write_pkcs12(
            vectors.key("p256"),
            vectors.cert("p384"),
            [],
            "pw",
            EncryptionType.AES256_SHA256,
            2048,
            None,
        )


# --- EncryptionType -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, EncryptionType.AES256_SHA256),
        ("AES256-SHA256", EncryptionType.AES256_SHA256),
        ("aes256-sha256", EncryptionType.AES256_SHA256),
        (" TripleDES-SHA1 ", EncryptionType.TRIPLEDES_SHA1),
    ],
)
def test_encryption_type_parse(value, expected):
    assert EncryptionType.parse(value) is expected


@pytest.mark.parametrize("value", ["", "AES128", "x" * 10_000])
def test_encryption_type_unknown_is_not_echoed(value):
    with pytest.raises(UnsupportedEncryption) as info:
        EncryptionType.parse(value)
    assert len(info.value.message) < 200
    if value:
        assert value not in info.value.message
