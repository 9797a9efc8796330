"""The CMC Full PKI Request a Windows client sends when its template archives the key.

MS-WCCE §3.2.2.6.2.1.2.2: CMS SignedData over a PKIData that holds exactly one PKCS#10, signed
with the PKCS#10's own key; the key to archive rides as an unauthenticated attribute of that
signer (szOID_ARCHIVED_KEY_ATTR), and its hash as a signed control (szOID_ENCRYPTED_KEY_HASH), so
that the unauthenticated envelope is bound to the signature through the hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from certvault.crypto.ber import ASN1_ERRORS
from certvault.crypto.cmc import asn1, controls
from certvault.crypto.cmc.signed import decode, invalid, load_signed, only_signer, verify_signer


@dataclass(frozen=True)
class CmcRequest:
    """A checked request: its PKCS#10 and what the archival and the response need."""

    csr: x509.CertificateSigningRequest
    body_part_id: int  # the PKCS#10's BodyPartID, which the response's status refers to
    digest_algorithm: str  # the signer's: "sha1", "sha256", "sha384" or "sha512"
    encrypted_key: bytes | None  # the archived-key value: DER ContentInfo(EnvelopedData)
    encrypted_key_hash: bytes | None  # szOID_ENCRYPTED_KEY_HASH as the client sent it
    signer_key_identifier: bytes | None  # the SignerInfo's subjectKeyIdentifier, if it uses one
    sender_nonce: bytes | None = None  # id-cmc-senderNonce, answered with recipientNonce
    transaction_id: int | None = None  # id-cmc-transactionId, answered with itself


def parse_request(data: bytes) -> CmcRequest:
    """Parse and check a CMC request (DER, base64 or armoured); :class:`CmcInvalid` otherwise.

    Checked here: the shape, exactly one PKCS#10 and nothing nested, the PKCS#10's signature
    (proof of possession), the one signer's signature by that same key over the PKIData, and at
    most one archived key and one key hash. Not checked here: the key hash against the key
    (:func:`check_key_hash`) and whether the template wants a key at all (the caller's policy).
    """
    der = decode(data)
    try:
        return _parse(der)
    except (*ASN1_ERRORS, UnsupportedAlgorithm):
        raise invalid("malformed") from None


def _parse(der: bytes) -> CmcRequest:
    signed, econtent = load_signed(der, asn1.PKI_DATA)
    signer = only_signer(signed)
    pki_data = asn1.PKIData.load(econtent, strict=True)
    body_part_id, csr = _only_request(pki_data)
    if not csr.is_signature_valid:
        raise invalid("the PKCS#10 signature does not verify")
    digest = verify_signer(signer, econtent, asn1.PKI_DATA, csr.public_key())
    found = controls.collect(pki_data["control_sequence"])
    key_hash = controls.at_most_one(found[asn1.ENCRYPTED_KEY_HASH], "key hash")
    nonce = controls.at_most_one(found[asn1.SENDER_NONCE], "sender nonce")
    transaction = controls.at_most_one(found[asn1.TRANSACTION_ID], "transaction id")
    sid = signer["sid"]
    return CmcRequest(
        csr=csr,
        body_part_id=body_part_id,
        digest_algorithm=digest,
        encrypted_key=_archived_key(signer),
        encrypted_key_hash=None if key_hash is None else controls.key_hash(key_hash),
        signer_key_identifier=(
            bytes(sid.chosen.native) if sid.name == "subject_key_identifier" else None
        ),
        sender_nonce=None if nonce is None else controls.octets(nonce),
        transaction_id=None if transaction is None else controls.integer(transaction),
    )


def _only_request(pki_data: asn1.PKIData) -> tuple[int, x509.CertificateSigningRequest]:
    """MS-WCCE: exactly one certificate request, a PKCS#10, and no nested CMC around others."""
    requests = pki_data["req_sequence"]
    if len(requests) != 1 or requests[0].name != "tcr":
        raise invalid("not exactly one PKCS#10 request")
    if len(pki_data["cms_sequence"]) or len(pki_data["other_msg_sequence"]):
        raise invalid("nested content or other messages")
    tagged = requests[0].chosen
    body_part_id = controls.body_part(tagged["body_part_id"])
    return body_part_id, x509.load_der_x509_csr(tagged["certification_request"].dump())


def _archived_key(signer: cms.SignerInfo) -> bytes | None:
    """The archived-key attribute's one value, as sent: the key hash covers exactly these bytes."""
    attributes = signer["unsigned_attrs"]
    if not isinstance(attributes, cms.CMSAttributes):
        return None
    found = [a for a in attributes if a["type"].dotted == asn1.ARCHIVED_KEY]
    if not found:
        return None
    if len(found) > 1 or len(found[0]["values"]) != 1:
        raise invalid("more than one archived key")
    return bytes(found[0]["values"][0].dump())
