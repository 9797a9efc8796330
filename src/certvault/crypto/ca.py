"""The built-in CA: root and issuing CA certificates, certificates by profile, CSRs and CRLs.

Pure functions, objects in and out. Who may issue, which serials are taken and where keys live is
the business of ``services``; this module only builds and checks X.509 structures.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from certvault.crypto.keypolicy import check_public_key
from certvault.crypto.keys import PrivateKey, key_matches_certificate, supported_key
from certvault.crypto.profiles import KeyType, Profile, key_type_of
from certvault.errors import (
    CaInvalid,
    CsrInvalid,
    CsrUnsupportedKey,
    InvalidInput,
    KeyMismatch,
    KeyTypeNotAllowed,
    TooLarge,
)

_SignatureHash: TypeAlias = hashes.SHA256 | hashes.SHA384 | hashes.SHA512

# Relying parties whose clocks run a little behind must not see a "not yet valid" certificate.
CLOCK_SKEW = datetime.timedelta(minutes=5)
MAX_CSR_BYTES = 64 * 1024
# RFC 5280 4.1.2.2: positive and at most 20 octets, so below 2**159 once DER adds no sign byte.
_SERIAL_LIMIT = 2**159
# X.520 ub-common-name; cryptography refuses longer values.
_MAX_COMMON_NAME = 64
_MAX_EMAIL = 254  # RFC 5321 path limit less the angle brackets

# RFC 5280 5.3.1 CRLReason names a revocation may give; the CA-level ones (cACompromise,
# aACompromise) and removeFromCRL are not a subscriber certificate's business.
REVOCATION_REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
)


@dataclass(frozen=True)
class RevokedEntry:
    """One line of a CRL."""

    serial: int
    revoked_at: datetime.datetime
    reason: str  # one of REVOCATION_REASONS


# --- CA certificates ----------------------------------------------------------------------------


def build_root(
    key: PrivateKey,
    common_name: str,
    organization: str | None = None,
    *,
    validity_days: int = 3650,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A self-signed root CA certificate for ``key``."""
    now = _utc(now)
    key = supported_key(key)
    name = _name(common_name, organization)
    not_before, not_after = _validity(now, validity_days, issuer=None)
    return _ca_certificate(
        subject=name,
        public_key=key.public_key(),
        issuer_name=name,
        issuer_key=key,
        authority_key_id=None,  # RFC 5280 4.2.1.1: may be omitted in a self-signed certificate
        not_before=not_before,
        not_after=not_after,
        path_length=None,
        crl_url=None,  # nobody revokes a root through a CRL it signs itself
    )


