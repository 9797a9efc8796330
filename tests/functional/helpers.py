"""Small queries the functional tests share."""

from __future__ import annotations

from collections import Counter
from typing import Any

import argon2
import pytest
from sqlalchemy import func, select

from certvault.db.models import AuditEvent, Certificate, EscrowedKey, MailMessage, Person
from certvault.services.kernel.ports import Ports


def counts(ports: Ports) -> dict[str, int]:
    with ports.db.read() as s:
        return {
            "keys": s.scalar(select(func.count()).select_from(EscrowedKey)) or 0,
            "certs": s.scalar(select(func.count()).select_from(Certificate)) or 0,
            "persons": s.scalar(select(func.count()).select_from(Person)) or 0,
            "mail": s.scalar(select(func.count()).select_from(MailMessage)) or 0,
        }


def events(ports: Ports, action: str | None = None) -> list[AuditEvent]:
    with ports.db.read() as s:
        q = select(AuditEvent).order_by(AuditEvent.id)
        if action:
            q = q.where(AuditEvent.action == action)
        return list(s.scalars(q))


def mails(ports: Ports) -> list[MailMessage]:
    with ports.db.read() as s:
        return list(s.scalars(select(MailMessage).order_by(MailMessage.id)))


def count_argon2(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count every argon2 ``hash`` and ``verify`` from now on (they still run)."""
    calls: Counter[str] = Counter()
    for name in ("hash", "verify"):
        real = getattr(argon2.PasswordHasher, name)

        def counting(self: Any, *args: Any, _n: str = name, _f: Any = real) -> Any:
            calls[_n] += 1
            return _f(self, *args)

        monkeypatch.setattr(argon2.PasswordHasher, name, counting)
    return calls
