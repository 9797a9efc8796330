"""AD CS key-archival requests: parsing, the key hash, decryption of the archived key.

Inputs are the committed vectors in tests/vectors/cmc and requests built fresh by
tests/cmc_builder.py, both made apart from the parser; openssl checks what the builder makes.
"""

from __future__ import annotations

import base64
import dataclasses
import functools

import pytest
from asn1crypto import cms
from asn1crypto import core as asn1_core
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import given, settings
from hypothesis import strategies as st

from certvault.crypto import cmc
from certvault.errors import ArchivedKeyUndecryptable, CmcInvalid
from tests import cmc_builder as builder
from tests.unit.crypto.conftest import CMC_DIR
from tests.unit.crypto.pkcs12.assembly import nested

ARCHIVED = {
    # vector: (key, digest of the signer, bytes of the key hash)
    "rsa2048-aes256.der": ("alice-rsa2048", "sha256", 20),
    "rsa2048-3des.req": ("alice-rsa2048", "sha256", 20),
    "rsa3072-aes256-sha256-hash.der": ("bob-rsa3072", "sha256", 32),
    "rsa3072-3des-sha1.der": ("bob-rsa3072", "sha1", 20),
}


def numbers(key):
    return key.private_numbers()


@pytest.fixture(scope="module")
def alice(cmc_vectors):
    return cmc_vectors.key("alice-rsa2048")


@pytest.fixture(scope="module")
def other_exchange(cmc_vectors):
    """A second exchange pair: last year's certificate, or another CA's."""
    key = cmc_vectors.pool_key("rsa2048-3")
    return builder.exchange_certificate(key, "Other CA-Xchg"), key


@pytest.fixture(scope="module")
def build(cmc_vectors, alice):
    """Requests archiving alice's key to the vector exchange certificate, built on demand."""

    @functools.cache
    def make(**options) -> bytes:
        options.setdefault("key", alice)
        options.setdefault("exchange_cert", cmc_vectors.exchange_cert)
        return builder.build_archival_request(options.pop("key"), **options)

    return make


def refused(data: bytes, match: str | None = None) -> CmcInvalid:
    with pytest.raises(CmcInvalid, match=match) as caught:
        cmc.parse_request(data)
    assert caught.value.code == "cmc_invalid"
    return caught.value


# --- the vectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHIVED))
def test_vectors_parse_check_and_give_back_their_key(cmc_vectors, name):
    key_name, digest, hash_size = ARCHIVED[name]
    request = cmc.parse_request(cmc_vectors.data(name))
    key = cmc_vectors.key(key_name)
    assert request.body_part_id == 1
    assert request.digest_algorithm == digest
    assert len(request.encrypted_key_hash) == hash_size
    assert request.csr.public_key().public_numbers() == key.public_key().public_numbers()
    assert request.signer_key_identifier == builder.key_identifier(key.public_key())
    cmc.check_key_hash(request)
    decrypted = cmc.decrypt_archived_key(request, [cmc_vectors.exchange])
    assert numbers(decrypted) == numbers(key)


def test_nonce_and_transaction_id_are_kept_for_the_response(cmc_vectors):
    request = cmc.parse_request(cmc_vectors.data("rsa3072-3des-sha1.der"))
    assert request.sender_nonce == bytes(range(16))
    assert request.transaction_id == 4242
    plain = cmc.parse_request(cmc_vectors.data("rsa2048-aes256.der"))
    assert plain.sender_nonce is None and plain.transaction_id is None


def test_a_request_without_archival_parses_and_decrypts_nothing(cmc_vectors):
    request = cmc.parse_request(cmc_vectors.data("rsa2048-no-key.der"))
    assert request.encrypted_key is None and request.encrypted_key_hash is None
    cmc.check_key_hash(request)  # nothing to check
    with pytest.raises(ArchivedKeyUndecryptable):
        cmc.decrypt_archived_key(request, [cmc_vectors.exchange])


