"""Installation set-up, accounts (tenants) and their Key Vault switch."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.db import migrate
from certvault.db.models import Account, Installation, Organization, TrustedIssuer
from certvault.errors import Conflict, InvalidInput
from certvault.masterkey.file import FileMasterKeyProvider, MasterKeyMissing
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.actors import Actor, Privilege, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.kernel.text import column_text

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class InitResult:
    created_database: bool
    created_master_key: bool
    shares_exported: bool
    sealed_rows: int = 0  # rows of an older version sealed by this run


def initialize(ports: Ports, actor: Actor) -> InitResult:
    """Create the home, the database schema and the master key. Safe to run again."""
    home = ports.settings.home_dir
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    ports.audit_heads.ensure_directory()
    created_db = not migrate.is_initialized(ports.db)
    migrate.upgrade(ports.db)
    with ports.db.read() as session:
        installation = session.scalars(select(Installation)).first()
    created_key = False
    if not _master_key_present(ports):
        if installation is not None:
            # Data exists that only the lost key opens: a new key would hide the loss, not fix it.
            raise MasterKeyMissing(
                "The database belongs to an installation whose master key is missing. "
                "Rebuild it with `certvault kek restore-shares`; certvault will not make a new one."
            )
        if not isinstance(ports.master_key, FileMasterKeyProvider):
            raise MasterKeyMissing(
                f"The {ports.master_key.name} provider holds no master key; create it first "
                f"(`certvault kek create --provider {ports.master_key.name}`)."
            )
        FileMasterKeyProvider.create(ports.master_key.directory)
        created_key = True

    def work(session: Session) -> bool:
        row = session.scalars(select(Installation)).first()
        if row is None:
            row = Installation()
            session.add(row)
            audit.create_audit_key(session, ports)
            audit.ensure_chain(session, audit.INSTALLATION_CHAIN)
            audit.record(session, ports, account=None, actor=actor, action="installation.init")
        # Also for an installation made before seals (seals.seal_existing, below).
        keyring.ensure_service_secret(session, ports, seals.SEAL_KEY_PURPOSE)
        return row.shares_exported_at is not None

    shares = ports.db.run(work)
    sealed = seals.seal_existing(ports)
    return InitResult(created_db, created_key, shares, sealed)


def _master_key_present(ports: Ports) -> bool:
    """Whether a master key is there; a key that is exposed or damaged raises its own error
    instead of passing for a missing one (which would send the operator the wrong way)."""
    try:
        ports.master_key.version  # noqa: B018 - loading the key runs its checks
    except MasterKeyMissing:
        return False
    return True


def create_account(
    ports: Ports, actor: Actor, name: str, slug: str, *, key_vault_enabled: bool = False
) -> Account:
    name = name.strip()
    if not name or len(name) > 200:
        raise InvalidInput("An account name must have 1 to 200 characters.")
    if not SLUG.match(slug):
        raise InvalidInput("A slug uses a-z, 0-9 and inner hyphens, at most 63 characters.")

    def work(session: Session) -> Account:
        if session.scalars(select(Account.id).where(Account.slug == slug)).first() is not None:
            raise Conflict("An account with this slug exists.")
        account = Account(name=name, slug=slug, key_vault_enabled=key_vault_enabled)
        session.add(account)
        session.flush()
        session.add(Organization(account_id=account.id, name=name, is_default=True))
        keyring.create_account_key(session, ports, account)
        audit.ensure_chain(session, account.uuid)
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="account.create",
            target_type="account",
            target_id=account.uuid,
            details={"slug": slug, "key_vault_enabled": key_vault_enabled},
        )
        return account

    return ports.db.run(work)


def set_key_vault(ports: Ports, actor: Actor, slug: str, enabled: bool) -> Account:
    """Turn Key Vault on or off. Keys stay; while off, archive and release are refused."""

    def work(session: Session) -> Account:
        account = get_account(session, slug)
        old = account.key_vault_enabled
        account.key_vault_enabled = enabled
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="account.key_vault." + ("enable" if enabled else "disable"),
            target_type="account",
            target_id=account.uuid,
            details={"old": old, "new": enabled},
        )
        return account

    return ports.db.run(work)


def add_trusted_issuer(ports: Ports, actor: Actor, slug: str, issuer: x509.Certificate) -> None:
    der = issuer.public_bytes(Encoding.DER)
    digest = issuer.fingerprint(hashes.SHA256())

    def work(session: Session) -> None:
        account = get_account(session, slug)
        exists = session.scalars(
            select(TrustedIssuer.id).where(
                TrustedIssuer.account_id == account.id, TrustedIssuer.sha256 == digest
            )
        ).first()
        if exists is not None:
            return
        session.add(
            TrustedIssuer(
                account_id=account.id,
                der=der,
                sha256=digest,
                subject=column_text(issuer.subject.rfc4514_string()),
            )
        )
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="account.trusted_issuer.add",
            target_type="certificate",
            target_id=digest.hex(),
            details={"subject": issuer.subject.rfc4514_string()[:300]},
        )

    ports.db.run(work)


def set_require_trusted_issuer(ports: Ports, actor: Actor, slug: str, required: bool) -> None:
    def work(session: Session) -> None:
        account = get_account(session, slug)
        old = account.require_trusted_issuer
        account.require_trusted_issuer = required
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action="account.require_trusted_issuer",
            target_type="account",
            target_id=account.uuid,
            details={"old": old, "new": required},
        )

    ports.db.run(work)


MIN_PASSPHRASE_FLOOR, MAX_PASSPHRASE_FLOOR = 8, 64


def set_release_policy(
    ports: Ports,
    actor: Actor,
    slug: str,
    *,
    reason_required: bool | None = None,
    allow_own_passphrase: bool | None = None,
    min_passphrase_length: int | None = None,
) -> Account:
    """How the account's keys are released: whether a reason is required, whether administrators
    may choose the passphrase, and how long a chosen one must be. Audited with old and new."""
    if min_passphrase_length is not None and not (
        MIN_PASSPHRASE_FLOOR <= min_passphrase_length <= MAX_PASSPHRASE_FLOOR
    ):
        raise InvalidInput(
            f"The passphrase minimum must be {MIN_PASSPHRASE_FLOOR} to {MAX_PASSPHRASE_FLOOR}."
        )
    wanted = {
        "reason_required": reason_required,
        "allow_own_passphrase": allow_own_passphrase,
        "min_passphrase_length": min_passphrase_length,
    }

    def work(session: Session) -> Account:
        account = get_account(session, slug)
        actor.require(Privilege.SETTINGS_MANAGE, account.id, None)
        changes = {k: v for k, v in wanted.items() if v is not None and getattr(account, k) != v}
        if changes:
            old = {k: getattr(account, k) for k in changes}
            for name, value in changes.items():
                setattr(account, name, value)
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action="account.release_policy",
                target_type="account",
                target_id=account.uuid,
                details={"old": old, "new": changes},
            )
        return account

    return ports.db.run(work)


def list_organizations(ports: Ports, actor: Actor, slug: str) -> list[Organization]:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, slug)
        actor.require_visible(account.id, None, "Account")
        query = select(Organization).where(Organization.account_id == account.id)
        orgs = actor.visible_organizations()
        if orgs is not None:
            query = query.where(Organization.id.in_(orgs))
        return list(session.scalars(query.order_by(Organization.id)))


def account_status(ports: Ports, actor: Actor, slug: str) -> Account:
    actor.require_scope(Scope.READ)
    with ports.db.read() as session:
        account = get_account(session, slug)
        actor.require_visible(account.id, None, "Account")
        return account
