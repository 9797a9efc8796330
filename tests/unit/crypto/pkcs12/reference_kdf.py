"""The PKCS#12 KDF (RFC 7292 appendix B.2) in plain Python: a reference for the native one.

Kept for the known-answer tests and the benchmark only; certvault runs libcrypto's.
"""

from __future__ import annotations

import hashlib


def pkcs12_kdf_reference(
    hash_name: str, password_bmp: bytes, salt: bytes, id_byte: int, iterations: int, n_bytes: int
) -> bytes:
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
