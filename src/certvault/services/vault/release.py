"""The one way out: every decrypted escrowed key leaves certvault through :func:`release_keys`.

In order, as every release path must: authorization per certificate, policy (Key Vault enabled,
reason, passphrase), the caller's rate limits (``admit``: here, so that only an attempt that
could release a key counts against them, and before any KDF, so that a refused attempt costs
none), the keys opened and their PKCS#12 files started on writer threads, then in one
transaction the quota's count, the audit event and the owner's notification. That transaction
commits while the files' KDFs run (they let go of the GIL): the KDF is the one deliberate cost
of a release, and neither the request's database work nor another release's wait for a lock sits
behind it. A file is handed out only once the transaction has committed; a writer that fails
after the commit leaves an audited release that delivered nothing, as a client that hangs up
after the commit does, never a file without its audit event. On PostgreSQL a request runs all of
it in its one transaction (Database.run_request), reading the keys' rows with a share lock (a
destruction waits for the release to commit); elsewhere a short write transaction reads again
whether the keys still exist. Asked for as an iOS configuration profile, the batch is one
profile holding those PKCS#12 files (services/vault/profiles.py), built once they are written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from contextvars import copy_context
from dataclasses import dataclass
from functools import cached_property, partial

from cryptography import x509
from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from certvault import timing
from certvault.config import Settings
from certvault.crypto import keys as keylib
from certvault.crypto.mobileconfig import P12_ENCRYPTION
from certvault.crypto.names import subject_name
from certvault.crypto.passphrase import check_passphrase, generate_passphrase
from certvault.crypto.pkcs12.writer import EncryptionType, KeyAndCertificate, pkcs12_writer
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
    # Waits for the file: its KDF runs on a writer thread while the release commits.
    written: Callable[[], bytes]
    encryption: EncryptionType
    filename: str
    # MOBILECONFIG: one profile holding every key of the batch; certificate_id is the first one.
    format: ReleaseFormat = ReleaseFormat.P12

    @cached_property
    def data(self) -> bytes:
        """The file. Handed out only once the release's transaction has committed."""
        return self.written()


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
    may say so: a client's word never counts. ``admit`` is the caller's quota, taken once the
    release is authorized and its policy checked and before any key is opened, so that a
    refused attempt uses up nobody's quota and costs no KDF. In PostgreSQL's request
    transaction it is counted right then: that transaction commits while the files are
    written, so the count's lock is held no longer than it, and an attempt refused later is
    rolled back. Elsewhere it is checked then and counted in the transaction that audits the
    release.

    ``session``: the request's transaction (Database.run_request) to run in. On PostgreSQL the
    release reads, counts, audits and queues its notice there; on SQLite it reads there and
    writes in a short transaction of its own. Either way the caller reads a release's ``data``
    (waiting for its writer) only once that transaction has committed.
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


# The KDFs of the files being written, one per core: the CPU they need, and no more at once.
_WRITERS = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="certvault-kdf")
# How long a release waits for its writer to take the GIL before going on with its transaction. A
# writer needs the GIL only to reach its KDF; one still waiting for a free thread (all busy with
# other releases' KDFs) is waited for no longer than this.
_HANDOFF_SECONDS = 0.002


def _in_background(write: Callable[[], bytes]) -> Future[bytes]:
    """``write`` on a writer thread, which starts before this thread goes on: a thread that
    keeps the GIL to itself would otherwise hold the KDF back until it next waits for the
    database, and the KDF is what the caller waits for."""
    started = threading.Event()

    def measured() -> bytes:
        started.set()
        with timing.measure("kdf"):  # Server-Timing, when switched on
            return write()

    file = _WRITERS.submit(copy_context().run, measured)
    started.wait(_HANDOFF_SECONDS)
    return file


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
    """Authorize, check policy and the quota, open the keys and start writing their files (the
    KDF) on writer threads. The only write here is the quota's count in PostgreSQL's request
    transaction."""
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
        if ports.db.writes_in(session):
            # This transaction commits while the files are written: the count's lock is held no
            # longer than it, and an attempt the count refuses costs no KDF.
            admit.count(session)
        else:
            admit.check(session)  # counted in the write transaction, which may still refuse
    names = [(item.certificate, f"{item.certificate.id}.p12") for item in plan.items]
    build = None if options is None else profiles.profile_writer(session, account, options, names)
    # A profile's PKCS#12 files follow the same rule: the profile is as protected as they are.
    rounds = kdf_rounds(ports.settings, plan.generated is not None)
    files = []
    for item in plan.items:
        cert = item.certificate
        # Validated on the way in and authenticated by AES-GCM: no re-validation here.
        key = keylib.load_pkcs8_der(
            keyring.open_private_key(session, ports, account, item.key, item.account_key),
            validate=False,
        )
        name = cert.friendly_name or next(iter(cert.emails.split()), None)
        entry = KeyAndCertificate(key, x509.load_der_x509_certificate(cert.der), name)
        # Refused here if at all; the KDF runs on a writer thread while the release commits.
        write = pkcs12_writer([entry], item.chain, plan.passphrase, plan.encryption, rounds)
        files.append(_in_background(write))
    if build is None:
        releases = [
            Release(cert.id, file.result, plan.encryption, filename)
            for (cert, filename), file in zip(names, files, strict=True)
        ]
    else:
        first = plan.items[0].certificate.id
        profile = partial(_profile, build, files)
        filename = f"{first}{plan.format.extension}"
        releases = [Release(first, profile, plan.encryption, filename, plan.format)]
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


def _profile(build: Callable[[Sequence[bytes]], bytes], files: list[Future[bytes]]) -> bytes:
    """The one file of a profile batch: every PKCS#12 file of the batch in one profile."""
    return build([file.result() for file in files])


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
    mail = []
    for item in plan.items:
        notice = _release_notice(account, item.certificate, actor, plan.reason, plan.format)
        mail += [(address, "Your private key was recovered", notice) for address in item.recipients]
        if actor.is_operator:
            notify.queue_for_admins(session, account, "An operator released a private key", notice)
    notify.queue_mails(session, account, mail)
    session.flush()
    # Concurrent releases wait for the quota's counter rows and the account's audit chain: both
    # are locked last, until commit. The count may refuse; it comes before the first event. In
    # the request's transaction the quota was counted before the files were started, a few
    # milliseconds before this commits.
    if admit is not None and not ports.db.writes_in(session):
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
