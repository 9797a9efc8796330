"""The CA exchange certificate of an account: what Windows clients encrypt the key they archive
to (MS-WCCE §3.2.2.6.2.1.2.2).

Issued by the account's active issuing CA (a client takes an exchange certificate only from the
CA that will issue its certificate), keyEncipherment with the CA-exchange EKU. Its RSA-2048 key
is a service key (purpose ``ca-exchange``): used here to decrypt, never released, and refused at
the vault's door like every service key (archive.ServiceKeyRefused).

It lives 30 days: a stolen exchange key opens the keys archived to it, so it should not outlive
the few weeks a client needs to fetch and use it (Windows fetches it at each enrollment). It is
replaced when it is fetched or used within the last third of its life, or once another CA issues;
the one it replaced still decrypts for 7 days (a client that fetched it just before the change
still enrolls), never later than 7 days after its own expiry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import ca as calib
from certvault.crypto import keys as keylib
from certvault.crypto.cmc.archive import Recipient
from certvault.db.models import Account, CertificateAuthority, ServiceKey
from certvault.errors import ConfigurationError
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.pki.authorities import ca_certificate, crl_url, signing_key
from certvault.services.pki.ca import active_issuing, no_issuing_ca

EXCHANGE_KEY_PURPOSE = "ca-exchange"
VALIDITY = timedelta(days=30)
RENEW_WITHIN = VALIDITY / 3
GRACE = timedelta(days=7)
ROTATE = "agent.exchange_rotate"
_SYSTEM = Actor(name="certvault", kind="system")


@dataclass(frozen=True)
class ExchangeCertificate:
    certificate: x509.Certificate
    service_key_id: int
    created_at: datetime
    replaced_at: datetime | None  # None: the current one

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def decrypts_until(self) -> datetime:
        """The last moment a request encrypted to it is taken."""
        end = self.not_after if self.replaced_at is None else min(self.replaced_at, self.not_after)
        return end + GRACE


def _rows(session: Session, account_id: int) -> list[ServiceKey]:
    return list(
        session.scalars(
            select(ServiceKey)
            .where(ServiceKey.account_id == account_id, ServiceKey.purpose == EXCHANGE_KEY_PURPOSE)
            .order_by(ServiceKey.id.desc())
        )
    )


def _history(rows: list[ServiceKey]) -> list[ExchangeCertificate]:
    """Newest first; each one replaced when the next newer one was made."""
    found: list[ExchangeCertificate] = []
    replaced_at: datetime | None = None
    for row in rows:
        if row.certificate_der is None:
            continue
        cert = x509.load_der_x509_certificate(row.certificate_der)
        found.append(ExchangeCertificate(cert, row.id, row.created_at, replaced_at))
        replaced_at = row.created_at
    return found


def _needs_new(current: ExchangeCertificate | None, ca: x509.Certificate, now: datetime) -> bool:
    return (
        current is None
        or current.not_after - now <= RENEW_WITHIN
        or not calib.issued_by(current.certificate, ca)
    )


def current_exchange(ports: Ports, account_id: int) -> x509.Certificate:
    """The account's exchange certificate, made or replaced first when it is due."""
    with ports.db.read() as session:
        ca_row = active_issuing(session, account_id)
        if ca_row is None:
            raise no_issuing_ca(session.get_one(Account, account_id))
        history = _history(_rows(session, account_id))
    current = history[0] if history else None
    if not _needs_new(current, ca_certificate(ca_row), ports.clock()):
        assert current is not None
        return current.certificate
    # Outside any transaction: RSA key generation takes a tenth of a second.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ports.db.run(lambda session: _replace(session, ports, account_id, key))


def _replace(
    session: Session, ports: Ports, account_id: int, key: rsa.RSAPrivateKey
) -> x509.Certificate:
    account = session.get_one(Account, account_id)
    # Locked: of two processes finding it due, the second waits and finds the new one.
    ca_row = session.scalars(
        select(CertificateAuthority)
        .where(CertificateAuthority.id == _issuing_id(session, account))
        .with_for_update()
    ).one()
    ca_cert = ca_certificate(ca_row)
    now = ports.clock()
    history = _history(_rows(session, account_id))
    if history and not _needs_new(history[0], ca_cert, now):
        return history[0].certificate
    cert = calib.issue_exchange_certificate(
        signing_key(session, ports, ca_row),
        ca_cert,
        key.public_key(),
        f"{account.name[:40]} CA Exchange",
        validity=VALIDITY,
        crl_url=crl_url(ports, account.slug, ca_row.name),
        now=now,
    )
    row = keyring.create_service_key(
        session,
        ports,
        purpose=EXCHANGE_KEY_PURPOSE,
        material=keylib.to_pkcs8_der(key),
        account=account,
        spki_sha256=keylib.spki_sha256(key.public_key()),
        certificate_der=cert.public_bytes(Encoding.DER),
    )
    row.created_at = now
    audit.record(
        session,
        ports,
        account=account,
        actor=_SYSTEM,
        action=ROTATE,
        target_type="service_key",
        target_id=row.id,
        details={
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "replaced": history[0].service_key_id if history else None,
        },
    )
    return cert


def _issuing_id(session: Session, account: Account) -> int:
    row = active_issuing(session, account.id)
    if row is None or row.service_key_id is None:
        raise no_issuing_ca(account)
    return row.id


def recipients(session: Session, ports: Ports, account_id: int) -> list[Recipient]:
    """The exchange certificates a request may be encrypted to now, with their keys."""
    now = ports.clock()
    found: list[Recipient] = []
    for exchange in _history(_rows(session, account_id)):
        if exchange.decrypts_until() < now:
            continue
        key = keyring.open_signing_key(ports, session.get_one(ServiceKey, exchange.service_key_id))
        # The certificate is read from an unsealed row: one that is not the key's own was put
        # there by someone else, and is never used.
        if not isinstance(key, rsa.RSAPrivateKey) or not keylib.key_matches_certificate(
            key, exchange.certificate
        ):
            raise ConfigurationError("An exchange certificate does not match its key.")
        found.append((exchange.certificate, key))
    return found


@dataclass(frozen=True)
class ExchangeStatus:
    """For the Agents page: the current exchange certificate and those still accepted."""

    current: ExchangeCertificate | None
    accepted: list[ExchangeCertificate]
    renews_at: datetime | None  # when the current one is replaced, at the latest


def exchange_status(ports: Ports, actor: Actor, account_slug: str) -> ExchangeStatus:
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        history = _history(_rows(session, account.id))
    now = ports.clock()
    current = history[0] if history else None
    older = [e for e in history[1:] if e.decrypts_until() >= now]
    renews_at = current.not_after - RENEW_WITHIN if current else None
    return ExchangeStatus(current, older, renews_at)


def certificate_bytes(cert: x509.Certificate, pem: bool) -> bytes:
    return cert.public_bytes(Encoding.PEM if pem else Encoding.DER)
