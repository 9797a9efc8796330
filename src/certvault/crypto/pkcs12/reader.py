"""Reading PKCS#12: every key of the file with its certificate, within KDF cost ceilings.

The reader is written on asn1crypto and cryptography's primitives instead of ``load_pkcs12`` so
that (a) every iteration count is checked before its KDF runs: a hostile upload declaring 100
million rounds is refused in milliseconds, also when the count hides inside encrypted content;
(b) every key and certificate in the file is seen, not just the first key; and (c) keys are
checked for what makes them work (RSA numbers, a pairwise signature with the certificate) instead
of OpenSSL's primality tests, which cost 30-500 ms per key (DESIGN §10). Encrypted sections the
keys do not need are read as far as the KDF budget goes, and skipped with a warning beyond it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from asn1crypto import parser
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import ARC4, TripleDES
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from certvault.crypto import keys
from certvault.crypto.ber import ASN1_ERRORS
from certvault.crypto.keys import PrivateKey
from certvault.crypto.pkcs12 import pfx_der
from certvault.crypto.pkcs12.limits import DEFAULT_LIMITS, Budget, Derivation, P12Limits
from certvault.crypto.pkcs12.pbe import (
    ID_IV,
    ID_KEY,
    ID_MAC,
    bmp_password,
    pbkdf2,
    pkcs12_kdf,
    rc2_cbc_decrypt,
)
from certvault.crypto.pkcs12.pfx import (
    Bag,
    Encrypted,
    Mac,
    Pbe,
    check_shape,
    malformed,
    parse_pfx,
    parse_safe_contents,
)
from certvault.errors import (
    CryptoError,
    KeyInconsistent,
    P12KeyInconsistent,
    P12Malformed,
    P12NoCertificate,
    P12NoKey,
    P12TooLarge,
    P12UnsupportedKey,
    P12WrongPassword,
    UnsupportedKey,
)

T = TypeVar("T")


# Warnings of a file that was read, by stable code; the text is for people.
CHAIN_CERTIFICATES_SKIPPED = "chain_certificates_skipped"
LEGACY_PASSWORD_ENCODING = "legacy_password_encoding"  # noqa: S105 - a code, not a password
WARNINGS = {
    CHAIN_CERTIFICATES_SKIPPED: (
        "Some encrypted sections of the file were not read: every key found had its "
        "certificate, and reading them would have cost more key-derivation work than allowed. "
        "Such sections usually hold further chain certificates."
    ),
    LEGACY_PASSWORD_ENCODING: (
        "The file's password was encoded the way OpenSSL 1.0 encoded non-ASCII passwords (each "
        "UTF-8 byte as a character of its own); it was opened that way."
    ),
}


@dataclass(frozen=True)
class P12Entry:
    key: PrivateKey  # its numbers and a pairwise signature checked: this is the way into the vault
    certificate: x509.Certificate  # its public key is the key's public key
    # Of the key bag, else of the certificate bag; cleaned by safe_text (None if unsafe).
    friendly_name: str | None


@dataclass(frozen=True)
class P12Contents:
    entries: list[P12Entry]  # one per private key, in file order
    extra_certificates: list[x509.Certificate]  # not matched to a key (the chain)
    warnings: list[str] = field(default_factory=list)  # codes of WARNINGS
    legacy_password_encoding: bool = False  # opened with OpenSSL 1.0's non-ASCII password form


@dataclass(frozen=True)
class _Password:
    bmp: bytes  # for the PKCS#12 KDF
    utf8: bytes  # for PBKDF2
    legacy: bool = False  # OpenSSL 1.0's form of a non-ASCII password


def _password_forms(password: str) -> list[_Password]:
    try:
        forms = [_Password(bmp_password(password), password.encode("utf-8"))]
    except UnicodeEncodeError as exc:  # lone surrogates: no file can have been made with these
        raise P12WrongPassword() from exc
    if not password:
        # OpenSSL tries an empty password both as an empty BMPString and as no password at all.
        forms.append(_Password(b"", b""))
    if not password.isascii():
        # OpenSSL 1.0 made each UTF-8 byte of the password a BMP character of its own. It gave
        # PBKDF2 the UTF-8 bytes; OpenSSL 3, falling back to that form, gives PBKDF2 the UTF-8
        # of the widened characters. Tried last, each try paid for like any other.
        widened = password.encode("utf-8").decode("latin-1")
        bmp = bmp_password(widened)
        forms.append(_Password(bmp, password.encode("utf-8"), legacy=True))
        forms.append(_Password(bmp, widened.encode("utf-8"), legacy=True))
    return forms


def _distinct(forms: Iterable[_Password], key: Callable[[_Password], bytes]) -> list[_Password]:
    seen: dict[bytes, _Password] = {}
    for form in forms:
        seen.setdefault(key(form), form)
    return list(seen.values())


def _bmp(form: _Password) -> bytes:
    return form.bmp


def _utf8(form: _Password) -> bytes:
    return form.utf8


class _Reading:
    """The password forms still in play, and the budget every further try is paid from."""

    def __init__(self, forms: list[_Password], budget: Budget, authenticated: bool) -> None:
        self.forms = forms
        self.budget = budget
        # With a verified MAC the content is authentic: content that does not parse is a
        # malformed file. Without one, garbage that happens to unpad is a wrong password.
        self.authenticated = authenticated
        self.legacy = False

    def verify_mac(self, mac: Mac, auth_octets: bytes) -> None:
        """Keep the password forms the MAC accepts; the first attempt was admitted up front."""
        form_key = _utf8 if mac.pbmac1 else _bmp
        for attempt, form in enumerate(_distinct(self.forms, form_key)):
            if attempt:
                self.budget.admit(mac)
            if mac.pbmac1:
                key = pbkdf2(mac.kdf_hash, form.utf8, mac.salt, mac.iterations, mac.key_size)
            else:
                key = pkcs12_kdf(
                    mac.hmac_hash, form.bmp, mac.salt, ID_MAC, mac.iterations, mac.key_size
                )
            expected = hmac.new(key, auth_octets, mac.hmac_hash).digest()
            if hmac.compare_digest(expected, mac.expected):
                self.forms = [f for f in self.forms if form_key(f) == form_key(form)]
                self.legacy |= form.legacy
                return
        raise P12WrongPassword()

    def open(self, pbe: Pbe, data: bytes, parse: Callable[[bytes], T]) -> T:
        """Decrypt and parse with the first password form that works; the first try is prepaid."""
        for attempt, form in enumerate(_distinct(self.forms, _bmp if pbe.pkcs12 else _utf8)):
            if attempt:
                self.budget.admit(pbe)
            plain = _decrypt(pbe, form, data)
            if plain is None:
                continue
            try:
                parsed = parse(plain)
            except P12Malformed:
                if self.authenticated:
                    raise
                continue
            self.legacy |= form.legacy
            return parsed
        raise P12WrongPassword()


def _decrypt(pbe: Pbe, form: _Password, data: bytes) -> bytes | None:
    """Decrypt and unpad; None when the padding is wrong (almost always a wrong password)."""
    if pbe.cipher == "rc4":
        # A stream cipher has no padding to check: a wrong password shows when parsing fails.
        key = pkcs12_kdf(pbe.hash_name, form.bmp, pbe.salt, ID_KEY, pbe.iterations, pbe.key_size)
        if not data:
            raise malformed("bad ciphertext length")
        return Cipher(ARC4(key), mode=None).decryptor().update(data)
    if pbe.pkcs12:
        key = pkcs12_kdf(pbe.hash_name, form.bmp, pbe.salt, ID_KEY, pbe.iterations, pbe.key_size)
        iv = pkcs12_kdf(
            pbe.hash_name, form.bmp, pbe.salt, ID_IV, pbe.iterations, pbe.PKCS12_IV_SIZE
        )
    else:
        key = pbkdf2(pbe.hash_name, form.utf8, pbe.salt, pbe.iterations, pbe.key_size)
        iv = pbe.iv
    block = len(iv)
    if not data or len(data) % block:
        raise malformed("bad ciphertext length")
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


def _load_key(der: bytes) -> PrivateKey:
    """The key, its RSA numbers checked (microseconds) but not OpenSSL's primality tests."""
    check_shape(der)
    try:
        key = keys.load_pkcs8_der(der, validate=False)
        keys.check_rsa_numbers(key)
    except UnsupportedKey as exc:
        raise P12UnsupportedKey(exc.message) from exc
    except KeyInconsistent as exc:
        raise P12KeyInconsistent() from exc
    except CryptoError as exc:
        raise malformed("damaged private key") from exc
    return key


