"""Which public keys certvault certifies: the key rules of the S/MIME Baseline Requirements.

Every path that puts a public key into a certificate goes through :func:`check_public_key`: a
client CSR, a key certvault generated itself, and whatever reaches the issuer seam. The profiles
narrow this further (``profiles.KeyType``); this module is the floor none of them may go below.
"""

from __future__ import annotations

import math
from functools import cache

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from certvault.crypto.keys import MAX_RSA_BITS, MIN_RSA_BITS, SUPPORTED_CURVES
from certvault.errors import UnsupportedKey

# S/MIME BR 6.1.6: the public exponent SHOULD lie in [2^16 + 1, 2^256 - 1]. We make it a rule:
# e = 3 invites the low-exponent attacks of careless padding, and a huge e only costs verifiers.
MIN_RSA_EXPONENT = 2**16 + 1
MAX_RSA_EXPONENT = 2**256 - 1
# S/MIME BR 6.1.6: the modulus SHOULD have no factors smaller than 752.
_SMALL_FACTOR_BOUND = 752


class KeyPolicyViolation(UnsupportedKey):
    """The public key breaks the key rules of the S/MIME Baseline Requirements."""

    code = "key_policy_violation"


class RsaModulusNotAllowed(KeyPolicyViolation):
    """The RSA modulus is not one a certificate may carry."""

    code = "rsa_modulus_not_allowed"


class RsaExponentNotAllowed(KeyPolicyViolation):
    """The RSA public exponent is not one a certificate may carry."""

    code = "rsa_exponent_not_allowed"


class EcCurveNotAllowed(KeyPolicyViolation):
    """The elliptic curve is not one a certificate may carry."""

    code = "ec_curve_not_allowed"


class KeyAlgorithmNotAllowed(KeyPolicyViolation):
    """The key algorithm is not one a certificate may carry."""

    code = "key_algorithm_not_allowed"


def check_public_key(public_key: PublicKeyTypes) -> None:
    """Refuse a public key that S/MIME BR 6.1.5 and 6.1.6 do not let a CA certify.

    The errors name the rule, never the key. Ed25519 and Ed448 pass here (the BR allow them); no
    profile offers them today, which ``profiles.key_type_of`` decides.
    """
    if isinstance(public_key, rsa.RSAPublicKey):
        _check_rsa(public_key)
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        # cryptography checks on loading that the point lies on the curve (the BR's partial
        # public-key validation), and maps explicit parameters that equal a named curve to it;
        # any other explicit curve does not load at all.
        if public_key.curve.name not in SUPPORTED_CURVES:
            raise EcCurveNotAllowed(
                "EC keys must be on one of the named curves P-256, P-384 or P-521."
            )
    elif not isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise KeyAlgorithmNotAllowed("Only RSA, EC and EdDSA keys can be certified.")


def _check_rsa(public_key: rsa.RSAPublicKey) -> None:
    numbers = public_key.public_numbers()
    n, e = numbers.n, numbers.e
    bits = n.bit_length()
    # BR 6.1.5 (SHALL): at least 2048 bits, a multiple of 8. The ceiling is ours: it bounds the
    # work of the checks below and of every signature check on the key (DESIGN §5.5).
    if bits < MIN_RSA_BITS or bits % 8 or bits > MAX_RSA_BITS:
        raise RsaModulusNotAllowed(
            f"RSA moduli must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, a multiple of 8."
        )
    if e % 2 == 0 or not MIN_RSA_EXPONENT <= e <= MAX_RSA_EXPONENT:
        raise RsaExponentNotAllowed(
            "The RSA public exponent must be odd and from 2^16+1 to 2^256-1 (65537 is usual)."
        )
    # BR 6.1.6 (SHOULD): odd, no factor below 752, not a power of a prime. Each of these makes the
    # key trivially breakable, and each costs well under a millisecond to see. Whether n is itself
    # a prime is left alone: in Python that costs 50-450 ms, and such a key is its owner's broken
    # key, as a composite "prime" is (DESIGN §10).
    if math.gcd(n, _small_primes_product()) != 1:
        raise RsaModulusNotAllowed("The RSA modulus has a small factor: it is not a valid key.")
    if _is_perfect_power(n):
        raise RsaModulusNotAllowed("The RSA modulus is a perfect power: it is not a valid key.")


def _primes_below(bound: int) -> list[int]:
    sieve = bytearray([1]) * bound
    sieve[:2] = b"\x00\x00"
    for i in range(2, math.isqrt(bound - 1) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, bound, i)))
    return [i for i in range(bound) if sieve[i]]


@cache
def _small_primes_product() -> int:
    return math.prod(_primes_below(_SMALL_FACTOR_BOUND))


def _is_perfect_power(n: int) -> bool:
    """Whether ``n`` is m**k for some k >= 2; ``n`` has no factor below 752 (so m > 751)."""
    if math.isqrt(n) ** 2 == n:
        return True
    # Only prime exponents need trying, and with m > 751 > 2**9, k stays below bits / 9.
    for k in _primes_below(n.bit_length() // 9 + 2)[1:]:
        if _integer_root(n, k) ** k == n:
            return True
    return False


def _integer_root(n: int, k: int) -> int:
    """The largest x with x**k <= n (k >= 3), by Newton's method from just above the root."""
    log = math.log2(n) / k
    whole = max(int(log) - 60, 0)
    # A float gets about 43 correct bits of the root; starting 2^-30 above it keeps Newton's
    # iteration decreasing onto the answer, in a few steps.
    start = int(2 ** (log - whole))
    x = (start + (start >> 30) + 2) << whole
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y
