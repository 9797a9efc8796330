"""PKCS#12 in and out: our own reader with KDF cost ceilings, and an export with an honest MAC.

The reader is written on asn1crypto and cryptography's primitives instead of ``load_pkcs12`` so
that (a) every iteration count is checked before its KDF runs: a hostile upload declaring 100
million rounds is refused in milliseconds, also when the count hides inside encrypted content;
and (b) every key and certificate in the file is seen, not just the first key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from asn1crypto import algos
from asn1crypto import cms as asn1_cms
from asn1crypto import pkcs12 as asn1_pkcs12
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs12 as crypto_pkcs12

from certvault.crypto import keys
from certvault.crypto.keys import PrivateKey
from certvault.crypto.pbe import bmp_password, pbkdf2, pkcs12_kdf, rc2_cbc_decrypt
from certvault.errors import (
    CryptoError,
    InvalidInput,
    KeyMismatch,
    P12Malformed,
    P12NoCertificate,
    P12NoKey,
    P12TooExpensive,
    P12TooLarge,
    P12UnsupportedKey,
    P12WrongPassword,
    UnsupportedEncryption,
    UnsupportedKey,
)

T = TypeVar("T")

# asn1crypto parses lazily, so malformed input surfaces as any of these, wherever a field is read.
_ASN1_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)

_HASHES = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512"})
_PBMAC1_OID = "1.2.840.113549.1.5.14"
_MAX_NESTING = 4  # SafeContents bags inside SafeContents bags
_MAX_WRITE_ITERATIONS = 10_000_000

# RFC 7292 B.3: which kind of material the PKCS#12 KDF derives.
_ID_KEY, _ID_IV, _ID_MAC = 1, 2, 3


@dataclass(frozen=True)
class P12Limits:
    """Ceilings that keep a hostile upload from pinning a worker (DESIGN §5.5)."""

    max_bytes: int = 1024 * 1024
    max_iterations: int = 2_000_000  # per KDF invocation (MAC, each encrypted bag / EncryptedData)
    max_total_iterations: int = 6_000_000  # sum over the whole file
    max_bags: int = 64  # SafeBags, nested ones and encrypted sections included
    # Full RSA validation, in RSA-2048 units of about 75 ms: 3072 bits = 4, 4096 = 8, 8192 = 64.
    max_rsa_validation: int = 64


_DEFAULT_LIMITS = P12Limits()


@dataclass(frozen=True)
class P12Entry:
    key: PrivateKey  # loaded with full validation: this is the way into the vault
    certificate: x509.Certificate  # its public key is the key's public key
    friendly_name: str | None  # of the key bag, else of the certificate bag


@dataclass(frozen=True)
class P12Contents:
    entries: list[P12Entry]  # one per private key, in file order
    extra_certificates: list[x509.Certificate]  # not matched to a key (the chain)


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


# --- parsed structures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pbe:
    """A password-based encryption scheme, parsed but not yet run."""

    pkcs12: bool  # PKCS#12 PBE (BMPString password, RFC 7292 KDF); else PBES2/PBKDF2 (UTF-8)
    hash_name: str
    salt: bytes
    iterations: int
    cipher: str  # "aes", "3des", "rc2"
    key_size: int
    rc2_bits: int = 0
    iv: bytes = b""  # PBES2 only; PKCS#12 PBE derives it


@dataclass(frozen=True)
class _Mac:
    pbmac1: bool
    hmac_hash: str
    kdf_hash: str
    salt: bytes
    iterations: int
    key_size: int
    expected: bytes


@dataclass(frozen=True)
class _Bag:
    is_key: bool
    der: bytes  # PKCS#8 PrivateKeyInfo, encrypted PKCS#8 ciphertext, or certificate
    pbe: _Pbe | None
    friendly_name: str | None
    local_key_id: bytes | None


@dataclass(frozen=True)
class _Encrypted:
    pbe: _Pbe
    ciphertext: bytes


@dataclass(frozen=True)
class _Password:
    bmp: bytes  # for the PKCS#12 KDF
    utf8: bytes  # for PBKDF2


class _Budget:
    """Counts declared KDF iterations and bags; refuses work before it is done."""

    def __init__(self, limits: P12Limits) -> None:
        self.limits = limits
        self.iterations = 0
        self.bags = 0
        self.rsa_validation = 0

    def admit(self, iterations: int) -> None:
        if iterations > self.limits.max_iterations:
            raise P12TooExpensive("The file asks for more key-derivation rounds than allowed.")
        if self.iterations + iterations > self.limits.max_total_iterations:
            raise P12TooExpensive("The file asks for more key-derivation work than allowed.")
        self.iterations += iterations

    def admit_validation(self, key: PrivateKey) -> None:
        if isinstance(key, rsa.RSAPrivateKey):
            # The prime checks grow with the cube of the modulus size.
            self.rsa_validation += -(-(key.key_size**3) // 2048**3)
            if self.rsa_validation > self.limits.max_rsa_validation:
                raise P12TooExpensive("The file holds more RSA key material than allowed.")

    def count_bag(self) -> None:
        self.bags += 1
        if self.bags > self.limits.max_bags:
            raise P12TooExpensive("The file holds more items than allowed.")


def _malformed(what: str) -> P12Malformed:
    return P12Malformed(f"The file is not a readable PKCS#12 file ({what}).")


def _count(value: Any, what: str) -> int:
    n = value.native
    if not isinstance(n, int) or n < 1:
        raise _malformed(what)
    return n


def _hash_of(name: Any) -> str:
    if name not in _HASHES:
        raise _malformed("unsupported hash")
    return str(name)


_PBES2_CIPHERS = {
    "aes128_cbc": ("aes", 16, 16),
    "aes192_cbc": ("aes", 24, 16),
    "aes256_cbc": ("aes", 32, 16),
    "tripledes_3key": ("3des", 24, 8),
}
_PKCS12_PBES = {  # cipher, key bytes, RC2 effective bits
    "pkcs12_sha1_tripledes_3key": ("3des", 24, 0),
    "pkcs12_sha1_tripledes_2key": ("3des", 16, 0),
    "pkcs12_sha1_rc2_128": ("rc2", 16, 128),
    "pkcs12_sha1_rc2_40": ("rc2", 5, 40),
}


def _parse_pbkdf2(kdf: Any) -> tuple[bytes, int, int | None, str]:
    """Salt, iterations, optional key length and PRF hash of a PBKDF2 AlgorithmIdentifier."""
    if kdf["algorithm"].native != "pbkdf2":
        raise _malformed("unsupported key derivation")
    params = kdf["parameters"]
    if params["salt"].name != "specified":
        raise _malformed("unsupported PBKDF2 salt")
    key_length = params["key_length"].native
    if key_length is not None and not isinstance(key_length, int):
        raise _malformed("bad PBKDF2 key length")
    return (
        bytes(params["salt"].chosen),
        _count(params["iteration_count"], "bad iteration count"),
        key_length,
        _hash_of(params["prf"]["algorithm"].native),
    )


def _parse_pbe(alg: Any) -> _Pbe:
    name = alg["algorithm"].native
    if name == "pbes2":
        params = alg["parameters"]
        salt, iterations, key_length, prf = _parse_pbkdf2(params["key_derivation_func"])
        scheme = params["encryption_scheme"]
        if scheme["algorithm"].native not in _PBES2_CIPHERS:
            raise _malformed("unsupported cipher")
        cipher, key_size, iv_size = _PBES2_CIPHERS[scheme["algorithm"].native]
        iv = bytes(scheme["parameters"])
        if len(iv) != iv_size or key_length not in (None, key_size):
            raise _malformed("bad cipher parameters")
        return _Pbe(False, prf, salt, iterations, cipher, key_size, iv=iv)
    if name in _PKCS12_PBES:
        cipher, key_size, rc2_bits = _PKCS12_PBES[name]
        params = alg["parameters"]
        iterations = _count(params["iterations"], "bad iteration count")
        return _Pbe(True, "sha1", bytes(params["salt"]), iterations, cipher, key_size, rc2_bits)
    raise _malformed("unsupported encryption")


def _parse_mac(mac_data: Any) -> _Mac:
    alg = mac_data["mac"]["digest_algorithm"]
    expected = bytes(mac_data["mac"]["digest"])
    if alg["algorithm"].dotted == _PBMAC1_OID:
        # RFC 9579: PBKDF2 keys an HMAC; macSalt and iterations of MacData are not used.
        params = algos.Pbmac1Params.load(alg["parameters"].dump(), strict=True)
        salt, iterations, key_length, prf = _parse_pbkdf2(params["key_derivation_func"])
        # An unbounded key length would multiply the PBKDF2 work behind the iteration ceiling.
        if key_length is None or not 1 <= key_length <= 64:
            raise _malformed("bad PBMAC1 key length")
        mac_hash = _hash_of(params["message_auth_scheme"]["algorithm"].native)
        return _Mac(True, mac_hash, prf, salt, iterations, key_length, expected)
    mac_hash = _hash_of(alg["algorithm"].native)
    iterations = _count(mac_data["iterations"], "bad MAC iteration count")
    size = hashlib.new(mac_hash).digest_size
    return _Mac(False, mac_hash, mac_hash, bytes(mac_data["mac_salt"]), iterations, size, expected)


def _attributes(bag: Any) -> tuple[str | None, bytes | None]:
    name: str | None = None
    local_key_id: bytes | None = None
    if bag["bag_attributes"].native is None:
        return None, None
    for attribute in bag["bag_attributes"]:
        kind, values = attribute["type"].native, attribute["values"]
        if kind == "friendly_name" and len(values) and name is None:
            name = values[0].native
        elif kind == "local_key_id" and len(values) and local_key_id is None:
            local_key_id = bytes(values[0])
    return name, local_key_id


def _collect_bags(contents: Any, budget: _Budget, out: list[_Bag], depth: int = 0) -> None:
    """Append the key and certificate bags of a SafeContents to ``out``; skip others."""
    for bag in contents:
        budget.count_bag()
        kind = bag["bag_id"].native
        value = bag["bag_value"]
        if kind == "safe_contents":
            if depth >= _MAX_NESTING:
                raise _malformed("nested too deeply")
            _collect_bags(value, budget, out, depth + 1)
        elif kind == "key_bag":
            out.append(_Bag(True, value.untag().dump(), None, *_attributes(bag)))
        elif kind == "pkcs8_shrouded_key_bag":
            pbe = _parse_pbe(value["encryption_algorithm"])
            out.append(_Bag(True, bytes(value["encrypted_data"]), pbe, *_attributes(bag)))
        elif kind == "cert_bag" and value["cert_id"].native == "x509":
            out.append(_Bag(False, bytes(value["cert_value"]), None, *_attributes(bag)))
        # CRL, secret and SDSI-certificate bags carry nothing certvault keeps.


def _parse_safe_contents(der: bytes, budget: _Budget) -> list[_Bag]:
    bags: list[_Bag] = []
    try:
        _collect_bags(asn1_pkcs12.SafeContents.load(der, strict=True), budget, bags)
    except _ASN1_ERRORS as exc:
        raise _malformed("bad SafeContents") from exc
    return bags


def _parse_pfx(
    data: bytes, budget: _Budget
) -> tuple[bytes, _Mac | None, list[list[_Bag] | _Encrypted]]:
    """The authenticated octets, the MAC, and the sections in file order (plain ones parsed)."""
    try:
        pfx = asn1_pkcs12.Pfx.load(data, strict=True)
        if pfx["version"].native != "v3":
            raise _malformed("unsupported version")
        auth_safe = pfx["auth_safe"]
        if auth_safe["content_type"].native != "data":
            raise _malformed("public-key integrity mode not supported")
        auth_octets = bytes(auth_safe["content"])
        mac = None if pfx["mac_data"].native is None else _parse_mac(pfx["mac_data"])
        sections: list[list[_Bag] | _Encrypted] = []
        for info in asn1_pkcs12.AuthenticatedSafe.load(auth_octets, strict=True):
            kind = info["content_type"].native
            if kind == "data":
                sections.append(_parse_safe_contents(bytes(info["content"]), budget))
            elif kind == "encrypted_data":
                budget.count_bag()
                enc = info["content"]["encrypted_content_info"]
                if enc["encrypted_content"].native is None:
                    raise _malformed("empty EncryptedData")
                pbe = _parse_pbe(enc["content_encryption_algorithm"])
                sections.append(_Encrypted(pbe, bytes(enc["encrypted_content"])))
            elif kind == "enveloped_data":
                raise _malformed("public-key privacy mode not supported")
            else:
                raise _malformed("unsupported content type")
    except _ASN1_ERRORS as exc:
        raise _malformed("bad ASN.1") from exc
    return auth_octets, mac, sections


# --- running the KDFs and ciphers ---------------------------------------------------------------


def _password_forms(password: str) -> list[_Password]:
    try:
        forms = [_Password(bmp_password(password), password.encode("utf-8"))]
    except UnicodeEncodeError as exc:  # lone surrogates: no file can have been made with these
        raise P12WrongPassword() from exc
    if not password:
        # OpenSSL tries an empty password both as an empty BMPString and as no password at all.
        forms.append(_Password(b"", b""))
    return forms


def _distinct(forms: Iterable[_Password], key: Callable[[_Password], bytes]) -> list[_Password]:
    seen: dict[bytes, _Password] = {}
    for form in forms:
        seen.setdefault(key(form), form)
    return list(seen.values())


def _verify_mac(
    mac: _Mac, auth_octets: bytes, forms: list[_Password], budget: _Budget
) -> _Password:
    """Return the password form the MAC accepts; the first attempt was admitted up front."""
    candidates = _distinct(forms, (lambda f: f.utf8) if mac.pbmac1 else (lambda f: f.bmp))
    for attempt, form in enumerate(candidates):
        if attempt:
            budget.admit(mac.iterations)
        if mac.pbmac1:
            key = pbkdf2(mac.kdf_hash, form.utf8, mac.salt, mac.iterations, mac.key_size)
        else:
            key = pkcs12_kdf(
                mac.hmac_hash, form.bmp, mac.salt, _ID_MAC, mac.iterations, mac.key_size
            )
        if hmac.compare_digest(hmac.new(key, auth_octets, mac.hmac_hash).digest(), mac.expected):
            return form
    raise P12WrongPassword()


def _decrypt(pbe: _Pbe, form: _Password, data: bytes) -> bytes | None:
    """Decrypt and unpad; None when the padding is wrong (almost always a wrong password)."""
    if pbe.pkcs12:
        key = pkcs12_kdf(pbe.hash_name, form.bmp, pbe.salt, _ID_KEY, pbe.iterations, pbe.key_size)
        iv = pkcs12_kdf(pbe.hash_name, form.bmp, pbe.salt, _ID_IV, pbe.iterations, 8)
    else:
        key = pbkdf2(pbe.hash_name, form.utf8, pbe.salt, pbe.iterations, pbe.key_size)
        iv = pbe.iv
    block = len(iv)
    if not data or len(data) % block:
        raise _malformed("bad ciphertext length")
    if pbe.cipher == "rc2":
        plain = rc2_cbc_decrypt(key, pbe.rc2_bits, iv, data)
    else:
        if pbe.cipher == "aes":
            algorithm: algorithms.AES | TripleDES = algorithms.AES(key)
        else:
            # Two-key 3DES is K1 K2 K1; expanding it here avoids cryptography's deprecation path.
            algorithm = TripleDES(key if len(key) == 24 else key + key[:8])
        decryptor = Cipher(algorithm, modes.CBC(iv)).decryptor()
        plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= block or plain[-pad:] != bytes([pad]) * pad:
        return None
    return plain[:-pad]


def _open(
    pbe: _Pbe,
    data: bytes,
    forms: list[_Password],
    budget: _Budget,
    parse: Callable[[bytes], T],
    authenticated: bool,
) -> T:
    """Decrypt and parse with the first password form that works; the first try is prepaid.

    Without a MAC, garbage that happens to unpad cleanly is still a wrong password; with a
    verified MAC the content is authentic, so content that does not parse is a malformed file.
    """
    candidates = _distinct(forms, (lambda f: f.bmp) if pbe.pkcs12 else (lambda f: f.utf8))
    for attempt, form in enumerate(candidates):
        if attempt:
            budget.admit(pbe.iterations)
        plain = _decrypt(pbe, form, data)
        if plain is None:
            continue
        try:
            return parse(plain)
        except P12Malformed:
            if authenticated:
                raise
    raise P12WrongPassword()


def _load_key(der: bytes, *, validate: bool) -> PrivateKey:
    try:
        return keys.load_pkcs8_der(der, validate=validate)
    except UnsupportedKey as exc:
        raise P12UnsupportedKey(exc.message) from exc
    except CryptoError as exc:
        raise _malformed("damaged private key") from exc


def _load_certificate(der: bytes) -> x509.Certificate:
    try:
        # cryptography only warns about a serial number below 1 today and will refuse it in a
        # later release; refusing now keeps the vault from holding certificates an upgrade
        # could no longer load.
        serial = asn1_x509.Certificate.load(der)["tbs_certificate"]["serial_number"].native
        if not isinstance(serial, int) or serial < 1:
            raise _malformed("certificate serial number not positive")
        return x509.load_der_x509_certificate(der)
    except (*_ASN1_ERRORS, x509.InvalidVersion) as exc:
        raise _malformed("damaged certificate") from exc


# --- reading ---------------------------------------------------------------------------------


def read_pkcs12(data: bytes, password: str, limits: P12Limits = _DEFAULT_LIMITS) -> P12Contents:
    """Every key of a PKCS#12 file with its certificate, and the remaining certificates.

    Raises a :class:`P12Error` subclass for anything wrong with the file or the password;
    :class:`P12UnsupportedKey` (also an :class:`UnsupportedKey`) for a key type certvault does
    not hold.
    """
    if len(data) > limits.max_bytes:
        raise P12TooLarge()
    budget = _Budget(limits)
    auth_octets, mac, sections = _parse_pfx(data, budget)

    # Price everything visible before any KDF runs: the MAC, each EncryptedData, and the
    # shrouded keys outside encryption.
    if mac is not None:
        budget.admit(mac.iterations)
    for section in sections:
        if isinstance(section, _Encrypted):
            budget.admit(section.pbe.iterations)
        else:
            for bag in section:
                if bag.pbe is not None:
                    budget.admit(bag.pbe.iterations)

    forms = _password_forms(password)
    if mac is not None:
        forms = [_verify_mac(mac, auth_octets, forms, budget)]
    authenticated = mac is not None

    bags: list[_Bag] = []
    for section in sections:
        if isinstance(section, _Encrypted):
            found = _open(
                section.pbe,
                section.ciphertext,
                forms,
                budget,
                lambda plain: _parse_safe_contents(plain, budget),
                authenticated,
            )
            # Keys found inside are priced as soon as they are seen, before any of them runs.
            for bag in found:
                if bag.pbe is not None:
                    budget.admit(bag.pbe.iterations)
            bags.extend(found)
        else:
            bags.extend(section)

    # Keys are first loaded without the RSA checks, so that their total cost is known and
    # admitted before any of it is spent; the checks then run on every key that is returned.
    unchecked: list[tuple[bytes, _Bag]] = []
    found_certs: list[tuple[x509.Certificate, _Bag]] = []
    for bag in bags:
        if not bag.is_key:
            found_certs.append((_load_certificate(bag.der), bag))
        else:
            if bag.pbe is None:
                key, der = _unchecked_key(bag.der)
            else:
                key, der = _open(bag.pbe, bag.der, forms, budget, _unchecked_key, authenticated)
            budget.admit_validation(key)
            unchecked.append((der, bag))
    found_keys = [(_load_key(der, validate=True), bag) for der, bag in unchecked]
    return _pair(found_keys, found_certs)


def _unchecked_key(der: bytes) -> tuple[PrivateKey, bytes]:
    """The key (RSA primes not yet checked) and its PKCS#8 DER."""
    return _load_key(der, validate=False), der


