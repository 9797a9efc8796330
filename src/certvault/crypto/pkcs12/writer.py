"""Writing PKCS#12: an export whose MAC costs as many KDF rounds as its encryption."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import keys as asn1_keys
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.serialization import pkcs12 as crypto_pkcs12

from certvault.crypto import keys
from certvault.crypto.keys import PrivateKey
from certvault.crypto.pkcs12.pbe import ID_IV, ID_KEY, ID_MAC, bmp_password, pkcs12_kdf
from certvault.errors import InvalidInput, KeyMismatch, UnsupportedEncryption

_MAX_WRITE_ITERATIONS = 10_000_000
# The rounds cryptography gives the MAC it writes, whatever the bags get (`openssl pkcs12 -info`
# shows it; the release tests check that MAC and bags are written with the same count).
_CRYPTOGRAPHY_MAC_ROUNDS = 2048


class EncryptionType(StrEnum):
    """How a released PKCS#12 file is protected."""

    AES256_SHA256 = "AES256-SHA256"  # PBES2 AES-256-CBC, PBKDF2-HMAC-SHA256, SHA-256 MAC
    TRIPLEDES_SHA1 = "TripleDES-SHA1"  # pbeWithSHAAnd3-KeyTripleDES-CBC, SHA-1 MAC: old devices

    @classmethod
    def parse(cls, value: str | None) -> EncryptionType:
        """``None`` gives the default; names match case-insensitively."""
        if value is None:
            return cls.AES256_SHA256
        for member in cls:
            if value.strip().lower() == member.value.lower():
                return member
        # The submitted value is not echoed: it may be huge, or a passphrase pasted by mistake.
        raise UnsupportedEncryption(
            "Unknown encryption type; use one of: " + ", ".join(m.value for m in cls) + "."
        )


@dataclass(frozen=True)
class KeyAndCertificate:
    """One key with its certificate, to be written into a PKCS#12 file."""

    key: PrivateKey
    certificate: x509.Certificate
    friendly_name: str | None = None


def write_pkcs12(
    key: PrivateKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
    passphrase: str,
    encryption: EncryptionType,
    iterations: int,
    friendly_name: str | None,
) -> bytes:
    """A PKCS#12 file whose MAC costs as many KDF rounds as its encryption."""
    entry = KeyAndCertificate(key, certificate, friendly_name)
    return write_pkcs12_entries([entry], chain, passphrase, encryption, iterations)


def write_pkcs12_entries(
    entries: Sequence[KeyAndCertificate],
    chain: Sequence[x509.Certificate],
    passphrase: str,
    encryption: EncryptionType,
    iterations: int,
) -> bytes:
    """A PKCS#12 file holding several keys, each with its certificate (a dual-key enrollment's
    encryption and signing pair), the chain once, and one MAC as strong as the encryption."""
    return pkcs12_writer(entries, chain, passphrase, encryption, iterations)()


def pkcs12_writer(
    entries: Sequence[KeyAndCertificate],
    chain: Sequence[x509.Certificate],
    passphrase: str,
    encryption: EncryptionType,
    iterations: int,
) -> Callable[[], bytes]:
    """:func:`write_pkcs12_entries` in two steps: everything that can refuse the file is checked
    now, and the returned function does the work (the KDF), which then only fails as a fault
    does. A release commits its audit event in between (services/vault/release.py)."""
    if not entries:
        raise InvalidInput("A PKCS#12 file needs at least one key.")
    if not passphrase:
        raise InvalidInput("The passphrase must not be empty.")
    try:
        password_utf8 = passphrase.encode("utf-8")
        names = [e.friendly_name.encode("utf-8") if e.friendly_name else None for e in entries]
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from JSON "\ud800"
        raise InvalidInput("The passphrase or friendly name is not valid text.") from exc
    if not 1 <= iterations <= _MAX_WRITE_ITERATIONS:
        raise InvalidInput(f"Iterations must be between 1 and {_MAX_WRITE_ITERATIONS}.")
    if not all(keys.key_matches_certificate(e.key, e.certificate) for e in entries):
        raise KeyMismatch()
    return partial(_write, entries, names, chain, passphrase, password_utf8, encryption, iterations)


def _write(
    entries: Sequence[KeyAndCertificate],
    names: Sequence[bytes | None],
    chain: Sequence[x509.Certificate],
    passphrase: str,
    password_utf8: bytes,
    encryption: EncryptionType,
    iterations: int,
) -> bytes:
    aes = encryption is EncryptionType.AES256_SHA256
    if aes and len(entries) == 1 and iterations == _CRYPTOGRAPHY_MAC_ROUNDS:
        # cryptography's own file, its MAC (SHA-256, 2,048 rounds) as costly as its bags: the
        # low count of a generated passphrase, a millisecond of KDF.
        protection = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(iterations)
            .key_cert_algorithm(crypto_pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password_utf8)
        )
        [entry] = entries
        return crypto_pkcs12.serialize_key_and_certificates(
            names[0], entry.key, entry.certificate, list(chain) or None, protection
        )
    # Otherwise cryptography writes the bags in the clear and they are encrypted here: its
    # encrypting writer holds the GIL through every KDF round, the KDFs used here let go of it
    # (a release commits while its file is written), and its PKCS#12 KDF, which the 3DES bags
    # need, runs at a third of libcrypto's speed.
    seal: Callable[[bytes], tuple[dict[str, Any], bytes]]
    if aes:
        seal = partial(_pbes2_aes256, password_utf8, iterations)
    else:  # SHA-1 and 3DES: what the old devices this option exists for understand
        seal = partial(_pbe_3des, bmp_password(passphrase), iterations)
    # cryptography writes one key per file. Each entry is written on its own (its bags carry a
    # localKeyId of its own certificate) and their authenticated safes are joined under one MAC;
    # the chain goes with the first entry only.
    contents: list[Any] = []
    for index, (entry, name) in enumerate(zip(entries, names, strict=True)):
        single = crypto_pkcs12.serialize_key_and_certificates(
            name,
            entry.key,
            entry.certificate,
            (list(chain) or None) if index == 0 else None,
            serialization.NoEncryption(),
        )
        contents += _encrypted(asn1_pkcs12.Pfx.load(single).authenticated_safe, seal)
    auth_safe = asn1_pkcs12.AuthenticatedSafe(contents).dump()
    return _with_mac(auth_safe, passphrase, "sha256" if aes else "sha1", iterations)


