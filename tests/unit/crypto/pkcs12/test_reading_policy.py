"""What the reader reads and in which order: keys first, chain sections within the budget, the
OpenSSL 1.0 password form, damaged keys and the vectors of make_vectors_more.sh."""

from __future__ import annotations

import pytest
from asn1crypto import pkcs12 as asn1_pkcs12
from asn1crypto import x509 as asn1_x509

from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.reader import (
    CHAIN_CERTIFICATES_SKIPPED,
    LEGACY_PASSWORD_ENCODING,
    WARNINGS,
    read_pkcs12,
)
from certvault.errors import (
    P12KeyInconsistent,
    P12Malformed,
    P12NoCertificate,
    P12TooExpensive,
    P12TooManyItems,
    P12WrongPassword,
)
from tests.unit.crypto.pkcs12.assembly import (
    der,
    encrypted_section,
    pfx_from_sections,
    shrouded_key_bag,
    vector_bags,
)

PW = "vector-pass-1234"
NON_ASCII = "pässwörd-Ω-12345"
CERTTOOL = "certtool-p256-9certs.p12"
CERTTOOL_ROUNDS = 600_000


@pytest.mark.parametrize(
    ("name", "error", "code"),
    [
        ("p256-bad-mac.p12", P12WrongPassword, "p12_wrong_password"),
        ("two-keys-foreign-cert.p12", P12NoCertificate, "p12_no_certificate"),
        ("pbmac1-keylen-huge.p12", P12Malformed, "p12_malformed"),
        ("rsa2048-bad-crt.p12", P12KeyInconsistent, "p12_key_inconsistent"),
    ],
)
def test_bad_vectors_are_refused_with_their_code(vectors, name, error, code):
    with pytest.raises(error) as refused:
        read_pkcs12(vectors.data(name), PW)
    assert refused.value.code == code


def test_absurd_pbmac1_key_length_is_refused_before_any_kdf(vectors, kdf_runs):
    with pytest.raises(P12Malformed):
        read_pkcs12(vectors.data("pbmac1-keylen-huge.p12"), PW)
    assert kdf_runs == []


def test_a_key_with_a_bad_crt_value_is_refused_without_its_numbers(vectors):
    with pytest.raises(P12KeyInconsistent) as refused:
        read_pkcs12(vectors.data("rsa2048-bad-crt.p12"), PW)
    numbers = vectors.key("rsa2048").private_numbers()
    message = refused.value.message
    assert "\n" not in message
    for value in (numbers.p, numbers.q, numbers.dmp1, numbers.public_numbers.n):
        assert str(value) not in message and format(value, "x") not in message.lower()


def test_a_key_with_70_ca_certificates_is_read(vectors):
    contents = read_pkcs12(vectors.data("p256-70ca.p12"), PW)
    [entry] = contents.entries
    assert vectors.pkcs8(entry.key) == vectors.pkcs8(vectors.key("p256"))
    assert der(entry.certificate) == der(vectors.cert("p256"))
    assert len(contents.extra_certificates) == 70
    assert contents.warnings == [] and not contents.legacy_password_encoding


def test_too_many_items_has_its_own_code(vectors):
    data = vectors.data("p256-70ca.p12")  # a key bag, 71 certificate bags, one EncryptedData
    assert read_pkcs12(data, PW, P12Limits(max_bags=73)).entries
    with pytest.raises(P12TooManyItems) as refused:
        read_pkcs12(data, PW, P12Limits(max_bags=72))
    assert refused.value.code == "p12_too_many_items"


# --- keys first, then the chain as far as the budget goes -------------------------------------


def test_certtool_file_skips_the_chain_section_it_cannot_afford(vectors, kdf_runs):
    # MAC and key: 1.2 million rounds; each of the 9 certificate sections 600,000 more. The
    # first holds the key's certificate; seven more fit the default budget, the ninth does not.
    contents = read_pkcs12(vectors.data(CERTTOOL), PW)
    [entry] = contents.entries
    assert vectors.pkcs8(entry.key) == vectors.pkcs8(vectors.key("p256"))
    assert der(entry.certificate) == der(vectors.cert("p256"))
    assert len(contents.extra_certificates) == 7
    assert contents.warnings == [CHAIN_CERTIFICATES_SKIPPED]
    assert "chain certificates" in WARNINGS[CHAIN_CERTIFICATES_SKIPPED]
    assert kdf_runs == [CERTTOOL_ROUNDS] * 10  # MAC, key, 8 sections: none beyond the budget


def test_certtool_file_with_a_tighter_budget_skips_more(vectors, kdf_runs):
    limits = P12Limits(max_work=4 * CERTTOOL_ROUNDS)
    contents = read_pkcs12(vectors.data(CERTTOOL), PW, limits)
    assert len(contents.entries) == 1 and len(contents.extra_certificates) == 1
    assert contents.warnings == [CHAIN_CERTIFICATES_SKIPPED]
    assert kdf_runs == [CERTTOOL_ROUNDS] * 4


def test_work_the_key_needs_is_refused_before_any_kdf(vectors, kdf_runs):
    # The MAC, the key and at least one certificate section cannot be left out.
    with pytest.raises(P12TooExpensive):
        read_pkcs12(vectors.data(CERTTOOL), PW, P12Limits(max_work=3 * CERTTOOL_ROUNDS - 1))
    assert kdf_runs == []


