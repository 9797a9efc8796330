"""CMC responses to AD CS enrollments: built by the CA, read back, and checked by openssl."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certvault.crypto import ca, cmc
from certvault.crypto.profiles import PROFILES
from certvault.errors import CmcInvalid, KeyMismatch
from tests import cmc_builder as builder


@dataclass(frozen=True)
class Authority:
    signer: cmc.ResponseSigner
    root: x509.Certificate

    def issue(self, request: cmc.CmcRequest) -> x509.Certificate:
        return ca.issue_certificate(
            self.signer.key,
            self.signer.certificate,
            request.csr.public_key(),
            PROFILES["smime"],
            email="alice@example.org",
        )


def authority(root_key, issuing_key) -> Authority:
    root = ca.build_root(root_key, "Acme Root CA")
    issuing = ca.build_issuing(root_key, root, issuing_key, "Acme Issuing CA")
    return Authority(cmc.ResponseSigner(issuing_key, issuing, (root,)), root)


@pytest.fixture(scope="module")
def rsa_authority(cmc_vectors):
    return authority(cmc_vectors.pool_key("rsa2048-4"), cmc_vectors.pool_key("rsa2048-3"))


@pytest.fixture(scope="module")
def ec_authority(cmc_vectors):
    return authority(cmc_vectors.pool_key("ec384"), cmc_vectors.pool_key("ec256"))


@pytest.fixture(params=["rsa", "ec"])
def authority_(request):
    return request.getfixturevalue(f"{request.param}_authority")


@pytest.fixture(scope="module")
def archival(cmc_vectors):
    return cmc.parse_request(cmc_vectors.data("rsa3072-3des-sha1.der"))


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def pem(certificates) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def test_a_success_response_reads_back(authority_, archival):
    issued = authority_.issue(archival)
    response = cmc.parse_response(
        cmc.build_response(archival, issued, authority_.signer), authority_.signer.certificate
    )
    assert response.status == "success"
    assert response.body_parts == (archival.body_part_id,)
    assert response.status_string == "Issued"
    assert response.fail_info is None and response.windows_status is None
    assert response.encrypted_key_hash == archival.encrypted_key_hash
    assert response.issued_certificate_hash == hashlib.sha1(der(issued)).digest()
    # A SET OF in DER: the order is the encodings', not the chain's.
    assert set(response.certificates) == {issued, authority_.signer.certificate, authority_.root}
    assert len(response.certificates) == 3
    # RFC 5272 §6.6: the sender's nonce comes back as the recipient nonce, the transaction id as is.
    assert response.recipient_nonce == archival.sender_nonce == bytes(range(16))
    assert response.transaction_id == archival.transaction_id == 4242


def test_a_response_without_archival_carries_no_key_hash(rsa_authority, cmc_vectors):
    request = cmc.parse_request(cmc_vectors.data("rsa2048-no-key.der"))
    data = cmc.build_response(request, rsa_authority.issue(request), rsa_authority.signer)
    response = cmc.parse_response(data, rsa_authority.signer.certificate)
    assert response.status == "success" and response.encrypted_key_hash is None
    assert response.recipient_nonce is None and response.transaction_id is None


def test_openssl_verifies_the_response(authority_, archival, tmp_path):
    data = cmc.build_response(archival, authority_.issue(archival), authority_.signer)
    (tmp_path / "response.der").write_bytes(data)
    (tmp_path / "root.pem").write_bytes(pem([authority_.root]))
    common = ("cms", "-verify", "-binary", "-inform", "DER", "-in", tmp_path / "response.der")
    for trust in (("-noverify",), ("-CAfile", tmp_path / "root.pem", "-purpose", "any")):
        out = tmp_path / "content.der"
        verified = builder.openssl(*common, *trust, "-out", out)
        assert b"Verification successful" in verified.stderr
    printed = builder.openssl(
        "cms", "-cmsout", "-print", "-inform", "DER", "-in", tmp_path / "response.der"
    )
    assert b"id-cct-PKIResponse" in printed.stdout
    # The content openssl extracted is the PKIResponse: the status and both hashes are in it.
    content = (tmp_path / "content.der").read_bytes()
    assert archival.encrypted_key_hash in content
    parsed = builder.openssl("asn1parse", "-inform", "DER", "-in", tmp_path / "content.der")
    assert b"1.3.6.1.4.1.311.10.10.1" in parsed.stdout  # szOID_CMC_ADD_ATTRIBUTES
    assert b"1.3.6.1.4.1.311.21.21" in parsed.stdout  # szOID_ENCRYPTED_KEY_HASH
    assert b"1.3.6.1.4.1.311.21.17" in parsed.stdout  # szOID_ISSUED_CERT_HASH


@pytest.mark.parametrize(
    ("status", "fail_info", "text"),
    [
        (cmc.CERTSRV_E_ARCHIVED_KEY_REQUIRED, 6, "requires key archival"),  # mustArchiveKeys
        (cmc.CERTSRV_E_ARCHIVED_KEY_UNEXPECTED, 2, "does not archive keys"),  # badRequest
        (0x8007000D, 2, "was refused"),  # ERROR_INVALID_DATA
        (-2146875388, 6, "requires key archival"),  # 0x80094804 as a signed 32-bit number
    ],
)
def test_a_failure_carries_the_hresult(authority_, archival, status, fail_info, text):
    data = cmc.build_failure(7, status, authority_.signer, request=archival)
    response = cmc.parse_response(data, authority_.signer.certificate)
    assert response.status == "failed"
    assert response.body_parts == (7,)
    assert response.windows_status == status & 0xFFFFFFFF
    assert response.status_string.startswith(f"HRESULT 0x{status & 0xFFFFFFFF:08X}: ")
    assert text in response.status_string
    assert response.fail_info == fail_info
    assert response.encrypted_key_hash is None and response.issued_certificate_hash is None
    assert response.recipient_nonce == archival.sender_nonce
    assert set(response.certificates) == {authority_.signer.certificate, authority_.root}


def test_a_failure_for_an_unreadable_request_names_the_whole_message(rsa_authority, tmp_path):
    data = cmc.build_failure(0, cmc.CERTSRV_E_ARCHIVED_KEY_REQUIRED, rsa_authority.signer)
    response = cmc.parse_response(data, rsa_authority.signer.certificate)
    assert response.body_parts == (0,) and response.recipient_nonce is None
    (tmp_path / "failure.der").write_bytes(data)
    builder.openssl(
        "cms", "-verify", "-noverify", "-inform", "DER", "-in", tmp_path / "failure.der"
    )


@pytest.mark.parametrize("status", [0, 1, 0x00094804, 2**32, -(2**31) - 1])
def test_a_failure_needs_a_failure_hresult(rsa_authority, status):
    with pytest.raises(ValueError, match="failure bit"):
        cmc.build_failure(1, status, rsa_authority.signer)


def test_a_response_for_another_key_is_not_built(rsa_authority, archival, cmc_vectors):
    other = ca.issue_certificate(
        rsa_authority.signer.key,
        rsa_authority.signer.certificate,
        cmc_vectors.pool_key("rsa2048-1").public_key(),
        PROFILES["smime"],
        email="alice@example.org",
    )
    with pytest.raises(KeyMismatch):
        cmc.build_response(archival, other, rsa_authority.signer)


def test_the_signing_key_must_be_the_certificate_s(rsa_authority, ec_authority, archival):
    mixed = cmc.ResponseSigner(ec_authority.signer.key, rsa_authority.signer.certificate)
    with pytest.raises(KeyMismatch):
        cmc.build_failure(1, cmc.CERTSRV_E_ARCHIVED_KEY_REQUIRED, mixed)


def test_a_response_from_another_ca_or_altered_is_refused(
    rsa_authority, ec_authority, archival, cmc_vectors
):
    data = cmc.build_response(archival, rsa_authority.issue(archival), rsa_authority.signer)
    with pytest.raises(CmcInvalid, match="not signed by this CA"):
        cmc.parse_response(data, ec_authority.signer.certificate)
    at = data.index(archival.encrypted_key_hash)
    altered = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    with pytest.raises(CmcInvalid, match="message digest does not match"):
        cmc.parse_response(altered, rsa_authority.signer.certificate)
    request = cmc_vectors.data("rsa2048-aes256.der")  # a PKIData where a PKIResponse belongs
    with pytest.raises(CmcInvalid, match="wrong content type"):
        cmc.parse_response(request, rsa_authority.signer.certificate)
