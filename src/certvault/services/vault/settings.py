"""The account's Key Vault recovery options (the Key Vault page): the recovery method, the
profile-signing identity, and the Exchange ActiveSync account put into iOS profiles.

The signing identity's key is a service key (purpose ``profile-signing``): certvault signs
profiles with it and never releases it, so it is kept apart from escrowed keys and its public key
is refused at the vault's door (vault.archive_entry).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.config import Settings
from certvault.crypto import keys as keylib
from certvault.crypto import mobileconfig
from certvault.crypto.names import name_of
from certvault.crypto.pkcs12.reader import P12Entry, read_pkcs12
from certvault.db.models import Account, EscrowedKey, KeyVaultSettings, ServiceKey
from certvault.errors import Forbidden, InvalidInput
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor, Privilege, Role
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault.archive import KeyVaultDisabled
from certvault.services.vault.imports import upload_limits

SIGNING_KEY_PURPOSE = "profile-signing"
UPDATE = "key_vault.settings_update"

RECOVERY_METHODS: dict[str, str] = {
    "disabled": "Administrators only (no self-service recovery)",
    "email_code": "Email one-time code",
    "email_code_and_secret": "Email one-time code and Secret ID",
    "admin_approval": "Administrator approval",
}
# Apple's MailNumberOfPastDaysToSync: 0 is no limit.
PAST_DAYS = (0, 1, 3, 7, 14, 31)
EXPIRY_WARNING = timedelta(days=30)
MAX_HOST = 253
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class SettingsInvalid(InvalidInput):
    """A Key Vault setting is out of range."""

    code = "settings_invalid"


class SigningIdentityInvalid(InvalidInput):
    """The uploaded signing identity cannot be used."""

    code = "signing_identity_invalid"


@dataclass(frozen=True)
class RecoveryOptions:
    """What the Key Vault Recovery Options dialog submits; checked by update_recovery_options."""

    recovery_method: str = "disabled"
    sign_profiles: bool = False
    # Once the signing certificate has expired: deliver profiles unsigned instead of refusing.
    unsigned_fallback: bool = False
    exchange_enabled: bool = False
    exchange_host: str = ""
    exchange_use_ssl: bool = True
    exchange_past_days: int | str = 7
    exchange_prevent_move: bool = False


@dataclass(frozen=True)
class SigningCertificate:
    subject: str
    issuer: str
    serial: str  # hex
    not_after: datetime
    sha256: str  # of the DER, hex


@dataclass(frozen=True)
class KeyVaultView:
    """The Key Vault page: the account's settings, or the defaults when none were saved."""

    account_name: str
    key_vault_enabled: bool
    can_edit: bool  # the actor may change them (settings_manage, account administrator)
    recovery_method: str
    sign_profiles: bool
    unsigned_fallback: bool
    signing: SigningCertificate | None
    expires_soon: bool  # within EXPIRY_WARNING, or expired
    expired: bool
    exchange_enabled: bool
    exchange_host: str
    exchange_use_ssl: bool
    exchange_past_days: int
    exchange_prevent_move: bool

    @property
    def recovery_method_label(self) -> str:
        return RECOVERY_METHODS.get(self.recovery_method, self.recovery_method)

    def options(self) -> RecoveryOptions:
        """The stored values as the dialog's starting point."""
        return RecoveryOptions(
            recovery_method=self.recovery_method,
            sign_profiles=self.sign_profiles,
            unsigned_fallback=self.unsigned_fallback,
            exchange_enabled=self.exchange_enabled,
            exchange_host=self.exchange_host,
            exchange_use_ssl=self.exchange_use_ssl,
            exchange_past_days=self.exchange_past_days,
            exchange_prevent_move=self.exchange_prevent_move,
        )


def key_vault_ui_url(settings: Settings, account_slug: str) -> str:
    """The account's Private Key Recovery Form, under CERTVAULT_PUBLIC_URL (the About page)."""
    return settings.public_url_for(f"/kv/{account_slug}")


def may_edit(actor: Actor, account_id: int) -> bool:
    """Account settings are changed by account administrators holding settings_manage."""
    if actor.is_operator:
        return True
    return (
        actor.account_id == account_id
        and actor.role == Role.ACCOUNT
        and Privilege.SETTINGS_MANAGE in actor.privileges
    )


def _require_edit(actor: Actor, account_id: int) -> None:
    actor.require(Privilege.SETTINGS_MANAGE, account_id, None)
    if not may_edit(actor, account_id):
        raise Forbidden("Only account administrators change the account's settings.")


def _describe(der: bytes) -> SigningCertificate:
    cert = x509.load_der_x509_certificate(der)
    return SigningCertificate(
        subject=name_of(cert.subject).dn,
        issuer=name_of(cert.issuer).dn,
        serial=format(cert.serial_number, "X"),
        not_after=cert.not_valid_after_utc,
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
    )


