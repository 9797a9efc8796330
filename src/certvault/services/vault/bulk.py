"""What an archival does, decided in one place for one entry and for many (DESIGN.md §10).

Every entry is checked and planned in Python, in entry order, against the rows read up front
and the rows planned before it; then the planned rows are written with a few set-based
statements per table, sealed as a flush seals them, and audited in entry order. A refused entry
writes nothing. :func:`archive.archive_entry` (the one way in) is a batch of one; a bulk import
falls back to it, one savepoint per entry, should the database refuse the set-based writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto.ca import chains_to
from certvault.db.batch import among
from certvault.db.models import Account, Certificate, EscrowedKey, Person
from certvault.errors import CertvaultError, NotFound
from certvault.services.audit import log as audit
from certvault.services.directory import persons
from certvault.services.directory.certificates import certificate_values
from certvault.services.kernel import keyring, notify
from certvault.services.kernel.actors import Actor, Privilege
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.seal_events import insert_sealed, inserted_ids
from certvault.services.kernel.tenancy import find_organization
from certvault.services.vault.archive_rules import (
    ALREADY_EXISTS,
    ARCHIVE,
    ESCROW_SUBJECT,
    IMPORTED,
    ArchiveCache,
    CertificateConflict,
    EntryFacts,
    EntryResult,
    EscrowRequest,
    NoOwner,
    PersonMismatch,
    UntrustedIssuer,
    archive_details,
    entry_facts,
    escrow_notice,
    escrowed_key_values,
    failed_entry,
)

_CHUNK = 500  # values per IN (...) of the reads up front


@dataclass(eq=False)
class _Key:
    """An escrowed key: stored (id known) or new in this batch (id known once written)."""

    id: int | None
    values: dict[str, Any] | None = None
    destroyed: bool = False  # destroyed in the vault: it is not escrowed again


@dataclass(eq=False)
class _Person:
    id: int | None
    email: str
    organization_id: int
    values: dict[str, Any] | None = None


@dataclass(eq=False)
class _Cert:
    """A certificate: stored (``row``) or new in this batch (``values``)."""

    id: int | None
    organization_id: int
    person: _Person | None
    key: _Key | None
    row: Certificate | None = None
    values: dict[str, Any] | None = None
    notice: tuple[str, str, str, Any] = ("", "", "", None)


def _same(a: _Key | _Person | None, b: _Key | _Person | None) -> bool:
    if a is None or b is None:
        return False
    return a is b or (a.id is not None and a.id == b.id)


@dataclass
class _Planned:
    """One entry's outcome: refused (``refusal``) or stored/known (``cert``)."""

    req: EscrowRequest
    facts: EntryFacts | None = None
    cert: _Cert | None = None
    message: str = IMPORTED
    refusal: CertvaultError | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _chunks(values: Iterable[Any]) -> Iterable[list[Any]]:
    items = list(dict.fromkeys(values))
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class BatchPlan:
    """The rows a batch of entries reads and writes, planned in entry order."""

    def __init__(self, session: Session, ports: Ports, account: Account, actor: Actor) -> None:
        self.session, self.ports, self.account, self.actor = session, ports, account, actor
        self.certs: dict[bytes, _Cert] = {}  # by sha256
        self.serials: dict[tuple[bytes, str], bytes] = {}  # (issuer, serial) -> sha256
        self.keys: dict[bytes, _Key] = {}  # by spki
        self.persons: dict[str, _Person] = {}  # by normalized email
        self.new_persons: list[_Person] = []
        self.new_keys: list[_Key] = []
        self.new_certs: list[_Cert] = []
        self.linked: list[_Cert] = []  # stored certificates given a key
        self.entries: list[_Planned] = []

    # --- reading up front -----------------------------------------------------------------

    def read(self, requests: Sequence[EscrowRequest]) -> list[EntryFacts | CertvaultError]:
        """Check each entry's own facts, then read in a few statements every stored row the
        entries may meet."""
        facts: list[EntryFacts | CertvaultError] = []
        for req in requests:
            try:
                facts.append(entry_facts(self.session, self.account, req))
            except CertvaultError as exc:
                facts.append(exc)
        good = [f for f in facts if isinstance(f, EntryFacts)]
        account_id = self.account.id
        dialect = self.session.get_bind().dialect
        # Every lookup names each column of one of the account's unique indexes. By issuer and
        # serial: by serial alone, every certificate of the account would be read. The rows of
        # other pairs (an issuer of one entry, the serial of another) are stored facts too.
        issuers = list(dict.fromkeys(f.certificate.issuer_sha256 for f in good))
        for chunk in _chunks(f.certificate.serial for f in good):
            for issuer, serial, sha256 in self.session.execute(
                select(Certificate.issuer_sha256, Certificate.serial, Certificate.sha256).where(
                    Certificate.account_id == account_id,
                    among(dialect, Certificate.issuer_sha256, issuers),
                    among(dialect, Certificate.serial, chunk),
                )
            ):
                self.serials[(bytes(issuer), serial)] = bytes(sha256)
        stored: list[Certificate] = []
        for chunk in _chunks(f.certificate.sha256 for f in good):
            stored += self.session.scalars(
                select(Certificate).where(
                    Certificate.account_id == account_id,
                    among(dialect, Certificate.sha256, chunk),
                )
            ).all()
        owners: dict[int, _Person] = {}
        for chunk in _chunks(row.person_id for row in stored if row.person_id is not None):
            for person in self.session.scalars(
                select(Person).where(among(dialect, Person.id, chunk))
            ):
                owners[person.id] = self._stored_person(person)
        for row in stored:
            self.certs[bytes(row.sha256)] = _Cert(
                row.id,
                row.organization_id,
                None if row.person_id is None else owners.get(row.person_id),
                None if row.escrowed_key_id is None else _Key(row.escrowed_key_id),
                row=row,
            )
        for chunk in _chunks(f.spki for f in good):
            for key_id, spki, destroyed_at in self.session.execute(
                select(EscrowedKey.id, EscrowedKey.spki_sha256, EscrowedKey.destroyed_at)
                .where(
                    EscrowedKey.account_id == account_id,
                    among(dialect, EscrowedKey.spki_sha256, chunk),
                )
                .with_for_update(read=True)  # a retention run destroying one is waited for
            ):
                self.keys[bytes(spki)] = _Key(key_id, destroyed=destroyed_at is not None)
        emails: list[str] = []
        for req, f in zip(requests, facts, strict=True):
            if isinstance(f, EntryFacts) and req.person_id is None:
                named = f.certificate.emails
                email = req.person_email or (named[0] if named else None)
                if email is not None:
                    try:
                        emails.append(persons.normalize_email(email))
                    except CertvaultError:
                        pass  # refused when its entry is planned
        for chunk in _chunks(emails):
            for person in self.session.scalars(
                select(Person).where(
                    Person.account_id == account_id, among(dialect, Person.email, chunk)
                )
            ):
                self._stored_person(person)
        return facts

    def _stored_person(self, person: Person) -> _Person:
        found = self.persons.get(person.email)
        if found is None:
            found = self.persons[person.email] = _Person(
                person.id, person.email, person.organization_id
            )
        return found

    # --- planning, in entry order ---------------------------------------------------------

    def plan(self, req: EscrowRequest, facts: EntryFacts | CertvaultError) -> _Planned:
        planned = _Planned(req)
        try:
            if isinstance(facts, CertvaultError):
                raise facts
            planned.facts = facts
            self._plan(planned, facts)
        except CertvaultError as exc:
            planned.refusal = exc
        self.entries.append(planned)
        return planned

    def _owner(self, req: EscrowRequest, emails: list[str]) -> _Person:
        """The entry's owner: the person named, else found or planned by address (the persons read
        up front and those planned before)."""
        session, account = self.session, self.account
        if req.person_id is not None:
            person = session.get(Person, req.person_id)
            if person is None or person.account_id != account.id:
                raise NotFound("Person not found.")
            self.actor.require_visible(account.id, person.organization_id, "Person")
            if person.email not in emails:
                raise PersonMismatch()
            return self._stored_person(person)
        org_id = (
            find_organization(session, account, req.organization).id
            if req.organization
            else ArchiveCache.of(session, account).default_organization.id
        )
        email = req.person_email or (emails[0] if emails else None)
        if email is None:
            raise NoOwner()
        normalized = persons.normalize_email(email)
        found = self.persons.get(normalized)
        if found is not None:
            return found
        return _Person(
            None,
            normalized,
            org_id,
            {"account_id": account.id, "organization_id": org_id, "email": normalized},
        )

    def _plan(self, planned: _Planned, f: EntryFacts) -> None:
        session, account, actor, req = self.session, self.account, self.actor, planned.req
        cert = req.certificate
        known = self.serials.get((f.certificate.issuer_sha256, f.certificate.serial))
        if known is not None and known != f.certificate.sha256:
            raise CertificateConflict()
        cache = ArchiveCache.of(session, account)
        trusted = chains_to(cert, req.chain, cache.trusted_issuers)
        if account.require_trusted_issuer and not trusted:
            raise UntrustedIssuer()
        existing = self.certs.get(f.certificate.sha256)
        escrowed = self.keys.get(f.spki)
        if escrowed is not None and escrowed.destroyed:
            raise keyring.EscrowedKeyDestroyed()
        if existing is not None:
            actor.require_visible(account.id, existing.organization_id, "Certificate")
            if req.person_id is not None:
                named = self._owner(req, f.certificate.emails)
                if not _same(existing.person, named):
                    raise PersonMismatch()
            if escrowed is not None and _same(existing.key, escrowed):
                planned.cert, planned.message = existing, ALREADY_EXISTS
                return
            owner = existing.person
            organization_id = existing.organization_id
        else:
            owner = self._owner(req, f.certificate.emails)
            organization_id = owner.organization_id
        actor.require(Privilege.CERTIFICATES_MANAGE, account.id, organization_id)

        new_key = escrowed is None
        if escrowed is None:
            escrowed = _Key(None, escrowed_key_values(session, self.ports, account, actor, req, f))
        if existing is None:
            assert owner is not None
            values = certificate_values(
                account,
                cert,
                req.chain,
                person_id=owner.id,
                organization_id=organization_id,
                source=req.source,
                profile=req.profile.name if req.profile else None,
                ca_id=req.ca_id,
                trusted_issuer=trusted,
                friendly_name=req.friendly_name,
                identity=f.certificate,
                spki_sha256=f.spki,  # the key's, which the certificate's matched
            )
            notice = (values["subject"], values["issuer"], values["serial"], values["not_after"])
            row = _Cert(None, organization_id, owner, escrowed, values=values, notice=notice)
        else:
            row = existing
        # Nothing below refuses: the entry's rows join the plan.
        if owner is not None and owner.id is None and owner.email not in self.persons:
            self.persons[owner.email] = owner
            self.new_persons.append(owner)
        if new_key:
            self.keys[f.spki] = escrowed
            self.new_keys.append(escrowed)
        if existing is None:
            self.certs[f.certificate.sha256] = row
            self.serials[(f.certificate.issuer_sha256, f.certificate.serial)] = f.certificate.sha256
            self.new_certs.append(row)
        else:
            if existing.row is not None and existing not in self.linked:
                self.linked.append(existing)
            existing.key = escrowed
        planned.cert = row
        planned.details = archive_details(req, f.certificate.sha256, f.spki, new_key, trusted)

    # --- writing ----------------------------------------------------------------------------

    def write(self) -> None:
        """Write every planned row with set-based statements (the caller audits the entries)."""
        session = self.session
        people = self.new_persons
        for person, person_id in zip(
            people, insert_sealed(session, Person, [p.values or {} for p in people]), strict=True
        ):
            person.id = person_id
        keys = self.new_keys
        if keys:
            ids = inserted_ids(session.connection(), EscrowedKey, [k.values or {} for k in keys])
            for key, key_id in zip(keys, ids, strict=True):
                key.id = key_id
        for cert in self.new_certs:
            assert cert.values is not None and cert.key is not None and cert.person is not None
            cert.values["escrowed_key_id"] = cert.key.id
            cert.values["person_id"] = cert.person.id
        for cert, cert_id in zip(
            self.new_certs,
            insert_sealed(session, Certificate, [c.values or {} for c in self.new_certs]),
            strict=True,
        ):
            cert.id = cert_id
        for cert in self.linked:  # sealed again by the flush, which batches the UPDATEs
            assert cert.row is not None and cert.key is not None
            cert.row.escrowed_key_id = cert.key.id
        session.flush()
        mail: list[tuple[str, str, str]] = []
        for planned in self.entries:
            if planned.refusal is None and planned.details:
                assert planned.cert is not None and planned.facts is not None
                notice = self._notice(planned.cert)
                mail += [(to, ESCROW_SUBJECT, notice) for to in self._recipients(planned)]
        notify.queue_mails(session, self.account, mail)

    def _recipients(self, planned: _Planned) -> list[str]:
        assert planned.facts is not None and planned.cert is not None
        owner = planned.cert.person
        return planned.facts.certificate.emails or ([owner.email] if owner else [])

    def _notice(self, cert: _Cert) -> str:
        if cert.row is not None:
            row = cert.row
            return escrow_notice(self.account, row.subject, row.issuer, row.serial, row.not_after)
        return escrow_notice(self.account, *cert.notice)

    def result(self, planned: _Planned) -> EntryResult:
        if planned.refusal is not None:
            return failed_entry(planned.req, planned.refusal)
        assert planned.facts is not None and planned.cert is not None
        f, cert = planned.facts, planned.facts.certificate
        return EntryResult(f.alias, planned.cert.id, cert.md5_hex, cert.sha1_hex, planned.message)

    def event(self, planned: _Planned) -> audit.Planned | None:
        """The entry's audit event; none for a key and certificate already stored together."""
        if planned.refusal is not None:
            return audit.Planned(
                ARCHIVE,
                outcome="refused",
                target_type="certificate",
                details={
                    "reason": planned.refusal.code,
                    "certificate_sha256": planned.req.certificate.fingerprint(
                        hashes.SHA256()
                    ).hex(),
                },
            )
        if not planned.details:
            return None
        assert planned.cert is not None
        return audit.Planned(
            ARCHIVE,
            target_type="certificate",
            target_id=planned.cert.id or "",
            details=planned.details,
        )