def _pair(
    found_keys: list[tuple[PrivateKey, _Bag]], found_certs: list[tuple[x509.Certificate, _Bag]]
) -> P12Contents:
    """Give each key the certificate of its public key, preferring a matching localKeyId."""
    if not found_keys:
        raise P12NoKey()
    spkis = [keys.certificate_spki_der(cert) for cert, _ in found_certs]
    entries: list[P12Entry] = []
    for key, key_bag in found_keys:
        spki = keys.spki_der(key.public_key())
        matches = [i for i, cert_spki in enumerate(spkis) if cert_spki == spki]
        if not matches:
            raise P12NoCertificate()
        pick = next(
            (
                i
                for i in matches
                if key_bag.local_key_id is not None
                and found_certs[i][1].local_key_id == key_bag.local_key_id
            ),
            matches[0],
        )
        cert, cert_bag = found_certs[pick]
        entries.append(P12Entry(key, cert, key_bag.friendly_name or cert_bag.friendly_name))
    seen = {entry.certificate.public_bytes(serialization.Encoding.DER) for entry in entries}
    extra: list[x509.Certificate] = []
    for cert, _ in found_certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            extra.append(cert)
    return P12Contents(entries, extra)


# --- writing ---------------------------------------------------------------------------------


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
    mac_hash: hashes.HashAlgorithm
    if encryption is EncryptionType.AES256_SHA256:
        pbes, mac_hash = crypto_pkcs12.PBES.PBESv2SHA256AndAES256CBC, hashes.SHA256()
    else:
        # SHA-1 and 3DES are what the old devices this option exists for understand.
        pbes, mac_hash = crypto_pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC, hashes.SHA1()  # noqa: S303
    protection = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(iterations)
        .key_cert_algorithm(pbes)
        .hmac_hash(mac_hash)
        .build(password_utf8)
    )
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
            protection,
        )
        contents.extend(asn1_pkcs12.Pfx.load(single).authenticated_safe)
    return _with_mac(contents, passphrase, mac_hash.name, iterations)


