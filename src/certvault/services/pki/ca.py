"""The built-in CA as a service: a root and an issuing CA per account, and issuance (CRLs are
in :mod:`certvault.services.pki.crl`).

CA keys are service keys (purpose ``ca-signing``): sealed like escrowed keys, opened only here to
sign, never released. An offline root's key is written once to a PKCS#12 file and kept nowhere
in certvault.

An issuing CA imported with :func:`import_issuing` brings its chain along: each parent
certificate becomes a key-less CA row (role ``root`` or ``intermediate``), so issuance and
``ca show`` walk one parent chain whatever made it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import ca as calib
from certvault.crypto import keys as keylib
from certvault.crypto.passphrase import generate_passphrase
from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.crypto.pkcs12.writer import EncryptionType, write_pkcs12
from certvault.crypto.profiles import KeyType, generate_key
from certvault.db.models import Account, CertificateAuthority, ServiceKey
from certvault.errors import CaInvalid, Conflict, InvalidInput
from certvault.services.audit import log as audit
from certvault.services.kernel import keyring
from certvault.services.kernel.actors import Actor, Privilege
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.pki.authorities import (
    CA_KEY_PURPOSE,
    NoIssuingCa,
    ca_certificate,
    crl_url,
    signing_key,
)
from certvault.services.pki.crl import CRL_VALIDITY, OFFLINE_ROOT_CRL_VALIDITY, regenerate_crl
from certvault.services.pki.issuance import Issued, IssueRequest

CA_KEY_TYPES = (KeyType.EC384, KeyType.EC256, KeyType.RSA3072, KeyType.RSA4096)
MAX_CHAIN_DEPTH = 8
# Room for the "-root" / "-intermediate<n>" suffixes of imported chain rows within 63 characters.
MAX_CA_NAME = 40
_CA_NAME = re.compile(rf"^[a-z0-9](?:[a-z0-9-]{{0,{MAX_CA_NAME - 2}}}[a-z0-9])?$")
INIT, IMPORT = "ca.init", "ca.import_issuing"


class CaExists(Conflict):
    """This account already has an active issuing CA."""

    code = "ca_exists"


class OfflineRootExists(Conflict):
    """The file for the offline root already exists; certvault never overwrites it."""

    code = "exists"


@dataclass(frozen=True)
class CaInitResult:
    root: x509.Certificate
    issuing: x509.Certificate
    root_id: int
    issuing_id: int
    crl_url: str  # the issuing CA's CRL: what every certificate it issues points to
    offline_root: Path | None = None
    # Shown once to the operator with the offline root file; stored nowhere.
    root_passphrase: str | None = field(default=None, repr=False)


def _check_name(name: str) -> str:
    if not _CA_NAME.match(name):
        raise InvalidInput(
            f"A CA name is 1 to {MAX_CA_NAME} characters a-z, 0-9 and - (it is part of the "
            "CRL URL)."
        )
    return name


def _account_id(ports: Ports, actor: Actor, account_slug: str, action: str) -> int:
    # An unknown account is refused on the installation chain; everything after on the account's.
    with audit.refusals_audited(ports, account_id=None, actor=actor, action=action):
        with ports.db.read() as session:
            account = get_account(session, account_slug)
            actor.require(Privilege.SETTINGS_MANAGE, account.id, None)
            return account.id


def active_issuing(session: Session, account_id: int) -> CertificateAuthority | None:
    return session.scalars(
        select(CertificateAuthority).where(
            CertificateAuthority.account_id == account_id,
            CertificateAuthority.role == "issuing",
            CertificateAuthority.active.is_(True),
        )
    ).first()


def _name_taken(session: Session, account_id: int, name: str) -> bool:
    return (
        session.scalar(
            select(CertificateAuthority.id).where(
                CertificateAuthority.account_id == account_id, CertificateAuthority.name == name
            )
        )
        is not None
    )


def _store_key(
    session: Session, ports: Ports, account: Account, key: keylib.PrivateKey, cert: x509.Certificate
) -> ServiceKey:
    return keyring.create_service_key(
        session,
        ports,
        purpose=CA_KEY_PURPOSE,
        material=keylib.to_pkcs8_der(key),
        account=account,
        spki_sha256=keylib.spki_sha256(key.public_key()),
        certificate_der=cert.public_bytes(Encoding.DER),
    )


def _add_issuing(
    session: Session,
    ports: Ports,
    account: Account,
    name: str,
    parent_id: int | None,
    key: keylib.PrivateKey,
    cert: x509.Certificate,
) -> CertificateAuthority:
    """A new issuing CA with its sealed key and its first CRL."""
    row = CertificateAuthority(
        account_id=account.id,
        name=name,
        role="issuing",
        parent_id=parent_id,
        certificate_der=cert.public_bytes(Encoding.DER),
        service_key_id=_store_key(session, ports, account, key, cert).id,
    )
    session.add(row)
    session.flush()
    regenerate_crl(session, ports, row)
    return row


# --- init ----------------------------------------------------------------------------------------


def init_ca(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    *,
    root_name: str = "root",
    issuing_name: str = "issuing",
    key_type: KeyType = KeyType.EC384,
    organization: str | None = None,
    offline_root: Path | None = None,
) -> CaInitResult:
    """Create the account's root and issuing CA; with ``offline_root`` the root key goes to that
    file (0600, never overwritten) under a passphrase returned once, and nowhere else."""
    account_id = _account_id(ports, actor, account_slug, INIT)
    with audit.refusals_audited(ports, account_id=account_id, actor=actor, action=INIT):
        root_name, issuing_name = _check_name(root_name), _check_name(issuing_name)
        if root_name == issuing_name:
            raise InvalidInput("The root and the issuing CA need different names.")
        if key_type not in CA_KEY_TYPES:
            raise InvalidInput("CA keys are one of: " + ", ".join(CA_KEY_TYPES) + ".")
        with ports.db.read() as session:
            account = session.get_one(Account, account_id)
            _refuse_existing(session, account_id, (root_name, issuing_name))
        # Key generation (seconds for RSA-4096) and the p12 KDF run outside any transaction.
        now = ports.clock()
        root_key, issuing_key = generate_key(key_type), generate_key(key_type)
        base = account.name[:48]
        root = calib.build_root(root_key, f"{base} Root CA", organization, now=now)
        issuing = calib.build_issuing(
            root_key,
            root,
            issuing_key,
            f"{base} Issuing CA",
            organization,
            crl_url=crl_url(ports, account.slug, root_name),
            now=now,
        )
        # Signed now: with an offline root this is the only moment its key is here.
        root_crl = calib.build_crl(
            root_key,
            root,
            [],
            crl_number=1,
            this_update=now,
            next_update=now + (OFFLINE_ROOT_CRL_VALIDITY if offline_root else CRL_VALIDITY),
        )
        passphrase = None
        if offline_root is not None:
            passphrase = generate_passphrase()
            data = write_pkcs12(
                root_key,
                root,
                [],
                passphrase,
                EncryptionType.AES256_SHA256,
                ports.settings.p12_kdf_rounds,
                f"{account.slug} root CA",
            )
            _create_secret_file(offline_root, data)

        def work(session: Session) -> tuple[int, int]:
            account = session.get_one(Account, account_id)
            _refuse_existing(session, account_id, (root_name, issuing_name))
            root_row = CertificateAuthority(
                account_id=account_id,
                name=root_name,
                role="root",
                certificate_der=root.public_bytes(Encoding.DER),
                service_key_id=(
                    None if offline_root else _store_key(session, ports, account, root_key, root).id
                ),
                crl_number=1,
                crl_der=root_crl.public_bytes(Encoding.DER),
                crl_next_update=root_crl.next_update_utc,
            )
            session.add(root_row)
            session.flush()
            issuing_row = _add_issuing(
                session, ports, account, issuing_name, root_row.id, issuing_key, issuing
            )
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=INIT,
                target_type="ca",
                target_id=issuing_row.id,
                details={
                    "root": root.subject.rfc4514_string(),
                    "issuing": issuing.subject.rfc4514_string(),
                    "key_type": key_type.value,
                    "root_spki_sha256": keylib.spki_sha256(root_key.public_key()).hex(),
                    "offline_root": offline_root is not None,
                },
            )
            return root_row.id, issuing_row.id

        try:
            root_id, issuing_id = ports.db.run(work)
        except BaseException:
            if offline_root is not None and not _recorded(ports, account_id, root):
                # A root file without its CA would only mislead.
                offline_root.unlink(missing_ok=True)
            raise
    return CaInitResult(
        root=root,
        issuing=issuing,
        root_id=root_id,
        issuing_id=issuing_id,
        crl_url=crl_url(ports, account.slug, issuing_name),
        offline_root=offline_root,
        root_passphrase=passphrase,
    )


def _refuse_existing(session: Session, account_id: int, names: tuple[str, ...]) -> None:
    if active_issuing(session, account_id) is not None:
        raise CaExists()
    for name in names:
        if _name_taken(session, account_id, name):
            raise Conflict(f"This account already has a CA named {name}; choose another name.")


def _recorded(ports: Ports, account_id: int, cert: x509.Certificate) -> bool:
    """Whether ``cert`` is one of the account's CAs; True when that cannot be told, so that a
    commit whose answer was lost never costs the only copy of a root key."""
    try:
        with ports.db.read() as session:
            found = session.scalar(
                select(CertificateAuthority.id).where(
                    CertificateAuthority.account_id == account_id,
                    CertificateAuthority.certificate_der == cert.public_bytes(Encoding.DER),
                )
            )
    except Exception:  # noqa: BLE001 - any doubt keeps the file
        return True
    return found is not None


def _create_secret_file(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise OfflineRootExists(f"{path} exists; certvault never overwrites it.") from None
    except OSError as exc:
        raise InvalidInput(f"Cannot create {path}: {exc.strerror}.") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise InvalidInput(f"Cannot write {path}: {exc.strerror}.") from None


# --- an issuing CA signed elsewhere -----------------------------------------------------------


def import_issuing(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    p12: bytes,
    password: str,
    *,
    name: str = "issuing",
) -> CertificateAuthority:
    """Install an issuing CA from a PKCS#12 file (its key, its certificate and the chain up to a
    root); it replaces the active issuing CA, whose CRL stays published for what it issued."""
    account_id = _account_id(ports, actor, account_slug, IMPORT)
    with audit.refusals_audited(ports, account_id=account_id, actor=actor, action=IMPORT):
        name = _check_name(name)
        limits = P12Limits(
            max_bytes=ports.settings.p12_max_bytes,
            max_iterations=ports.settings.p12_max_iterations,
        )
        contents = read_pkcs12(p12, password, limits)
        if len(contents.entries) != 1:
            raise CaInvalid("The file must hold exactly one private key: the issuing CA's.")
        [entry] = contents.entries
        calib.verify_issuing_pair(entry.key, entry.certificate, now=ports.clock())
        parents = _parent_chain(entry.certificate, contents.extra_certificates)
        spki = keylib.spki_sha256(entry.key.public_key())

        def work(session: Session) -> CertificateAuthority:
            account = session.get_one(Account, account_id)
            if spki in keyring.service_public_keys(session):
                raise Conflict("This CA's key is already installed in certvault.")
            if _name_taken(session, account_id, name):
                raise Conflict(f"This account already has a CA named {name}; pass another name.")
            parent_id = _store_parents(session, account_id, name, parents)
            previous = active_issuing(session, account_id)
            if previous is not None:
                previous.active = False
            row = _add_issuing(
                session, ports, account, name, parent_id, entry.key, entry.certificate
            )
            audit.record(
                session,
                ports,
                account=account,
                actor=actor,
                action=IMPORT,
                target_type="ca",
                target_id=row.id,
                details={
                    "issuing": entry.certificate.subject.rfc4514_string(),
                    "spki_sha256": spki.hex(),
                    "chain": len(parents),
                    "replaced": previous.id if previous is not None else None,
                },
            )
            return row

        return ports.db.run(work)


def _parent_chain(cert: x509.Certificate, extra: list[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates above ``cert`` up to a self-signed root, nearest first."""
    chain: list[x509.Certificate] = []
    current = cert
    while not calib.issued_by(current, current):
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise CaInvalid("The certificate chain in the file is too long.")
        parent = next(
            (c for c in extra if c.subject == current.issuer and calib.issued_by(current, c)), None
        )
        if parent is None or parent in chain:
            raise CaInvalid(
                "The file must carry the chain up to the root (openssl pkcs12 -export "
                "-certfile chain.pem)."
            )
        chain.append(parent)
        current = parent
    return chain