def _settings_row(session: Session, account_id: int) -> KeyVaultSettings:
    """The stored row, or an unsaved one with the defaults."""
    row = session.get(KeyVaultSettings, account_id)
    if row is None:
        row = KeyVaultSettings(
            account_id=account_id,
            recovery_method="disabled",
            sign_profiles=False,
            unsigned_fallback=False,
            signing_key_id=None,
            exchange_enabled=False,
            exchange_host="",
            exchange_use_ssl=True,
            exchange_past_days=7,
            exchange_prevent_move=False,
        )
    return row


def get_key_vault_settings(ports: Ports, actor: Actor, account_slug: str) -> KeyVaultView:
    """The account's Key Vault settings, for any of its administrators."""
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        row = _settings_row(session, account.id)
        signing = None
        if row.signing_key_id is not None:
            der = session.get_one(ServiceKey, row.signing_key_id).certificate_der
            signing = _describe(der) if der else None
        now = ports.clock()
        return KeyVaultView(
            account_name=account.name,
            key_vault_enabled=account.key_vault_enabled,
            can_edit=may_edit(actor, account.id),
            recovery_method=row.recovery_method,
            sign_profiles=row.sign_profiles,
            unsigned_fallback=row.unsigned_fallback,
            signing=signing,
            expires_soon=signing is not None and signing.not_after - now <= EXPIRY_WARNING,
            expired=signing is not None and signing.not_after <= now,
            exchange_enabled=row.exchange_enabled,
            exchange_host=row.exchange_host,
            exchange_use_ssl=row.exchange_use_ssl,
            exchange_past_days=row.exchange_past_days,
            exchange_prevent_move=row.exchange_prevent_move,
        )


# --- checking what was submitted -----------------------------------------------------------------


def check_host(value: str) -> str:
    """An Exchange server: a DNS host name (lowercased, without a trailing dot) or an IP address.
    The submitted value is never repeated in the message."""
    host = value.strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if (
        not name
        or len(name) > MAX_HOST
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()  # a mistyped IPv4 address, not a name
    ):
        raise SettingsInvalid(
            "The Exchange Server Host Name must be a host name (letters, digits and hyphens, "
            f"at most {MAX_HOST} characters) or an IP address."
        )
    return name


def check_past_days(value: int | str) -> int:
    days: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        days = value
    elif isinstance(value, str) and value.strip().isdecimal() and len(value.strip()) <= 3:
        days = int(value.strip())
    if days not in PAST_DAYS:
        raise SettingsInvalid(
            "The Number of Past Days to Sync must be one of "
            + ", ".join(str(d) for d in PAST_DAYS)
            + " (0: no limit)."
        )
    return days


def _checked(options: RecoveryOptions) -> dict[str, Any]:
    """The stored values of ``options``, or the first problem found."""
    if options.recovery_method not in RECOVERY_METHODS:
        raise SettingsInvalid(
            "The Recovery Method must be one of: " + ", ".join(RECOVERY_METHODS.values()) + "."
        )
    host = options.exchange_host.strip()
    if options.exchange_enabled and not host:
        raise SettingsInvalid("Including Exchange needs the Exchange Server Host Name.")
    return {
        "recovery_method": options.recovery_method,
        "sign_profiles": bool(options.sign_profiles),
        "unsigned_fallback": bool(options.unsigned_fallback),
        "exchange_enabled": bool(options.exchange_enabled),
        "exchange_host": check_host(host) if host else "",
        "exchange_use_ssl": bool(options.exchange_use_ssl),
        "exchange_past_days": check_past_days(options.exchange_past_days),
        "exchange_prevent_move": bool(options.exchange_prevent_move),
    }


@dataclass(frozen=True)
class _SigningIdentity:
    entry: P12Entry
    chain_pem: str | None  # the file's other certificates: the intermediates a device needs


def _signing_identity(ports: Ports, data: bytes, password: str) -> _SigningIdentity:
    """The one key and certificate of an uploaded signing identity, and the certificates beside
    them, read with the upload ceilings (a hostile KDF count is refused before it runs)."""
    contents = read_pkcs12(data, password, upload_limits(ports))
    if len(contents.entries) != 1:
        raise SigningIdentityInvalid("The signing identity file must hold exactly one key.")
    [entry] = contents.entries
    if entry.certificate.not_valid_after_utc <= ports.clock():
        raise SigningIdentityInvalid("The signing certificate has expired.")
    if not mobileconfig.can_sign(entry.key):
        raise SigningIdentityInvalid("The signing key must be an RSA or EC key.")
    pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in contents.extra_certificates)
    return _SigningIdentity(entry, pem or None)