def _with_mac(contents: Sequence[Any], passphrase: str, hash_name: str, iterations: int) -> bytes:
    """The PFX of ``contents`` (its ContentInfos) under a MAC made with ``iterations`` rounds.

    cryptography's own MAC always uses 2,048 rounds, and the MAC is the cheapest check an attacker
    can test guessed passwords against, so a MAC weaker than the bag encryption would make every
    extra encryption round worthless (DESIGN §10). OpenSSL verifies it the same way: PKCS#12 KDF,
    id 3, BMPString password.
    """
    auth_safe = asn1_cms.ContentInfo(
        {
            "content_type": "data",
            "content": asn1_pkcs12.AuthenticatedSafe(list(contents)).dump(),
        }
    )
    salt = os.urandom(16)
    size = hashlib.new(hash_name).digest_size
    mac_key = pkcs12_kdf(hash_name, bmp_password(passphrase), salt, _ID_MAC, iterations, size)
    digest = hmac.new(mac_key, bytes(auth_safe["content"]), hash_name).digest()
    mac_data = asn1_pkcs12.MacData(
        {
            "mac": {"digest_algorithm": {"algorithm": hash_name}, "digest": digest},
            "mac_salt": salt,
            "iterations": iterations,
        }
    )
    result: bytes = asn1_pkcs12.Pfx(
        {"version": "v3", "auth_safe": auth_safe, "mac_data": mac_data}
    ).dump()
    return result