@pytest.mark.parametrize("name", ["rsa2048-aes256.der", "rsa2048-3des.req"])
def test_openssl_reads_the_request_and_its_envelope(cmc_vectors, alice, tmp_path, name):
    """The builder's output is CMS as openssl knows it: it verifies the signature with a
    certificate carrying the signer's key identifier and decrypts the envelope to the blob."""
    data = cmc_vectors.data(name)
    der = data if name.endswith(".der") else base64.b64decode(b"".join(data.splitlines()[1:-1]))
    (tmp_path / "req.der").write_bytes(der)
    printed = builder.openssl(
        "cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "req.der"
    )
    assert b"id-cct-PKIData" in printed.stdout and b"1.3.6.1.4.1.311.21.13" in printed.stdout

    signer_cert = builder.exchange_certificate(alice, "alice")  # self-signed, SKI of alice's key
    (tmp_path / "alice.pem").write_bytes(signer_cert.public_bytes(serialization.Encoding.PEM))
    verified = builder.openssl(
        "cms", "-verify", "-binary", "-noverify", "-inform", "DER", "-in", tmp_path / "req.der",
        "-certfile", tmp_path / "alice.pem", "-out", tmp_path / "pki-data.der",
    )  # fmt: skip
    assert b"Verification successful" in verified.stderr

    request = cmc.parse_request(der)
    (tmp_path / "env.der").write_bytes(request.encrypted_key)
    (tmp_path / "x.pem").write_bytes(
        cmc_vectors.exchange_cert.public_bytes(serialization.Encoding.PEM)
    )
    (tmp_path / "x.key").write_bytes(cmc_vectors.data("exchange.key.pem"))
    builder.openssl(
        "cms", "-decrypt", "-binary", "-inform", "DER", "-in", tmp_path / "env.der",
        "-recip", tmp_path / "x.pem", "-inkey", tmp_path / "x.key", "-out", tmp_path / "blob",
    )  # fmt: skip
    assert (tmp_path / "blob").read_bytes() == cmc_vectors.data("alice-rsa2048.blob")


# --- input forms ------------------------------------------------------------------------------


def armour(der: bytes, label: str, line_end: str = "\n") -> bytes:
    text = base64.b64encode(der).decode()
    lines = [f"-----BEGIN {label}-----", *(text[i : i + 64] for i in range(0, len(text), 64))]
    return (line_end.join([*lines, f"-----END {label}-----"]) + line_end).encode()


def test_der_base64_and_armour_are_the_same_request(cmc_vectors):
    der = cmc_vectors.data("rsa2048-aes256.der")
    forms = [
        der,
        base64.b64encode(der),
        armour(der, "CMC REQUEST"),
        armour(der, "NEW CERTIFICATE REQUEST", "\r\n"),
        b"\xef\xbb\xbf" + armour(der, "CERTIFICATE REQUEST"),  # a UTF-8 BOM from Notepad
    ]
    parsed = {cmc.parse_request(form).encrypted_key for form in forms}
    assert len(parsed) == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not base64 at all!",
        "é".encode(),
        b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN CMC REQUEST-----\nMAA=\n-----END PKCS7-----\n",
    ],
)
def test_text_that_is_not_a_request_is_refused(data):
    refused(data)


def test_oversize_input_is_refused_before_parsing():
    refused(b"\x30\x84" + bytes(64 * 1024), "larger than 64 KiB")
    refused(base64.b64encode(bytes(50 * 1024)), "larger than 64 KiB")


def test_deep_nesting_is_refused_without_recursion():
    refused(nested(10_000), "nested too deeply")
    refused(base64.b64encode(nested(100, indefinite=True)), "nested too deeply")


# --- what is not a key-archival request -------------------------------------------------------


