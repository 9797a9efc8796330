"""Small queries the functional tests share."""

from __future__ import annotations

from collections import Counter
from typing import Any

import argon2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from certvault.crypto import keys as keylib
from certvault.db.models import AuditEvent, Certificate, EscrowedKey, MailMessage, Person
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.vault.imports import ImportItem, import_files
from tests.factories import make_ca, make_cert, make_p12

IMPORT_PASSWORD = "import-keys-password-1"


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


def import_ec_keys(
    ports: Ports, operator: Actor, count: int, *, start: int = 0, account: str = "acme"
) -> dict[int, bytes]:
    """``count`` fresh EC P-256 keys archived in one import: certificate id -> PKCS#8 DER."""
    ca = make_ca("Import CA")
    made = []
    for i in range(start, start + count):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = make_cert(key, f"user{i}@example.org", issuer=ca)
        made.append((make_p12(key, cert, IMPORT_PASSWORD), keylib.to_pkcs8_der(key)))
    items = [
        ImportItem(name=str(i), load=lambda d=data: d, password=IMPORT_PASSWORD)  # type: ignore[misc]
        for i, (data, _) in enumerate(made)
    ]
    results = import_files(ports, operator, account, items)
    ids = [r.entries[0].client_cert_id if r.ok else None for r in results]
    assert None not in ids, [r.error_code for r in results]
    return {cid: der for cid, (_, der) in zip(ids, made, strict=True) if cid is not None}
