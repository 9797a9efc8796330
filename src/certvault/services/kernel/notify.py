"""The mail outbox: rows written in the transaction that causes the mail, delivered by a sender.

A message is never deleted: it is marked sent, or retried with backoff until it is.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import make_msgid

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from certvault.config import Settings
from certvault.db.models import Account, Admin, MailMessage
from certvault.errors import CertvaultError, ConfigurationError
from certvault.services.kernel.ports import Ports

CLAIM_FOR = timedelta(minutes=5)
MAX_BACKOFF = timedelta(hours=1)


def queue_mail(session: Session, account: Account | None, to: str, subject: str, body: str) -> None:
    session.add(
        MailMessage(
            account_id=account.id if account else None, to_addr=to, subject=subject[:300], body=body
        )
    )


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


def _message(settings: Settings, row: MailMessage) -> EmailMessage:
    return _build(settings, row.to_addr, row.subject, row.body)


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
        raise ConfigurationError("No SMTP server is configured (CERTVAULT_SMTP_HOST).")
    now = ports.clock()

    def claim(session: Session) -> list[int]:
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
        for row in rows:
            row.claimed_until = now + CLAIM_FOR
        return [row.id for row in rows]

    ids = ports.db.run(claim)
    result = SendResult()
    if not ids:
        # Nothing is due, but messages waiting for their next attempt are still pending.
        result.pending = _count_pending(ports)
        return result
    smtp: smtplib.SMTP | None = None
    try:
        for message_id in ids:
            with ports.db.read() as session:
                row = session.get(MailMessage, message_id)
                assert row is not None
                msg = _message(ports.settings, row)
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


def _count_pending(ports: Ports) -> int:
    with ports.db.read() as session:
        return len(
            session.scalars(select(MailMessage.id).where(MailMessage.sent_at.is_(None))).all()
        )


def _finish(ports: Ports, message_id: int, error: str | None) -> None:
    def work(session: Session) -> None:
        row = session.get(MailMessage, message_id)
        assert row is not None
        now = ports.clock()
        row.attempts += 1
        row.claimed_until = None
        if error is None:
            row.sent_at = now
            row.last_error = None
        else:
            row.last_error = error[:500]
            row.next_attempt_at = now + backoff(row.attempts)

    ports.db.run(work)
