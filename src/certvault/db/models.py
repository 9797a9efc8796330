"""SQLAlchemy models (DESIGN.md §6). Every tenant row carries ``account_id``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    inspect,
    select,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    column_property,
    mapped_column,
    relationship,
)
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on SQLite (which drops the zone) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def sealed_by_mac(mac: object) -> dict[str, object]:
    """Mapper arguments of a sealed table (services/kernel/seals.py): its MAC is also its version,
    so an UPDATE or DELETE that meets a row someone else changed since it was read fails
    (StaleDataError) instead of sealing values it never saw."""
    return {"version_id_col": mac, "version_id_generator": False}


class Installation(Base):
    """One row: facts about this installation that are not per account."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    shares_threshold: Mapped[int | None] = mapped_column(Integer)
    shares_count: Mapped[int | None] = mapped_column(Integer)
    shares_exported_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    key_vault_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    require_trusted_issuer: Mapped[bool] = mapped_column(Boolean, default=False)
    min_passphrase_length: Mapped[int] = mapped_column(Integer, default=12)
    reason_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether an administrator may choose the passphrase of a release instead of a generated one.
    allow_own_passphrase: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    organizations: Mapped[list[Organization]] = relationship(back_populates="account")

    __mapper_args__ = sealed_by_mac(mac)


class Organization(Base):
    __tablename__ = "organizations"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)

    account: Mapped[Account] = relationship(back_populates="organizations")