def _store_parents(
    session: Session, account_id: int, name: str, parents: list[x509.Certificate]
) -> int | None:
    """Key-less rows for the chain above an imported CA, top down; a certificate already held
    (say, this account's own root) is reused. The id of the nearest parent."""
    parent_id: int | None = None
    for depth, cert in reversed(list(enumerate(parents, start=1))):
        der = cert.public_bytes(Encoding.DER)
        row = session.scalars(
            select(CertificateAuthority).where(
                CertificateAuthority.account_id == account_id,
                CertificateAuthority.certificate_der == der,
            )
        ).first()
        if row is None:
            root = depth == len(parents)
            row = CertificateAuthority(
                account_id=account_id,
                name=f"{name}-root" if root else f"{name}-intermediate{depth}",
                role="root" if root else "intermediate",
                parent_id=parent_id,
                certificate_der=der,
            )
            if _name_taken(session, account_id, row.name):
                raise Conflict(f"This account already has a CA named {row.name}.")
            session.add(row)
            session.flush()
        parent_id = row.id
    return parent_id


# --- issuing -------------------------------------------------------------------------------------


def chain_of(session: Session, row: CertificateAuthority) -> list[x509.Certificate]:
    """The CA's certificate and those above it, nearest first."""
    chain: list[x509.Certificate] = []
    current: CertificateAuthority | None = row
    while current is not None and len(chain) < MAX_CHAIN_DEPTH:
        chain.append(ca_certificate(current))
        parent = session.get(CertificateAuthority, current.parent_id) if current.parent_id else None
        current = parent if parent is not None and parent.account_id == row.account_id else None
    return chain