# The string types OpenSSL reads in a name (B_ASN1_PRINTABLE): UTF8String, NumericString,
# PrintableString, T61String, IA5String, VisibleString, UniversalString, BMPString.
_NAME_STRING_TYPES = frozenset({12, 18, 19, 20, 22, 26, 28, 30})


def _serial_number(der: bytes) -> int:
    """The serialNumber of a certificate's TBSCertificate, read from three headers (its shape
    was checked): the INTEGER after the optional [0] version."""
    tbs = parser.parse(parser.parse(der, strict=True)[4])[4]
    first = parser.parse(tbs)
    if first[0] == 2 and first[2] == 0:  # context-specific [0]: the version
        first = parser.parse(tbs[len(first[3]) + len(first[4]) + len(first[5]) :])
    if first[:3] != (0, 0, 2):  # universal, primitive, INTEGER
        raise malformed("damaged certificate")
    return int.from_bytes(first[4], "big", signed=True)


def _load_certificate(der: bytes) -> x509.Certificate:
    check_shape(der)
    try:
        # cryptography only warns about a serial number below 1 today and will refuse it in a
        # later release; refusing now keeps the vault from holding certificates an upgrade
        # could no longer load.
        if _serial_number(der) < 1:
            raise malformed("certificate serial number not positive")
        cert = x509.load_der_x509_certificate(der)
        # cryptography parses names only when they are first used, which would be in the
        # archive, past the reader's refusals: they are read now. It also takes values OpenSSL
        # refuses in a name (OCTET and BIT STRINGs, times); so does the reader, in microseconds.
        for name in (cert.subject, cert.issuer):
            for attribute in name:
                if attribute._type.value not in _NAME_STRING_TYPES:  # noqa: SLF001
                    raise malformed("certificate name with a value that is not a string")
        return cert
    except (*ASN1_ERRORS, x509.InvalidVersion) as exc:
        raise malformed("damaged certificate") from exc


