"""The password-based encryption pieces: the PKCS#12 KDF and RC2 with reduced key length."""

from __future__ import annotations

import random

import pytest
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography.hazmat.decrepit.ciphers.algorithms import RC2
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from certvault.crypto.pkcs12 import libcrypto
from certvault.crypto.pkcs12.pbe import pkcs12_kdf, rc2_cbc_decrypt
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.crypto.pkcs12.writer import EncryptionType, write_pkcs12
from tests.unit.crypto.pkcs12.reference_kdf import pkcs12_kdf_reference

IMPLEMENTATIONS = {"native": pkcs12_kdf, "reference": pkcs12_kdf_reference}


def _bmp(s: str) -> bytes:
    return s.encode("utf-16-be") + b"\x00\x00"


@pytest.mark.parametrize(
    ("hash_name", "password", "salt", "iterations", "id_byte", "n", "expected"),
    [
        # The vectors that circulate with PKCS#12 implementations (Go's x/crypto/pkcs12,
        # BouncyCastle): 3DES key and IV, SHA-1.
        (
            "sha1",
            _bmp("smeg"),
            "0a58cf64530d823f",
            1,
            1,
            24,
            "8aaae6297b6cb04642ab5b077851284eb7128f1a2a7fbca3",
        ),
        ("sha1", _bmp("smeg"), "0a58cf64530d823f", 1, 2, 8, "79993dfe048d3b76"),
        (
            "sha1",
            _bmp("queeg"),
            "05dec959acff72f7",
            1000,
            1,
            24,
            "ed2034e36328830ff09df1e1a07dd357185dac0d4f9eb3d4",
        ),
        # Known answers from `openssl kdf -kdfopt digest:... -kdfopt hexpass:<BMPString> PKCS12KDF`.
        (
            "sha1",
            _bmp("sesame"),
            "ffffffffffffffff",
            2048,
            1,
            24,
            "7cd9fd3e2b3be7691a44e3bef0f9ea0fb9b897d4e325d9d1",
        ),
        (
            "sha256",
            _bmp("pässwörd-Ω-12345"),
            "000102030405060708090a0b0c0d0e0f",
            1000,
            3,
            32,
            "acfbb9270178282d12a64430a1013bcebd5d84341e330f73500fa1f548c9ab4c",
        ),
        (
            "sha512",
            b"\x00\x00",
            "0102030405060708",
            3,
            2,
            200,
            "ba9d5caea584523419843707b5faa7bfecf87767bde44dd8f6aec47be3e1cdb5"
            "6518becd3e8b48262e3519e34b4b200b3eb01524b27d82f943bf9a51ae928ee1"
            "eeac7352cf9776d84fa39ea8b4bec72745029eeb21407f1ad6628ee25410da2b"
            "7195bf663bee4e3abb38afe1e2bf21a4020891e45f2df9bb437a7e821cc5ae2c"
            "4c3c0a024cb8e07a502734fc255ac543048584cc6bd945cff150eaaae700cb7d"
            "9da907c584d72b0d0d9a674c71e52bcc4094abee34a7b320fd64737b93534a55"
            "74cb78b49020131c",
        ),
        (
            "sha1",
            _bmp("x" * 70),
            bytes(range(100)).hex(),
            5,
            1,
            50,
            "3b96dda44485f45eb161a6c2fc07a469a071a936a6c644a171edac092e7cfe75"
            "4cdba622714441fd6c9f196d941442137e32",
        ),
        (
            "sha384",
            _bmp("🔑 emoji"),
            "a1a2a3a4a5a6a7a8",
            7,
            3,
            48,
            "db23a6a739f81800692ff647d6ec629e2161a9cc65a61f1256af44004eb75381"
            "086e35e832c1085d2b070e86671baf14",
        ),
    ],
)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_pkcs12_kdf_known_answers(
    implementation, hash_name, password, salt, iterations, id_byte, n, expected
):
    kdf = IMPLEMENTATIONS[implementation]
    got = kdf(hash_name, password, bytes.fromhex(salt), id_byte, iterations, n)
    assert got.hex() == expected


