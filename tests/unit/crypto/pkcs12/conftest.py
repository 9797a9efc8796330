"""A spy on the reader's KDFs, to prove that refused work never ran."""

from __future__ import annotations

import pytest

from certvault.crypto.pkcs12 import reader as reader_module


@pytest.fixture
def kdf_runs(monkeypatch) -> list[int]:
    """The iteration count of every KDF the reader runs, in order."""
    runs: list[int] = []
    real_pkcs12_kdf, real_pbkdf2 = reader_module.pkcs12_kdf, reader_module.pbkdf2

    def spy_pkcs12_kdf(*args):
        runs.append(args[4])
        return real_pkcs12_kdf(*args)

    def spy_pbkdf2(*args):
        runs.append(args[3])
        return real_pbkdf2(*args)

    monkeypatch.setattr(reader_module, "pkcs12_kdf", spy_pkcs12_kdf)
    monkeypatch.setattr(reader_module, "pbkdf2", spy_pbkdf2)
    return runs
