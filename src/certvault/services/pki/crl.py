"""Revocation and the CRLs that publish it: each CA's CRL lives on its row, regenerated on every
revocation and whenever a fetch finds it near expiry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import ca as calib
from certvault.db.models import Account, Certificate, CertificateAuthority
from certvault.errors import Conflict, InvalidInput, NotFound
from certvault.services.audit import log as audit
from certvault.services.directory import certificates
from certvault.services.kernel.actors import Actor, Privilege, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.pki.authorities import ca_certificate, signing_key

CRL_VALIDITY = timedelta(days=7)
# A fetch inside this window before nextUpdate publishes a fresh CRL.
CRL_REFRESH_MARGIN = timedelta(hours=24)
# Nobody can re-sign an offline root's CRL inside certvault: the one signed at init lasts the
# 12 months the S/MIME BR (4.9.7) allow for CRLs about subordinate CAs.
OFFLINE_ROOT_CRL_VALIDITY = timedelta(days=365)
MAX_REVOCATION_COMMENT = 512
REVOCATION_REASONS = calib.REVOCATION_REASONS


class CrlNotFound(NotFound):
    """No CRL is published at this address."""

    code = "not_found"


@dataclass(frozen=True)
class PublishedCrl:
    der: bytes
    next_update: datetime


def regenerate_crl(session: Session, ports: Ports, ca: CertificateAuthority) -> bytes:
    """Sign and store the CA's next CRL, listing its revoked certificates, in the caller's
    transaction."""
    revoked = session.scalars(
        select(Certificate)
        .where(
            Certificate.account_id == ca.account_id,
            Certificate.ca_id == ca.id,
            Certificate.status == "revoked",
        )
        .order_by(Certificate.id)
    ).all()
    now = ports.clock()
    crl = calib.build_crl(
        signing_key(session, ports, ca),
        ca_certificate(ca),
        [
            calib.RevokedEntry(
                int(c.serial, 16), c.revoked_at or now, c.revocation_reason or "unspecified"
            )
            for c in revoked
        ],
        crl_number=ca.crl_number + 1,
        this_update=now,
        next_update=now + CRL_VALIDITY,
    )
    ca.crl_number += 1
    ca.crl_der = crl.public_bytes(Encoding.DER)
    ca.crl_next_update = crl.next_update_utc
    session.flush()
    return ca.crl_der


def regenerate_crl_for(session: Session, ports: Ports, ca_id: int) -> None:
    """After a revocation: the CRL of the CA that issued the certificate, if certvault holds
    its key."""
    ca = session.get(CertificateAuthority, ca_id)
    if ca is not None and ca.service_key_id is not None:
        regenerate_crl(session, ports, ca)


def _published(ca: CertificateAuthority, now: datetime) -> PublishedCrl | None:
    """The stored CRL if it may be served as is."""
    if ca.crl_der is None or ca.crl_next_update is None:
        return None
    fresh = now < ca.crl_next_update - CRL_REFRESH_MARGIN
    # An offline CA's CRL cannot be re-signed here; the stored one is all there is.
    if fresh or ca.service_key_id is None:
        return PublishedCrl(ca.crl_der, ca.crl_next_update)
    return None


def _find_ca(session: Session, account_slug: str, ca_name: str) -> CertificateAuthority:
    query = (
        select(CertificateAuthority)
        .join(Account, Account.id == CertificateAuthority.account_id)
        .where(Account.slug == account_slug, CertificateAuthority.name == ca_name)
    )
    ca = session.scalars(query).first()
    if ca is None:
        raise CrlNotFound()
    return ca


def current_crl(ports: Ports, account_slug: str, ca_name: str) -> PublishedCrl:
    """The CA's CRL, regenerated first when there is none or it is near expiry."""
    with ports.db.read() as session:
        ca = _find_ca(session, account_slug, ca_name)
        found = _published(ca, ports.clock())
    if found is not None:
        return found
    if ca.service_key_id is None:
        raise CrlNotFound()  # an imported chain certificate: its CRL is published elsewhere

    ca_id = ca.id

    def work(session: Session) -> PublishedCrl:
        ca = session.get_one(CertificateAuthority, ca_id, with_for_update=True)
        # Another worker may have published one since the read above.
        found = _published(ca, ports.clock())
        if found is None:
            regenerate_crl(session, ports, ca)
            assert ca.crl_der is not None and ca.crl_next_update is not None
            found = PublishedCrl(ca.crl_der, ca.crl_next_update)
        return found

    return ports.db.run(work)


def crl_for(ports: Ports, account_slug: str, ca_name: str) -> bytes:
    """The DER CRL published at /crl/<account_slug>/<ca_name>.crl."""
    return current_crl(ports, account_slug, ca_name).der


# --- revocation ---------------------------------------------------------------------------------


def revoke_certificate(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    certificate_id: int,
    reason: str = "unspecified",
    *,
    comment: str | None = None,
) -> Certificate:
    """Mark a certificate revoked. Its escrowed key stays: old mail still needs it.

    ``comment`` is free text kept in the audit event (the SCM API's revocation reason)."""
    if reason not in REVOCATION_REASONS:
        raise InvalidInput("reason must be one of: " + ", ".join(REVOCATION_REASONS) + ".")
    if comment is not None and len(comment) > MAX_REVOCATION_COMMENT:
        raise InvalidInput(
            f"A revocation comment may have at most {MAX_REVOCATION_COMMENT} characters."
        )

    def work(session: Session) -> Certificate:
        account = get_account(session, account_slug)
        cert = certificates.load_visible(session, actor, account, certificate_id)
        actor.require(Privilege.CERTIFICATES_MANAGE, account.id, cert.organization_id)
        actor.require_scope(Scope.MANAGE)
        if cert.status == "revoked":
            raise Conflict("The certificate is already revoked.")
        cert.status, cert.revoked_at, cert.revocation_reason = "revoked", ports.clock(), reason
        if cert.ca_id is not None:  # issued here: its CRL lists it from this commit on
            regenerate_crl_for(session, ports, cert.ca_id)
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="certificate.revoke",
            target_type="certificate",
            target_id=cert.id,
            details={"reason": reason, "serial": cert.serial}
            | ({"comment": comment} if comment else {}),
        )
        return cert

    return ports.db.run(work)