# --- reading ---------------------------------------------------------------------------------


def read_pkcs12(data: bytes, password: str, limits: P12Limits = DEFAULT_LIMITS) -> P12Contents:
    """Every key of a PKCS#12 file with its certificate, and the remaining certificates.

    Raises a :class:`P12Error` subclass for anything wrong with the file or the password;
    :class:`P12UnsupportedKey` (also an :class:`UnsupportedKey`) for a key type certvault does
    not hold.
    """
    if len(data) > limits.max_bytes:
        raise P12TooLarge()
    try:
        return _read(data, password, Budget(limits))
    except RecursionError as exc:
        # check_shape keeps deep nesting from every parser; should one still recurse too far,
        # the file is refused like any other malformed one, never with a server error.
        raise malformed("nested too deeply") from exc


def _parse_pfx(
    data: bytes, budget: Budget
) -> tuple[bytes, Mac | None, list[list[Bag] | Encrypted]]:
    """parse_pfx, by the fast path when the file has the common shape (pfx_der.py)."""
    fast = pfx_der.pfx(data)
    if fast is None:
        return parse_pfx(data, budget)
    for section in fast[2]:
        for _ in [section] if isinstance(section, Encrypted) else section:
            budget.count_bag()  # as parse_pfx counts them
    return fast


def _parse_safe_contents(der: bytes, budget: Budget) -> list[Bag]:
    """parse_safe_contents, by the fast path when the bags have the common shape."""
    fast = pfx_der.safe_contents(der)
    if fast is None:
        return parse_safe_contents(der, budget)
    for _ in fast:
        budget.count_bag()
    return fast


