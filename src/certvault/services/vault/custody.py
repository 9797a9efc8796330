"""Master-key custody: Shamir shares for custodians, and rebuilding the key from them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import envelope
from certvault.db.models import Account, AccountKey, Installation
from certvault.errors import ConfigurationError
from certvault.masterkey.file import FileMasterKeyProvider, MasterKeyExists, blob_version
from certvault.masterkey.shares import SharesInvalid, combine_shares
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports, operator_name


def record_shares_exported(ports: Ports, actor: Actor, threshold: int, count: int) -> None:
    def work(session: Session) -> None:
        row = session.scalars(select(Installation)).one()
        row.shares_threshold, row.shares_count = threshold, count
        row.shares_exported_at = ports.clock()
        audit.record(
            session,
            ports,
            account=None,
            actor=actor,
            action="kek.export_shares",
            details={"threshold": threshold, "shares": count},
        )

    ports.db.run(work)


def restore_master_key(ports: Ports, mnemonics: Sequence[str]) -> int:
    """Rebuild the file master key; refuses shares that do not open this installation's data.

    Returns how many wrapped account keys the rebuilt key was checked against.
    """
    provider = ports.master_key
    if not isinstance(provider, FileMasterKeyProvider):
        raise ConfigurationError("Only the file master key can be restored from shares.")
    if provider.versions_on_disk():
        raise MasterKeyExists()
    key = combine_shares(mnemonics)
    with ports.db.read() as session:
        rows = session.execute(
            select(AccountKey.wrapped_key, AccountKey.version, Account.uuid)
            .join(Account, Account.id == AccountKey.account_id)
            .where(AccountKey.destroyed_at.is_(None))  # a retired version's blob is wiped
        ).all()
    checked, version = 0, 1
    for wrapped, account_key_version, account_uuid in rows:
        aad = envelope.account_key_aad(account_uuid, account_key_version)
        if not FileMasterKeyProvider.opens(key, wrapped, aad):
            raise SharesInvalid(
                "The shares rebuild a key, but not the one that protects this installation's data."
            )
        checked += 1
        version = blob_version(wrapped)
    FileMasterKeyProvider.install_restored(provider.directory, key, version)

    def work(session: Session) -> None:
        audit.record(
            session,
            ports,
            account=None,
            actor=Actor.operator(operator_name()),
            action="kek.restore_shares",
            details={"checked_account_keys": checked},
        )

    ports.db.run(work)
    return checked
