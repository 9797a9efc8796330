"""RC4 (certtool's arcfour): a stream cipher, so a wrong password shows as content that does not
parse, never as padding."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.errors import P12WrongPassword

VECTORS = Path(__file__).resolve().parents[3] / "vectors" / "interop"


def _password(line_key: str) -> str:
    return (VECTORS / "passwords" / f"{line_key}.txt").read_text(encoding="utf-8").rstrip("\n")


def test_rc4_file_reads_like_the_reference():
    data = (VECTORS / "certtool-arcfour.p12").read_bytes()
    password = _password("P")
    contents = read_pkcs12(data, password)
    reference = pkcs12.load_pkcs12(data, password.encode())
    [entry] = contents.entries
    assert reference.key is not None and reference.cert is not None
    assert entry.key.private_numbers() == reference.key.private_numbers()  # type: ignore[union-attr]
    assert entry.certificate == reference.cert.certificate


def test_rc4_file_with_a_wrong_password_is_a_wrong_password():
    data = (VECTORS / "certtool-arcfour.p12").read_bytes()
    with pytest.raises(P12WrongPassword):
        read_pkcs12(data, "not-the-password")
