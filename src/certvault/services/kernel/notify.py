"""The mail outbox: rows written in the transaction that causes the mail, delivered by a sender.

A message is never deleted: it is marked sent, or retried with backoff until it is. Recipient,
subject and body are sealed when queued (seals.py): a message changed in the database is held,
never sent, and the refusal is audited; the other messages go out as usual.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from functools import partial

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from certvault.config import Settings
from certvault.crypto import envelope
from certvault.db.models import Account, Admin, MailMessage, new_uuid
from certvault.errors import CertvaultError, ConfigurationError, SealBroken
from certvault.services.kernel import keyring, seal_events, seals
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.seal_events import UNBOUND_ONLY

CLAIM_FOR = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=1)
# A message that fails its seal: never due again. `certvault verify` names it until an operator
# has looked at it and deleted it.
HELD_UNTIL = datetime(9999, 1, 1, tzinfo=UTC)
HELD = "held: the stored message failed its integrity check and was not sent"


BODY_KEY_PURPOSE = "mail-body"


@dataclass(frozen=True)
class SealedBody:
    """The body of a message that carries a secret (a one-time code or link), sealed at rest
    under a service key and bound to the message's uuid; made before the transaction that
    queues it (opening the key may need a transaction of its own)."""

    message_uuid: str
    text: str


def _body_aad(message_uuid: str) -> bytes:
    return f"certvault/mail-body:{message_uuid}".encode()


def seal_body(ports: Ports, body: str) -> SealedBody:
    message_uuid = new_uuid()
    key = keyring.service_secrets(ports, BODY_KEY_PURPOSE)[0]
    sealed = envelope.seal(key, body.encode(), _body_aad(message_uuid))
    return SealedBody(
        message_uuid, base64.urlsafe_b64encode(sealed.nonce + sealed.ciphertext).decode()
    )


def _open_body(ports: Ports, row: MailMessage) -> str:
    raw = base64.urlsafe_b64decode(row.body)
    sealed = envelope.Sealed(raw[: envelope.NONCE_BYTES], raw[envelope.NONCE_BYTES :])
    for key in keyring.service_secrets(ports, BODY_KEY_PURPOSE):
        try:
            return envelope.open_sealed(key, sealed, _body_aad(row.uuid)).decode()
        except SealBroken:
            continue
    raise SealBroken("A queued message cannot be opened.")


def queue_mail(
    session: Session,
    account: Account | None,
    to: str,
    subject: str,
    body: str | SealedBody,
    *,
    discard: bool = False,
    expires_at: datetime | None = None,
) -> None:
    """Queue a message in the caller's transaction. ``discard``: a message queued only so that
    the outbox looks alike whatever a request found; the sender drops it. ``expires_at``: a
    message not sent by then is dropped (its code is no good any more)."""
    message = MailMessage(
        account_id=account.id if account else None,
        to_addr=to,
        subject=subject[:300],
        discard=discard,
        expires_at=expires_at,
    )
    if isinstance(body, SealedBody):
        message.uuid, message.body, message.body_sealed = body.message_uuid, body.text, True
    else:
        message.body = body
    session.add(message)


def queue_mails(
    session: Session, account: Account, messages: Sequence[tuple[str, str, str]]
) -> None:
    """Queue many plain messages (recipient, subject, body) of an account in the caller's
    transaction with set-based statements, sealed as :func:`queue_mail` seals each one."""
    rows = [
        {
            "account_id": account.id,
            "to_addr": to,
            "subject": subject[:300],
            "body": body,
            "discard": False,
            "expires_at": None,
        }
        for to, subject, body in messages
    ]
    seal_events.insert_sealed(session, MailMessage, rows)


def queue_for_admins(session: Session, account: Account, subject: str, body: str) -> int:
    """Mail every active account administrator who has an address."""
    admins = session.scalars(
        select(Admin).where(
            Admin.account_id == account.id,
            Admin.active.is_(True),
            Admin.role == "account",
            Admin.email.is_not(None),
        )
    ).all()
    for admin in admins:
        queue_mail(session, account, admin.email or "", subject, body)
    return len(admins)


def backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=30 * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


@dataclass
class SendResult:
    sent: int = 0
    failed: int = 0
    pending: int = 0
    held: int = 0  # refused by their seal in this run: not sent, not retried
    dropped: int = 0  # queued to be discarded, or expired before they could go: not sent


def _connect(settings: Settings) -> smtplib.SMTP:
    if not settings.smtp_host:
        raise ConfigurationError("No SMTP server is configured (CERTVAULT_SMTP_HOST).")
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if settings.smtp_security == "tls":
        smtp = smtplib.SMTP_SSL(
            settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout, context=context
        )
    else:
        smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout)
        if settings.smtp_security == "starttls":
            smtp.starttls(context=context)
    if settings.smtp_user and settings.smtp_password:
        smtp.login(settings.smtp_user, settings.smtp_password.get_secret_value())
    return smtp


def _message(ports: Ports, row: MailMessage) -> EmailMessage:
    body = _open_body(ports, row) if row.body_sealed else row.body
    return _build(ports.settings, row.to_addr, row.subject, body)


def _build(settings: Settings, to: str, subject: str, body: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.smtp_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="certvault")
    msg.set_content(body)
    return msg


class MailUnavailable(CertvaultError):
    """The mail server could not take the message; nothing was sent. Try again later."""

    code = "mail_unavailable"
    status = 503


def send_now(settings: Settings, to: str, subject: str, body: str) -> None:
    """Deliver one message at once, for a person waiting for it (a one-time code), bypassing the
    outbox; :class:`MailUnavailable` when the server does not take it."""
    msg = _build(settings, to, subject, body)
    try:
        smtp = _connect(settings)
        try:
            smtp.send_message(msg)
        finally:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
    except (OSError, smtplib.SMTPException, ConfigurationError):
        # The server's own words are not passed on: they may quote the message.
        raise MailUnavailable() from None


def send_pending(ports: Ports, *, limit: int = 100) -> SendResult:
    """Deliver due messages; claim them first so that several senders never send one twice."""
    if not ports.settings.smtp_host:
        # Refused before anything is claimed: the messages wait, untouched, for a configuration.
        raise ConfigurationError(
            f"No SMTP server is configured (CERTVAULT_SMTP_HOST): {_count_pending(ports)} "
            "message(s) wait in the outbox until one is."
        )
    now = ports.clock()

    def claim(session: Session) -> tuple[list[int], int]:
        with seals.lenient(session) as refused:
            rows = session.scalars(
                select(MailMessage)
                .where(
                    MailMessage.sent_at.is_(None),
                    MailMessage.next_attempt_at <= now,
                    or_(MailMessage.claimed_until.is_(None), MailMessage.claimed_until < now),
                )
                .order_by(MailMessage.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            held = [row.id for row in rows if row in refused]
        _hold(session, held)
        claimed = [row for row in rows if row.id not in held]
        for row in claimed:
            row.claimed_until = now + CLAIM_FOR
        return [row.id for row in claimed], len(held)

    ids, held = ports.db.run(claim)
    result = SendResult(held=held)
    if not ids:
        # Nothing is due, but messages waiting for their next attempt are still pending.
        result.pending = _count_pending(ports)
        return result
    smtp: smtplib.SMTP | None = None
    try:
        for message_id in ids:
            try:
                with ports.db.read() as session:
                    row = session.get(MailMessage, message_id)
                    assert row is not None
                    dropped = row.discard or (
                        row.expires_at is not None and row.expires_at <= ports.clock()
                    )
                    msg = None if dropped else _message(ports, row)
            except (seals.TamperedRow, SealBroken):  # changed since it was claimed
                ports.db.run(partial(_hold, ids=[message_id]))
                result.held += 1
                continue
            if msg is None:
                _finish(ports, message_id, None, dropped=True)
                result.dropped += 1
                continue
            error: str | None = None
            try:
                if smtp is None:
                    smtp = _connect(ports.settings)
                smtp.send_message(msg)
            except (OSError, smtplib.SMTPException, ConfigurationError) as exc:
                # Server messages can be long; never store more than a short, plain reason.
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
                smtp = None
            _finish(ports, message_id, error)
            if error is None:
                result.sent += 1
            else:
                result.failed += 1
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
    result.pending = _count_pending(ports)
    return result


def _hold(session: Session, ids: list[int]) -> None:
    """Take messages that failed their seal out of delivery. Only unbound columns are written:
    the seal stays as it was, so `certvault verify` keeps naming the row."""
    if ids:
        session.execute(
            update(MailMessage)
            .where(MailMessage.id.in_(ids))
            .values(next_attempt_at=HELD_UNTIL, claimed_until=None, last_error=HELD)
            .execution_options(**{UNBOUND_ONLY: True})
        )


def _count_pending(ports: Ports) -> int:
    with ports.db.read() as session:
        return len(
            session.scalars(
                select(MailMessage.id).where(
                    MailMessage.sent_at.is_(None), MailMessage.next_attempt_at < HELD_UNTIL
                )
            ).all()
        )


DROPPED = "not sent: queued to be discarded, or expired before it could go"


def _finish(ports: Ports, message_id: int, error: str | None, *, dropped: bool = False) -> None:
    def work(session: Session) -> None:
        # Read with Core: the row is not loaded as an object, so it is neither checked nor
        # sealed again here; it was checked before it was sent, and only unbound columns change.
        row = session.execute(
            select(MailMessage.attempts).where(MailMessage.id == message_id)
        ).one()
        now = ports.clock()
        attempts = row.attempts + 1
        values: dict[str, object] = {"attempts": attempts, "claimed_until": None}
        if dropped:
            # Off the queue like a sent message, but never delivered.
            values.update(sent_at=now, last_error=DROPPED, attempts=row.attempts)
        elif error is None:
            values.update(sent_at=now, last_error=None)
        else:
            values.update(last_error=error[:500], next_attempt_at=now + backoff(attempts))
        session.execute(
            update(MailMessage)
            .where(MailMessage.id == message_id)
            .values(**values)
            .execution_options(**{UNBOUND_ONLY: True})
        )

    ports.db.run(work)