def _identity_record(der: bytes | None, chain_pem: str | None) -> dict[str, Any] | None:
    """What the audit keeps of a signing identity: its certificates, never its key."""
    if der is None:
        return None
    described = _describe(der)
    chain = x509.load_pem_x509_certificates(chain_pem.encode()) if chain_pem else []
    return {
        "sha256": described.sha256,
        "serial": described.serial,
        "chain": [c.fingerprint(hashes.SHA256()).hex() for c in chain],
    }


# --- changing -------------------------------------------------------------------------------------


def update_recovery_options(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    options: RecoveryOptions,
    signing_p12: bytes | None = None,
    signing_password: str | None = None,
) -> KeyVaultView:
    """Save the Key Vault Recovery Options, and a new signing identity when one is uploaded.

    Everything is checked before anything is written; the row and one audit event with the old
    and new values of what changed are written in one transaction. A replaced signing key is
    deleted (see _replace_identity).
    """
    with audit.refusals_audited(ports, account_id=None, actor=actor, action=UPDATE):
        with ports.db.read() as session:  # an unknown account is refused on the installation chain
            account = get_account(session, account_slug)
            actor.require_visible(account.id, None, "Account")
            account_id, enabled = account.id, account.key_vault_enabled
    with audit.refusals_audited(
        ports, account_id=account_id, actor=actor, action=UPDATE, target_type="account"
    ):
        _require_edit(actor, account_id)
        if not enabled:
            raise KeyVaultDisabled()
        values = _checked(options)
        # The KDF and key validation run outside any transaction.
        identity = None
        if signing_p12 is not None:
            identity = _signing_identity(ports, signing_p12, signing_password or "")

        def work(session: Session) -> bool:
            account = session.scalars(
                select(Account).where(Account.id == account_id).with_for_update()
            ).one()
            if not account.key_vault_enabled:
                raise KeyVaultDisabled()
            row = _settings_row(session, account_id)
            if values["sign_profiles"] and row.signing_key_id is None and identity is None:
                raise SettingsInvalid(
                    "Signing iOS profiles needs a signing identity: upload its PKCS#12 file."
                )
            old = {name: getattr(row, name) for name in values}
            new = dict(values)
            if identity is not None:
                old["signing_certificate"], new["signing_certificate"] = _replace_identity(
                    session, ports, account, row, identity
                )
            changed = [name for name in new if new[name] != old[name]]
            if not changed:
                return False
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = ports.clock()
            session.add(row)
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=UPDATE,
                target_type="account",
                target_id=account.uuid,
                details={
                    "old": {name: old[name] for name in changed},
                    "new": {name: new[name] for name in changed},
                },
            )
            return True

        ports.db.run(work)
    return get_key_vault_settings(ports, actor, account_slug)


def _replace_identity(
    session: Session,
    ports: Ports,
    account: Account,
    row: KeyVaultSettings,
    identity: _SigningIdentity,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Seal the new signing key as a service key, with its chain, and link it; the old one is
    deleted. The same certificate again only replaces the stored chain (an administrator adding
    the intermediates left out before).

    Deleting (rather than keeping it unlinked) leaves no unused private key behind: nothing
    signs with it any more. Its public key then stops being refused by the vault, which gives
    nobody anything: importing a key needs the key itself.
    """
    entry, chain_pem = identity.entry, identity.chain_pem
    spki = keylib.spki_sha256(entry.key.public_key())
    escrowed = session.scalar(
        select(EscrowedKey.id).where(
            EscrowedKey.account_id == account.id, EscrowedKey.spki_sha256 == spki
        )
    )
    if escrowed is not None:
        # An escrowed key can be released; a key certvault signs with must never be.
        raise SigningIdentityInvalid(
            "This key is held in the vault as an escrowed key; a signing identity needs a key "
            "of its own."
        )
    der = entry.certificate.public_bytes(Encoding.DER)
    previous = session.get(ServiceKey, row.signing_key_id) if row.signing_key_id else None
    if previous is not None and previous.certificate_der == der:
        # The same certificate, so the same key: only the chain may have changed.
        old = _identity_record(der, previous.chain_pem)
        previous.chain_pem = chain_pem
        return old, _identity_record(der, chain_pem)
    new_key = keyring.create_service_key(
        session,
        ports,
        purpose=SIGNING_KEY_PURPOSE,
        material=keylib.to_pkcs8_der(entry.key),
        account=account,
        spki_sha256=spki,
        certificate_der=der,
        chain_pem=chain_pem,
    )
    row.signing_key_id = new_key.id
    session.add(row)
    old = _identity_record(previous.certificate_der, previous.chain_pem) if previous else None
    if previous is not None:
        session.flush()  # the row points to the new key before the old one goes
        session.delete(previous)
    return old, _identity_record(der, chain_pem)
