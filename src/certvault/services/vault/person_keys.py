"""A person's keys in one download (every certificate with a key in the vault, current and
old), and several released files as one zip: batches over services.vault.release, the one way
out."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.db.models import Account, Certificate, Person
from certvault.errors import NotFound
from certvault.services.audit import log as audit
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import Quota
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault import release
from certvault.services.vault.profiles import ReleaseFormat
from certvault.services.vault.release import RELEASE, NoEscrowedKey, Release, ReleaseBatch


def zip_of(batch: ReleaseBatch) -> bytes:
    """Several released files as one zip (the console, the API and the recovery form hand out
    the same kind of file)."""
    buffer = io.BytesIO()
    # Stored, not deflated: the files are encrypted and would not shrink.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for item in batch.releases:
            archive.writestr(item.filename, item.data)
    return buffer.getvalue()


def certificates_of_person(session: Session, account: Account, person_id: int) -> list[Certificate]:
    """Every certificate of a person with a key in the vault, current and old."""
    return list(
        session.scalars(
            select(Certificate)
            .where(
                Certificate.account_id == account.id,
                Certificate.person_id == person_id,
                Certificate.key_in_vault,
            )
            .order_by(Certificate.not_before)
        )
    )


def release_person_keys(
    ports: Ports,
    actor: Actor,
    account_slug: str,
    person_id: int,
    *,
    passphrase: str | None,
    encryption: str | EncryptionType | None = None,
    reason: str | None = None,
    channel: str = "api",
    passphrase_generated: bool = False,
    admit: Quota | None = None,
    format: str | ReleaseFormat | None = None,
    session: Session | None = None,
) -> ReleaseBatch:
    """Release every key of a person, current and old (old mail needs old keys), under one
    passphrase, as files named ``<certificate id>-<serial>.p12`` or as one profile named
    ``person-<person id>-keys.mobileconfig``: one release event per key.

    An organization administrator gets the certificates of their own organizations only.
    """
    with audit.refusals_audited(
        ports,
        account_id=actor.account_id,
        actor=actor,
        action=RELEASE,
        target_type="person",
        target_id=person_id,
    ):
        actor.require_scope(Scope.KEYS_DOWNLOAD)
        with release.read_in(ports, session) as reading:
            names = _person_files(reading, actor, account_slug, person_id)
    batch = release.release_keys(
        ports,
        actor,
        account_slug,
        list(names),
        passphrase=passphrase,
        encryption=encryption,
        reason=reason,
        channel=channel,
        passphrase_generated=passphrase_generated,
        admit=admit,
        format=format,
        session=session,
    )
    return ReleaseBatch(
        [replace(r, filename=_person_filename(person_id, names, r)) for r in batch.releases],
        batch.generated_passphrase,
    )


def _person_files(
    session: Session, actor: Actor, account_slug: str, person_id: int
) -> dict[int, str]:
    """The file name of each certificate of the person with a key the actor may see."""
    account = get_account(session, account_slug)
    person = session.get(Person, person_id)
    if person is None or person.account_id != account.id:
        raise NotFound("Person not found.")
    actor.require_visible(account.id, person.organization_id, "Person")
    names = {
        c.id: f"{c.id}-{c.serial}.p12"
        for c in certificates_of_person(session, account, person_id)
        if actor.can_see(account.id, c.organization_id)
    }
    if not names:
        raise NoEscrowedKey("This person has no keys in the vault.")
    return names


def _person_filename(person_id: int, names: dict[int, str], item: Release) -> str:
    if item.format is ReleaseFormat.P12:
        return names[item.certificate_id]
    return f"person-{person_id}-keys{item.format.extension}"