def _read(data: bytes, password: str, budget: Budget) -> P12Contents:
    auth_octets, mac, sections = _parse_pfx(data, budget)
    plain: list[tuple[int, list[Bag]]] = []
    encrypted: list[tuple[int, Encrypted]] = []
    for i, section in enumerate(sections):
        if isinstance(section, Encrypted):
            encrypted.append((i, section))
        else:
            plain.append((i, section))
    plain_bags = [bag for _, bags in plain for bag in bags]
    plain_keys = [bag.pbe for bag in plain_bags if bag.pbe is not None]
    macs: list[Derivation] = [] if mac is None else [mac]

    # A hostile count is refused before any KDF runs, wherever the file declares it.
    for derivation in [*macs, *plain_keys, *(section.pbe for _, section in encrypted)]:
        budget.check_iterations(derivation)
    # So is a file whose necessary work cannot fit: the MAC and the keys outside encryption,
    # admitted now, and one encrypted section, set aside, when the keys or all certificates can
    # only be inside encryption.
    for derivation in [*macs, *plain_keys]:
        budget.admit(derivation)
    if encrypted and not (
        any(bag.is_key for bag in plain_bags) and any(not bag.is_key for bag in plain_bags)
    ):
        budget.reserve(min((section.pbe for _, section in encrypted), key=lambda p: p.work))

    reading = _Reading(_password_forms(password), budget, authenticated=mac is not None)
    if mac is not None:
        reading.verify_mac(mac, auth_octets)
    found = _Found(reading)
    for i, bags in plain:
        found.take(i, bags)
    # Keys first: the encrypted sections are opened while a key still lacks its certificate
    # (or no key is found yet); after that, only as far as the budget goes.
    skipped = 0
    for i, enc in encrypted:
        if found.complete() and not budget.fits(enc.pbe):
            skipped += 1
            continue
        budget.release()
        budget.admit(enc.pbe)
        contents = reading.open(
            enc.pbe, enc.ciphertext, lambda der: _parse_safe_contents(der, budget)
        )
        # Keys found inside are priced as soon as they are seen, before any of them runs.
        for bag in contents:
            if bag.pbe is not None:
                budget.admit(bag.pbe)
        found.take(i, contents)

    warnings = [
        code
        for code, met in (
            (LEGACY_PASSWORD_ENCODING, reading.legacy),
            (CHAIN_CERTIFICATES_SKIPPED, skipped > 0),
        )
        if met
    ]
    result = _pair(found, warnings, reading.legacy)
    # The pairwise signatures run last, once every key's share of the budget is admitted.
    for entry in result.entries:
        try:
            keys.check_pairwise(entry.key, entry.certificate.public_key())
        except KeyInconsistent as exc:
            raise P12KeyInconsistent() from exc
    return result


class _Found:
    """The keys and certificates read so far, each with its place in the file."""

    def __init__(self, reading: _Reading) -> None:
        self.reading = reading
        self.keys: list[tuple[tuple[int, int], PrivateKey, bytes, Bag]] = []  # place, key, SPKI
        self.certs: list[tuple[tuple[int, int], x509.Certificate, bytes | None, Bag]] = []

    def take(self, section: int, bags: list[Bag]) -> None:
        """Load the bags of one section; encrypted keys were admitted to the budget already."""
        for n, bag in enumerate(bags):
            place = (section, n)
            if not bag.is_key:
                cert = _load_certificate(bag.der)
                self.certs.append((place, cert, keys.certificate_spki_der(cert), bag))
                continue
            if bag.pbe is None:
                key = _load_key(bag.der)
            else:
                key = self.reading.open(bag.pbe, bag.der, _load_key)
            self.reading.budget.admit_key_check(key)
            self.keys.append((place, key, keys.spki_der(key.public_key()), bag))

    def complete(self) -> bool:
        """Whether there are keys and each has a certificate of its public key."""
        spkis = {spki for _, _, spki, _ in self.certs}
        return bool(self.keys) and all(spki in spkis for _, _, spki, _ in self.keys)


def _pair(found: _Found, warnings: list[str], legacy: bool) -> P12Contents:
    """Give each key the certificate of its public key, preferring a matching localKeyId."""
    if not found.keys:
        raise P12NoKey()
    certs = sorted(found.certs, key=lambda c: c[0])
    entries: list[P12Entry] = []
    for _, key, spki, key_bag in sorted(found.keys, key=lambda k: k[0]):
        matches = [c for c in certs if c[2] == spki]
        if not matches:
            raise P12NoCertificate()
        _, cert, _, cert_bag = next(
            (
                c
                for c in matches
                if key_bag.local_key_id is not None and c[3].local_key_id == key_bag.local_key_id
            ),
            matches[0],
        )
        entries.append(P12Entry(key, cert, key_bag.friendly_name or cert_bag.friendly_name))
    seen = {entry.certificate.public_bytes(serialization.Encoding.DER) for entry in entries}
    extra: list[x509.Certificate] = []
    for _, cert, _, _ in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        if der not in seen:
            seen.add(der)
            extra.append(cert)
    return P12Contents(entries, extra, warnings, legacy)
