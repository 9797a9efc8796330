"""CMS SignedData as CMC uses it: one signer, signed attributes, content of a CMC type.

Requests and responses share it: the client signs its request with the key of its own PKCS#10,
the CA signs its response with its own key, and each side checks the other the same way. Input
is bounded in size and nesting before asn1crypto sees it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Sequence
from typing import TypeAlias

from asn1crypto import cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from certvault.crypto.ber import ASN1_ERRORS, BerError, check_structure
from certvault.crypto.ca import signature_hash
from certvault.crypto.keys import key_matches_certificate
from certvault.errors import CmcInvalid, KeyMismatch

SigningKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

MAX_MESSAGE_BYTES = 64 * 1024  # an RSA-4096 archival request is about 6 KiB
# A Windows archival request nests 16 deep at most (the EnvelopedData in an unsigned attribute);
# the PKIData inside its OCTET STRING is checked on its own.
MAX_DEPTH = 32

DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# Signature algorithms accepted, with the digest their OID implies (None: the digest field's).
_SIGNATURES: dict[str, str | None] = {
    "rsassa_pkcs1v15": None,
    "sha1_rsa": "sha1",
    "sha256_rsa": "sha256",
    "sha384_rsa": "sha384",
    "sha512_rsa": "sha512",
    "sha1_ecdsa": "sha1",
    "sha256_ecdsa": "sha256",
    "sha384_ecdsa": "sha384",
    "sha512_ecdsa": "sha512",
}
# Armour labels that certreq, certutil and openssl write around base64 requests and responses.
_LABELS = frozenset(
    {"NEW CERTIFICATE REQUEST", "CERTIFICATE REQUEST", "CMC REQUEST", "CMC RESPONSE", "PKCS7"}
)
_ARMOUR = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*)-----END \1-----", re.DOTALL)


def digest_of(name: str, data: bytes) -> bytes:
    """``data`` hashed with the algorithm called ``name`` in :data:`DIGESTS`."""
    hasher = hashes.Hash(DIGESTS[name]())
    hasher.update(data)
    return hasher.finalize()


def invalid(what: str) -> CmcInvalid:
    """The one refusal of CMC input; ``what`` is a fixed phrase, never input."""
    return CmcInvalid(f"The data is not an acceptable CMC message ({what}).")


def decode(data: bytes) -> bytes:
    """DER from DER, base64 or armoured base64, checked in size and nesting."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise invalid(f"larger than {MAX_MESSAGE_BYTES // 1024} KiB")
    der = data if data[:1] == b"\x30" else _from_text(data)
    check_shape(der)
    return der


def _from_text(data: bytes) -> bytes:
    try:
        text = data.removeprefix(b"\xef\xbb\xbf").decode("ascii").strip()
    except UnicodeDecodeError:
        raise invalid("neither DER nor base64") from None
    armoured = _ARMOUR.fullmatch(text)
    if armoured:
        if armoured.group(1) not in _LABELS:
            raise invalid("unknown armour label")
        text = armoured.group(2)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("neither DER nor base64") from None


def check_shape(der: bytes) -> None:
    """Refuse ``der`` before a recursive parser meets it: too deep, badly delimited, or more."""
    try:
        check_structure(der, max_depth=MAX_DEPTH)
    except BerError as exc:
        raise invalid(f"ASN.1 {exc}") from None


def load_signed(der: bytes, content_type: str) -> tuple[cms.SignedData, bytes]:
    """The SignedData in ``der`` and its eContent, which must be of ``content_type``."""
    try:
        info = cms.ContentInfo.load(der, strict=True)
        kind = info["content_type"].native
    except ASN1_ERRORS:
        kind = None  # a PKCS#10 or a certificate: a SEQUENCE, but not a ContentInfo
    if kind != "signed_data":
        raise invalid("not CMS SignedData")
    signed = info["content"]
    encap = signed["encap_content_info"]
    if encap["content_type"].dotted != content_type:
        raise invalid("wrong content type")
    content = encap["content"]
    if not isinstance(content, asn1_core.ParsableOctetString) or content.native is None:
        # CMS version 3 for any content but id-data (RFC 5652 §5.1); detached content is no use.
        raise invalid("no encapsulated content")
    econtent = bytes(content.native)
    check_shape(econtent)
    return signed, econtent


def only_signer(signed: cms.SignedData) -> cms.SignerInfo:
    """The one SignerInfo: a second signer would speak for a request nobody checks."""
    signers = signed["signer_infos"]
    if len(signers) != 1:
        raise invalid("not exactly one signer")
    return signers[0]


def verify_signer(
    signer: cms.SignerInfo, econtent: bytes, content_type: str, public_key: PublicKeyTypes
) -> str:
    """Check ``signer``'s signature with ``public_key``; return its digest algorithm's name.

    The signature covers the signed attributes, and they bind the content through messageDigest
    (RFC 5652 §5.4): both are checked, and their contentType must name the eContentType.
    """
    digest = signer["digest_algorithm"]["algorithm"].native
    if digest not in DIGESTS:
        raise invalid("unsupported digest algorithm")
    attributes = signer["signed_attrs"]
    if not isinstance(attributes, cms.CMSAttributes) or not len(attributes):
        raise invalid("no signed attributes")
    if _single(attributes, "content_type").dotted != content_type:
        raise invalid("signed content type differs")
    expected = digest_of(digest, econtent)
    if not hmac.compare_digest(bytes(_single(attributes, "message_digest").native), expected):
        raise invalid("message digest does not match the content")
    # Signed as the DER SET OF, not with the [0] tag it carries inside SignerInfo.
    signed_bytes = b"\x31" + attributes.dump()[1:]
    _verify(public_key, signer, signed_bytes, digest)
    return str(digest)


def _single(attributes: cms.CMSAttributes, name: str) -> asn1_core.Asn1Value:
    found = [a for a in attributes if a["type"].native == name]
    if len(found) != 1 or len(found[0]["values"]) != 1:
        raise invalid(f"not exactly one {name.replace('_', ' ')}")
    return found[0]["values"][0]


def _verify(public_key: PublicKeyTypes, signer: cms.SignerInfo, data: bytes, digest: str) -> None:
    name = signer["signature_algorithm"]["algorithm"].native
    if name not in _SIGNATURES or _SIGNATURES[name] not in (None, digest):
        raise invalid("unsupported signature algorithm")
    algorithm = DIGESTS[digest]()
    signature = bytes(signer["signature"].native)
    try:
        if name.endswith("rsa") or name == "rsassa_pkcs1v15":
            if not isinstance(public_key, rsa.RSAPublicKey):
                raise invalid("signature algorithm does not fit the key")
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            if not isinstance(public_key, ec.EllipticCurvePublicKey):
                raise invalid("signature algorithm does not fit the key")
            public_key.verify(signature, data, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise invalid("signature does not verify") from None


def certificates(signed: cms.SignedData) -> tuple[x509.Certificate, ...]:
    """The X.509 certificates a SignedData carries (other kinds are skipped)."""
    found = []
    for choice in signed["certificates"] or ():
        if choice.name == "certificate":
            try:
                found.append(x509.load_der_x509_certificate(choice.chosen.dump()))
            except ValueError:
                raise invalid("unreadable certificate") from None
    return tuple(found)


def names_certificate(identifier: asn1_core.Choice, certificate: x509.Certificate) -> bool:
    """Whether a SignerIdentifier or RecipientIdentifier names ``certificate``."""
    if identifier.name == "subject_key_identifier":
        return bytes(identifier.chosen.native) == key_identifier(certificate)
    issuer_serial = identifier.chosen
    return bool(
        issuer_serial["issuer"].dump() == certificate.issuer.public_bytes()
        and issuer_serial["serial_number"].native == certificate.serial_number
    )


def key_identifier(certificate: x509.Certificate) -> bytes:
    """The certificate's SubjectKeyIdentifier, or the RFC 5280 §4.2.1.2 (1) one of its key."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return extension.value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def sign(
    content_type: str,
    econtent: bytes,
    key: SigningKey,
    certificate: x509.Certificate,
    carried: Sequence[x509.Certificate],
) -> bytes:
    """DER ContentInfo: SignedData over ``econtent`` by ``key``, carrying ``carried``."""
    if not key_matches_certificate(key, certificate):
        raise KeyMismatch("The signing key does not belong to the signing certificate.")
    algorithm = signature_hash(key) or hashes.SHA256()
    digest = algorithm.name
    attributes = cms.CMSAttributes(
        [
            {"type": "content_type", "values": [content_type]},
            {"type": "message_digest", "values": [digest_of(digest, econtent)]},
        ]
    )
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(attributes.dump(), padding.PKCS1v15(), algorithm)
        signature_algorithm = "rsassa_pkcs1v15"
    else:
        signature = key.sign(attributes.dump(), ec.ECDSA(algorithm))
        signature_algorithm = f"{digest}_ecdsa"
    signer = {
        "version": "v1",
        "sid": {
            "issuer_and_serial_number": {
                "issuer": asn1_x509.Name.load(certificate.issuer.public_bytes()),
                "serial_number": certificate.serial_number,
            }
        },
        "digest_algorithm": {"algorithm": digest},
        "signed_attrs": attributes,
        "signature_algorithm": {"algorithm": signature_algorithm},
        "signature": signature,
    }
    signed = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [{"algorithm": digest}],
            "encap_content_info": {"content_type": content_type, "content": econtent},
            "certificates": [_asn1_certificate(c) for c in carried],
            "signer_infos": [signer],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def _asn1_certificate(certificate: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
