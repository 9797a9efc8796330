"""The PKCS#12 KDF of the system's OpenSSL libcrypto, called through ctypes.

cryptography runs this KDF inside its own OpenSSL but offers no API for it, and a Python loop is
4-5x slower and holds the GIL for the whole derivation (DESIGN §10). ``PKCS12_key_gen_uni`` has
had the same signature since OpenSSL 1.0; ctypes releases the GIL for the call, so the KDFs of
concurrent requests run side by side. There is deliberately no slower fallback: without libcrypto
the KDF refuses to run rather than quietly costing five times as much.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Any

from certvault.errors import ConfigurationError, CryptoError

_SONAME = "libcrypto.so.3"  # Debian's OpenSSL 3, which Python's own ssl and hashlib link too
_DIGESTS = {
    "sha1": "EVP_sha1",
    "sha224": "EVP_sha224",
    "sha256": "EVP_sha256",
    "sha384": "EVP_sha384",
    "sha512": "EVP_sha512",
}


class _LibCrypto:
    def __init__(self, lib: ctypes.CDLL) -> None:
        # int PKCS12_key_gen_uni(unsigned char *pass, int passlen, unsigned char *salt,
        #     int saltlen, int id, int iter, int n, unsigned char *out, const EVP_MD *md_type)
        self.key_gen: Any = lib.PKCS12_key_gen_uni
        self.key_gen.argtypes = [
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_void_p,
        ]
        self.key_gen.restype = ctypes.c_int
        self.digests: dict[str, int] = {}
        for name, function_name in _DIGESTS.items():
            function = getattr(lib, function_name)
            function.argtypes = []
            function.restype = ctypes.c_void_p  # const EVP_MD *, static inside libcrypto
            self.digests[name] = function()
        self.clear_errors: Any = lib.ERR_clear_error
        self.clear_errors.argtypes = []
        self.clear_errors.restype = None


@functools.cache
def _libcrypto() -> _LibCrypto:
    for name in (_SONAME, ctypes.util.find_library("crypto")):
        if name is None:
            continue
        try:
            return _LibCrypto(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
    raise ConfigurationError(
        "OpenSSL's libcrypto (libcrypto.so.3) was not found; certvault needs it for PKCS#12 files."
    )


def pkcs12_key_gen(
    hash_name: str, password_bmp: bytes, salt: bytes, id_byte: int, iterations: int, n_bytes: int
) -> bytes:
    """RFC 7292 appendix B.2 by OpenSSL; arguments are checked by the caller."""
    lib = _libcrypto()
    out = ctypes.create_string_buffer(n_bytes)
    ok = lib.key_gen(
        password_bmp,
        len(password_bmp),
        salt,
        len(salt),
        id_byte,
        iterations,
        n_bytes,
        out,
        lib.digests[hash_name],
    )
    if ok != 1:
        # Leave no stale error in this thread's queue for Python's ssl and hashlib to trip on.
        lib.clear_errors()
        raise CryptoError("The PKCS#12 key derivation failed.")
    return out.raw