def test_other_cms_and_plain_pkcs10_are_refused(cmc_vectors, alice, build):
    request = cmc.parse_request(build())
    csr_der = request.csr.public_bytes(serialization.Encoding.DER)
    refused(csr_der, "not CMS SignedData")
    refused(request.csr.public_bytes(serialization.Encoding.PEM), "not CMS SignedData")
    refused(cmc_vectors.exchange_cert.public_bytes(serialization.Encoding.DER))
    cert = builder.exchange_certificate(alice, "alice")
    signed_data = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(csr_der)
        .add_signer(cert, alice, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    refused(signed_data, "wrong content type")  # id-data: a PKCS#7 renewal, not CMC
    refused(request.encrypted_key, "not CMS SignedData")  # the EnvelopedData alone


@pytest.mark.parametrize("count", [0, 2])
def test_exactly_one_pkcs10(build, count):
    refused(build(requests=count), "not exactly one PKCS#10 request")


def test_other_requests_beside_the_pkcs10_are_refused(build):
    refused(build(extra="crmf"), "not exactly one PKCS#10 request")
    refused(build(extra="nested"), "nested content or other messages")


def test_a_request_signed_by_another_key_is_refused(build, cmc_vectors):
    refused(build(signer_key=cmc_vectors.pool_key("rsa2048-1")), "signature does not verify")


def test_tampered_content_is_refused(build):
    # A control changed after signing: the signature still covers the old messageDigest.
    def flip_hash(pki_data: bytes) -> bytes:
        at = pki_data.index(bytes.fromhex("0414")) + 2  # the SHA-1 key hash's OCTET STRING
        return pki_data[:at] + bytes([pki_data[at] ^ 1]) + pki_data[at + 1 :]

    refused(build(tamper=flip_hash), "message digest does not match")

    # The PKCS#10's own signature changed: proof of possession fails first.
    def flip_csr(pki_data: bytes) -> bytes:
        return pki_data[:-5] + bytes([pki_data[-5] ^ 1]) + pki_data[-4:]

    refused(build(tamper=flip_csr), "PKCS#10 signature does not verify")


def with_unsigned(der: bytes, attributes: list) -> bytes:
    """The request with other unsigned attributes: they are outside the signature."""
    info = cms.ContentInfo.load(der)
    info["content"]["signer_infos"][0]["unsigned_attrs"] = attributes
    return info.dump()


def test_at_most_one_archived_key_and_one_key_hash(build):
    der = build()
    envelope = cmc.parse_request(der).encrypted_key
    value = asn1_core.Any.load(envelope)
    twice = {"type": builder.ARCHIVED_KEY, "values": [value]}
    refused(with_unsigned(der, [twice, twice]), "more than one archived key")
    other = asn1_core.Any.load(builder.octets(b"x"))
    two_values = {"type": builder.ARCHIVED_KEY, "values": [value, other]}
    refused(with_unsigned(der, [two_values]), "more than one archived key")
    refused(build(hash_placement="both"), "more than one key hash")


def test_error_messages_never_echo_the_input(build):
    der = build(subject_email="canary-7f3e@example.org", signer_key=None, requests=2)
    for data in (der, base64.b64encode(der), der[:-1] + b"\x01", b"canary-7f3e"):
        error = refused(data)
        assert "canary" not in error.message and "7f3e" not in error.message


# --- the key hash -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digest_alg", "hash_alg"),
    [("sha256", "sha1"), ("sha256", "sha256"), ("sha1", "sha1"), ("sha512", "sha512")],
)
def test_key_hash_in_sha1_or_the_request_digest_is_accepted(build, digest_alg, hash_alg):
    cmc.check_key_hash(cmc.parse_request(build(digest_alg=digest_alg, hash_alg=hash_alg)))


@pytest.mark.parametrize(
    ("digest_alg", "hash_alg"),
    [("sha256", "md5"), ("sha256", "sha512"), ("sha1", "sha256"), ("sha512", "sha256")],
)
def test_key_hash_in_any_other_algorithm_is_refused(build, digest_alg, hash_alg):
    request = cmc.parse_request(build(digest_alg=digest_alg, hash_alg=hash_alg))
    with pytest.raises(CmcInvalid, match="key hash does not match"):
        cmc.check_key_hash(request)


def test_a_key_hash_of_something_else_is_refused(build):
    request = cmc.parse_request(build(key_hash=bytes(20)))
    with pytest.raises(CmcInvalid, match="key hash does not match"):
        cmc.check_key_hash(request)


