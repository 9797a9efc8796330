"""The fast path for PKCS#12 files of the common shape reads exactly what the general path reads,
or steps aside (None) and lets the general path decide, on every vector and on mutated files."""

from __future__ import annotations

from pathlib import Path

import hypothesis.strategies as st
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from hypothesis import HealthCheck, given, settings

from certvault.crypto.pkcs12 import pfx_der, reader
from certvault.crypto.pkcs12.limits import DEFAULT_LIMITS, Budget, P12Limits
from certvault.crypto.pkcs12.pfx import Encrypted, parse_pfx, parse_safe_contents
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.errors import CertvaultError, P12TooManyItems
from tests.factories import make_ca, make_cert
from tests.unit.crypto.conftest import VECTOR_DIR

VECTORS = sorted(p for p in VECTOR_DIR.parent.rglob("*") if p.suffix in (".p12", ".pfx"))
PW = "fast-path-pass-1"


def _general(parse, *args):  # type: ignore[no-untyped-def]
    try:
        return parse(*args, Budget(DEFAULT_LIMITS))
    except CertvaultError as exc:
        return exc


def _openssl3_default() -> bytes:
    """What `openssl pkcs12 -export` writes by default, as the benchmark's files."""
    ca = make_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(PW.encode())
    )
    cert = make_cert(key, "fast@example.org", issuer=ca)
    return pkcs12.serialize_key_and_certificates(b"fast", key, cert, [ca[1]], enc)


COMMON = _openssl3_default()


def _certificate_bags(data: bytes) -> bytes:
    """The decrypted SafeContents of the file's encrypted section."""
    [section] = [s for s in parse_pfx(data, Budget(DEFAULT_LIMITS))[2] if isinstance(s, Encrypted)]
    plain = reader._decrypt(section.pbe, reader._password_forms(PW)[0], section.ciphertext)
    assert plain is not None
    return plain


CERTIFICATE_BAGS = _certificate_bags(COMMON)


@pytest.mark.parametrize("path", VECTORS, ids=lambda p: str(p.relative_to(VECTOR_DIR.parent)))
def test_every_vector_is_read_alike_or_left_to_the_general_path(path: Path) -> None:
    data = path.read_bytes()
    fast = pfx_der.pfx(data)
    if fast is not None:
        assert fast == _general(parse_pfx, data)


def test_the_common_shape_takes_the_fast_path() -> None:
    fast = pfx_der.pfx(COMMON)
    assert fast is not None and fast == parse_pfx(COMMON, Budget(DEFAULT_LIMITS))
    bags = pfx_der.safe_contents(CERTIFICATE_BAGS)
    assert bags is not None and len(bags) == 2
    assert bags == parse_safe_contents(CERTIFICATE_BAGS, Budget(DEFAULT_LIMITS))
    assert read_pkcs12(COMMON, PW).entries[0].friendly_name == "fast"


def test_the_fast_path_counts_bags_as_the_general_path(monkeypatch) -> None:
    # One encrypted section, one key bag, then two certificate bags inside: four items.
    assert read_pkcs12(COMMON, PW, P12Limits(max_bags=4)).entries
    with pytest.raises(P12TooManyItems):
        read_pkcs12(COMMON, PW, P12Limits(max_bags=3))
    monkeypatch.setattr(pfx_der, "pfx", lambda data: None)
    monkeypatch.setattr(pfx_der, "safe_contents", lambda data: None)
    assert read_pkcs12(COMMON, PW, P12Limits(max_bags=4)).entries
    with pytest.raises(P12TooManyItems):
        read_pkcs12(COMMON, PW, P12Limits(max_bags=3))


@st.composite
def mutated(draw, original: bytes):  # type: ignore[no-untyped-def]
    data = bytearray(original)
    op = draw(st.sampled_from(["flip", "truncate", "append", "splice"]))
    if op == "flip":
        for _ in range(draw(st.integers(1, 3))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif op == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif op == "append":
        data += draw(st.binary(min_size=1, max_size=16))
    else:
        at = draw(st.integers(0, len(data) - 1))
        data[at : at + draw(st.integers(0, 4))] = draw(st.binary(max_size=4))
    return bytes(data)


_PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_PROPERTY
@given(mutated(COMMON))
def test_a_mutated_file_is_read_alike_or_left_to_the_general_path(blob: bytes) -> None:
    fast = pfx_der.pfx(blob)
    if fast is not None:
        assert fast == _general(parse_pfx, blob)


@_PROPERTY
@given(mutated(CERTIFICATE_BAGS))
def test_mutated_bags_are_read_alike_or_left_to_the_general_path(blob: bytes) -> None:
    fast = pfx_der.safe_contents(blob)
    if fast is not None:
        assert fast == _general(parse_safe_contents, blob)