def _key_and_sections(vectors, cert_order: list[str]) -> bytes:
    """A plain shrouded p256 key bag, then one 2048-round EncryptedData per certificate."""
    bags = {
        "p256" if bag["bag_id"].native == "cert_bag" else "key": bag
        for bag in vector_bags(vectors, "p256-nomac.p12")
    }
    key = shrouded_key_bag(vectors.pkcs8(vectors.key("p256")), PW)
    sections = [{"content_type": "data", "content": asn1_pkcs12.SafeContents([key]).dump()}]
    for name in cert_order:
        cert = bags["p256"] if name == "p256" else _cert_bag(vectors, name)
        sections.append(encrypted_section(asn1_pkcs12.SafeContents([cert]).dump(), PW))
    return pfx_from_sections(sections)


def _cert_bag(vectors, name: str) -> asn1_pkcs12.SafeBag:
    return asn1_pkcs12.SafeBag(
        {
            "bag_id": "cert_bag",
            "bag_value": {
                "cert_id": "x509",
                "cert_value": asn1_x509.Certificate.load(der(vectors.cert(name))),
            },
        }
    )


def test_sections_are_opened_until_the_key_has_its_certificate(vectors, kdf_runs):
    # The key (2048 rounds) and three sections (2048 each); the key's certificate is last.
    data = _key_and_sections(vectors, ["ca", "rsa2048", "p256"])
    contents = read_pkcs12(data, PW, P12Limits(max_work=4 * 2048))
    assert der(contents.entries[0].certificate) == der(vectors.cert("p256"))
    assert contents.warnings == []
    with pytest.raises(P12TooExpensive):  # the third section is needed and does not fit
        read_pkcs12(data, PW, P12Limits(max_work=3 * 2048))


def test_sections_after_the_keys_certificate_are_skipped_when_over_budget(vectors, kdf_runs):
    data = _key_and_sections(vectors, ["p256", "ca", "rsa2048"])
    contents = read_pkcs12(data, PW, P12Limits(max_work=3 * 2048))
    assert der(contents.entries[0].certificate) == der(vectors.cert("p256"))
    assert [der(c) for c in contents.extra_certificates] == [der(vectors.cert("ca"))]
    assert contents.warnings == [CHAIN_CERTIFICATES_SKIPPED]
    assert kdf_runs == [2048] * 3  # the key, then two sections: the last never ran


# --- OpenSSL 1.0's encoding of non-ASCII passwords --------------------------------------------


def test_openssl_1_0_file_opens_with_a_warning(vectors, kdf_runs):
    contents = read_pkcs12(vectors.data("p256-openssl10-nonascii.p12"), NON_ASCII)
    [entry] = contents.entries
    assert vectors.pkcs8(entry.key) == vectors.pkcs8(vectors.key("p256"))
    assert contents.legacy_password_encoding
    assert contents.warnings == [LEGACY_PASSWORD_ENCODING]
    # The standard form first (refused by the MAC), then OpenSSL 1.0's; then the RC2
    # certificates (key, IV) and the 3DES key (key, IV) with the form the MAC accepted.
    assert kdf_runs == [2048] * 6


def test_the_openssl_1_0_try_is_paid_for(vectors):
    data = vectors.data("p256-openssl10-nonascii.p12")
    # Two SHA-1 MAC runs (1 block each), RC2-40 (key and IV: 1 block each), 3DES (2 + 1).
    needed = 2 * 2048 + 2 * 2048 + 3 * 2048
    assert read_pkcs12(data, NON_ASCII, P12Limits(max_work=needed)).entries
    with pytest.raises(P12TooExpensive):
        read_pkcs12(data, NON_ASCII, P12Limits(max_work=needed - 1))


def test_the_widened_password_itself_opens_it_without_the_fallback(vectors):
    widened = NON_ASCII.encode("utf-8").decode("latin-1")
    contents = read_pkcs12(vectors.data("p256-openssl10-nonascii.p12"), widened)
    assert contents.warnings == [] and not contents.legacy_password_encoding


@pytest.mark.parametrize("name", ["p256-nonascii.p12", "rsa2048-nonascii-legacy.p12"])
def test_standard_non_ascii_files_need_no_fallback(vectors, name, kdf_runs):
    contents = read_pkcs12(vectors.data(name), NON_ASCII)
    assert contents.warnings == [] and not contents.legacy_password_encoding
    assert len(kdf_runs) == (5 if "legacy" in name else 3)  # one MAC run: no second form


def test_an_ascii_password_is_tried_in_one_form_only(vectors, kdf_runs):
    with pytest.raises(P12WrongPassword):
        read_pkcs12(vectors.data("p256-legacy.p12"), "wrong-but-ascii")
    assert kdf_runs == [2048]


def test_a_wrong_non_ascii_password_is_tried_in_both_forms(vectors, kdf_runs):
    with pytest.raises(P12WrongPassword):
        read_pkcs12(vectors.data("p256-legacy.p12"), "wrong-ünicode")
    assert kdf_runs == [2048, 2048]
