"""A worker's reading of a PKCS#12 file, carried back as DER, is the reader's result again."""

from __future__ import annotations

import pickle

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.portable import contents_of, read_portable, read_portables
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