def _encrypted(
    sections: Iterable[Any], seal: Callable[[bytes], tuple[dict[str, Any], bytes]]
) -> list[Any]:
    """The plain sections cryptography wrote, laid out as it encrypts them: the certificates in
    an EncryptedData, each key in a pkcs8ShroudedKeyBag, each sealed by ``seal`` (its
    AlgorithmIdentifier and the ciphertext)."""
    bags = [
        bag for info in sections for bag in asn1_pkcs12.SafeContents.load(bytes(info["content"]))
    ]
    shrouded, others = [], []
    for bag in bags:
        if bag["bag_id"].native != "key_bag":
            others.append(bag)
            continue
        algorithm, ciphertext = seal(bag["bag_value"].untag().dump())
        info = asn1_keys.EncryptedPrivateKeyInfo(
            {"encryption_algorithm": algorithm, "encrypted_data": ciphertext}
        )
        shrouded.append(
            asn1_pkcs12.SafeBag(
                {
                    "bag_id": "pkcs8_shrouded_key_bag",
                    "bag_value": info,
                    "bag_attributes": bag["bag_attributes"],
                }
            )
        )
    result: list[Any] = []
    if others:
        algorithm, ciphertext = seal(asn1_pkcs12.SafeContents(others).dump())
        result.append(
            {
                "content_type": "encrypted_data",
                "content": {
                    "version": "v0",
                    "encrypted_content_info": {
                        "content_type": "data",
                        "content_encryption_algorithm": algorithm,
                        "encrypted_content": ciphertext,
                    },
                },
            }
        )
    result.append({"content_type": "data", "content": asn1_pkcs12.SafeContents(shrouded).dump()})
    return result


def _pbes2_aes256(
    password_utf8: bytes, iterations: int, plain: bytes
) -> tuple[dict[str, Any], bytes]:
    """PBES2 (RFC 8018) with PBKDF2-HMAC-SHA256 and AES-256-CBC, the scheme OpenSSL 3 writes by
    default, laid out as cryptography writes it: the AlgorithmIdentifier and the ciphertext."""
    salt, iv = os.urandom(16), os.urandom(16)
    key = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(password_utf8)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    algorithm = {
        "algorithm": "pbes2",
        "parameters": {
            "key_derivation_func": {
                "algorithm": "pbkdf2",
                "parameters": {
                    "salt": asn1_algos.Pbkdf2Salt(name="specified", value=salt),
                    "iteration_count": iterations,
                    "prf": {"algorithm": "sha256", "parameters": asn1_core.Null()},
                },
            },
            "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
        },
    }
    return algorithm, ciphertext


def _pbe_3des(password_bmp: bytes, iterations: int, plain: bytes) -> tuple[dict[str, Any], bytes]:
    """pbeWithSHAAnd3-KeyTripleDES-CBC (RFC 7292 appendix C): the AlgorithmIdentifier and the
    ciphertext; key and IV come from the native PKCS#12 KDF."""
    salt = os.urandom(8)  # as openssl and cryptography write it
    key = pkcs12_kdf("sha1", password_bmp, salt, ID_KEY, iterations, 24)
    iv = pkcs12_kdf("sha1", password_bmp, salt, ID_IV, iterations, 8)
    padder = padding.PKCS7(64).padder()
    encryptor = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    algorithm = {
        "algorithm": "pkcs12_sha1_tripledes_3key",
        "parameters": {"salt": salt, "iterations": iterations},
    }
    return algorithm, ciphertext


def _with_mac(auth_safe: bytes, passphrase: str, hash_name: str, iterations: int) -> bytes:
    """The PFX of ``auth_safe`` (an AuthenticatedSafe's DER) under a MAC made with
    ``iterations`` rounds.

    cryptography's own MAC always uses 2,048 rounds, and the MAC is the cheapest check an attacker
    can test guessed passwords against, so a MAC weaker than the bag encryption would make every
    extra encryption round worthless (DESIGN §10). OpenSSL verifies it the same way: PKCS#12 KDF,
    id 3, BMPString password.
    """
    info = asn1_cms.ContentInfo({"content_type": "data", "content": auth_safe})
    salt = os.urandom(16)
    size = hashlib.new(hash_name).digest_size
    mac_key = pkcs12_kdf(hash_name, bmp_password(passphrase), salt, ID_MAC, iterations, size)
    digest = hmac.new(mac_key, auth_safe, hash_name).digest()
    mac_data = asn1_pkcs12.MacData(
        {
            "mac": {"digest_algorithm": {"algorithm": hash_name}, "digest": digest},
            "mac_salt": salt,
            "iterations": iterations,
        }
    )
    result: bytes = asn1_pkcs12.Pfx(
        {"version": "v3", "auth_safe": info, "mac_data": mac_data}
    ).dump()
    return result