@pytest.mark.parametrize(
    "options",
    [{"hash_alg": None}, {"archived": False, "key_hash": bytes(20)}],
    ids=["key without hash", "hash without key"],
)
def test_key_and_hash_come_together(build, options):
    request = cmc.parse_request(build(**options))
    with pytest.raises(CmcInvalid, match="must come together") as caught:
        cmc.check_key_hash(request)
    assert caught.value.code == "cmc_invalid"


# --- decryption -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["aes256", "3des"])
@pytest.mark.parametrize("key_name", ["rsa2048-1", "rsa3072"])
def test_fresh_requests_give_back_the_very_key(build, cmc_vectors, content, key_name):
    key = cmc_vectors.pool_key(key_name)
    request = cmc.parse_request(build(key=key, content=content))
    cmc.check_key_hash(request)
    assert numbers(cmc.decrypt_archived_key(request, [cmc_vectors.exchange])) == numbers(key)


@pytest.mark.parametrize("recipient", ["issuer_serial", "ski"])
def test_either_exchange_certificate_of_a_rotation_decrypts(
    build, cmc_vectors, other_exchange, alice, recipient
):
    request = cmc.parse_request(build(recipient=recipient))
    for recipients in ([other_exchange, cmc_vectors.exchange], [cmc_vectors.exchange]):
        assert numbers(cmc.decrypt_archived_key(request, recipients)) == numbers(alice)


def enveloped_with(enveloped: bytes, change) -> bytes:
    info = cms.ContentInfo.load(enveloped)
    change(info["content"])
    edited = info.dump()
    assert edited != enveloped
    return edited


def undecryptable_cases(cmc_vectors, other_exchange, alice) -> dict[str, bytes]:
    """Requests whose archived key must not come out, each with a hash that matches."""
    exchange_cert = cmc_vectors.exchange_cert
    blob = cmc_vectors.data("alice-rsa2048.blob")
    good = builder.envelope(blob, exchange_cert)
    full, half = 256, 128  # RSA-2048 field widths in the blob
    iqmp_at, d_at = 20 + full + 4 * half, 20 + full + 5 * half

    def cut_block(enveloped):
        content = enveloped["encrypted_content_info"]
        content["encrypted_content"] = content["encrypted_content"].native[:-16]

    def cut_byte(enveloped):
        content = enveloped["encrypted_content_info"]
        content["encrypted_content"] = content["encrypted_content"].native[:-1]

    def transport_with(field, value):
        def change(enveloped):
            # A Choice does not notice changes inside its chosen value: set it anew.
            transport = enveloped["recipient_infos"][0].chosen
            transport[field] = value
            enveloped["recipient_infos"] = [cms.RecipientInfo(name="ktri", value=transport)]

        return change

    envelopes = {
        "another recipient": builder.envelope(blob, other_exchange[0]),
        "garbage": builder.octets(b"garbage" * 10),
        "not enveloped": cms.ContentInfo({"content_type": "data", "content": b"x"}).dump(),
        "ciphertext a block short": enveloped_with(good, cut_block),
        "ciphertext a byte short": enveloped_with(good, cut_byte),
        "random content key": enveloped_with(
            good, transport_with("encrypted_key", bytes(range(256)))
        ),
        "oaep key transport": enveloped_with(
            good, transport_with("key_encryption_algorithm", {"algorithm": "rsaes_oaep"})
        ),
        "aes-128 content": builder.envelope(blob, exchange_cert, content="aes128"),
        "wrong padding aes": builder.envelope(blob + bytes(12), exchange_cert, pad=False),
        "wrong padding 3des": builder.envelope(
            blob + bytes(4), exchange_cert, content="3des", pad=False
        ),
        "blob a byte short": builder.envelope(blob[:-1], exchange_cert),
        "blob a byte long": builder.envelope(blob + b"\x00", exchange_cert),
        "blob header": builder.envelope(builder.flipped(blob, 0), exchange_cert),
        "blob magic RSA1": builder.envelope(builder.flipped(blob, 11, 0x32 ^ 0x31), exchange_cert),
        "blob bit length": builder.envelope(builder.flipped(blob, 13), exchange_cert),
        "blob coefficient": builder.envelope(builder.flipped(blob, iqmp_at), exchange_cert),
        "blob private exponent": builder.envelope(builder.flipped(blob, d_at), exchange_cert),
        "blob of another key": builder.envelope(
            cmc_vectors.data("bob-rsa3072.blob"), exchange_cert
        ),
    }
    return {
        name: builder.build_archival_request(alice, exchange_cert, enveloped=enveloped)
        for name, enveloped in envelopes.items()
    }


