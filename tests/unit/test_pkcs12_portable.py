"""A worker's reading of a PKCS#12 file, carried back as DER, is the reader's result again."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.portable import (
    ReaderFailed,
    ReaderPool,
    contents_of,
    read_portable,
    read_portables,
)
from certvault.crypto.pkcs12.reader import P12Contents, read_pkcs12
from tests.factories import make_ca, make_cert, make_p12, new_key

PASSWORD = "portable-pass-1"


def _shape(contents: P12Contents) -> tuple[object, ...]:
    return (
        [
            (
                keylib.to_pkcs8_der(e.key),
                e.certificate.public_bytes(Encoding.DER),
                e.friendly_name,
            )
            for e in contents.entries
        ],
        [c.public_bytes(Encoding.DER) for c in contents.extra_certificates],
        contents.warnings,
        contents.legacy_password_encoding,
    )


@pytest.mark.parametrize("kind", ["rsa2048", "ec256", "ed25519"])
def test_a_portable_reading_is_the_readers_result(kind):
    ca_key, ca = make_ca("Portable CA")
    key = new_key(kind)
    data = make_p12(key, make_cert(key, issuer=(ca_key, ca)), PASSWORD, [ca], name=b"mine")
    portable = read_portable(data, PASSWORD, P12Limits())
    assert portable is not None
    carried = pickle.loads(pickle.dumps(portable))  # as it crosses from a worker
    assert _shape(contents_of(carried)) == _shape(read_pkcs12(data, PASSWORD))


def test_a_refused_file_comes_back_as_none_and_the_rest_in_order():
    key = new_key("ec256")
    good = make_p12(key, make_cert(key), PASSWORD)
    found = read_portables(
        [(b"not a PKCS#12 file", PASSWORD), (good, "wrong-password-1"), (good, PASSWORD)],
        P12Limits(),
    )
    assert found[:2] == [None, None]
    assert found[2] is not None and len(found[2].entries) == 1


def test_reader_processes_answer_each_task_in_order_and_end_with_the_pool(monkeypatch):
    monkeypatch.setenv("CERTVAULT_MASTER_KEY_PASSPHRASE", "not-for-the-readers")
    key = new_key("ec256")
    good = make_p12(key, make_cert(key), PASSWORD)
    with ReaderPool(2) as pool:
        processes = [worker.process for worker in pool._workers]
        # A fresh interpreter each, with no certvault setting in its environment.
        for process in processes:
            environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
            assert environ and not any(v.startswith(b"CERTVAULT_") for v in environ)
        futures = [
            pool.submit(
                [(good, PASSWORD), (b"junk", PASSWORD)] if i % 2 else [(good, "x")], P12Limits()
            )
            for i in range(6)
        ]
        answers = [f.result(timeout=60) for f in futures]
    assert [[p is not None for p in a] for a in answers] == [[False], [True, False]] * 3
    assert all(p.poll() is not None for p in processes)


def test_a_task_a_reader_cannot_run_fails_alone_and_names_only_the_exception():
    key = new_key("ec256")
    good = make_p12(key, make_cert(key), PASSWORD)
    with ReaderPool(1) as pool:
        bad = pool.submit([(b"secret-bytes",)], P12Limits())  # type: ignore[list-item]
        after = pool.submit([(good, PASSWORD)], P12Limits())
        with pytest.raises(ReaderFailed, match=r"failed: ValueError\.$"):
            bad.result(timeout=60)
        [found] = after.result(timeout=60)
    assert found is not None


def test_a_reader_that_dies_fails_what_it_was_given_and_the_import_stops():
    key = new_key("ec256")
    good = make_p12(key, make_cert(key), PASSWORD)
    pool = ReaderPool(1)
    try:
        [worker] = pool._workers
        worker.process.kill()
        worker.process.wait()
        first = pool.submit([(good, PASSWORD)], P12Limits())
        with pytest.raises(ReaderFailed, match="stopped"):
            first.result(timeout=60)
        with pytest.raises(ReaderFailed):
            pool.submit([(good, PASSWORD)], P12Limits()).result(timeout=60)
    finally:
        pool.close(stop=True)
