"""Row seals (DESIGN.md §5.10): the database is not trusted.

Every row that grants access, decides policy, or decides who gets a key or where mail goes
carries a MAC keyed by a service key that only the master-key provider opens, so whoever can
write the database but not the master key can neither insert, alter nor move such a row. The
check is made for the whole class of reads, not per call site: the ORM checks a sealed row
whenever it loads one, and seals every sealed row certvault inserts or changes, in the same
flush (seal_events.py). A row that does not verify is refused with :class:`TamperedRow`;
audit/log.py records each refusal in a transaction of its own.

A MAC proves that certvault once wrote a row, not that the row is current. Rows that grant
(``grant``) carry the account's grant generation inside their MAC, and the generation is kept
outside the database too, beside the audit witness. A change that can take something away bumps
it: every live grant row of the account is sealed again at the next generation in the same
transaction, and the witness moves after commit. A grant row below the witness is an old copy
put back: refused. One above it is the trace of a crash between commit and the witness write:
accepted, and the witness catches up.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial
from typing import Any

from sqlalchemy import Boolean, Connection, Integer, LargeBinary, inspect, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from certvault.db.models import (
    Account,
    Admin,
    AdminOrganization,
    Agent,
    AgentCredential,
    AgentRequest,
    AgentTemplate,
    ApiToken,
    Certificate,
    CertificateAuthority,
    EnrollmentForm,
    KeyDestruction,
    KeyVaultSettings,
    LegalHold,
    MailMessage,
    Organization,
    PasswordReset,
    Person,
    RecoveryRequest,
    RetentionPolicy,
    ServiceKey,
    TrustedIssuer,
    UTCDateTime,
    WebSession,
)
from certvault.errors import CertvaultError, ConfigurationError
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import PORTS_INFO, Ports

SEAL_KEY_PURPOSE = "row-seal"
# Beside the witness: the SEALS version whose tables `certvault init` has sealed. The rows of a
# table are sealed once, when init first meets it; from then on a row without a MAC is refused.
INSTALLATION = "installation"
SEALS = 4  # raised by a version that seals another table (SealedTable.since)
# Refused rows of the session, for audit/log.py to record after the transaction.
REFUSED = "certvault_refused_rows"
_BUMPED = "certvault_grant_bumped"  # account id -> the generation this transaction set
_CURRENT = "certvault_grant_current"  # account id -> the generation new grant rows get
_WITNESSED = "certvault_grant_witness"  # account uuid -> the witness generation, read once
_ADVANCE = "certvault_grant_advance"  # account uuid -> the generation to record after commit
_LENIENT = "certvault_seals_lenient"  # a set: refused rows are collected here, not raised
_RESTORED = "certvault_grant_restored"  # account uuids whose older grant rows the operator took


class TamperedRow(CertvaultError):
    """Stored data failed its integrity check; nothing was done. The refusal is audited."""

    code = "row_tampered"
    # Not 403: the caller did nothing wrong and is not told "forbidden". Not 500, which is a bug.
    # The service cannot be given until an operator has looked at the stored data: 503.
    status = 503


class RowChanged(CertvaultError, StaleDataError):
    """The data changed while it was read; try again."""

    # A grant row read just before its account's generation moved, and checked just after: an
    # outdated read, not an old copy put back. Database.run starts the work again (it is a
    # StaleDataError); a request that only reads answers 503 with this code.
    code = "row_changed"
    status = 503


@dataclass(frozen=True)
class SealedTable:
    """How the rows of one table are sealed."""

    model: type[Any]
    # Bound by the MAC, besides the table and the account's uuid (which stands for account_id).
    columns: tuple[str, ...]
    # Carries the account's grant generation.
    grant: bool = False
    # Changes to these never take anything away, so they do not bump the generation: an older
    # value only makes a session expire sooner.
    extends: frozenset[str] = frozenset()
    # A row with revoked_at set grants nothing: accepted below the witness, and not sealed again
    # by a bump.
    revocable: bool = False
    # Columns not bound, and why; everything the table has is bound or named here.
    unbound: Mapping[str, str] = field(default_factory=dict)
    # The SEALS version that began to seal this table.
    since: int = 1
    # Columns added after the table was first sealed, with the value they were added with: bound,
    # but left out of the MAC while they hold that value, so that rows sealed before they existed
    # still verify. A row with any other value has the column in its MAC.
    later: Mapping[str, Any] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return str(self.model.__tablename__)


def _columns(names: str) -> tuple[str, ...]:
    return tuple(names.split())


SEALED: tuple[SealedTable, ...] = (
    SealedTable(
        Account,
        _columns(
            "id uuid slug name key_vault_enabled require_trusted_issuer min_passphrase_length"
            " reason_required allow_own_passphrase created_at grant_generation"
        ),
        grant=True,
    ),
    SealedTable(
        Admin,
        _columns(
            "id uuid login email password_hash role privileges organization_ids api_only"
            " allowed_ips active totp_secret created_at grant_generation"
        ),
        grant=True,
        unbound={
            "totp_last_step": "moved by one atomic UPDATE per sign-in; an older value lets a code "
            "be used twice within its 90 seconds, and that code must be known anyway",
        },
    ),
    SealedTable(
        ApiToken,
        _columns(
            "id uuid admin_id token_sha256 prefix scopes created_at expires_at revoked_at"
            " grant_generation"
        ),
        grant=True,
        revocable=True,
        unbound={"last_used_at": "shown to administrators, decides nothing"},
    ),
    SealedTable(
        WebSession,
        _columns(
            "id uuid admin_id stage pending_totp created_at last_seen_at reauthenticated_at"
            " revoked_at grant_generation"
        ),
        grant=True,
        extends=frozenset({"last_seen_at", "reauthenticated_at"}),
        revocable=True,
    ),
    SealedTable(
        KeyVaultSettings,
        _columns(
            "uuid recovery_method sign_profiles signing_key_id exchange_enabled exchange_host"
            " exchange_use_ssl exchange_past_days exchange_prevent_move updated_at"
            " grant_generation unsigned_fallback"
        ),
        grant=True,
        later={"unsigned_fallback": False},
    ),
    SealedTable(
        TrustedIssuer,
        _columns("id uuid der sha256 subject created_at grant_generation"),
        grant=True,
    ),
    # Persons and certificates are not grant rows: a bump would seal every one of them again.
    SealedTable(
        Person,
        _columns(
            "id uuid organization_id email first_name middle_name last_name common_name phone"
            " secondary_emails validation_type eppn upn secret_id_hash created_at active"
        ),
        later={"active": True},
    ),
    SealedTable(
        Certificate,
        _columns(
            "id uuid organization_id person_id escrowed_key_id der chain_pem sha256 sha1_hex"
            " md5_hex serial issuer issuer_sha256 subject emails not_before not_after status"
            " revoked_at revocation_reason spki_sha256 source profile ca_id trusted_issuer"
            " friendly_name created_at"
        ),
    ),
    # Who may enroll, for what: an access code or a domain put in by SQL would have our CA
    # certify an address for whoever chose them.
    SealedTable(
        EnrollmentForm,
        _columns(
            "id uuid slug name profile organization_id access_code_hash domains key_types"
            " dual_key allow_own_passphrase enabled created_at grant_generation ask_name"
        ),
        grant=True,
        since=2,
        later={"ask_name": "off"},
    ),
    # Which certificate and key a CA signs with, and the CRL it serves.
    SealedTable(
        CertificateAuthority,
        _columns(
            "id uuid name role parent_id certificate_der service_key_id active crl_number"
            " crl_der crl_next_update created_at"
        ),
        since=2,
    ),
    # Where persons and certificates land, and what administrators of an organization see.
    SealedTable(Organization, _columns("id uuid name is_default created_at"), since=2),
    # Where mail goes, and what it says: a queued message whose recipient, subject or body was
    # changed in the database is held, never sent (notify.send_pending). Mail of the installation
    # has no account; its MAC names the installation instead.
    SealedTable(
        MailMessage,
        _columns("id uuid to_addr subject body created_at body_sealed discard expires_at"),
        unbound={
            "attempts": "delivery bookkeeping: an older value only changes the next retry's wait",
            "next_attempt_at": "delivery bookkeeping: when to try again, never where to",
            "claimed_until": "delivery bookkeeping: which sender holds the message for a while",
            "sent_at": "set once delivered; a database writer can suppress mail, never redirect it",
            "last_error": "the server's short reason for the last failed try",
        },
        since=2,
    ),
    # A person's recovery at the Private Key Recovery Form: what they may download, and whether
    # they proved they hold the address.
    SealedTable(
        RecoveryRequest,
        _columns(
            "id uuid email method status certificate_ids code_mac attempts ip created_at"
            " expires_at decided_by decided_at link_mac session_mac session_expires_at"
            " passphrase_sealed completed_at"
        ),
        since=2,
    ),
    # A set-password link of an administrator (services/access/password_resets.py): a row put
    # in by SQL, or moved to another administrator, would let whoever chose its token set that
    # administrator's password.
    SealedTable(
        PasswordReset,
        _columns(
            "id uuid admin_id token_sha256 requested_by created_at expires_at used_at superseded_at"
        ),
        since=3,
    ),
    # MS agents (services/pki/agents.py): who may forward archival requests, with which token,
    # and what each Windows template becomes. An agent, a token or a map put in by SQL would have
    # our CA certify keys for whoever chose them.
    SealedTable(
        Agent,
        _columns("id uuid name active created_at grant_generation"),
        grant=True,
        unbound={
            "last_contact_at": "shown on the Agents page, decides nothing; written on every "
            "contact, at most once a minute",
        },
        since=2,
    ),
    SealedTable(
        AgentCredential,
        _columns("id uuid agent_id token_sha256 prefix created_at revoked_at grant_generation"),
        grant=True,
        revocable=True,
        since=2,
    ),
    SealedTable(
        AgentTemplate,
        _columns(
            "id uuid agent_id template profile organization_id archive_key require_archival"
            " created_at grant_generation"
        ),
        grant=True,
        since=2,
    ),
    # The trail of archival requests, and the answer a replayed request gets again: a response
    # or certificate swapped by SQL would hand a client someone else's certificate.
    SealedTable(
        AgentRequest,
        _columns(
            "id uuid agent_id request_sha256 replay_key template requester_upn requester_email"
            " outcome reason windows_status certificate_id response created_at"
        ),
        since=2,
    ),
    # Retention (services/vault/retention.py, holds.py): when keys are destroyed, which are held
    # back, and the record of each destruction. A policy or a release of a hold put in by SQL
    # would destroy keys early or hide that they were; a record altered would hide what was.
    SealedTable(
        RetentionPolicy,
        _columns("id uuid profile days created_by created_at updated_by updated_at"),
        since=4,
    ),
    SealedTable(
        LegalHold,
        _columns(
            "id uuid person_id certificate_id reason created_by created_at released_at"
            " released_by release_reason"
        ),
        since=4,
    ),
    SealedTable(
        KeyDestruction,
        _columns(
            "id uuid escrowed_key_id key_uuid spki_sha256 certificates destroyed_at cause"
            " policy_profile policy_days destroyed_by"
        ),
        since=4,
    ),
)
_BY_MODEL: dict[type, SealedTable] = {spec.model: spec for spec in SEALED}
GRANTS = tuple(spec for spec in SEALED if spec.grant)


def sealed_table(model: type) -> SealedTable | None:
    return _BY_MODEL.get(model)


def account_id_of(spec: SealedTable, obj: Any) -> int:
    """The account of a grant row (every grant row has one)."""
    return int(obj.id if spec.model is Account else obj.account_id)


def owner_of(spec: SealedTable, obj: Any) -> int | None:
    """The account a sealed row belongs to; None for the installation's own (its mail)."""
    found = obj.id if spec.model is Account else obj.account_id
    return None if found is None else int(found)


