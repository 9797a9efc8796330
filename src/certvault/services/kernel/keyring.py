"""The key hierarchy (DESIGN.md §4): master key → account keys → data keys → private keys.

Only this module touches wrapped keys. Service keys are kept in their own table and opened by
their own function, which the release path never calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import envelope
from certvault.crypto import keys as keylib
from certvault.db.models import (
    Account,
    AccountKey,
    CertificateAuthority,
    EscrowedKey,
    ServiceKey,
    new_uuid,
)
from certvault.errors import CertvaultError, SealBroken
from certvault.masterkey import MasterKeyProvider
from certvault.services.kernel.ports import Ports


class AccountKeyDestroyed(CertvaultError):
    """This account's key was destroyed; its escrowed keys cannot be recovered."""

    code = "account_key_destroyed"
    status = 410


class AccountShredded(CertvaultError):
    """This account's keys were destroyed (crypto-shredding): it takes no new keys."""

    code = "account_shredded"
    status = 409


class EscrowedKeyDestroyed(CertvaultError):
    """This key was destroyed in the vault; it is not escrowed again."""

    code = "escrowed_key_destroyed"
    status = 409


def is_shredded(session: Session, account: Account) -> bool:
    """Whether the account's keys were destroyed: a version destroyed and none left alive."""
    versions = session.execute(
        select(AccountKey.destroyed_at).where(AccountKey.account_id == account.id)
    ).all()
    return bool(versions) and all(destroyed is not None for (destroyed,) in versions)


def create_account_key(session: Session, ports: Ports, account: Account) -> AccountKey:
    # A shredded account stays shredded: a fresh account key would let it take keys again as if
    # nothing had happened, beside keys nobody can open.
    if is_shredded(session, account):
        raise AccountShredded()
    latest = session.scalar(
        select(AccountKey.version)
        .where(AccountKey.account_id == account.id)
        .order_by(AccountKey.version.desc())
        .limit(1)
    )
    version = (latest or 0) + 1
    wrapped = ports.master_key.wrap(
        envelope.new_key(), envelope.account_key_aad(account.uuid, version)
    )
    row = AccountKey(account_id=account.id, version=version, wrapped_key=wrapped)
    session.add(row)
    session.flush()
    return row


def _account_key(
    session: Session, ports: Ports, account: Account, version: int | None
) -> tuple[int, bytes]:
    # Unwrapped once per transaction and account (a bulk import seals hundreds of keys);
    # the cache lives in the session and goes with it.
    cache = _account_keys(session)
    found = cache.get((account.id, version))
    if found is None:
        found = cache[(account.id, version)] = _unwrap_account_key(session, ports, account, version)
    return found


def _account_keys(session: Session) -> dict[tuple[int, int | None], tuple[int, bytes]]:
    cache: dict[tuple[int, int | None], tuple[int, bytes]] = session.info.setdefault(
        "certvault_account_keys", {}
    )
    return cache


def _unwrapped(ports: Ports, account: Account, row: AccountKey) -> tuple[int, bytes]:
    key = ports.master_key.unwrap(
        row.wrapped_key, envelope.account_key_aad(account.uuid, row.version)
    )
    return row.version, key


def _unwrap_account_key(
    session: Session, ports: Ports, account: Account, version: int | None
) -> tuple[int, bytes]:
    query = select(AccountKey).where(AccountKey.account_id == account.id)
    if version is None:
        # Shared lock (PostgreSQL): a rotation retires an old version only after every
        # transaction that seals with it has committed, and then counts the keys still on it.
        query = (
            query.where(AccountKey.destroyed_at.is_(None))
            .order_by(AccountKey.version.desc())
            .with_for_update(read=True)
        )
    else:
        query = query.where(AccountKey.version == version)
    row = session.scalars(query.limit(1)).first()
    if row is None:
        if version is None:
            row = create_account_key(session, ports, account)
        else:
            raise AccountKeyDestroyed()
    if row.destroyed_at is not None:
        raise AccountKeyDestroyed()
    return _unwrapped(ports, account, row)


@dataclass(frozen=True)
class SealedPrivateKey:
    nonce: bytes
    ciphertext: bytes
    data_key_nonce: bytes
    wrapped_data_key: bytes
    account_key_version: int


