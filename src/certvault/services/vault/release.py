"""The one way out: every decrypted escrowed key leaves certvault through :func:`release_keys`.

In order, as every release path must: authorization per certificate, policy (Key Vault enabled,
reason, passphrase), the caller's rate limits (``admit``: checked here, so that only an attempt
that could release a key counts against them), the PKCS#12 files (the KDF), then in one
transaction the quota's count, the audit event and the owner's notification. Nothing before the
KDF takes a lock another release waits for, so concurrent releases do not wait on each other's
KDF. On PostgreSQL a request runs all of it in its one transaction (Database.run_request): the
keys' rows are read with a share lock (a destruction waits for the release to commit, so nothing
is read again after the KDF), and the owner's notices, new rows nobody waits for, are written
before the KDF. Elsewhere the write transaction after the KDF reads again whether the keys still
exist and writes everything. The files are handed out only once the transaction has committed.
Asked for as an iOS configuration profile, the batch is one profile holding those PKCS#12 files
(services/vault/profiles.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial

from cryptography import x509
from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from certvault import timing
from certvault.config import Settings
from certvault.crypto import keys as keylib
from certvault.crypto.mobileconfig import P12_ENCRYPTION
from certvault.crypto.names import subject_name
from certvault.crypto.passphrase import check_passphrase, generate_passphrase
from certvault.crypto.pkcs12.writer import EncryptionType, write_pkcs12
from certvault.db.models import Account, AccountKey, Certificate, EscrowedKey, Person
from certvault.errors import CertvaultError, Forbidden, InvalidInput, NotFound
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring, notify
from certvault.services.kernel.actors import Actor, Privilege, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Quota
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault import profiles, recovery_rules
from certvault.services.vault.archive import KeyVaultDisabled
from certvault.services.vault.profiles import ReleaseFormat

RELEASE = "key.release"
MAX_REASON = 500


class NoEscrowedKey(NotFound):
    """This certificate has no key in the vault."""

    code = "no_escrowed_key"


class SelfRecoveryRefused(Forbidden):
    """Recovery of this key is done by the account's administrators; ask them."""

    code = "self_recovery_refused"

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.code = reason  # why, for the audit log: person_inactive, key_compromised, ...


class ReasonRequired(InvalidInput):
    """A reason is required for this release."""

    code = "reason_required"


@dataclass(frozen=True)
class Release:
    certificate_id: int
    data: bytes
    encryption: EncryptionType
    filename: str
    # MOBILECONFIG: one profile holding every key of the batch; certificate_id is the first one.
    format: ReleaseFormat = ReleaseFormat.P12


@dataclass(frozen=True)
class ReleaseBatch:
    releases: list[Release]
    # Shown once to the caller when certvault chose the passphrase; never stored or logged.
    generated_passphrase: str | None


def release_key(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    certificate_id: int,
    *,
    passphrase: str | None,
    encryption: str | EncryptionType | None = None,
    reason: str | None = None,
    channel: str = "cli",
    passphrase_generated: bool = False,
    admit: Quota | None = None,
    format: str | ReleaseFormat | None = None,
    session: Session | None = None,
) -> ReleaseBatch:
    return release_keys(
        ports,
        actor,
        account_slug,
        [certificate_id],
        passphrase=passphrase,
        encryption=encryption,
        reason=reason,
        channel=channel,
        passphrase_generated=passphrase_generated,
        admit=admit,
        format=format,
        session=session,
    )