def test_every_decryption_failure_is_one_and_the_same(cmc_vectors, other_exchange, alice):
    seen = set()
    for name, der in undecryptable_cases(cmc_vectors, other_exchange, alice).items():
        request = cmc.parse_request(der)
        cmc.check_key_hash(request)  # the hash is fine: the envelope is what is wrong
        with pytest.raises(ArchivedKeyUndecryptable) as caught:
            cmc.decrypt_archived_key(request, [cmc_vectors.exchange])
        error = caught.value
        # No chained cause or context: a traceback must not tell the cases apart either.
        assert error.__cause__ is None and error.__context__ is None, name
        seen.add((type(error), error.code, error.message, error.args))
    assert seen == {
        (
            ArchivedKeyUndecryptable,
            "archived_key_invalid",
            ArchivedKeyUndecryptable().message,
            ArchivedKeyUndecryptable().args,
        )
    }


def test_a_truncated_envelope_is_refused_at_either_step(build, cmc_vectors):
    der = build()
    request = cmc.parse_request(der)
    at = der.index(request.encrypted_key)
    # Inside the request, a cut-short envelope breaks the request's own structure.
    broken = der[:at] + request.encrypted_key[:2] + b"\x00" * (len(request.encrypted_key) - 2)
    refused(broken)
    # Handed over on its own, it is one more undecryptable key.
    short = dataclasses.replace(request, encrypted_key=request.encrypted_key[:100])
    with pytest.raises(ArchivedKeyUndecryptable):
        cmc.decrypt_archived_key(short, [cmc_vectors.exchange])


def test_the_installed_openssl_does_implicit_rejection(cmc_vectors):
    """What archive._unwrap's comment relies on: a bad PKCS#1 v1.5 padding decrypts to a
    synthetic message (the same one each time), not to an error that could be told apart."""
    exchange_key = cmc_vectors.key("exchange")
    ciphertext = bytes(range(1, 256)) + b"\x01"  # as long as the modulus, below it
    first = exchange_key.decrypt(ciphertext, padding.PKCS1v15())
    assert first == exchange_key.decrypt(ciphertext, padding.PKCS1v15())


def test_no_recipients_decrypts_nothing(build):
    with pytest.raises(ArchivedKeyUndecryptable):
        cmc.decrypt_archived_key(cmc.parse_request(build()), [])


# --- damaged input ----------------------------------------------------------------------------

VECTOR = (CMC_DIR / "rsa2048-aes256.der").read_bytes()


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    offset=st.integers(0, len(VECTOR) - 1),
    change=st.integers(1, 255),
    cut=st.integers(0, 3),
)
def test_a_damaged_request_gives_the_key_or_a_stable_refusal(cmc_vectors, offset, change, cut):
    """Whatever byte is hit, each step answers with its own error or, where the damage is in
    something nobody relies on (say, the SignedData's digestAlgorithms), with the right key."""
    data = builder.flipped(VECTOR, offset, change)[: len(VECTOR) - cut]
    try:
        request = cmc.parse_request(data)
        cmc.check_key_hash(request)
    except CmcInvalid:
        return
    try:
        key = cmc.decrypt_archived_key(request, [cmc_vectors.exchange])
    except ArchivedKeyUndecryptable:
        return
    assert numbers(key) == numbers(cmc_vectors.key("alice-rsa2048"))
