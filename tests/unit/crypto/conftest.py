"""Access to the committed PKCS#12 vectors in tests/vectors/p12 (see its README.md)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

VECTOR_DIR = Path(__file__).resolve().parents[2] / "vectors" / "p12"

# README.md: P, N and E.
PASSWORDS = {"P": "vector-pass-1234", "N": "pässwörd-Ω-12345", "E": ""}


def load_key(path: Path):
    # References only: skipping the RSA prime checks keeps the suite fast.
    return serialization.load_pem_private_key(
        path.read_bytes(), None, unsafe_skip_rsa_key_validation=True
    )


class Vectors:
    dir = VECTOR_DIR
    passwords = PASSWORDS

    def data(self, name: str) -> bytes:
        return (VECTOR_DIR / name).read_bytes()

    @functools.cache  # noqa: B019 - one instance per session
    def key(self, name: str):
        return load_key(VECTOR_DIR / f"{name}.key.pem")

    @functools.cache  # noqa: B019
    def cert(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((VECTOR_DIR / f"{name}.cert.pem").read_bytes())

    @staticmethod
    def pkcs8(key) -> bytes:
        """Unencrypted PKCS#8 DER, to compare keys exactly."""
        return key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@pytest.fixture(scope="session")
def vectors() -> Vectors:
    return Vectors()


CMC_DIR = VECTOR_DIR.parent / "cmc"
POOL_DIR = VECTOR_DIR.parent / "keys"


class CmcVectors:
    """tests/vectors/cmc (see its README.md) and the pre-generated key pool."""

    def data(self, name: str) -> bytes:
        return (CMC_DIR / name).read_bytes()

    @functools.cache  # noqa: B019 - one instance per session
    def key(self, name: str):
        """A key of the folder (``exchange``, ``alice-rsa2048``, ``bob-rsa3072``)."""
        return load_key(CMC_DIR / f"{name}.key.pem")

    @functools.cache  # noqa: B019
    def pool_key(self, name: str):
        """A key of tests/vectors/keys, e.g. ``rsa2048-1``."""
        return load_key(POOL_DIR / f"{name}.pem")

    @functools.cached_property
    def exchange_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate((CMC_DIR / "exchange.cert.pem").read_bytes())

    @property
    def exchange(self):
        """(certificate, key): the recipient every vector request is encrypted to."""
        return self.exchange_cert, self.key("exchange")


@pytest.fixture(scope="session")
def cmc_vectors() -> CmcVectors:
    return CmcVectors()
