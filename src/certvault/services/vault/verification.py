"""The verification drill: decrypt every escrowed key in memory, validate it fully, and check it
against each of its certificates. Nothing decrypted ever leaves this module; only counts do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.db.models import Account, Certificate, EscrowedKey
from certvault.errors import CertvaultError
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account


@dataclass(frozen=True)
class DrillFailure:
    account: str
    escrowed_key_uuid: str
    reason: str


@dataclass
class DrillReport:
    keys: int = 0
    certificates: int = 0
    failures: list[DrillFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify_escrow(ports: Ports, actor: Actor, account_slug: str | None = None) -> DrillReport:
    report = DrillReport()
    per_account: list[tuple[int, DrillReport]] = []
    with ports.db.read() as session:
        if account_slug:
            accounts = [get_account(session, account_slug)]
        else:
            accounts = list(session.scalars(select(Account).order_by(Account.id)))
        for account in accounts:
            result = DrillReport()
            rows = session.scalars(
                select(EscrowedKey)
                .where(EscrowedKey.account_id == account.id, EscrowedKey.destroyed_at.is_(None))
                .order_by(EscrowedKey.id)
            ).all()
            for row in rows:
                result.keys += 1
                certs = session.scalars(
                    select(Certificate).where(Certificate.escrowed_key_id == row.id)
                ).all()
                result.certificates += len(certs)
                reason = _check(session, ports, account, row, certs)
                if reason:
                    result.failures.append(DrillFailure(account.slug, row.uuid, reason))
            report.keys += result.keys
            report.certificates += result.certificates
            report.failures += result.failures
            per_account.append((account.id, result))
    for account_id, result in per_account:
        _audit(ports, actor, account_id, result)
    return report


def _check(
    session: Session, ports: Ports, account: Account, row: EscrowedKey, certs: Sequence[Certificate]
) -> str | None:
    try:
        der = keyring.open_private_key(session, ports, account, row)
        key = keylib.load_pkcs8_der(der, validate=True)  # the drill validates in full
    except CertvaultError as exc:
        return f"cannot be opened ({exc.code})"
    except ValueError:
        return "decrypts to an invalid key"
    if keylib.spki_sha256(key.public_key()) != row.spki_sha256:
        return "public key differs from the one recorded"
    if not certs:
        return "no certificate refers to this key"
    for cert in certs:
        if not keylib.key_matches_certificate(key, x509.load_der_x509_certificate(cert.der)):
            return f"does not match certificate {cert.id}"
    return None


def _audit(ports: Ports, actor: Actor, account_id: int, result: DrillReport) -> None:
    def work(session: Session) -> None:
        audit.record(
            session,
            ports,
            account=session.get_one(Account, account_id),
            actor=actor,
            action="vault.verify",
            outcome="success" if result.ok else "failure",
            details={
                "keys": result.keys,
                "certificates": result.certificates,
                "failures": len(result.failures),
            },
        )

    ports.db.run(work)
