"""The CMC Full PKI Response to an AD CS enrollment (RFC 5272 §3.2.2, MS-WCCE §2.2.2.8).

Shaped like the one AD CS returns: SignedData by the CA over a PKIResponse whose controls are a
version-1 statusInfo (what Windows decodes as CMC_STATUS_INFO) naming the request's body part,
and one szOID_CMC_ADD_ATTRIBUTES control with the SHA-1 of the issued certificate and the
encrypted-key hash of the request. A client that archived its key refuses a response without
that hash (XENROLL_E_RESPONSE_KA_HASH_NOT_FOUND, 0x80095002).

A refusal carries the Windows HRESULT where a CMC status can: the failInfo says what kind of
failure it is, and the statusString begins "HRESULT 0x8009xxxx:" so that the agent in front of
the Windows client can answer with the exact code (MS-WCCE hands it over out of band, beside the
response; CMC itself has no field for it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import core
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from certvault.crypto.ber import ASN1_ERRORS
from certvault.crypto.cmc import asn1, controls
from certvault.crypto.cmc.request import CmcRequest
from certvault.crypto.cmc.signed import (
    SigningKey,
    certificates,
    decode,
    digest_of,
    invalid,
    load_signed,
    names_certificate,
    only_signer,
    sign,
    verify_signer,
)
from certvault.crypto.keys import spki_der
from certvault.errors import KeyMismatch

CERTSRV_E_ARCHIVED_KEY_REQUIRED = 0x80094804
CERTSRV_E_ARCHIVED_KEY_UNEXPECTED = 0x80094810
_DESCRIPTIONS = {
    CERTSRV_E_ARCHIVED_KEY_REQUIRED: "The certificate template requires key archival.",
    CERTSRV_E_ARCHIVED_KEY_UNEXPECTED: "The certificate template does not archive keys.",
}
_FAIL_INFO = {CERTSRV_E_ARCHIVED_KEY_REQUIRED: asn1.FAIL_MUST_ARCHIVE_KEYS}
_HRESULT = re.compile(r"HRESULT 0x([0-9A-F]{8}):")


@dataclass(frozen=True)
class ResponseSigner:
    """The CA that answers: its key, that key's certificate and the certificates above it."""

    key: SigningKey
    certificate: x509.Certificate
    chain: Sequence[x509.Certificate] = ()


@dataclass(frozen=True)
class CmcResponse:
    """What a response says, once its signature is checked."""

    status: str  # RFC 5272 CMCStatus: "success", "failed", "pending", ...
    body_parts: tuple[int, ...]  # the request body parts the status is about
    status_string: str | None
    fail_info: int | None  # CMCFailInfo of a failure
    windows_status: int | None  # the HRESULT of a failure, when the statusString names one
    encrypted_key_hash: bytes | None
    issued_certificate_hash: bytes | None  # SHA-1 of the issued certificate
    recipient_nonce: bytes | None
    transaction_id: int | None
    certificates: tuple[x509.Certificate, ...]  # in the DER order of their SET, not chain order


def build_response(request: CmcRequest, issued: x509.Certificate, signer: ResponseSigner) -> bytes:
    """DER: the success response carrying ``issued`` and the CA chain."""
    if spki_der(issued.public_key()) != spki_der(request.csr.public_key()):
        raise KeyMismatch("The certificate does not certify the key of the request.")
    issued_der = issued.public_bytes(serialization.Encoding.DER)
    added = [(asn1.ISSUED_CERT_HASH, digest_of("sha1", issued_der))]
    if request.encrypted_key_hash is not None:
        added.append((asn1.ENCRYPTED_KEY_HASH, request.encrypted_key_hash))
    status = _status(asn1.STATUS_SUCCESS, request.body_part_id, "Issued")
    body = [
        controls.tagged(1, asn1.STATUS_INFO, status),
        controls.add_attributes(2, request.body_part_id, added),
    ]
    return _signed([*body, *_echoes(request, len(body) + 1)], signer, [issued])


def build_failure(
    body_part_id: int,
    windows_status: int,
    signer: ResponseSigner,
    *,
    request: CmcRequest | None = None,
) -> bytes:
    """DER: a failed response for ``body_part_id`` (0: the whole request) with the HRESULT
    ``windows_status``, e.g. CERTSRV_E_ARCHIVED_KEY_REQUIRED. ``request``, when it could be
    read, gives the nonce and transaction id to echo."""
    code = _hresult(windows_status)
    text = _DESCRIPTIONS.get(code, "The request was refused.")
    status = _status(
        asn1.STATUS_FAILED,
        body_part_id,
        f"HRESULT 0x{code:08X}: {text}",
        fail_info=_FAIL_INFO.get(code, asn1.FAIL_BAD_REQUEST),
    )
    body = [controls.tagged(1, asn1.STATUS_INFO, status)]
    return _signed([*body, *_echoes(request, len(body) + 1)], signer, [])