# --- the MAC ------------------------------------------------------------------------------------


def _canonical(column_type: Any, value: Any) -> Any:
    return _encoder(column_type)(value)


def _encoder(column_type: Any) -> Callable[[Any], Any]:
    """How a column's values enter the MAC: by the column's type, so that a value written and
    the same value read back encode alike on SQLite and PostgreSQL."""
    if isinstance(column_type, Boolean):
        kind: Callable[[Any], Any] = bool
    elif isinstance(column_type, Integer):
        kind = int
    elif isinstance(column_type, LargeBinary):
        kind = _hex
    elif isinstance(column_type, UTCDateTime):
        kind = _timestamp
    else:
        kind = str
    return partial(_or_none, kind)


def _or_none(kind: Callable[[Any], Any], value: Any) -> Any:
    return None if value is None else kind(value)


def _hex(value: Any) -> str:
    return bytes(value).hex()


def _timestamp(value: Any) -> str:
    return str(value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


# Per sealed model and its bound columns, each column with its encoder: worked out once, used on
# every row.
_Spec = tuple[type[Any], tuple[str, ...]]
_ENCODERS: dict[_Spec, tuple[tuple[str, Callable[[Any], Any]], ...]] = {}


def _encoders(spec: SealedTable) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    found = _ENCODERS.get((spec.model, spec.columns))
    if found is None:
        types = spec.model.__table__.c
        found = tuple((name, _encoder(types[name].type)) for name in spec.columns)
        _ENCODERS[spec.model, spec.columns] = found
    return found


def _mac(key: bytes, spec: SealedTable, values: Mapping[Any, Any], account_uuid: str) -> str:
    row = {name: encode(values[name]) for name, encode in _encoders(spec)}
    if spec.later:
        types = spec.model.__table__.c
        for name, added_with in spec.later.items():
            if row[name] == _canonical(types[name].type, added_with):
                del row[name]
    message = json.dumps(
        {"v": 1, "table": spec.table, "account": account_uuid, "row": row},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _key(connection: Connection, ports: Ports) -> bytes:
    # Unwrapped once per process, like the audit key; read with Core, so no row events run.
    key = ports.cache.get(SEAL_KEY_PURPOSE)
    if key is None:
        found = connection.execute(
            select(ServiceKey.__table__)
            .where(ServiceKey.purpose == SEAL_KEY_PURPOSE)
            .order_by(ServiceKey.id)
            .limit(1)
        ).first()
        if found is None:
            raise ConfigurationError("The row-seal key is missing; run `certvault init`.")
        key = ports.cache[SEAL_KEY_PURPOSE] = keyring.open_service_key(
            ports, ServiceKey(**found._mapping)
        )
    return key


def _account_uuid(connection: Connection, ports: Ports, spec: SealedTable, obj: Any) -> str:
    """The uuid of the account a row (an ORM object or a mapping of its values) belongs to."""
    if spec.model is Account:
        return str(obj["uuid"] if isinstance(obj, Mapping) else obj.uuid)
    account_id = obj["account_id"] if isinstance(obj, Mapping) else obj.account_id
    if account_id is None and not spec.grant:
        return INSTALLATION  # never an account's uuid, so a row cannot be moved between them
    return _uuid_of_account(connection, ports, account_id)


def _uuid_of_account(connection: Connection, ports: Ports, account_id: int) -> str:
    found = ports.account_uuids.get(account_id)
    if found is None:
        # An account's uuid never changes; one altered under us makes its rows fail, no more.
        found = connection.execute(
            select(Account.uuid).where(Account.id == account_id)
        ).scalar_one_or_none()
        if found is None:
            raise TamperedRow()
        ports.account_uuids[account_id] = found
    return found


def ports_of(session: Session | None) -> Ports:
    ports = session.info.get(PORTS_INFO) if session is not None else None
    if ports is None:
        # Fail closed: a sealed row is not read or written where it cannot be checked.
        raise ConfigurationError("Sealed rows are read and written through certvault's ports.")
    return ports


# --- grant generations --------------------------------------------------------------------------


def _witness(session: Session, ports: Ports, account_uuid: str) -> int:
    """The account's generation outside the database, read once per transaction."""
    seen: dict[str, int] = session.info.setdefault(_WITNESSED, {})
    if account_uuid not in seen:
        seen[account_uuid] = ports.audit_heads.generation(account_uuid)
    return seen[account_uuid]


def _advance_after_commit(session: Session, account_uuid: str, generation: int) -> None:
    pending: dict[str, int] = session.info.setdefault(_ADVANCE, {})
    pending[account_uuid] = max(generation, pending.get(account_uuid, 0))


def current_generation(session: Session, connection: Connection, ports: Ports, obj: Any) -> int:
    """The generation a new grant row of ``obj``'s account is sealed at."""
    if isinstance(obj, Account):  # a new account: its uuid has never had a generation
        return _witness(session, ports, obj.uuid)
    account_id = obj.account_id
    bumped = session.info.get(_BUMPED, {}).get(account_id)
    if bumped is not None:
        return int(bumped)
    current: dict[int, int] = session.info.setdefault(_CURRENT, {})
    if account_id not in current:
        # FOR SHARE: a bump of the account (FOR UPDATE) waits for this transaction, or this
        # one for it, so a new row is never left below the generation a bump moves to.
        stored = connection.execute(
            select(Account.grant_generation)
            .where(Account.id == account_id)
            .with_for_update(read=True)
        ).scalar_one_or_none()
        witness = _witness(session, ports, _uuid_of_account(connection, ports, account_id))
        current[account_id] = max(witness, stored or 0)
    return current[account_id]


def takes_away(spec: SealedTable, obj: Any) -> bool:
    """Whether a change to a grant row may take something away (then the generation moves)."""
    attrs = inspect(obj).attrs
    return any(
        attrs[name].history.has_changes()
        for name in spec.columns
        if name not in spec.extends and name != "grant_generation"
    )


def bump(session: Session, ports: Ports, account_id: int) -> None:
    """Seal every live grant row of the account again at the next generation."""
    if session.in_nested_transaction():
        # A savepoint rolled back would leave the witness ahead of the rows it moved.
        raise ConfigurationError("A grant is not taken away inside a savepoint.")
    connection = session.connection()
    connection.execute(select(Account.id).where(Account.id == account_id).with_for_update())
    rows: list[Any] = []
    with lenient(session) as refused:
        for spec in GRANTS:
            owner = spec.model.id if spec.model is Account else spec.model.account_id
            query = select(spec.model).where(owner == account_id)
            if spec.revocable:
                query = query.where(spec.model.revoked_at.is_(None))
            rows += session.scalars(query).all()
    # A row that does not verify is left as it is (refused and audited): taking a grant away
    # must not wait for someone to repair another row.
    rows = [row for row in rows if row not in refused]
    account_uuid = _uuid_of_account(connection, ports, account_id)
    generation = max([_witness(session, ports, account_uuid), *(r.grant_generation for r in rows)])
    generation += 1
    for row in rows:
        row.grant_generation = generation
    session.info.setdefault(_BUMPED, {})[account_id] = generation
    _advance_after_commit(session, account_uuid, generation)


def accept_restored_grants(session: Session, ports: Ports, account_uuid: str) -> None:
    """After the operator acknowledged a deliberate restore of an older database: the account's
    grant rows, older than the witness but sealed by certvault (their MACs still verify), are
    taken as they are and sealed again at the next generation, in this transaction. Call it
    before anything of the account is read; the caller bumps once the account is loaded."""
    session.info.setdefault(_RESTORED, set()).add(account_uuid)


# --- checking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefusedRow:
    table: str
    uuid: str
    account_id: int | None
    reason: str  # "altered" | "replayed"


def _problem(
    session: Session | None,
    connection: Connection,
    ports: Ports,
    spec: SealedTable,
    values: Mapping[Any, Any],
) -> str | None:
    """Why a stored row is refused, or None when it verifies."""
    try:
        account_uuid = _account_uuid(connection, ports, spec, values)
    except TamperedRow:
        return "altered"
    expected = _mac(_key(connection, ports), spec, values, account_uuid)
    if not hmac.compare_digest(values["mac"] or "", expected):
        return "altered"
    if spec.grant:
        generation = int(values["grant_generation"])
        witness = (
            _witness(session, ports, account_uuid)
            if session is not None
            else ports.audit_heads.generation(account_uuid)
        )
        restored = session is not None and account_uuid in session.info.get(_RESTORED, ())
        revoked = spec.revocable and values["revoked_at"] is not None
        if generation < witness and not revoked and not restored:
            return "replayed"
        if generation > witness and session is not None:
            # Sealed by certvault and committed, but the witness write after it never happened.
            _advance_after_commit(session, account_uuid, generation)
    return None


def _row_values(spec: SealedTable, obj: Any) -> dict[str, Any]:
    present, absent = _loaded_names(spec)
    loaded = obj.__dict__  # the instance's loaded state (SQLAlchemy keeps it there)
    try:
        values = {name: loaded[name] for name in present}
    except KeyError:
        raise ConfigurationError("A sealed row is loaded whole, or not at all.") from None
    for name in absent:
        values[name] = None
    return values


# Per sealed model and its bound columns: the names a row's check reads that the model maps, and
# those it does not map (an account has no account_id), which read as None.
_NAMES: dict[_Spec, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _loaded_names(spec: SealedTable) -> tuple[tuple[str, ...], tuple[str, ...]]:
    found = _NAMES.get((spec.model, spec.columns))
    if found is None:
        attrs = inspect(spec.model).attrs
        names = (*spec.columns, "mac", "account_id")
        found = (
            tuple(n for n in names if n in attrs),
            tuple(n for n in names if n not in attrs),
        )
        _NAMES[spec.model, spec.columns] = found
    return found


def _outdated(ports: Ports, spec: SealedTable, values: Mapping[Any, Any]) -> bool:
    """Whether a grant row that reads as an old copy is only a read that began before a bump
    committed: in a fresh read (its own connection, so its own snapshot) the row is no longer
    the one read. A row put back from an older copy is still there."""
    table = spec.model.__table__
    keys = _key_columns(spec)
    with ports.db.engine.execution_options(certvault_read_only=True).connect() as connection:
        now = connection.execute(
            select(table.c.mac).where(*(column == values[column.key] for column in keys))
        ).first()
    return now is None or now[0] != values["mac"]


def check_loaded(obj: Any, session: Session) -> None:
    """Refuse a row the ORM has just read unless it verifies."""
    spec = _BY_MODEL[type(obj)]
    ports = ports_of(session)
    values = _row_values(spec, obj)
    reason = _problem(session, session.connection(), ports, spec, values)
    if reason is None:
        return
    if reason == "replayed" and _outdated(ports, spec, values):
        session.expunge(obj)
        raise RowChanged()
    refused = RefusedRow(spec.table, str(obj.uuid), owner_of(spec, obj), reason)
    session.info.setdefault(REFUSED, []).append(refused)
    lenient: set[Any] | None = session.info.get(_LENIENT)
    if lenient is not None:
        lenient.add(obj)
        return
    # Out of the identity map, so that nothing later in this session uses it unchecked.
    session.expunge(obj)
    raise TamperedRow()


@contextmanager
def lenient(session: Session) -> Iterator[set[Any]]:
    """Rows that do not verify are collected (and still recorded as refused), not raised;
    they are taken out of the session afterwards."""
    refused: set[Any] = set()
    session.info[_LENIENT] = refused
    try:
        yield refused
    finally:
        del session.info[_LENIENT]
        for obj in refused:
            session.expunge(obj)


def refused_rows(session: Session) -> list[RefusedRow]:
    """The rows this session refused so far (taken: each is reported once)."""
    return session.info.pop(REFUSED, [])


def seal_mac(connection: Connection, ports: Ports, spec: SealedTable, obj: Any) -> str:
    """The MAC of a row certvault writes, over its values as they are now."""
    values = {name: getattr(obj, name) for name in spec.columns}
    return _mac(_key(connection, ports), spec, values, _account_uuid(connection, ports, spec, obj))


def seal_values(
    connection: Connection, ports: Ports, spec: SealedTable, values: Mapping[str, Any]
) -> str:
    """The MAC of a row certvault writes with a set-based statement: the same MAC as
    :func:`seal_mac`, over a mapping of the row's values (its id included)."""
    return _mac(
        _key(connection, ports), spec, values, _account_uuid(connection, ports, spec, values)
    )


def bumped(session: Session) -> set[int]:
    """The accounts whose generation this transaction has moved already."""
    return set(session.info.get(_BUMPED, {}))


def advance_witness(session: Session) -> None:
    """After commit: move the witness to the generations this transaction sealed rows at."""
    pending: dict[str, int] = session.info.pop(_ADVANCE, {})
    ports: Ports | None = session.info.get(PORTS_INFO)
    if ports is not None:
        for account_uuid, generation in pending.items():
            ports.audit_heads.advance_generation(account_uuid, generation)


def forget(session: Session) -> None:
    """At the end of a transaction: what it knew of generations is stale now."""
    for name in (_BUMPED, _CURRENT, _WITNESSED, _ADVANCE):
        session.info.pop(name, None)


def admin_organization_ids(admin: Admin) -> frozenset[int]:
    """The organizations an administrator acts in, from the sealed copy."""
    return frozenset(int(i) for i in admin.organization_ids.split())


# --- whole tables: the first sealing, and `certvault verify` -------------------------------------

_BATCH = 1000


def _key_columns(spec: SealedTable) -> list[Any]:
    return list(spec.model.__table__.primary_key.columns)


def seal_existing(ports: Ports) -> int:
    """Seal the rows of tables this installation has not sealed before (an upgrade from a
    version that did not seal them; `certvault init` runs it). Done once per table: afterwards,
    marked beside the witness, a row without a MAC is refused and this never seals one."""
    sealed_up_to = ports.audit_heads.generation(INSTALLATION)
    if sealed_up_to >= SEALS:
        return 0
    sealed = 0
    for spec in [spec for spec in SEALED if spec.since > sealed_up_to]:
        while True:
            count = ports.db.run(partial(_seal_batch, ports=ports, spec=spec))
            sealed += count
            if count < _BATCH:
                break
    ports.audit_heads.advance_generation(INSTALLATION, SEALS)
    return sealed


def _seal_batch(session: Session, ports: Ports, spec: SealedTable) -> int:
    table = spec.model.__table__
    keys = _key_columns(spec)
    connection = session.connection()
    key = _key(connection, ports)
    rows = connection.execute(
        select(table).where(table.c.mac.is_(None)).order_by(*keys).limit(_BATCH)
    ).mappings()
    count = 0
    for row in rows.all():
        values = dict(row)
        account_uuid = _account_uuid(connection, ports, spec, row)
        written: dict[str, Any] = {}
        if spec.grant:  # at the account's generation, never below it
            witness = _witness(session, ports, account_uuid)
            values["grant_generation"] = max(values["grant_generation"], witness)
            written["grant_generation"] = values["grant_generation"]
        written["mac"] = _mac(key, spec, values, account_uuid)
        where = (column == row[column.key] for column in keys)
        connection.execute(update(table).where(*where).values(**written))
        count += 1
    return count


@dataclass(frozen=True)
class RowProblem:
    table: str
    uuid: str
    reason: str


@dataclass
class RowsReport:
    rows: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


_REASONS = {
    "altered": "MAC does not match: the row was altered, inserted or moved",
    "replayed": "below the account's grant generation: an old copy put back",
}


def check_rows(ports: Ports) -> RowsReport:
    """Check every sealed row (read with Core: nothing is refused, everything is reported)."""
    report = RowsReport()
    with ports.db.read() as session:
        connection = session.connection()
        for spec in SEALED:
            table = spec.model.__table__
            rows = connection.execute(
                select(table).order_by(*_key_columns(spec)).execution_options(yield_per=_BATCH)
            ).mappings()
            for row in rows:
                report.rows += 1
                reason = _problem(None, connection, ports, spec, row)
                if reason == "replayed" and _outdated(ports, spec, row):
                    continue  # sealed again by a bump while this check ran
                if reason is not None:
                    report.problems.append(
                        RowProblem(spec.table, str(row["uuid"]), _REASONS[reason])
                    )
        links: dict[int, list[int]] = {}
        for admin_id, organization_id in connection.execute(
            select(AdminOrganization.admin_id, AdminOrganization.organization_id)
        ):
            links.setdefault(admin_id, []).append(organization_id)
        for admin_id, admin_uuid, ids in connection.execute(
            select(Admin.id, Admin.uuid, Admin.organization_ids)
        ):
            if sorted(links.get(admin_id, [])) != sorted(int(i) for i in ids.split()):
                report.problems.append(
                    RowProblem(
                        AdminOrganization.__tablename__,
                        str(admin_uuid),
                        "differs from the administrator's sealed organizations",
                    )
                )
    return report
