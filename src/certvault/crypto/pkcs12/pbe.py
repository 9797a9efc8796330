"""Password-based encryption pieces of PKCS#12 that cryptography does not expose.

The PKCS#12 KDF (RFC 7292 appendix B.2) with its BMPString password form, PBKDF2 on cryptography's
OpenSSL, and RC2 with a reduced effective key length (legacy files encrypt their certificates
with 40-bit RC2; cryptography's RC2 takes 128-bit keys only) from pycryptodome.
"""

from __future__ import annotations

import hashlib

from Crypto.Cipher import ARC2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

# RFC 7292 B.3: which kind of material the PKCS#12 KDF derives.
ID_KEY, ID_IV, ID_MAC = 1, 2, 3

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def kdf_work(hash_name: str, iterations: int, n_bytes: int) -> int:
    """Hash rounds to derive ``n_bytes`` with the PKCS#12 KDF or PBKDF2.

    Both run the whole iteration count once for every hash-sized block of output (RFC 7292 B.2,
    RFC 8018 5.2), so a 24-byte 3DES key with SHA-1 costs twice its declared count.
    """
    return iterations * -(-n_bytes // HASHES[hash_name]().digest_size)


def bmp_password(password: str) -> bytes:
    """BMPString form used by the PKCS#12 KDF: UTF-16-BE plus a two-byte terminator, as OpenSSL."""
    return password.encode("utf-16-be") + b"\x00\x00"


def pbkdf2(hash_name: str, password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    return PBKDF2HMAC(HASHES[hash_name](), length, salt, iterations).derive(password)


def pkcs12_kdf(
    hash_name: str, password_bmp: bytes, salt: bytes, id_byte: int, iterations: int, n_bytes: int
) -> bytes:
    """RFC 7292 appendix B.2; ``password_bmp`` is already in BMPString form."""
    if hash_name not in HASHES or iterations < 1 or not 0 <= id_byte <= 255:
        raise ValueError("unsupported PKCS#12 KDF parameters")
    ctor = getattr(hashlib, hash_name)
    v = ctor().block_size  # 64 bytes for SHA-1/SHA-256, 128 for SHA-384/SHA-512

    def stretch(data: bytes) -> bytes:
        # Repeat to fill a whole number of v-byte blocks; an empty input stays empty.
        if not data:
            return b""
        length = v * -(-len(data) // v)
        return (data * -(-length // len(data)))[:length]

    diversifier = bytes([id_byte]) * v
    i_block = bytearray(stretch(salt) + stretch(password_bmp))
    out = bytearray()
    while True:
        a = ctor(diversifier + i_block).digest()
        for _ in range(iterations - 1):
            a = ctor(a).digest()
        out += a
        if len(out) >= n_bytes:
            return bytes(out[:n_bytes])
        # Next block: every v-byte chunk I_j of I becomes (I_j + B + 1) mod 2^(8v), B = A stretched.
        b = int.from_bytes(stretch(a), "big") + 1
        modulus = 1 << (8 * v)
        for j in range(0, len(i_block), v):
            chunk = (int.from_bytes(i_block[j : j + v], "big") + b) % modulus
            i_block[j : j + v] = chunk.to_bytes(v, "big")


def rc2_cbc_decrypt(key: bytes, effective_bits: int, iv: bytes, data: bytes) -> bytes:
    """RC2-CBC decryption without unpadding (RFC 2268)."""
    # Reading old files only; certvault never writes RC2.
    cipher = ARC2.new(key, ARC2.MODE_CBC, iv=iv, effective_keylen=effective_bits)  # noqa: S304
    return bytes(cipher.decrypt(data))