def release_keys(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    certificate_ids: Sequence[int],
    *,
    passphrase: str | None,
    encryption: str | EncryptionType | None = None,
    reason: str | None = None,
    channel: str = "cli",
    passphrase_generated: bool = False,
    admit: Quota | None = None,
    format: str | ReleaseFormat | None = None,
    session: Session | None = None,
) -> ReleaseBatch:
    """Release the keys of ``certificate_ids`` as PKCS#12 files under one passphrase, or as one
    iOS configuration profile holding them (``format`` "mobileconfig").

    ``passphrase_generated``: ``passphrase`` was made by generate_passphrase and shown to the
    caller before (the console and the recovery form hold it sealed on the server between
    showing it and the download), so no policy check applies, the batch does not hand it out
    again, and its KDF is the low generated count. Only server code that made the passphrase
    may say so: a client's word never counts. ``admit`` is the caller's quota: checked once the
    release is authorized and its policy checked, before any key is opened, so that a refused
    attempt uses up nobody's quota; counted in the transaction that audits the release. Under a
    generated passphrase in PostgreSQL's request transaction, whose KDF takes a millisecond,
    it is counted right then instead of checked: the count's lock is held no longer than the
    request, an attempt it refuses is rolled back, and one round trip is saved.

    ``session``: the request's transaction (Database.run_request) to run in. On PostgreSQL the
    release reads, counts, audits and queues its notice there, and the caller hands the file
    out once that transaction has committed; on SQLite it reads there and writes in a short
    transaction of its own.
    """
    refusal = _Refusal(",".join(str(i) for i in certificate_ids)[:64])
    try:
        with read_in(ports, session) as reading:
            account, plan, releases = _prepare(
                reading,
                ports,
                actor,
                account_slug,
                certificate_ids,
                refusal,
                passphrase=passphrase,
                encryption=encryption,
                reason=reason,
                passphrase_generated=passphrase_generated,
                admit=admit,
                format=format,
            )
        ports.db.write(session, lambda s: _commit(s, ports, actor, account, plan, channel, admit))
    except CertvaultError as exc:
        refusal.record(ports, session, actor, exc, channel)
        raise
    return ReleaseBatch(releases, None if passphrase_generated else plan.generated)


@dataclass
class _Refusal:
    """What a refused release is audited as; the account is known once it has been read."""

    target: str
    account_id: int | None = None

    def record(
        self,
        ports: Ports,
        session: Session | None,
        actor: Actor,
        exc: CertvaultError,
        channel: str,
    ) -> None:
        record = partial(
            audit.record_refusal,
            ports,
            account_id=self.account_id,
            actor=actor,
            action=RELEASE,
            reason_code=exc.code,
            target_type="certificate",
            target_id=self.target,
            details={"channel": channel},
        )
        if session is None:
            record()
        else:
            audit.after_transaction(session, record)


def read_in(ports: Ports, session: Session | None) -> AbstractContextManager[Session]:
    """The request's transaction when there is one, otherwise a read transaction of its own."""
    return ports.db.read() if session is None else nullcontext(session)


def kdf_rounds(settings: Settings, generated: bool) -> int:
    """The PKCS#12 KDF count (bags and MAC alike) for a release's passphrase.

    A passphrase certvault generated carries 120 random bits: no guessing attack gets near it,
    so stretching it protects nothing and the low count only keeps the file cheap to open. A
    passphrase a person chose may be guessable: it gets the configured high count. Whether a
    passphrase was generated is known only from the server's own code path, never from a claim.
    """
    return settings.p12_generated_kdf_rounds if generated else settings.p12_kdf_rounds


def _prepare(
    session: Session,
    ports: Ports,
    actor: Actor,
    account_slug: str,
    certificate_ids: Sequence[int],
    refusal: _Refusal,
    *,
    passphrase: str | None,
    encryption: str | EncryptionType | None,
    reason: str | None,
    passphrase_generated: bool,
    admit: Quota | None,
    format: str | ReleaseFormat | None,
) -> tuple[Account, _Plan, list[Release]]:
    """Authorize, check policy and the quota, then write the files (the KDF). Nothing here
    takes a lock another release waits for; in PostgreSQL's request transaction the owner's
    notices are queued here (and a generated passphrase's quota counted), elsewhere nothing is
    written."""
    account = get_account(session, account_slug)
    refusal.account_id = account.id
    actor.require_visible(account.id, None, "Account")
    plan = _plan(
        session,
        ports,
        actor,
        account,
        certificate_ids,
        passphrase,
        encryption,
        reason,
        passphrase_generated,
    )
    options = None
    plan.format = profiles.release_format(format, encryption)
    if plan.format is ReleaseFormat.MOBILECONFIG:
        # Before admit: an account that cannot sign its profiles releases nothing.
        options = profiles.profile_options(session, ports, account)
        plan.encryption = P12_ENCRYPTION
    if admit is not None:
        if plan.generated is not None and ports.db.writes_in(session):
            admit.count(session)
            plan.counted = True
        else:
            admit.check(session)
    if ports.db.writes_in(session):
        # The owner's notices are new rows no other release waits for: written before the KDF,
        # they spare the round trip after it, when the database has sat idle through the KDF
        # and answers slowest. A refusal after the KDF rolls them back with the rest.
        _queue_notices(session, account, actor, plan)
    # A profile's PKCS#12 files follow the same rule: the profile is as protected as they are.
    rounds = kdf_rounds(ports.settings, plan.generated is not None)
    releases = []
    for item in plan.items:
        cert = item.certificate
        # Validated on the way in and authenticated by AES-GCM: no re-validation here.
        key = keylib.load_pkcs8_der(
            keyring.open_private_key(session, ports, account, item.key, item.account_key),
            validate=False,
        )
        certificate = x509.load_der_x509_certificate(cert.der)
        with timing.measure("kdf"):  # Server-Timing, when switched on
            data = write_pkcs12(
                key,
                certificate,
                item.chain,
                plan.passphrase,
                plan.encryption,
                rounds,
                cert.friendly_name or next(iter(cert.emails.split()), None),
            )
        releases.append(Release(cert.id, data, plan.encryption, f"{cert.id}.p12"))
    if options is not None:
        releases = [_profile(session, account, options, plan, releases)]
    return account, plan, releases