def no_issuing_ca(account: Account) -> NoIssuingCa:
    return NoIssuingCa(
        f"The account {account.slug} has no issuing CA; run `certvault ca init --account "
        f"{account.slug}`."
    )


class BuiltinIssuer:
    """The certificate issuer of services.pki.issuance, signing with the account's issuing CA."""

    def __init__(self, ports: Ports) -> None:
        self._ports = ports

    def issue(self, session: Session, account: Account, request: IssueRequest) -> Issued:
        row = active_issuing(session, account.id)
        if row is None or row.service_key_id is None:
            raise no_issuing_ca(account)
        chain = chain_of(session, row)
        certificate = calib.issue_certificate(
            signing_key(session, self._ports, row),
            chain[0],
            request.public_key,
            request.profile,
            email=request.email,
            common_name=request.common_name,
            extra_emails=request.extra_emails,
            crl_url=crl_url(self._ports, account.slug, row.name),
            now=self._ports.clock(),
        )
        return Issued(certificate=certificate, chain=chain, ca_id=row.id)


def issuing_chain(ports: Ports, actor: Actor, account_slug: str) -> list[x509.Certificate]:
    """The active issuing CA's certificate up to the root, nearest first."""
    with ports.db.read() as session:
        account = get_account(session, account_slug)
        actor.require_visible(account.id, None, "Account")
        row = active_issuing(session, account.id)
        if row is None:
            raise no_issuing_ca(account)
        return chain_of(session, row)