def seal_private_key(
    session: Session,
    ports: Ports,
    account: Account,
    key_uuid: str,
    spki_sha256: bytes,
    pkcs8_der: bytes,
) -> SealedPrivateKey:
    version, account_key = _account_key(session, ports, account, None)
    data_key = envelope.new_key()
    sealed = envelope.seal(
        data_key, pkcs8_der, envelope.private_key_aad(account.uuid, key_uuid, spki_sha256)
    )
    wrapped = envelope.seal(
        account_key, data_key, envelope.data_key_aad(account.uuid, key_uuid, version)
    )
    return SealedPrivateKey(
        sealed.nonce, sealed.ciphertext, wrapped.nonce, wrapped.ciphertext, version
    )


def open_private_key(
    session: Session,
    ports: Ports,
    account: Account,
    row: EscrowedKey,
    wrapping: AccountKey | None = None,
) -> bytes:
    """The PKCS#8 DER of an escrowed key. Callers: release and the drill, nothing else.

    ``wrapping``: the row of the account key that wraps it, when the caller read it with the
    key (a release reads both in one statement); otherwise it is read here."""
    if row.destroyed_at is not None:
        raise AccountKeyDestroyed("This escrowed key was destroyed.")
    if (
        wrapping is not None
        and wrapping.account_id == account.id
        and wrapping.version == row.account_key_version
        and wrapping.destroyed_at is None
    ):
        cache = _account_keys(session)
        if (account.id, wrapping.version) not in cache:
            cache[(account.id, wrapping.version)] = _unwrapped(ports, account, wrapping)
    version, wrapped = (
        row.account_key_version,
        envelope.Sealed(row.data_key_nonce, row.wrapped_data_key),
    )
    try:
        _, account_key = _account_key(session, ports, account, version)
    except AccountKeyDestroyed:
        # An online rotation may have moved this data key to a newer account key, and retired
        # the old one, since the row was read (PostgreSQL reads each statement afresh): read
        # its wrapping again. A key whose account key was destroyed for good stays refused.
        fresh = session.execute(
            select(
                EscrowedKey.account_key_version,
                EscrowedKey.data_key_nonce,
                EscrowedKey.wrapped_data_key,
            ).where(EscrowedKey.id == row.id, EscrowedKey.destroyed_at.is_(None))
        ).one_or_none()
        if fresh is None or fresh.account_key_version == version:
            raise
        version, wrapped = fresh.account_key_version, envelope.Sealed(fresh[1], fresh[2])
        _, account_key = _account_key(session, ports, account, version)
    data_key = envelope.open_sealed(
        account_key, wrapped, envelope.data_key_aad(account.uuid, row.uuid, version)
    )
    return envelope.open_sealed(
        data_key,
        envelope.Sealed(row.nonce, row.ciphertext),
        envelope.private_key_aad(account.uuid, row.uuid, row.spki_sha256),
    )


def create_service_key(
    session: Session,
    ports: Ports,
    *,
    purpose: str,
    material: bytes,
    account: Account | None = None,
    spki_sha256: bytes | None = None,
    certificate_der: bytes | None = None,
    chain_pem: str | None = None,
) -> ServiceKey:
    row = ServiceKey(
        uuid=new_uuid(),
        purpose=purpose,
        account_id=account.id if account else None,
        spki_sha256=spki_sha256,
        certificate_der=certificate_der,
        chain_pem=chain_pem,
    )
    data_key = envelope.new_key()
    aad = envelope.service_key_aad(row.uuid, purpose)
    sealed = envelope.seal(data_key, material, aad)
    row.nonce, row.ciphertext = sealed.nonce, sealed.ciphertext
    row.wrapped_data_key = ports.master_key.wrap(data_key, aad)
    session.add(row)
    session.flush()
    return row


def open_service_key(ports: Ports, row: ServiceKey) -> bytes:
    return open_sealed_service_key(ports.master_key, row)


def open_sealed_service_key(master_key: MasterKeyProvider, row: ServiceKey) -> bytes:
    """A service key's material through the master-key provider alone, without the database:
    how a backup's manifest key is opened before anything is restored."""
    aad = envelope.service_key_aad(row.uuid, row.purpose)
    data_key = master_key.unwrap(row.wrapped_data_key, aad)
    return envelope.open_sealed(data_key, envelope.Sealed(row.nonce, row.ciphertext), aad)


