"""Ceilings on the work a PKCS#12 file may ask for, and the budget that enforces them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from certvault.crypto.keys import PrivateKey
from certvault.errors import P12TooExpensive, P12TooManyItems


@dataclass(frozen=True)
class P12Limits:
    """Ceilings that keep a hostile upload from pinning a worker (DESIGN §5.5)."""

    max_bytes: int = 1024 * 1024
    max_iterations: int = 2_000_000  # the count one KDF may declare (MAC, bag, EncryptedData)
    # Hash rounds over the whole file: each KDF invocation's count times its output blocks
    # (a 3DES bag with the PKCS#12 KDF: two blocks of key, one of IV), every password tried.
    # Encrypted sections beyond what the keys need are left unread when they do not fit.
    max_work: int = 6_000_000
    # SafeBags, nested ones and encrypted sections included. A key with a CA bundle of 70
    # certificates is 72; parsing a bag costs microseconds, and what a bag can cost beyond that
    # (KDF work, key checks) has its own ceiling, so the count only has to stop absurd files.
    max_bags: int = 256
    # The checks of the keys, in units of one RSA-2048 pairwise signature (about 0.7 ms): RSA
    # grows with the cube of the modulus (4096 bits = 8, 8192 = 64), an EC or Ed25519 key is
    # one. 512 units are about half a second; the numeric RSA checks are microseconds.
    max_key_checks: int = 512


DEFAULT_LIMITS = P12Limits()


class Derivation(Protocol):
    """A key derivation the file asks for, priced before it runs."""

    @property
    def iterations(self) -> int: ...  # as declared

    @property
    def work(self) -> int: ...  # hash rounds of all its KDF invocations


class Budget:
    """Counts KDF work, key checks and bags; refuses work before it is done."""

    def __init__(self, limits: P12Limits) -> None:
        self.limits = limits
        self.work = 0
        self.bags = 0
        self.key_checks = 0
        self.reserved = 0  # work set aside for a KDF that must run later

    def check_iterations(self, derivation: Derivation) -> None:
        """Refuse a declared count over the ceiling, whether or not the KDF would run."""
        if derivation.iterations > self.limits.max_iterations:
            raise P12TooExpensive("The file asks for more key-derivation rounds than allowed.")

    def fits(self, derivation: Derivation) -> bool:
        return (
            derivation.iterations <= self.limits.max_iterations
            and self.work + self.reserved + derivation.work <= self.limits.max_work
        )

    def admit(self, derivation: Derivation) -> None:
        self.check_iterations(derivation)
        if not self.fits(derivation):
            raise P12TooExpensive("The file asks for more key-derivation work than allowed.")
        self.work += derivation.work

    def reserve(self, derivation: Derivation) -> None:
        """Set aside the work of a KDF that must run later, before anything runs now."""
        self.admit(derivation)
        self.work -= derivation.work
        self.reserved += derivation.work

    def release(self) -> None:
        """Give back what :meth:`reserve` set aside, just before the KDF it was for is admitted."""
        self.reserved = 0

    def admit_key_check(self, key: PrivateKey) -> None:
        units = -(-(key.key_size**3) // 2048**3) if isinstance(key, rsa.RSAPrivateKey) else 1
        self.key_checks += units
        if self.key_checks > self.limits.max_key_checks:
            raise P12TooExpensive("The file holds more key material than allowed.")

    def count_bag(self) -> None:
        self.bags += 1
        if self.bags > self.limits.max_bags:
            raise P12TooManyItems("The file holds more items than allowed.")