@dataclass(frozen=True)
class _Item:
    certificate: Certificate
    key: EscrowedKey
    account_key: AccountKey | None  # the row that wraps the key's data key
    chain: list[x509.Certificate]
    recipients: list[str]


@dataclass
class _Plan:
    items: list[_Item]
    passphrase: str
    generated: str | None
    encryption: EncryptionType
    reason: str
    format: ReleaseFormat = ReleaseFormat.P12
    # The keys' rows are locked in the transaction that commits (PostgreSQL's request
    # transaction): none can be destroyed before the release commits.
    keys_locked: bool = False
    counted: bool = False  # the quota was counted before the KDF (``release_keys``)


def _profile(
    session: Session,
    account: Account,
    options: profiles.ProfileOptions,
    plan: _Plan,
    releases: list[Release],
) -> Release:
    """The one release of a profile batch: every PKCS#12 of ``releases`` in one profile."""
    payloads = [
        (item.certificate, r.data, r.filename) for item, r in zip(plan.items, releases, strict=True)
    ]
    data = profiles.assemble_profile(session, account, options, payloads)
    first = releases[0].certificate_id
    name = f"{first}{plan.format.extension}"
    return Release(first, data, plan.encryption, name, plan.format)


def _released(*, locking: bool) -> Select[Certificate, EscrowedKey, Person, AccountKey]:
    """One statement per certificate: the certificate, its key, its owner and the account key
    that wraps the key. ``locking``: only a certificate with a key, whose row is locked for share
    (PostgreSQL refuses to lock the missing side of an outer join)."""
    query = (
        select(Certificate, EscrowedKey, Person, AccountKey)
        .join(EscrowedKey, EscrowedKey.id == Certificate.escrowed_key_id, isouter=not locking)
        .outerjoin(Person, Person.id == Certificate.person_id)
        .outerjoin(
            AccountKey,
            (AccountKey.account_id == EscrowedKey.account_id)
            & (AccountKey.version == EscrowedKey.account_key_version),
        )
        .where(
            Certificate.id == bindparam("certificate_id"),
            Certificate.account_id == bindparam("account_id"),
        )
    )
    return query.with_for_update(read=True, of=EscrowedKey) if locking else query


# Built once: building a statement costs more than running it.
_RELEASED = _released(locking=False)
_RELEASED_LOCKING = _released(locking=True)
# Which of the keys are still there, after the KDF (key rows are never deleted).
_LIVE = select(EscrowedKey.id).where(
    EscrowedKey.id.in_(bindparam("key_ids", expanding=True)), EscrowedKey.destroyed_at.is_(None)
)


