"""Reading PKCS#12: every key of the file with its certificate, within KDF cost ceilings.

The reader is written on asn1crypto and cryptography's primitives instead of ``load_pkcs12`` so
that (a) every iteration count is checked before its KDF runs: a hostile upload declaring 100
million rounds is refused in milliseconds, also when the count hides inside encrypted content;
and (b) every key and certificate in the file is seen, not just the first key.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from certvault.crypto import keys
from certvault.crypto.ber import ASN1_ERRORS
from certvault.crypto.keys import PrivateKey
from certvault.crypto.pkcs12.limits import DEFAULT_LIMITS, Budget, P12Limits
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
    P12Malformed,
    P12NoCertificate,
    P12NoKey,
    P12TooLarge,
    P12UnsupportedKey,
    P12WrongPassword,
    UnsupportedKey,
)

T = TypeVar("T")


@dataclass(frozen=True)
class P12Entry:
    key: PrivateKey  # loaded with full validation: this is the way into the vault
    certificate: x509.Certificate  # its public key is the key's public key
    # Of the key bag, else of the certificate bag; cleaned by safe_text (None if unsafe).
    friendly_name: str | None


@dataclass(frozen=True)
class P12Contents:
    entries: list[P12Entry]  # one per private key, in file order
    extra_certificates: list[x509.Certificate]  # not matched to a key (the chain)


@dataclass(frozen=True)
class _Password:
    bmp: bytes  # for the PKCS#12 KDF
    utf8: bytes  # for PBKDF2


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


def _verify_mac(mac: Mac, auth_octets: bytes, forms: list[_Password], budget: Budget) -> _Password:
    """Return the password form the MAC accepts; the first attempt was admitted up front."""
    candidates = _distinct(forms, (lambda f: f.utf8) if mac.pbmac1 else (lambda f: f.bmp))
    for attempt, form in enumerate(candidates):
        if attempt:
            budget.admit(mac)
        if mac.pbmac1:
            key = pbkdf2(mac.kdf_hash, form.utf8, mac.salt, mac.iterations, mac.key_size)
        else:
            key = pkcs12_kdf(
                mac.hmac_hash, form.bmp, mac.salt, ID_MAC, mac.iterations, mac.key_size
            )
        if hmac.compare_digest(hmac.new(key, auth_octets, mac.hmac_hash).digest(), mac.expected):
            return form
    raise P12WrongPassword()


def _decrypt(pbe: Pbe, form: _Password, data: bytes) -> bytes | None:
    """Decrypt and unpad; None when the padding is wrong (almost always a wrong password)."""
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


def _open(
    pbe: Pbe,
    data: bytes,
    forms: list[_Password],
    budget: Budget,
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
            budget.admit(pbe)
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
    check_shape(der)
    try:
        return keys.load_pkcs8_der(der, validate=validate)
    except UnsupportedKey as exc:
        raise P12UnsupportedKey(exc.message) from exc
    except CryptoError as exc:
        raise malformed("damaged private key") from exc


def _load_certificate(der: bytes) -> x509.Certificate:
    check_shape(der)
    try:
        # cryptography only warns about a serial number below 1 today and will refuse it in a
        # later release; refusing now keeps the vault from holding certificates an upgrade
        # could no longer load.
        serial = asn1_x509.Certificate.load(der)["tbs_certificate"]["serial_number"].native
        if not isinstance(serial, int) or serial < 1:
            raise malformed("certificate serial number not positive")
        return x509.load_der_x509_certificate(der)
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


def _read(data: bytes, password: str, budget: Budget) -> P12Contents:
    auth_octets, mac, sections = parse_pfx(data, budget)

    # Price everything visible before any KDF runs: the MAC, each EncryptedData, and the
    # shrouded keys outside encryption.
    if mac is not None:
        budget.admit(mac)
    for section in sections:
        if isinstance(section, Encrypted):
            budget.admit(section.pbe)
        else:
            for bag in section:
                if bag.pbe is not None:
                    budget.admit(bag.pbe)

    forms = _password_forms(password)
    if mac is not None:
        forms = [_verify_mac(mac, auth_octets, forms, budget)]
    authenticated = mac is not None

    bags: list[Bag] = []
    for section in sections:
        if isinstance(section, Encrypted):
            found = _open(
                section.pbe,
                section.ciphertext,
                forms,
                budget,
                lambda plain: parse_safe_contents(plain, budget),
                authenticated,
            )
            # Keys found inside are priced as soon as they are seen, before any of them runs.
            for bag in found:
                if bag.pbe is not None:
                    budget.admit(bag.pbe)
            bags.extend(found)
        else:
            bags.extend(section)

    # Keys are first loaded without the RSA checks, so that their total cost is known and
    # admitted before any of it is spent; the checks then run on every key that is returned.
    unchecked: list[tuple[bytes, Bag]] = []
    found_certs: list[tuple[x509.Certificate, Bag]] = []
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
    found_keys: list[tuple[PrivateKey, Bag]], found_certs: list[tuple[x509.Certificate, Bag]]
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