class Person(Base):
    __tablename__ = "persons"
    __table_args__ = (UniqueConstraint("account_id", "email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    # Stored lower-cased: emails are compared case-insensitively within an account.
    email: Mapped[str] = mapped_column(String(320))
    first_name: Mapped[str] = mapped_column(String(200), default="")
    middle_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    common_name: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(64), default="")
    secondary_emails: Mapped[str] = mapped_column(Text, default="")  # space-separated
    validation_type: Mapped[str] = mapped_column(String(16), default="STANDARD")
    eppn: Mapped[str] = mapped_column(String(320), default="")
    upn: Mapped[str] = mapped_column(String(320), default="")
    secret_id_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # An inactive person (who left) recovers nothing on their own; administrators still can.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class EscrowedKey(Base):
    """One private key per account and public key, sealed under its own data key."""

    __tablename__ = "escrowed_keys"
    __table_args__ = (UniqueConstraint("account_id", "spki_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    spki_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    algorithm: Mapped[str] = mapped_column(String(16))
    key_size: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    data_key_nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    account_key_version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Certificate(Base):
    __tablename__ = "certificates"
    __table_args__ = (
        UniqueConstraint("account_id", "sha256"),
        UniqueConstraint("account_id", "issuer_sha256", "serial"),
        Index("ix_certificates_account_key", "account_id", "escrowed_key_id"),
        Index("ix_certificates_account_person", "account_id", "person_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), index=True)
    escrowed_key_id: Mapped[int | None] = mapped_column(ForeignKey("escrowed_keys.id"))
    der: Mapped[bytes] = mapped_column(LargeBinary)
    chain_pem: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    sha1_hex: Mapped[str] = mapped_column(String(40))
    md5_hex: Mapped[str] = mapped_column(String(32))
    serial: Mapped[str] = mapped_column(String(80))
    issuer: Mapped[str] = mapped_column(Text)
    issuer_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    subject: Mapped[str] = mapped_column(Text)
    emails: Mapped[str] = mapped_column(Text, default="")
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="issued")
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revocation_reason: Mapped[str | None] = mapped_column(String(64))
    spki_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    source: Mapped[str] = mapped_column(String(32))
    profile: Mapped[str | None] = mapped_column(String(32))  # set when certvault issued it
    ca_id: Mapped[int | None] = mapped_column(ForeignKey("certificate_authorities.id"))
    trusted_issuer: Mapped[bool] = mapped_column(Boolean, default=False)
    friendly_name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mac: Mapped[str | None] = mapped_column(String(64))

    escrowed_key: Mapped[EscrowedKey | None] = relationship()
    person: Mapped[Person | None] = relationship()
    # Whether the key is in the vault: escrowed and not destroyed (a destroyed key keeps its row,
    # and its certificates still point at it). The one test of "has a key" for lists, filters
    # and counts, in SQL and in Python alike.
    key_in_vault: Mapped[bool] = column_property(
        select(EscrowedKey.id)
        .where(EscrowedKey.id == escrowed_key_id, EscrowedKey.destroyed_at.is_(None))
        .correlate_except(EscrowedKey)  # its own escrowed_keys, whatever the query joins
        .exists()
    )

    __mapper_args__ = sealed_by_mac(mac)


class TrustedIssuer(Base):
    """Issuer certificates an account trusts for the certificates it escrows."""

    __tablename__ = "trusted_issuers"
    __table_args__ = (UniqueConstraint("account_id", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    subject: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class AccountKey(Base):
    __tablename__ = "account_keys"
    __table_args__ = (UniqueConstraint("account_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    destroyed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ServiceKey(Base):
    """Keys certvault uses itself (audit MAC, CA, profile signing). Never released."""

    __tablename__ = "service_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    spki_sha256: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary(12))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    wrapped_data_key: Mapped[bytes] = mapped_column(LargeBinary)
    certificate_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The certificates between certificate_der and its root (PEM), for a profile-signing key.
    chain_pem: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Admin(Base):
    __tablename__ = "admins"
    __table_args__ = (UniqueConstraint("account_id", "login"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    login: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # "account" | "organization"
    privileges: Mapped[str] = mapped_column(Text, default="")  # space-separated, sorted
    # The ids of ``organizations``, space-separated and sorted: the sealed copy that access is
    # decided by (rows of admin_organizations carry no MAC of their own).
    organization_ids: Mapped[str] = mapped_column(Text, default="")
    api_only: Mapped[bool] = mapped_column(Boolean, default=False)
    # Space-separated addresses or networks allowed to use header authentication; empty: any.
    allowed_ips: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    # The last TOTP time step accepted: a code is good once (replay protection).
    totp_last_step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    organizations: Mapped[list[Organization]] = relationship(secondary="admin_organizations")

    __mapper_args__ = sealed_by_mac(mac)


class AdminOrganization(Base):
    __tablename__ = "admin_organizations"

    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id"), primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), primary_key=True)


class AuditHead(Base):
    """The newest event of each chain; its row lock serializes writers of one chain."""

    __tablename__ = "audit_heads"

    chain: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str] = mapped_column(String(64), default="")


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("chain", "seq"),
        Index("ix_audit_events_account_time", "account_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    chain: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    # Canonical text (RFC 3339, microseconds, Z) so SQLite and PostgreSQL hash alike.
    occurred_at: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    target_type: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(64), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_mac: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str] = mapped_column(String(64))


class MailMessage(Base):
    """The outbox: written in the transaction that causes the mail, delivered by a sender."""

    __tablename__ = "mail_outbox"
    __table_args__ = (Index("ix_mail_outbox_due", "sent_at", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    to_addr: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(500))
    # A message that carries a secret (a one-time code or link): its body is sealed at rest
    # under a service key (notify.py) and opened only to be sent.
    body_sealed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Queued so that the outbox looks the same whatever a request found; never sent.
    discard: Mapped[bool] = mapped_column(Boolean, default=False)
    # After this the message is useless (its code has expired): dropped, not sent late.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Recipient, subject, body and the flags above are sealed (services/kernel/seals.py).
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class ApiToken(Base):
    """A bearer token: stored as a SHA-256 of a 256-bit random value, scoped and expiring."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[str] = mapped_column(Text)  # space-separated
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class RateLimitCounter(Base):
    """Fixed-window counters shared by every worker when no Redis is configured."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class CertificateAuthority(Base):
    """A CA of the built-in issuer. Its key is a service key (used to sign, never released);
    an offline root has none here at all."""

    __tablename__ = "certificate_authorities"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))  # in the CRL URL: /crl/<account>/<name>.crl
    role: Mapped[str] = mapped_column(String(16))  # "root" | "issuing"
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("certificate_authorities.id"))
    certificate_der: Mapped[bytes] = mapped_column(LargeBinary)
    service_key_id: Mapped[int | None] = mapped_column(ForeignKey("service_keys.id"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    crl_number: Mapped[int] = mapped_column(Integer, default=0)
    crl_der: Mapped[bytes | None] = mapped_column(LargeBinary)
    crl_next_update: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class EnrollmentForm(Base):
    """A client-certificate web form with server-side key generation."""

    __tablename__ = "enrollment_forms"
    __table_args__ = (UniqueConstraint("account_id", "slug"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    slug: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(200), default="")
    profile: Mapped[str] = mapped_column(String(32))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    access_code_hash: Mapped[str | None] = mapped_column(String(255))  # None: mailed code only
    domains: Mapped[str] = mapped_column(Text, default="")  # space-separated; empty: any
    key_types: Mapped[str] = mapped_column(Text, default="")  # space-separated; empty: profile's
    dual_key: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_own_passphrase: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    # Whether the page asks for the person's first and last name: off | optional | required.
    ask_name: Mapped[str] = mapped_column(String(16), default="off")
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class EnrollmentCode(Base):
    """A one-time code mailed to an address; spent by the enrollment it authorizes."""

    __tablename__ = "enrollment_codes"
    __table_args__ = (Index("ix_enrollment_codes_form_email", "form_id", "email"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    form_id: Mapped[int] = mapped_column(ForeignKey("enrollment_forms.id"))
    email: Mapped[str] = mapped_column(String(320))
    code_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"))


class WebSession(Base):
    """A console sign-in. The cookie holds a random token; only its SHA-256 is stored here."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id"), index=True)
    stage: Mapped[str] = mapped_column(String(16))  # "totp_enroll" | "signed_in"
    # The TOTP secret being enrolled, sealed like the stored one, until a first code confirms it.
    pending_totp: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reauthenticated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class KeyVaultSettings(Base):
    """The account's Key Vault recovery options (the Key Vault page). One row per account; an
    account without a row has the defaults."""

    __tablename__ = "key_vault_settings"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    # "disabled" (administrators only) | "email_code" | "email_code_and_secret" | "admin_approval"
    recovery_method: Mapped[str] = mapped_column(String(32), default="disabled")
    sign_profiles: Mapped[bool] = mapped_column(Boolean, default=False)
    # The profile-signing identity: a service key (never released), with its certificate.
    signing_key_id: Mapped[int | None] = mapped_column(ForeignKey("service_keys.id"))
    exchange_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    exchange_host: Mapped[str] = mapped_column(String(253), default="")
    exchange_use_ssl: Mapped[bool] = mapped_column(Boolean, default=True)
    exchange_past_days: Mapped[int] = mapped_column(Integer, default=7)
    exchange_prevent_move: Mapped[bool] = mapped_column(Boolean, default=False)
    # When the signing identity has expired: deliver profiles unsigned instead of refusing.
    unsigned_fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class FormNonce(Base):
    """A one-use token of a console form (a key download): a second submission is refused.
    Only the SHA-256 of the token is kept."""

    __tablename__ = "form_nonces"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("web_sessions.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    # What the form needs between showing and posting (a generated passphrase), sealed under a
    # service key; cleared when the form is used.
    sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RecoveryRequest(Base):
    """A person's request at the Private Key Recovery Form (web/recovery): from the address they
    typed to the download. Codes, links and page tokens are kept as MACs under a service key,
    the passphrase shown between pages sealed under another; the row itself is sealed."""

    __tablename__ = "recovery_requests"
    __table_args__ = (Index("ix_recovery_requests_account_status", "account_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))  # as typed, normalized
    method: Mapped[str] = mapped_column(String(32))
    # unmatched | code_sent | pending | approved | rejected | verified | completed | void
    status: Mapped[str] = mapped_column(String(16))
    # The vaulted certificates whose DER held the address when it was asked (space-separated).
    certificate_ids: Mapped[str] = mapped_column(Text, default="")
    code_mac: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    ip: Mapped[str] = mapped_column(String(45), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # of the code, or of the link
    decided_by: Mapped[str] = mapped_column(String(320), default="")  # the approver's login
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    link_mac: Mapped[str | None] = mapped_column(String(64))
    # The verified person's page token, and until when it is good.
    session_mac: Mapped[str | None] = mapped_column(String(64))
    session_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    passphrase_sealed: Mapped[str | None] = mapped_column(Text)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class PasswordReset(Base):
    """A set-password link mailed to an administrator (services/access/password_resets.py): good
    once, until ``expires_at``, and only while no later reset replaced it. Only the SHA-256 of
    the link's token is kept; the row itself is sealed."""

    __tablename__ = "password_resets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admins.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    requested_by: Mapped[str] = mapped_column(String(320))  # the resetter's actor name
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    superseded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class Agent(Base):
    """A machine identity of an account that forwards AD CS archival requests (MS agent)."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("account_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_contact_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class AgentCredential(Base):
    """An agent's bearer token: only the SHA-256 of its 256-bit random value is kept."""

    __tablename__ = "agent_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class AgentTemplate(Base):
    """A Windows certificate template an agent forwards, mapped to what certvault issues."""

    __tablename__ = "agent_templates"
    __table_args__ = (UniqueConstraint("agent_id", "template"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    template: Mapped[str] = mapped_column(String(200))
    profile: Mapped[str] = mapped_column(String(32))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    archive_key: Mapped[bool] = mapped_column(Boolean, default=False)
    require_archival: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    grant_generation: Mapped[int] = mapped_column(Integer, default=0)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class AgentRequest(Base):
    """One archival request an agent forwarded, and what became of it: the console's trail, and
    for an issued one the answer given again when the same request comes back."""

    __tablename__ = "agent_requests"
    __table_args__ = (
        # Set only on an issued request: a second commit of the same request fails here.
        UniqueConstraint("account_id", "replay_key"),
        Index("ix_agent_requests_account_time", "account_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id"), index=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    replay_key: Mapped[str | None] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(String(200), default="")
    requester_upn: Mapped[str] = mapped_column(String(320), default="")
    requester_email: Mapped[str] = mapped_column(String(320), default="")
    outcome: Mapped[str] = mapped_column(String(16))  # "issued" | "refused"
    reason: Mapped[str] = mapped_column(String(64), default="")
    windows_status: Mapped[int | None] = mapped_column(BigInteger)
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"))
    response: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class DutyLock(Base):
    """The lock of a background duty (services/kernel/duties.py): one run at a time per name."""

    __tablename__ = "duty_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class RetentionPolicy(Base):
    """How long an account keeps escrowed keys after their certificates expire
    (services/vault/retention.py): for the account (``profile`` NULL) or for the certificates
    issued under one profile. ``days`` NULL: kept forever (off)."""

    __tablename__ = "retention_policies"
    __table_args__ = (Index("ix_retention_policies_account_profile", "account_id", "profile"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    profile: Mapped[str | None] = mapped_column(String(32))
    days: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(320))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class LegalHold(Base):
    """A legal hold on a person's or one certificate's keys: while active (``released_at``
    NULL) no key it covers is destroyed (services/vault/holds.py)."""

    __tablename__ = "legal_holds"
    __table_args__ = (Index("ix_legal_holds_account_released", "account_id", "released_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"))
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"))
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_by: Mapped[str | None] = mapped_column(String(320))
    release_reason: Mapped[str | None] = mapped_column(Text)
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


class KeyDestruction(Base):
    """The record left by destroying an escrowed key: which key, which certificates used it,
    when (the database's time) and under which policy. One per key."""

    __tablename__ = "key_destructions"
    __table_args__ = (UniqueConstraint("escrowed_key_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), default=new_uuid, index=True, unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    escrowed_key_id: Mapped[int] = mapped_column(ForeignKey("escrowed_keys.id"))
    key_uuid: Mapped[str] = mapped_column(String(36))
    spki_sha256: Mapped[str] = mapped_column(String(64))  # hex
    # JSON: [{"id": ..., "sha256": "..."}, ...], the certificates that used the key.
    certificates: Mapped[str] = mapped_column(Text)
    destroyed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # "retention" (a policy) | "account destroy-keys" (crypto-shredding of the account)
    cause: Mapped[str] = mapped_column(String(32))
    policy_profile: Mapped[str | None] = mapped_column(String(32))
    policy_days: Mapped[int | None] = mapped_column(Integer)
    destroyed_by: Mapped[str] = mapped_column(String(320))
    mac: Mapped[str | None] = mapped_column(String(64))

    __mapper_args__ = sealed_by_mac(mac)


# `Certificate.key_in_vault` is computed by the database: a certificate inserted, or linked to a
# key, in a flush has no value for it until it is read again, and reading it after the session
# closed fails. Each such certificate reads it once at the end of its flush, while the session is
# still open, so a certificate a unit of work returns answers it like one it loaded.
_FLUSHED_CERTIFICATES = "certvault_flushed_certificates"


@event.listens_for(Session, "after_flush")
def _note_flushed_certificates(session: Session, _context: object) -> None:
    touched = [o for o in (*session.new, *session.dirty) if isinstance(o, Certificate)]
    if touched:
        session.info.setdefault(_FLUSHED_CERTIFICATES, []).extend(touched)


@event.listens_for(Session, "after_flush_postexec")
def _load_key_in_vault(session: Session, _context: object) -> None:
    for cert in session.info.pop(_FLUSHED_CERTIFICATES, []):
        state = inspect(cert)
        if state.persistent and "key_in_vault" in state.unloaded:
            session.refresh(cert, ["key_in_vault"])
