"""PKCS#12 files assembled in the tests from asn1crypto structures, for shapes no tool writes."""

from __future__ import annotations

import hmac
import os

from asn1crypto import algos
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from certvault.crypto.pkcs12.pbe import ID_MAC, pbkdf2, pkcs12_kdf

PBMAC1_OID = "1.2.840.113549.1.5.14"


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def with_mac(p12: bytes, mac_data: asn1_pkcs12.MacData | None) -> bytes:
    pfx = asn1_pkcs12.Pfx.load(p12)
    value = {"version": "v3", "auth_safe": pfx["auth_safe"]}
    if mac_data is not None:
        value["mac_data"] = mac_data
    return asn1_pkcs12.Pfx(value).dump()


def pfx_from_sections(sections) -> bytes:
    """A PFX without MAC holding ``sections`` (ContentInfos) as its AuthenticatedSafe."""
    auth_safe = asn1_pkcs12.AuthenticatedSafe(sections)
    return asn1_pkcs12.Pfx(
        {"version": "v3", "auth_safe": {"content_type": "data", "content": auth_safe.dump()}}
    ).dump()


def p12_from_bags(bags) -> bytes:
    """An unencrypted PFX without MAC holding ``bags`` in one SafeContents."""
    contents = asn1_pkcs12.SafeContents(bags).dump()
    return pfx_from_sections([{"content_type": "data", "content": contents}])


def plain_bags(p12: bytes) -> list:
    """The SafeBags of a file whose sections are all unencrypted (an openssl ``-nomac`` export)."""
    bags = []
    for info in asn1_pkcs12.Pfx.load(p12).authenticated_safe:
        assert info["content_type"].native == "data"
        bags.extend(asn1_pkcs12.SafeContents.load(bytes(info["content"])))
    return bags


def vector_bags(vectors, name: str) -> list:
    return plain_bags(vectors.data(name))


def with_attribute(bags, value: bytes) -> bytes:
    """A SafeContents of ``bags`` in which the first certificate bag carries an attribute of
    unknown type whose value is ``value`` (raw BER, which asn1crypto would not build)."""
    attribute = tlv(0x30, asn1_core.ObjectIdentifier("1.2.3.4").dump() + tlv(0x31, value))
    first = next(i for i, bag in enumerate(bags) if bag["bag_id"].native == "cert_bag")
    out = [bag.dump() for bag in bags]
    fields = bags[first]["bag_id"].dump() + bags[first]["bag_value"].dump()
    out[first] = tlv(0x30, fields + tlv(0x31, attribute))
    return tlv(0x30, b"".join(out))


def pbes2_encrypt(
    plain: bytes, password: str, *, prf: str = "sha256", iterations: int = 2048
) -> tuple[algos.EncryptionAlgorithm, bytes]:
    """PBES2 with PBKDF2-HMAC-``prf`` and AES-256-CBC: the AlgorithmIdentifier and ciphertext."""
    salt, iv = os.urandom(16), os.urandom(16)
    key = pbkdf2(prf, password.encode(), salt, iterations, 32)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    alg = algos.EncryptionAlgorithm(
        {
            "algorithm": "pbes2",
            "parameters": {
                "key_derivation_func": {
                    "algorithm": "pbkdf2",
                    "parameters": {
                        "salt": {"specified": salt},
                        "iteration_count": iterations,
                        "prf": {"algorithm": prf, "parameters": None},
                    },
                },
                "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
            },
        }
    )
    return alg, ciphertext


def shrouded_key_bag(pkcs8: bytes, password: str, **pbes2) -> asn1_pkcs12.SafeBag:
    alg, ciphertext = pbes2_encrypt(pkcs8, password, **pbes2)
    info = asn1_keys.EncryptedPrivateKeyInfo(
        {"encryption_algorithm": alg, "encrypted_data": ciphertext}
    )
    return asn1_pkcs12.SafeBag({"bag_id": "pkcs8_shrouded_key_bag", "bag_value": info})


def encrypted_section(contents: bytes, password: str, **pbes2) -> dict:
    """An EncryptedData ContentInfo around ``contents`` (a SafeContents' DER, or any bytes)."""
    alg, ciphertext = pbes2_encrypt(contents, password, **pbes2)
    return {
        "content_type": "encrypted_data",
        "content": {
            "version": "v0",
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": alg,
                "encrypted_content": ciphertext,
            },
        },
    }


def pbmac1(
    p12: bytes, password: str, *, prf: str, key_length: int, iterations: int = 2048
) -> bytes:
    """``p12`` under an RFC 9579 PBMAC1 (PBKDF2-HMAC-``prf`` keys an HMAC with ``prf``)."""
    auth = bytes(asn1_pkcs12.Pfx.load(p12)["auth_safe"]["content"])
    salt = os.urandom(16)
    key = pbkdf2(prf, password.encode(), salt, iterations, key_length)
    params = algos.Pbmac1Params(
        {
            "key_derivation_func": {
                "algorithm": "pbkdf2",
                "parameters": {
                    "salt": {"specified": salt},
                    "iteration_count": iterations,
                    "key_length": key_length,
                    "prf": {"algorithm": prf, "parameters": None},
                },
            },
            "message_auth_scheme": {"algorithm": prf, "parameters": None},
        }
    )
    mac = asn1_pkcs12.MacData(
        {
            "mac": {
                "digest_algorithm": {"algorithm": PBMAC1_OID, "parameters": params},
                "digest": hmac.new(key, auth, prf).digest(),
            },
            "mac_salt": b"NOT USED",
            "iterations": 1,
        }
    )
    return with_mac(p12, mac)


def tlv(tag: int, content: bytes) -> bytes:
    """One DER value: a one-byte tag, the definite length, the content."""
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | (n.bit_length() + 7) // 8])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def nested(depth: int, *, indefinite: bool = False) -> bytes:
    """A NULL inside ``depth`` SEQUENCEs, with definite or indefinite lengths."""
    if indefinite:
        return b"\x30\x80" * depth + b"\x05\x00" + b"\x00\x00" * depth
    value = b"\x05\x00"
    for _ in range(depth):
        value = tlv(0x30, value)
    return value


def pkcs12_mac(p12: bytes, password_bmp: bytes, *, iterations: int = 2048) -> bytes:
    """``p12`` under a classic SHA-256 MacData (PKCS#12 KDF, id 3), keyed by a password given
    as BMPString (``bmp_password``) or as no bytes at all."""
    auth = bytes(asn1_pkcs12.Pfx.load(p12)["auth_safe"]["content"])
    salt = os.urandom(16)
    key = pkcs12_kdf("sha256", password_bmp, salt, ID_MAC, iterations, 32)
    mac = asn1_pkcs12.MacData(
        {
            "mac": {
                "digest_algorithm": {"algorithm": "sha256"},
                "digest": hmac.new(key, auth, "sha256").digest(),
            },
            "mac_salt": salt,
            "iterations": iterations,
        }
    )
    return with_mac(p12, mac)
