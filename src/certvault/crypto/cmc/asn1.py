"""The ASN.1 of CMC (RFC 5272 §3, implicit tags) and of the Microsoft attributes AD CS adds.

asn1crypto knows CMS but not CMC, so the few CMC structures a Windows key-archival request and
its response use are declared here. Everything a request may hold but certvault does not process
(CRMF requests, nested CMC, other messages) is kept opaque, so that its presence can be refused.
"""

from __future__ import annotations

from asn1crypto import core
from asn1crypto import csr as asn1_csr

# RFC 5272 §3.2 and §6.
PKI_DATA = "1.3.6.1.5.5.7.12.2"  # id-cct-PKIData
PKI_RESPONSE = "1.3.6.1.5.5.7.12.3"  # id-cct-PKIResponse
STATUS_INFO = "1.3.6.1.5.5.7.7.1"  # id-cmc-statusInfo
TRANSACTION_ID = "1.3.6.1.5.5.7.7.5"  # id-cmc-transactionId
SENDER_NONCE = "1.3.6.1.5.5.7.7.6"  # id-cmc-senderNonce
RECIPIENT_NONCE = "1.3.6.1.5.5.7.7.7"  # id-cmc-recipientNonce
# MS-WCCE §2.2.2.7 and wincrypt.h.
CMC_ADD_ATTRIBUTES = "1.3.6.1.4.1.311.10.10.1"  # szOID_CMC_ADD_ATTRIBUTES
ARCHIVED_KEY = "1.3.6.1.4.1.311.21.13"  # szOID_ARCHIVED_KEY_ATTR
ISSUED_CERT_HASH = "1.3.6.1.4.1.311.21.17"  # szOID_ISSUED_CERT_HASH: SHA-1 of the certificate
ENCRYPTED_KEY_HASH = "1.3.6.1.4.1.311.21.21"  # szOID_ENCRYPTED_KEY_HASH

MAX_BODY_PART_ID = 2**32 - 1  # BodyPartID ::= INTEGER (0..4294967295)


class SetOfAny(core.SetOf):
    _child_spec = core.Any


class _Opaque(core.SequenceOf):
    """A SEQUENCE whose members are not looked into."""

    _child_spec = core.Any


class Attribute(core.Sequence):
    _fields = [("type", core.ObjectIdentifier), ("values", SetOfAny)]


class Attributes(core.SetOf):
    _child_spec = Attribute


class TaggedAttribute(core.Sequence):
    _fields = [
        ("body_part_id", core.Integer),
        ("attr_type", core.ObjectIdentifier),
        ("attr_values", SetOfAny),
    ]


class ControlSequence(core.SequenceOf):
    _child_spec = TaggedAttribute


class TaggedCertificationRequest(core.Sequence):
    _fields = [
        ("body_part_id", core.Integer),
        ("certification_request", asn1_csr.CertificationRequest),
    ]


class TaggedRequest(core.Choice):
    _alternatives = [
        ("tcr", TaggedCertificationRequest, {"implicit": 0}),
        ("crm", _Opaque, {"implicit": 1}),
        ("orm", _Opaque, {"implicit": 2}),
    ]


class ReqSequence(core.SequenceOf):
    _child_spec = TaggedRequest


class PKIData(core.Sequence):
    _fields = [
        ("control_sequence", ControlSequence),
        ("req_sequence", ReqSequence),
        ("cms_sequence", _Opaque),
        ("other_msg_sequence", _Opaque),
    ]


class PKIResponse(core.Sequence):
    _fields = [
        ("control_sequence", ControlSequence),
        ("cms_sequence", _Opaque),
        ("other_msg_sequence", _Opaque),
    ]


class BodyPartList(core.SequenceOf):
    _child_spec = core.Integer


class PendInfo(core.Sequence):
    _fields = [("pend_token", core.OctetString), ("pend_time", core.GeneralizedTime)]


class OtherInfo(core.Choice):
    _alternatives = [("fail_info", core.Integer), ("pend_info", PendInfo)]


class CMCStatusInfo(core.Sequence):
    """RFC 5272 §6.1.1: the version-1 status that Windows decodes (CMC_STATUS_INFO)."""

    _fields = [
        ("cmc_status", core.Integer),
        ("body_list", BodyPartList),
        ("status_string", core.UTF8String, {"optional": True}),
        ("other_info", OtherInfo, {"optional": True}),
    ]


class CmcAddAttributes(core.Sequence):
    """wincrypt.h CMC_ADD_ATTRIBUTES_INFO: where Windows puts the key and certificate hashes."""

    _fields = [
        ("pki_data_reference", core.Integer),
        ("cert_references", BodyPartList),
        ("attributes", Attributes),
    ]


# CMCStatus (RFC 5272 §6.1.1) and CMCFailInfo values used here.
STATUS_SUCCESS = 0
STATUS_FAILED = 2
FAIL_BAD_REQUEST = 2
FAIL_MUST_ARCHIVE_KEYS = 6
STATUS_NAMES = {
    0: "success",
    2: "failed",
    3: "pending",
    4: "noSupport",
    5: "confirmRequired",
    6: "popRequired",
    7: "partial",
}
