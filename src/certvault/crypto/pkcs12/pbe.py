"""Password-based encryption pieces of PKCS#12 that cryptography does not expose.

The PKCS#12 KDF (RFC 7292 appendix B.2) on the system's libcrypto, with its BMPString password
form; PBKDF2 on cryptography's OpenSSL; and RC2 with a reduced effective key length (legacy files
encrypt their certificates with 40-bit RC2; cryptography's RC2 takes 128-bit keys only) from
pycryptodome.
"""

from __future__ import annotations

from Crypto.Cipher import ARC2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from certvault.crypto.pkcs12 import libcrypto

_C_INT_MAX = 2**31 - 1
_MAX_KDF_OUTPUT = 1024  # bytes; keys, IVs and MAC keys are at most 64

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
    """RFC 7292 appendix B.2, run by libcrypto; ``password_bmp`` is already in BMPString form.

    libcrypto cannot derive from nothing: the salt and the password must not both be empty.
    """
    if (
        hash_name not in HASHES
        or not (password_bmp or salt)
        or not 1 <= iterations <= _C_INT_MAX
        or not 0 <= id_byte <= 255
        or not 1 <= n_bytes <= _MAX_KDF_OUTPUT
        or max(len(password_bmp), len(salt)) > _C_INT_MAX
    ):
        raise ValueError("unsupported PKCS#12 KDF parameters")
    return libcrypto.pkcs12_key_gen(hash_name, password_bmp, salt, id_byte, iterations, n_bytes)


def rc2_cbc_decrypt(key: bytes, effective_bits: int, iv: bytes, data: bytes) -> bytes:
    """RC2-CBC decryption without unpadding (RFC 2268)."""
    # Reading old files only; certvault never writes RC2.
    cipher = ARC2.new(key, ARC2.MODE_CBC, iv=iv, effective_keylen=effective_bits)  # noqa: S304
    return bytes(cipher.decrypt(data))