def open_signing_key(ports: Ports, row: ServiceKey) -> keylib.PrivateKey:
    """The private key of a service key certvault signs with (a CA, the profile signer).

    Keys certvault signs with are loaded with full validation (DESIGN §10), once per process
    and sealed key: validating an RSA-4096 key costs half a second, on every signature else.
    """
    cache_key = f"{row.purpose}:{row.uuid}:{row.ciphertext[-16:].hex()}"
    key = ports.signing_keys.get(cache_key)
    if key is None:
        key = keylib.load_pkcs8_der(open_service_key(ports, row), validate=True)
        ports.signing_keys[cache_key] = key
    return key


def service_public_keys(session: Session) -> set[bytes]:
    """Public-key fingerprints of every service key and every CA certificate certvault holds:
    such keys are never escrowed (an offline root's key is kept nowhere here, and must not
    come in through the vault either)."""
    query = select(ServiceKey.spki_sha256).where(ServiceKey.spki_sha256.is_not(None))
    found = {spki for spki in session.scalars(query) if spki is not None}
    for der in session.scalars(select(CertificateAuthority.certificate_der)):
        spki = keylib.certificate_spki_der(x509.load_der_x509_certificate(der))
        if spki is not None:
            found.add(hashlib.sha256(spki).digest())
    return found


def ensure_service_secret(session: Session, ports: Ports, purpose: str) -> None:
    """Make the 256-bit secret kept for ``purpose`` (a MAC key) unless one is kept already."""
    if not _secret_rows(session, purpose):
        create_service_key(session, ports, purpose=purpose, material=envelope.new_key())


def service_secrets(ports: Ports, purpose: str) -> list[bytes]:
    """The 256-bit secrets kept for ``purpose`` (MAC keys), oldest first; one is made if none is.

    Two processes meeting no secret at once may each make one: the oldest is the one to use, and
    checks accept any of them, so that what either made stays valid.
    """
    with ports.db.read() as session:
        rows = _secret_rows(session, purpose)
    if not rows:
        ports.db.run(lambda session: ensure_service_secret(session, ports, purpose))
        with ports.db.read() as session:
            rows = _secret_rows(session, purpose)
    secrets = []
    for row in rows:
        cached = ports.cache.get(f"{purpose}:{row.uuid}")
        if cached is None:
            cached = ports.cache[f"{purpose}:{row.uuid}"] = open_service_key(ports, row)
        secrets.append(cached)
    return secrets


def _secret_rows(session: Session, purpose: str) -> list[ServiceKey]:
    query = select(ServiceKey).where(ServiceKey.purpose == purpose).order_by(ServiceKey.id)
    return list(session.scalars(query))


class DataKeyRewrap:
    """Rewraps an account's data keys under its account-key version ``target`` (an online
    rotation). Each older version is unwrapped once, when a data key first needs it; the private
    keys' own blobs are never touched (their associated data holds nothing rotation changes)."""

    def __init__(self, session: Session, ports: Ports, account: Account, target: int) -> None:
        self.ports, self.account, self.target = ports, account, target
        self._new_key = _unwrap_account_key(session, ports, account, target)[1]
        self._by_version: dict[int, envelope.DataKeyRewrap | CertvaultError] = {}

    def batch(
        self, session: Session, version: int, rows: Sequence[tuple[str, bytes, bytes]]
    ) -> list[tuple[bytes, bytes] | str]:
        """For each (escrowed-key uuid, data-key nonce, wrapped data key) under ``version``: the
        new (nonce, wrapped data key) under the target, or an error code where it does not open."""
        rewrap = self._by_version.get(version)
        if rewrap is None:
            try:
                old_key = _unwrap_account_key(session, self.ports, self.account, version)[1]
                rewrap = envelope.DataKeyRewrap(
                    self.account.uuid, old_key, version, self._new_key, self.target
                )
            except CertvaultError as exc:  # an altered account key: every key on it
                rewrap = exc
            self._by_version[version] = rewrap
        if isinstance(rewrap, CertvaultError):
            return [rewrap.code] * len(rows)
        return [SealBroken.code if new is None else new for new in rewrap.many(rows)]
