"""The recovery form's test world: account "acme" with a trusted issuing CA, Alice's key in the
vault, the Recovery Method "email_code", and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from certvault.services.directory import accounts
from certvault.services.kernel import notify
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.vault import recovery
from certvault.services.vault import settings as kv_settings
from certvault.services.vault.imports import import_p12
from tests.conftest import make_settings
from tests.factories import make_ca, make_cert, make_p12, pool_key
from tests.functional.smtp_server import SmtpServer, smtp_server  # noqa: F401 - the fixture

ALICE = "alice@example.org"
PW = "import-password-1"
IP = "192.0.2.10"


@pytest.fixture(name="settings")
def settings_fixture(tmp_path: Path, database_url: str | None, smtp_server: SmtpServer):  # noqa: F811
    return make_settings(
        tmp_path / "home",
        database_url,
        smtp_host=smtp_server.host,
        smtp_port=smtp_server.port,
        smtp_security="none",
        public_url="https://certs.example.org/",
    )


@dataclass
class World:
    ports: Ports
    operator: Actor
    smtp: SmtpServer
    ca: Any
    certificate_id: int
    key: Any
    seen: int = 0

    def mark(self) -> None:
        """From now on, mails() lists only what arrives after this."""
        self.seen = len(self.smtp.messages)

    def mails(self) -> list[Any]:
        return self.smtp.messages[self.seen :]

    def vault(self, email: str, slug: str = "acme", key: str = "ec384") -> int:
        """A vaulted certificate naming ``email``, issued by the trusted CA."""
        private = pool_key(key)
        cert = make_cert(private, email, issuer=self.ca)
        [entry] = import_p12(self.ports, self.operator, slug, make_p12(private, cert, PW), PW)
        return entry.client_cert_id

    def method(self, name: str, slug: str = "acme") -> None:
        kv_settings.update_recovery_options(
            self.ports, self.operator, slug, kv_settings.RecoveryOptions(recovery_method=name)
        )

    def ask(self, email: str = ALICE, slug: str = "acme", ip: str = IP) -> str:
        return recovery.request_recovery(self.ports, slug, email, ip).request_uuid

    def deliver(self) -> notify.SendResult:
        return notify.send_pending(self.ports)

    def code(self, to: str = ALICE) -> str:
        self.deliver()
        mail = [m for m in self.mails() if to in m.rcpt_tos][-1]
        found = re.search(r"\b(\d{8})\b", mail.body)
        assert found, "no code in the mail"
        return found.group(1)

    def verify(self, ticket: str, code: str, email: str = ALICE, **kw: Any) -> recovery.Grant:
        return recovery.verify_code(self.ports, "acme", ticket, email, code, IP, **kw)

    def download(self, token: str, ids: list[int] | None = None, **kw: Any) -> recovery.Download:
        kw.setdefault("format", "p12")
        kw.setdefault("encryption", "AES256-SHA256")
        kw.setdefault("own_passphrase", None)
        choice = recovery.DownloadChoice(certificate_ids=ids or [self.certificate_id], **kw)
        return recovery.download(self.ports, "acme", token, choice, IP)


@pytest.fixture(name="world")
def world_fixture(ports: Ports, operator: Actor, account: str, smtp_server: SmtpServer) -> World:  # noqa: F811
    ca = make_ca("Acme Issuing CA")
    accounts.add_trusted_issuer(ports, operator, "acme", ca[1])
    w = World(ports, operator, smtp_server, ca, 0, pool_key("ec256"))
    cert = make_cert(w.key, ALICE, issuer=ca)
    [entry] = import_p12(ports, operator, "acme", make_p12(w.key, cert, PW), PW)
    w.certificate_id = entry.client_cert_id
    w.method("email_code")
    sent = w.deliver()  # the escrow notice
    assert sent == notify.SendResult(sent=1), sent
    w.mark()
    return w