def _plan(
    session: Session,
    ports: Ports,
    actor: Actor,
    account: Account,
    certificate_ids: Sequence[int],
    passphrase: str | None,
    encryption: str | EncryptionType | None,
    reason: str | None,
    passphrase_generated: bool = False,
) -> _Plan:
    actor.require_scope(Scope.KEYS_DOWNLOAD)
    if not certificate_ids:
        raise InvalidInput("No certificate was named.")
    items = []
    # A person recovering their own keys: the certificates they proved, checked again here.
    trust = recovery_rules.anchors(session, account) if actor.is_person else []
    # In the transaction that commits the release, the keys are locked as they are read.
    locking = locked = ports.db.writes_in(session)
    for certificate_id in certificate_ids:
        params = {"certificate_id": certificate_id, "account_id": account.id}
        row = session.execute(_RELEASED_LOCKING, params).first() if locking else None
        if row is None:  # not locking, or a certificate without a key or none at all
            row = session.execute(_RELEASED, params).first()
            locked = False
        if row is None:
            raise NotFound("Certificate not found.")
        cert, key_row, owner, account_key = row
        if actor.is_person:
            _require_self_recovery(actor, account, cert, owner, trust)
        else:
            # Out of the actor's organizations answers exactly like a missing certificate.
            actor.require_visible(account.id, cert.organization_id, "Certificate")
            actor.require(Privilege.KEY_VAULT_DOWNLOAD, account.id, cert.organization_id)
        if key_row is None:
            raise NoEscrowedKey()
        if key_row.destroyed_at is not None:
            raise keyring.AccountKeyDestroyed("This escrowed key was destroyed.")
        chain = x509.load_pem_x509_certificates(cert.chain_pem.encode()) if cert.chain_pem else []
        recipients = cert.emails.split() or ([owner.email] if owner is not None else [])
        items.append(_Item(cert, key_row, account_key, chain, recipients))
    if not account.key_vault_enabled:
        raise KeyVaultDisabled()
    reason = (reason or "").strip()
    if not reason and (account.reason_required or actor.is_operator):
        raise ReasonRequired()
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"A reason may have at most {MAX_REASON} characters.")
    kind = (
        EncryptionType.parse(encryption)
        if not isinstance(encryption, EncryptionType)
        else encryption
    )
    generated = None
    if passphrase is None:
        generated = passphrase = generate_passphrase()
    elif passphrase_generated:
        generated = passphrase
    else:
        passphrase = check_passphrase(passphrase, account.min_passphrase_length)
    return _Plan(items, passphrase, generated, kind, reason, keys_locked=locked)


def _require_self_recovery(
    actor: Actor,
    account: Account,
    cert: Certificate,
    owner: Person | None,
    trust: list[x509.Certificate],
) -> None:
    if actor.account_id != account.id or cert.id not in actor.certificate_ids:
        raise NotFound("Certificate not found.")
    why = recovery_rules.refusal(cert, owner, actor.address, trust)
    if why is not None:
        raise SelfRecoveryRefused(why)


def _commit(
    session: Session,
    ports: Ports,
    actor: Actor,
    account: Account,
    plan: _Plan,
    channel: str,
    admit: Quota | None,
) -> None:
    # ``account`` and the plan's rows were loaded before the KDF; only what may have changed
    # since is read again, unless the keys were locked as they were read: whether they still
    # exist.
    if not plan.keys_locked:
        key_ids = {item.key.id for item in plan.items}
        live = set(session.scalars(_LIVE, {"key_ids": list(key_ids)}))
        if live != key_ids:  # destroyed since it was read (key rows are never deleted)
            raise keyring.AccountKeyDestroyed("This escrowed key was destroyed.")
    if not ports.db.writes_in(session):  # in the request's transaction: queued before the KDF
        _queue_notices(session, account, actor, plan)
    # Concurrent releases wait for the quota's counter rows and the account's audit chain: both
    # are locked last, until commit. The count may refuse; it comes before the first event.
    if admit is not None and not plan.counted:
        admit.count(session)
    for item in plan.items:
        cert = item.certificate
        audit.record(
            session,
            ports,
            account=account,
            actor=actor,
            action=RELEASE,
            target_type="certificate",
            target_id=cert.id,
            details={
                "certificate_sha256": cert.sha256.hex(),
                "spki_sha256": item.key.spki_sha256.hex(),
                "encryption": plan.encryption.value,
                "format": plan.format.value,
                "reason": plan.reason,
                "generated_passphrase": plan.generated is not None,
                "channel": channel,
            },
        )


def _queue_notices(session: Session, account: Account, actor: Actor, plan: _Plan) -> None:
    """The owner's notice of each released key (and the administrators', for an operator's
    release), queued in the transaction that audits the release."""
    mail = []
    for item in plan.items:
        notice = _release_notice(account, item.certificate, actor, plan.reason, plan.format)
        mail += [(address, "Your private key was recovered", notice) for address in item.recipients]
        if actor.is_operator:
            notify.queue_for_admins(session, account, "An operator released a private key", notice)
    notify.queue_mails(session, account, mail)
    session.flush()


def _release_notice(
    account: Account, cert: Certificate, actor: Actor, reason: str, kind: ReleaseFormat
) -> str:
    return (
        f"The private key of your certificate was taken out of the key vault of {account.name}.\n\n"
        f"Certificate subject: {subject_name(cert.subject).dn}\n"
        f"Serial number: {cert.serial}\n"
        f"Released by: {_released_by(actor)}\n"
        f"Delivered as: {kind.label}\n"
        f"Reason: {reason or '(none given)'}\n\n"
        "If you did not expect this, tell your administrator.\n"
    )


def _released_by(actor: Actor) -> str:
    if actor.is_person:
        return f"you ({actor.address}), at the Private Key Recovery Form"
    return actor.name
