"""Hostile nesting: 3,000 SEQUENCEs deep wherever a PKCS#12 file can carry them.

asn1crypto parses by recursion, so each of these made the reader raise RecursionError (a server
error on the API, an aborted folder import). The shape check refuses them before any parser runs,
also inside content that is only readable after decryption.
"""

from __future__ import annotations

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import pkcs12 as asn1_pkcs12

from certvault.crypto.pkcs12 import pfx as pfx_module
from certvault.crypto.pkcs12.pbe import bmp_password
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.errors import P12Malformed
from tests.unit.crypto.pkcs12.assembly import (
    PBMAC1_OID,
    encrypted_section,
    nested,
    p12_from_bags,
    pfx_from_sections,
    pkcs12_mac,
    shrouded_key_bag,
    tlv,
    vector_bags,
    with_attribute,
)

PW = "vector-pass-1234"
DEPTH = 3000


def oid(dotted: str) -> bytes:
    return asn1_core.ObjectIdentifier(dotted).dump()


def split_bags(vectors):
    bags = vector_bags(vectors, "p256-nomac.p12")
    certs = [b for b in bags if b["bag_id"].native == "cert_bag"]
    keys = [b for b in bags if b["bag_id"].native != "cert_bag"]
    return certs, keys


def in_bag_attribute(vectors, deep: bytes) -> bytes:
    contents = with_attribute(vector_bags(vectors, "p256-nomac.p12"), deep)
    return pfx_from_sections([{"content_type": "data", "content": contents}])


def in_certificate(vectors, deep: bytes) -> bytes:
    _, keys = split_bags(vectors)
    cert_bag = tlv(0x30, oid("1.2.840.113549.1.9.22.1") + tlv(0xA0, tlv(0x04, deep)))
    safe_bag = tlv(0x30, oid("1.2.840.113549.1.12.10.1.3") + tlv(0xA0, cert_bag))
    contents = tlv(0x30, safe_bag + b"".join(k.dump() for k in keys))
    return pfx_from_sections([{"content_type": "data", "content": contents}])


def in_mac_parameters(vectors, deep: bytes) -> bytes:
    pfx = asn1_pkcs12.Pfx.load(pkcs12_mac(vectors.data("ed25519-noenc.p12"), bmp_password(PW)))
    mac = pfx["mac_data"]
    algorithm = tlv(0x30, oid(PBMAC1_OID) + deep)  # PBMAC1, whose parameters are open ANY
    digest_info = tlv(0x30, algorithm + mac["mac"]["digest"].dump())
    mac_data = tlv(0x30, digest_info + mac["mac_salt"].dump() + mac["iterations"].dump())
    return tlv(0x30, pfx["version"].dump() + pfx["auth_safe"].dump() + mac_data)


def in_encrypted_safe_contents(vectors, deep: bytes) -> bytes:
    # Under a valid MAC: the decrypted content is authentic, so its fault is the file's.
    contents = with_attribute(vector_bags(vectors, "p256-nomac.p12"), deep)
    p12 = pfx_from_sections([encrypted_section(contents, PW)])
    return pkcs12_mac(p12, bmp_password(PW))


def in_encrypted_key(vectors, deep: bytes) -> bytes:
    certs, _ = split_bags(vectors)
    return pkcs12_mac(p12_from_bags([*certs, shrouded_key_bag(deep, PW)]), bmp_password(PW))


PLACES = [
    in_bag_attribute,
    in_certificate,
    in_mac_parameters,
    in_encrypted_safe_contents,
    in_encrypted_key,
]


@pytest.mark.parametrize("indefinite", [False, True], ids=["definite", "indefinite"])
@pytest.mark.parametrize("place", PLACES)
def test_deep_nesting_is_refused_before_parsing(vectors, place, indefinite):
    data = place(vectors, nested(DEPTH, indefinite=indefinite))
    fault = "nested too deeply"
    if place is in_certificate and indefinite:
        # asn1crypto reads a CertBag's value as it loads the bag, and follows no more than ten
        # indefinite lengths: it refuses this one itself, before the certificate is checked.
        fault = "bad SafeContents"
    with pytest.raises(P12Malformed, match=fault) as refused:
        read_pkcs12(data, PW)
    assert len(refused.value.message) < 200  # names the fault, echoes nothing


@pytest.mark.parametrize("indefinite", [False, True], ids=["definite", "indefinite"])
@pytest.mark.parametrize("place", PLACES)
def test_recursion_never_escapes_the_reader(vectors, place, indefinite, monkeypatch):
    # Without the shape check the parsers recurse until they fail; the reader must still answer
    # with P12Malformed, never RecursionError.
    monkeypatch.setattr(pfx_module, "check_structure", lambda der, max_depth: None)
    data = place(vectors, nested(DEPTH, indefinite=indefinite))
    with pytest.raises(P12Malformed):
        read_pkcs12(data, PW)


def test_nesting_a_real_file_could_have_is_read(vectors):
    # The same places at a depth real files reach: read as ever (the attribute is skipped).
    contents = read_pkcs12(in_bag_attribute(vectors, nested(12)), PW)
    assert vectors.pkcs8(contents.entries[0].key) == vectors.pkcs8(vectors.key("p256"))


def test_ber_indefinite_lengths_are_read(vectors):
    # Some tools write BER: the PFX in an indefinite-length SEQUENCE.
    data = b"\x30\x80" + asn1_pkcs12.Pfx.load(vectors.data("p256.p12")).contents + b"\x00\x00"
    assert len(read_pkcs12(data, PW).entries) == 1