def build_issuing(
    parent_key: PrivateKey,
    parent_cert: x509.Certificate,
    key: PrivateKey,
    common_name: str,
    organization: str | None = None,
    *,
    validity_days: int = 1825,
    crl_url: str | None = None,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """An issuing CA certificate for ``key``; ``crl_url`` is where the parent publishes its CRL."""
    now = _utc(now)
    parent_key = _ca_pair(parent_key, parent_cert)
    key = supported_key(key)
    not_before, not_after = _validity(now, validity_days, issuer=parent_cert)
    return _ca_certificate(
        subject=_name(common_name, organization),
        public_key=key.public_key(),
        issuer_name=parent_cert.subject,
        issuer_key=parent_key,
        authority_key_id=_authority_key_id(parent_cert, parent_key),
        not_before=not_before,
        not_after=not_after,
        # It issues end-entity certificates only: a sub-CA under it would fail validation.
        path_length=0,
        crl_url=crl_url,
    )


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (and its subject is ``cert``'s issuer)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


MAX_CHAIN_DEPTH = 8


def chains_to(
    cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> bool:
    """Whether ``cert`` was signed by one of ``anchors``, directly or through ``chain`` (each link
    checked by its signature, at most MAX_CHAIN_DEPTH deep)."""
    if not anchors:
        return False  # nothing to reach: no signature needs checking
    current = cert
    for _ in range(MAX_CHAIN_DEPTH):
        if any(issued_by(current, anchor) for anchor in anchors):
            return True
        parent = next(
            (c for c in chain if c.subject == current.issuer and issued_by(current, c)), None
        )
        if parent is None or parent == current:
            return False
        current = parent
    return False


def verify_issuing_pair(
    key: PrivateKey, cert: x509.Certificate, *, now: datetime.datetime | None = None
) -> None:
    """Check that an imported issuing CA can sign: a current CA certificate whose key is ``key``."""
    now = _utc(now)
    _ca_pair(key, cert)
    if cert.not_valid_after_utc <= now:
        raise CaInvalid("The CA certificate has expired.")


def _ca_certificate(
    *,
    subject: x509.Name,
    public_key: CertificatePublicKeyTypes,
    issuer_name: x509.Name,
    issuer_key: PrivateKey,
    authority_key_id: x509.AuthorityKeyIdentifier | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    path_length: int | None,
    crl_url: str | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if authority_key_id is not None:
        builder = builder.add_extension(authority_key_id, critical=False)
    if crl_url is not None:
        builder = builder.add_extension(_crl_distribution_points(crl_url), critical=False)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


# --- end-entity certificates --------------------------------------------------------------------


def issue_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    profile: Profile,
    *,
    email: str,
    common_name: str | None = None,
    extra_emails: Iterable[str] = (),
    serial: int | None = None,
    crl_url: str | None = None,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """A certificate of ``profile`` for ``public_key``, naming ``email`` (and ``extra_emails``)."""
    now = _utc(now)
    ca_key = _ca_pair(ca_key, ca_cert)
    check_public_key(public_key)
    kind = key_type_of(public_key)
    if kind is None or kind not in profile.allowed_key_types:
        allowed = ", ".join(sorted(profile.allowed_key_types))
        raise KeyTypeNotAllowed(f"The profile {profile.name} allows these key types: {allowed}.")
    if serial is None:
        serial = x509.random_serial_number()
    elif not 0 < serial < _SERIAL_LIMIT:
        raise InvalidInput("A serial number must be positive and fit in 20 octets.")
    emails = _emails(email, extra_emails)
    subject = _subject(emails[0], common_name)
    not_before, not_after = _validity(now, profile.validity_days, issuer=ca_cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(profile.key_usage(public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(profile.extended_key_usages)), critical=False)
        # S/MIME BR 7.1.4.2: the mailbox address belongs in the SAN; with an empty subject the
        # SAN carries the whole identity and must be critical (RFC 5280 4.2.1.6).
        .add_extension(_san(emails), critical=len(subject) == 0)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
    )
    if crl_url is not None:
        builder = builder.add_extension(_crl_distribution_points(crl_url), critical=False)
    return builder.sign(ca_key, signature_hash(ca_key))


# MS-WCCE §3.2.2.6.2.1.2.2: the CA exchange certificate, whose key Windows clients encrypt the
# private key they archive to (szOID_KP_CA_EXCHANGE).
CA_EXCHANGE_EKU = x509.ObjectIdentifier("1.3.6.1.4.1.311.21.5")


def issue_exchange_certificate(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    public_key: CertificatePublicKeyTypes,
    common_name: str,
    *,
    validity: datetime.timedelta,
    crl_url: str | None = None,
    now: datetime.datetime | None = None,
) -> x509.Certificate:
    """The CA exchange certificate for ``public_key``, signed by the issuing CA (a Windows client
    accepts one only from the CA that will issue its certificate): keyEncipherment only."""
    now = _utc(now)
    ca_key = _ca_pair(ca_key, ca_cert)
    check_public_key(public_key)
    not_before = max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise CaInvalid("The CA certificate has expired.")
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([CA_EXCHANGE_EKU]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
    )
    if crl_url is not None:
        builder = builder.add_extension(_crl_distribution_points(crl_url), critical=False)
    return builder.sign(ca_key, signature_hash(ca_key))


# --- CSRs ---------------------------------------------------------------------------------------


def build_csr(
    key: PrivateKey, email: str, common_name: str | None = None
) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` naming ``email``, as server-side key generation sends it to the issuer."""
    key = supported_key(key)
    emails = _emails(email, ())
    subject = _subject(emails[0], common_name)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(_san(emails), critical=len(subject) == 0)
    )
    return builder.sign(key, signature_hash(key))


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER CSR; :class:`CsrInvalid` when it is neither."""
    if len(data) > MAX_CSR_BYTES:
        raise TooLarge(f"A certificate signing request may be at most {MAX_CSR_BYTES} bytes.")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError:
        raise CsrInvalid("The data is not a PEM or DER certificate signing request.") from None


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    """Refuse a CSR whose key we do not certify or whose signature does not verify.

    Only the public key is taken from a CSR: the profile decides the extensions and the enrollment
    decides the names, so nothing else in it needs to be trusted.
    """
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise CsrUnsupportedKey(
            "The CSR's public key cannot be read: it is malformed, or on a curve of its own."
        ) from None
    # Before the signature: a key no certificate may carry is refused for what it is.
    check_public_key(public_key)
    if key_type_of(public_key) is None:
        allowed = ", ".join(KeyType)
        raise CsrUnsupportedKey(f"The CSR's key must be one of these types: {allowed}.")
    try:
        # Proof of possession: whoever sent the CSR holds the private key.
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CsrInvalid("The CSR's signature does not verify: it was altered or signed elsewhere.")


# --- CRLs ---------------------------------------------------------------------------------------


def build_crl(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    revoked: Sequence[RevokedEntry],
    *,
    crl_number: int,
    this_update: datetime.datetime,
    next_update: datetime.datetime,
) -> x509.CertificateRevocationList:
    """The CA's CRL listing ``revoked``, numbered ``crl_number``."""
    ca_key = _ca_pair(ca_key, ca_cert)
    if not ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign:
        raise CaInvalid("The CA certificate may not sign CRLs (no cRLSign key usage).")
    this_update, next_update = _utc(this_update), _utc(next_update)
    if next_update <= this_update:
        raise InvalidInput("A CRL's next update must come after its this update.")
    if not 0 <= crl_number < _SERIAL_LIMIT:
        raise InvalidInput("A CRL number must be non-negative and fit in 20 octets.")
    if len({entry.serial for entry in revoked}) != len(revoked):
        raise InvalidInput("A serial number may appear on a CRL only once.")
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(_authority_key_id(ca_cert, ca_key), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(_revoked_certificate(entry))
    return builder.sign(ca_key, signature_hash(ca_key))


def revocation_reason(name: str) -> x509.ReasonFlags:
    """The ReasonFlags for an RFC 5280 CRLReason name, or :class:`InvalidInput`."""
    if name not in REVOCATION_REASONS:
        known = ", ".join(REVOCATION_REASONS)
        raise InvalidInput(f"Unknown revocation reason. Known reasons: {known}.")
    return x509.ReasonFlags(name)


def _revoked_certificate(entry: RevokedEntry) -> x509.RevokedCertificate:
    reason = revocation_reason(entry.reason)
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(entry.serial)
        .revocation_date(_utc(entry.revoked_at))
    )
    # RFC 5280 5.3.1: the reason code SHOULD be absent rather than say "unspecified".
    if reason is not x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(reason), critical=False)
    return builder.build()


# --- shared pieces ------------------------------------------------------------------------------


def _utc(when: datetime.datetime | None) -> datetime.datetime:
    if when is None:
        when = datetime.datetime.now(datetime.UTC)
    elif when.tzinfo is None:
        raise ValueError("datetimes passed to the CA must be timezone-aware")
    # Certificates carry whole seconds; clipping compares against values read back from them.
    return when.astimezone(datetime.UTC).replace(microsecond=0)


def _validity(
    now: datetime.datetime, days: int, *, issuer: x509.Certificate | None
) -> tuple[datetime.datetime, datetime.datetime]:
    if days < 1:
        raise InvalidInput("A validity period must be at least one day.")
    not_before = now - CLOCK_SKEW
    not_after = now + datetime.timedelta(days=days)
    if issuer is not None:
        if issuer.not_valid_after_utc <= now:
            raise CaInvalid("The CA certificate has expired.")
        # Past the issuer's own validity the chain fails anyway; promising more would mislead
        # the subscriber and whoever plans renewals by notAfter.
        not_before = max(not_before, issuer.not_valid_before_utc)
        not_after = min(not_after, issuer.not_valid_after_utc)
    return not_before, not_after


def _ca_pair(key: PrivateKey, cert: x509.Certificate) -> PrivateKey:
    """``key`` once it is known to be the key of ``cert`` and ``cert`` a CA that may sign."""
    key = supported_key(key)
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        # RFC 5280 4.2.1.3 and 4.2.1.9: a CA certificate carries both.
        raise CaInvalid("The certificate lacks BasicConstraints or KeyUsage: not a CA.") from None
    except (ValueError, x509.DuplicateExtension):
        raise CaInvalid("The CA certificate's extensions cannot be read.") from None
    if not constraints.ca:
        raise CaInvalid("The certificate is not a CA certificate (BasicConstraints CA:FALSE).")
    if not usage.key_cert_sign:
        raise CaInvalid("The CA certificate may not sign certificates (no keyCertSign).")
    # Signing with another key would produce certificates that never validate.
    if not key_matches_certificate(key, cert):
        raise KeyMismatch("The CA private key does not belong to the CA certificate.")
    return key


def signature_hash(key: PrivateKey) -> _SignatureHash | None:
    """The hash a signature by ``key`` uses (None for Ed25519): certificates, CRLs, CMC."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None  # Ed25519 hashes internally; cryptography wants no algorithm
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # A hash as strong as the curve: P-384 with SHA-384 (CA/B BR 7.1.3.2), P-521 with SHA-512.
        if key.curve.name == "secp384r1":
            return hashes.SHA384()
        if key.curve.name == "secp521r1":
            return hashes.SHA512()
    return hashes.SHA256()


def _authority_key_id(
    issuer: x509.Certificate, issuer_key: PrivateKey
) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # An imported CA without SKI: derive the identifier the usual way (RFC 5280 4.2.1.2 (1)).
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    # Chain builders match AKI to the issuer's SKI byte for byte, whatever method made it.
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = []
    try:
        if organization:
            attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    except ValueError:
        raise InvalidInput(
            f"Names and organizations must be 1 to {_MAX_COMMON_NAME} characters."
        ) from None
    return x509.Name(attributes)


def _subject(email: str, common_name: str | None) -> x509.Name:
    if common_name is None and len(email) > _MAX_COMMON_NAME:
        # The address does not fit a CN; an empty subject with a critical SAN is the RFC 5280
        # way to name such a subscriber, rather than refusing a legitimate address.
        return x509.Name([])
    return _name(common_name if common_name is not None else email)


def _emails(email: str, extra: Iterable[str]) -> list[str]:
    """The addresses, checked, first one first, without case-insensitive repeats."""
    unique: dict[str, str] = {}
    for address in (email, *extra):
        local, at, domain = address.rpartition("@")
        # rfc822Name is an IA5String: ASCII only (internationalized domains as punycode).
        if (
            not (at and local and domain)
            or len(address) > _MAX_EMAIL
            or not address.isascii()
            or not address.isprintable()
            or " " in address
        ):
            raise InvalidInput("Email addresses must be ASCII and look like name@example.org.")
        unique.setdefault(address.lower(), address)
    return list(unique.values())


def _san(emails: Sequence[str]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.RFC822Name(address) for address in emails])


def _crl_distribution_points(url: str) -> x509.CRLDistributionPoints:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInput("The CRL URL must be an absolute http:// or https:// URL.")
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return x509.CRLDistributionPoints([point])
