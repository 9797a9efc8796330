"""Writing PKCS#12: an export whose MAC costs as many KDF rounds as its encryption."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from certvault.crypto import keys
from certvault.crypto.keys import PrivateKey
from certvault.crypto.pkcs12 import pfx_der as der
from certvault.crypto.pkcs12.pbe import ID_IV, ID_KEY, ID_MAC, bmp_password, pkcs12_kdf
from certvault.errors import InvalidInput, KeyMismatch, UnsupportedEncryption

_MAX_WRITE_ITERATIONS = 10_000_000


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
    names = [e.friendly_name or None for e in entries]
    try:
        password_utf8 = passphrase.encode("utf-8")
        for name in names:
            if name is not None:
                name.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates, e.g. from JSON "\ud800"
        raise InvalidInput("The passphrase or friendly name is not valid text.") from exc
    if not 1 <= iterations <= _MAX_WRITE_ITERATIONS:
        raise InvalidInput(f"Iterations must be between 1 and {_MAX_WRITE_ITERATIONS}.")
    if not all(keys.key_matches_certificate(e.key, e.certificate) for e in entries):
        raise KeyMismatch()
    return partial(_write, entries, names, chain, passphrase, password_utf8, encryption, iterations)


def _write(
    entries: Sequence[KeyAndCertificate],
    names: Sequence[str | None],
    chain: Sequence[x509.Certificate],
    passphrase: str,
    password_utf8: bytes,
    encryption: EncryptionType,
    iterations: int,
) -> bytes:
    # Laid out as cryptography's encrypting writer lays a file out (pfx_der.py), but not written
    # by it: it holds the GIL through every KDF round, the KDFs used here let go of it (a release
    # commits while its file is written), and its PKCS#12 KDF, which the 3DES bags need, runs at
    # a third of libcrypto's speed.
    aes = encryption is EncryptionType.AES256_SHA256
    seal: Callable[[bytes], tuple[bytes, bytes]]
    if aes:
        seal = partial(_pbes2_aes256, password_utf8, iterations)
    else:  # SHA-1 and 3DES: what the old devices this option exists for understand
        seal = partial(_pbe_3des, bmp_password(passphrase), iterations)
    # Each entry's bags carry a localKeyId of its own certificate; the chain goes with the first
    # entry only; all the sections are joined under one MAC.
    sections: list[bytes] = []
    for index, (entry, name) in enumerate(zip(entries, names, strict=True)):
        sections += _encrypted(_bags(entry, name, chain if index == 0 else ()), seal)
    auth_safe = der.authenticated_safe(sections)
    return _with_mac(auth_safe, passphrase, "sha256" if aes else "sha1", iterations)


def _bags(
    entry: KeyAndCertificate, name: str | None, chain: Sequence[x509.Certificate]
) -> list[der.PlainBag]:
    """One entry's bags before sealing, as cryptography writes them: its certificate, the chain
    (no attributes), its key; key and certificate paired by the SHA-1 of the certificate."""
    certificate = entry.certificate.public_bytes(serialization.Encoding.DER)
    attributes = der.bag_attributes(name, hashlib.sha1(certificate, usedforsecurity=False).digest())
    key = entry.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return [
        der.certificate_bag(certificate, attributes),
        *(der.certificate_bag(c.public_bytes(serialization.Encoding.DER)) for c in chain),
        der.key_bag(key, attributes),
    ]


def _encrypted(
    bags: Sequence[der.PlainBag], seal: Callable[[bytes], tuple[bytes, bytes]]
) -> list[bytes]:
    """The sections of one entry's bags, as cryptography encrypts them: the certificates
    in an EncryptedData, each key in a pkcs8ShroudedKeyBag, each sealed by ``seal`` (its
    AlgorithmIdentifier's DER and the ciphertext)."""
    others = [bag for bag in bags if not bag.is_key]
    shrouded = [der.shrouded_key_bag(bag, *seal(bag.value)) for bag in bags if bag.is_key]
    sections = [der.encrypted_section(*seal(der.safe_contents_of(others)))] if others else []
    return [*sections, der.data_section(shrouded)]


def _pbes2_aes256(password_utf8: bytes, iterations: int, plain: bytes) -> tuple[bytes, bytes]:
    """PBES2 (RFC 8018) with PBKDF2-HMAC-SHA256 and AES-256-CBC, the scheme OpenSSL 3 writes by
    default: the AlgorithmIdentifier's DER and the ciphertext."""
    salt, iv = os.urandom(16), os.urandom(16)
    key = PBKDF2HMAC(hashes.SHA256(), 32, salt, iterations).derive(password_utf8)
    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    return der.pbes2_aes256(salt, iterations, iv), ciphertext


def _pbe_3des(password_bmp: bytes, iterations: int, plain: bytes) -> tuple[bytes, bytes]:
    """pbeWithSHAAnd3-KeyTripleDES-CBC (RFC 7292 appendix C): the AlgorithmIdentifier's DER and
    the ciphertext; key and IV come from the native PKCS#12 KDF."""
    salt = os.urandom(8)  # as openssl and cryptography write it
    key = pkcs12_kdf("sha1", password_bmp, salt, ID_KEY, iterations, 24)
    iv = pkcs12_kdf("sha1", password_bmp, salt, ID_IV, iterations, 8)
    padder = padding.PKCS7(64).padder()
    encryptor = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(plain) + padder.finalize()) + encryptor.finalize()
    return der.pbe_sha1_3des(salt, iterations), ciphertext


def _with_mac(auth_safe: bytes, passphrase: str, hash_name: str, iterations: int) -> bytes:
    """The PFX of ``auth_safe`` (an AuthenticatedSafe's DER) under a MAC made with
    ``iterations`` rounds.

    cryptography's own MAC always uses 2,048 rounds, and the MAC is the cheapest check an attacker
    can test guessed passwords against, so a MAC weaker than the bag encryption would make every
    extra encryption round worthless (DESIGN §10). OpenSSL verifies it the same way: PKCS#12 KDF,
    id 3, BMPString password.
    """
    salt = os.urandom(16)
    size = hashlib.new(hash_name).digest_size
    mac_key = pkcs12_kdf(hash_name, bmp_password(passphrase), salt, ID_MAC, iterations, size)
    digest = hmac.new(mac_key, auth_safe, hash_name).digest()
    return der.pfx_with_mac(auth_safe, hash_name, digest, salt, iterations)
