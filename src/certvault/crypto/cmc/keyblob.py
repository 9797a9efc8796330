"""The CryptoAPI PRIVATEKEYBLOB (MS-WCCE §2.2.2.9.1): how a Windows client hands over its RSA key.

Layout, all numbers little-endian: BLOBHEADER (bType 0x07, bVersion 2, reserved 0, aiKeyAlg),
RSAPUBKEY (magic "RSA2", bitlen, pubexp), then modulus (bitlen/8 bytes), prime1, prime2,
exponent1, exponent2, coefficient (bitlen/16 each) and privateExponent (bitlen/8).

The key comes from a client certvault does not trust, so every number is checked against the
others before the key is built: a key that is only nearly right would be escrowed, released years
later, and fail its owner then (DESIGN §10: validate once, on the way in).
"""

from __future__ import annotations

import math
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from certvault.crypto.keys import MAX_RSA_BITS, MIN_RSA_BITS
from certvault.errors import ArchivedKeyUndecryptable

PRIVATEKEYBLOB = 0x07
CUR_BLOB_VERSION = 0x02
CALG_RSA_KEYX = 0x0000A400
CALG_RSA_SIGN = 0x00002400
RSA2 = b"RSA2"
_HEADER = struct.Struct("<BBHI4sII")  # BLOBHEADER then RSAPUBKEY: 20 bytes


def private_key_blob(key: rsa.RSAPrivateKey, algorithm: int = CALG_RSA_KEYX) -> bytes:
    """``key`` as a PRIVATEKEYBLOB, as a Windows CSP exports it (for tests and vectors)."""
    numbers = key.private_numbers()
    bits = key.key_size
    if bits % 16 or numbers.public_numbers.e >= 2**32:
        raise ValueError("A PRIVATEKEYBLOB holds whole 16-bit words and a 32-bit exponent.")
    full, half = bits // 8, bits // 16
    parts = [
        (numbers.public_numbers.n, full),
        (numbers.p, half),
        (numbers.q, half),
        (numbers.dmp1, half),
        (numbers.dmq1, half),
        (numbers.iqmp, half),
        (numbers.d, full),
    ]
    header = _HEADER.pack(
        PRIVATEKEYBLOB, CUR_BLOB_VERSION, 0, algorithm, RSA2, bits, numbers.public_numbers.e
    )
    return header + b"".join(value.to_bytes(width, "little") for value, width in parts)


def rsa_key_from_private_key_blob(blob: bytes) -> rsa.RSAPrivateKey:
    """The RSA key in a PRIVATEKEYBLOB, once every length and number in it agrees.

    Any fault raises :class:`ArchivedKeyUndecryptable` with its one message: the blob is the
    decrypted archived key, and saying which check failed would describe the plaintext.
    """
    try:
        return _read(blob)
    except (ValueError, struct.error, OverflowError):
        pass  # raised below, outside the handler, so that no reason rides along as its context
    raise ArchivedKeyUndecryptable()


def _read(blob: bytes) -> rsa.RSAPrivateKey:
    if len(blob) < _HEADER.size:
        raise ValueError("short")
    kind, version, reserved, algorithm, magic, bits, e = _HEADER.unpack_from(blob)
    if (kind, version, reserved, magic) != (PRIVATEKEYBLOB, CUR_BLOB_VERSION, 0, RSA2):
        raise ValueError("header")
    if algorithm not in (CALG_RSA_KEYX, CALG_RSA_SIGN):
        raise ValueError("algorithm")
    if bits % 16 or not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
        raise ValueError("size")
    full, half = bits // 8, bits // 16
    if len(blob) != _HEADER.size + 2 * full + 5 * half:
        raise ValueError("length")
    n, p, q, dmp1, dmq1, iqmp, d = _numbers(blob[_HEADER.size :], [full] + [half] * 5 + [full])
    _check(bits, e, n, p, q, d, dmp1, dmq1, iqmp)
    public = rsa.RSAPublicNumbers(e, n)
    # _check did the work that makes the key usable; OpenSSL's primality tests would add
    # 70-500 ms and protect nothing the pairwise test below does not (DESIGN §10).
    key = rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, public).private_key(
        unsafe_skip_rsa_key_validation=True
    )
    _pairwise(key)
    return key


def _numbers(data: bytes, widths: list[int]) -> list[int]:
    values, offset = [], 0
    for width in widths:
        values.append(int.from_bytes(data[offset : offset + width], "little"))
        offset += width
    return values


def _check(
    bits: int, e: int, n: int, p: int, q: int, d: int, dmp1: int, dmq1: int, iqmp: int
) -> None:
    """The relations between the numbers, recomputed: what makes an RSA key work."""
    if n.bit_length() != bits or p * q != n or p == q:
        raise ValueError("modulus")
    # Primes of about half the size each: a tiny factor would make n easy to factor.
    if min(p.bit_length(), q.bit_length()) < bits // 2 - 8:
        raise ValueError("primes")
    if e < 3 or e % 2 == 0 or not 0 < d < n:
        raise ValueError("exponents")
    lam = math.lcm(p - 1, q - 1)
    if e * d % lam != 1:
        raise ValueError("private exponent")
    if dmp1 != d % (p - 1) or dmq1 != d % (q - 1) or iqmp != pow(q, -1, p):
        raise ValueError("CRT values")


def _pairwise(key: rsa.RSAPrivateKey) -> None:
    """Sign and verify once: composite "primes" pass the relations above but not this."""
    message = b"certvault archived key pairwise test"
    signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
    try:
        key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise ValueError("pairwise") from None