@pytest.mark.parametrize("hash_name", ["sha1", "sha224", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("id_byte", [1, 2, 3])
def test_native_pkcs12_kdf_agrees_with_the_reference(hash_name, id_byte):
    rng = random.Random(f"{hash_name}-{id_byte}")
    # Empty and absent passwords, salts and passwords across block boundaries, outputs of one
    # to several blocks, not multiples of the hash size.
    passwords = [b"", b"\x00\x00", _bmp("pw"), _bmp("x" * 40), _bmp("pässwörd-Ω-" * 9)]
    cases = [(1, 1, 1), (8, 24, 3), (20, 8, 17), (64, 65, 2), (130, 200, 5)]
    for password in passwords:
        for salt_size, n, iterations in [(0, 8, 2), *cases] if password else cases:
            salt = rng.randbytes(salt_size)
            expected = pkcs12_kdf_reference(hash_name, password, salt, id_byte, iterations, n)
            assert pkcs12_kdf(hash_name, password, salt, id_byte, iterations, n) == expected


@pytest.mark.parametrize(
    "args",
    [
        ("md5", b"", b"salt", 1, 1, 8),
        ("sha1", b"", b"salt", 1, 0, 8),
        ("sha1", b"", b"salt", 1, 2**31, 8),
        ("sha1", b"", b"salt", 256, 1, 8),
        ("sha1", b"", b"salt", 1, 1, 0),
        ("sha1", b"", b"salt", 1, 1, 1025),
        ("sha1", b"", b"", 1, 1, 8),  # no input at all
    ],
)
def test_pkcs12_kdf_refuses_arguments_libcrypto_would_misread(args):
    with pytest.raises(ValueError):
        pkcs12_kdf(*args)


def test_reading_and_writing_run_the_native_kdf(vectors, monkeypatch):
    calls: list[int] = []
    real = libcrypto.pkcs12_key_gen

    def spy(*args):
        calls.append(args[3])  # the id: 1 key, 2 IV, 3 MAC
        return real(*args)

    monkeypatch.setattr(libcrypto, "pkcs12_key_gen", spy)

    # openssl -legacy: the SHA-1 MAC, RC2-40 certificates and the 3DES key all use it.
    assert read_pkcs12(vectors.data("p256-legacy.p12"), "vector-pass-1234").entries
    assert sorted(calls) == [1, 1, 2, 2, 3]
    calls.clear()
    # Our MAC over a written file, at the file's own iteration count; for the legacy type the
    # 3DES key and IV of the certificates' EncryptedData and of the key bag too.
    key, cert = vectors.key("p256"), vectors.cert("p256")
    write_pkcs12(key, cert, [], "pw-1234", EncryptionType.AES256_SHA256, 3000, None)
    assert calls == [3]
    calls.clear()
    # At 2,048 rounds as at any other count: the file is never cryptography's own.
    data = write_pkcs12(key, cert, [], "pw-1234", EncryptionType.AES256_SHA256, 2048, None)
    assert calls == [3]
    calls.clear()
    mac = asn1_pkcs12.Pfx.load(data)["mac_data"]
    assert mac["iterations"].native == 2048
    assert mac["mac"]["digest_algorithm"]["algorithm"].native == "sha256"
    write_pkcs12(key, cert, [], "pw-1234", EncryptionType.TRIPLEDES_SHA1, 2048, None)
    assert sorted(calls) == [1, 1, 2, 2, 3]


@pytest.mark.parametrize(
    ("key", "bits", "plain", "cipher"),
    [  # RFC 2268 section 5
        ("0000000000000000", 63, "0000000000000000", "ebb773f993278eff"),
        ("ffffffffffffffff", 64, "ffffffffffffffff", "278b27e42e2f0d49"),
        ("3000000000000000", 64, "1000000000000001", "30649edf9be7d2c2"),
        ("88bca90e90875a", 64, "0000000000000000", "6ccf4308974c267f"),
        ("88bca90e90875a7f0f79c384627bafb2", 64, "0000000000000000", "1a807d272bbe5db1"),
        ("88bca90e90875a7f0f79c384627bafb2", 128, "0000000000000000", "2269552ab0f85ca6"),
        (
            "88bca90e90875a7f0f79c384627bafb216f80a6f85920584c42fceb0be255daf1e",
            129,
            "0000000000000000",
            "5b78d3a43dfff1f1",
        ),
    ],
)
def test_rc2_known_answers(key, bits, plain, cipher):
    # One CBC block with a zero IV is a plain block decryption.
    got = rc2_cbc_decrypt(bytes.fromhex(key), bits, bytes(8), bytes.fromhex(cipher))
    assert got.hex() == plain


def test_rc2_cbc_agrees_with_cryptography_for_128_bit_keys():
    rng = random.Random(7)
    key, iv, plain = rng.randbytes(16), rng.randbytes(8), rng.randbytes(8 * 40)
    encryptor = Cipher(RC2(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plain) + encryptor.finalize()
    assert rc2_cbc_decrypt(key, 128, iv, ciphertext) == plain
