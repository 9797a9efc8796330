"""Ceilings on the work a PKCS#12 file may ask for, and the budget that enforces them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from certvault.crypto.keys import PrivateKey
from certvault.errors import P12TooExpensive


@dataclass(frozen=True)
class P12Limits:
    """Ceilings that keep a hostile upload from pinning a worker (DESIGN §5.5)."""

    max_bytes: int = 1024 * 1024
    max_iterations: int = 2_000_000  # the count one KDF may declare (MAC, bag, EncryptedData)
    # Hash rounds over the whole file: each KDF invocation's count times its output blocks
    # (a 3DES bag with the PKCS#12 KDF: two blocks of key, one of IV), every password tried.
    max_work: int = 6_000_000
    max_bags: int = 64  # SafeBags, nested ones and encrypted sections included
    # Full RSA validation, in RSA-2048 units of about 75 ms: 3072 bits = 4, 4096 = 8, 8192 = 64.
    max_rsa_validation: int = 64


DEFAULT_LIMITS = P12Limits()


class Derivation(Protocol):
    """A key derivation the file asks for, priced before it runs."""

    @property
    def iterations(self) -> int: ...  # as declared

    @property
    def work(self) -> int: ...  # hash rounds of all its KDF invocations


class Budget:
    """Counts KDF work and bags; refuses work before it is done."""

    def __init__(self, limits: P12Limits) -> None:
        self.limits = limits
        self.work = 0
        self.bags = 0
        self.rsa_validation = 0

    def admit(self, derivation: Derivation) -> None:
        if derivation.iterations > self.limits.max_iterations:
            raise P12TooExpensive("The file asks for more key-derivation rounds than allowed.")
        if self.work + derivation.work > self.limits.max_work:
            raise P12TooExpensive("The file asks for more key-derivation work than allowed.")
        self.work += derivation.work

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