def _hresult(value: int) -> int:
    """An HRESULT as an unsigned 32-bit number; it must have the failure bit set."""
    if -(2**31) <= value < 0:
        value += 2**32
    if not 0x80000000 <= value <= 0xFFFFFFFF:
        raise ValueError("A failure needs an HRESULT with the failure bit set.")
    return value


def _status(
    status: int, body_part_id: int, text: str, fail_info: int | None = None
) -> asn1.CMCStatusInfo:
    if not 0 <= body_part_id <= asn1.MAX_BODY_PART_ID:
        raise ValueError("A body part id is a 32-bit unsigned number.")
    value: dict[str, object] = {
        "cmc_status": status,
        "body_list": [body_part_id],
        "status_string": text,
    }
    if fail_info is not None:
        value["other_info"] = asn1.OtherInfo(name="fail_info", value=fail_info)
    return asn1.CMCStatusInfo(value)


def _echoes(request: CmcRequest | None, first: int) -> list[asn1.TaggedAttribute]:
    """The request's nonce back as recipientNonce, and its transaction id (RFC 5272 §6.6)."""
    echoes: list[asn1.TaggedAttribute] = []
    if request is not None and request.sender_nonce is not None:
        nonce = core.OctetString(request.sender_nonce)
        echoes.append(controls.tagged(first + len(echoes), asn1.RECIPIENT_NONCE, nonce))
    if request is not None and request.transaction_id is not None:
        transaction = core.Integer(request.transaction_id)
        echoes.append(controls.tagged(first + len(echoes), asn1.TRANSACTION_ID, transaction))
    return echoes


def _signed(
    body: list[asn1.TaggedAttribute], signer: ResponseSigner, issued: list[x509.Certificate]
) -> bytes:
    response = asn1.PKIResponse(
        {"control_sequence": body, "cms_sequence": [], "other_msg_sequence": []}
    )
    carried = [*issued, signer.certificate, *signer.chain]
    return sign(asn1.PKI_RESPONSE, response.dump(), signer.key, signer.certificate, carried)


def parse_response(data: bytes, ca_certificate: x509.Certificate) -> CmcResponse:
    """Read a response signed by ``ca_certificate``'s key; :class:`CmcInvalid` otherwise."""
    der = decode(data)
    try:
        return _parse(der, ca_certificate)
    except (*ASN1_ERRORS, UnsupportedAlgorithm):
        raise invalid("malformed") from None


def _parse(der: bytes, ca_certificate: x509.Certificate) -> CmcResponse:
    signed, econtent = load_signed(der, asn1.PKI_RESPONSE)
    signer = only_signer(signed)
    if not names_certificate(signer["sid"], ca_certificate):
        raise invalid("not signed by this CA")
    verify_signer(signer, econtent, asn1.PKI_RESPONSE, ca_certificate.public_key())
    found = controls.collect(asn1.PKIResponse.load(econtent, strict=True)["control_sequence"])
    statuses = found[asn1.STATUS_INFO]
    if len(statuses) != 1 or len(statuses[0]) != 1:
        raise invalid("not exactly one status")
    status = asn1.CMCStatusInfo.load(statuses[0][0].dump(), strict=True)
    text = status["status_string"].native
    other = status["other_info"]
    is_failure = isinstance(other, asn1.OtherInfo) and other.name == "fail_info"
    fail_info = other.chosen.native if is_failure else None
    return CmcResponse(
        status=asn1.STATUS_NAMES.get(status["cmc_status"].native, "unknown"),
        body_parts=tuple(controls.body_part(part) for part in status["body_list"]),
        status_string=text,
        fail_info=fail_info,
        windows_status=_windows_status(text),
        encrypted_key_hash=_optional(found, asn1.ENCRYPTED_KEY_HASH, "key hash"),
        issued_certificate_hash=_optional(found, asn1.ISSUED_CERT_HASH, "certificate hash"),
        recipient_nonce=_nonce(found),
        transaction_id=_transaction(found),
        certificates=certificates(signed),
    )


def _optional(found: dict[str, list[asn1.SetOfAny]], kind: str, what: str) -> bytes | None:
    values = controls.at_most_one(found[kind], what)
    return None if values is None else controls.key_hash(values)


def _nonce(found: dict[str, list[asn1.SetOfAny]]) -> bytes | None:
    values = controls.at_most_one(found[asn1.RECIPIENT_NONCE], "recipient nonce")
    return None if values is None else controls.octets(values)


def _transaction(found: dict[str, list[asn1.SetOfAny]]) -> int | None:
    values = controls.at_most_one(found[asn1.TRANSACTION_ID], "transaction id")
    return None if values is None else controls.integer(values)


def _windows_status(text: str | None) -> int | None:
    match = _HRESULT.match(text or "")
    return int(match.group(1), 16) if match else None
