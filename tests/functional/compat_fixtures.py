"""An installation to drive the SCM-compatible endpoints against.

Account "acme" (Key Vault on) with administrators sharing one password:

| login  | kind                 | privileges                                                  |
|--------|----------------------|-------------------------------------------------------------|
| robot  | api_only             | key_vault_download, certificates_manage, persons_manage     |
| human  | console (not api_only)| the same                                                   |

``robot`` also holds a bearer token with every scope its privileges back. Account "other" holds
``olga@other.example`` with one escrowed key: her ids are foreign to acme's callers. The client
calls from 192.0.2.10; the rate limiter's clock stands still, so a window never rolls over
in the middle of a test.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import select

from certvault.db.models import Person
from certvault.services.access import admins, tokens
from certvault.services.directory import accounts
from certvault.services.kernel import tenancy
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.ratelimit import DatabaseRateLimiter
from certvault.services.vault.imports import import_p12
from certvault.web.app import create_app
from tests.factories import make_ca, make_cert, make_p12, new_key

PASSWORD = "robot-password-0123456789"
P12_PASSWORD = "p12-password-0123"
CLIENT_IP = "192.0.2.10"
PRIVILEGES = ["key_vault_download", "certificates_manage", "persons_manage"]
FIXED_TIME = 1_900_000_020.0  # 20 s into a minute: far from any window's edge


@dataclass
class Escrowed:
    person_id: int
    cert_id: int


@dataclass
class ScmWorld:
    ports: Ports
    client: TestClient
    limiter: DatabaseRateLimiter
    token: str
    token_id: int
    robot_id: int
    default_org: int
    olga: Escrowed
    ca: tuple[Any, x509.Certificate]

    def auth(self, mode: str) -> dict[str, str]:
        if mode == "bearer":
            return {"Authorization": f"Bearer {self.token}"}
        return self.header_auth("robot", PASSWORD)

    @staticmethod
    def header_auth(login: str, password: str, customer: str = "acme") -> dict[str, str]:
        return {"login": login, "password": password, "customerUri": customer}

    def client_from(self, ip: str) -> TestClient:
        return TestClient(self.client.app, client=(ip, 50000))

    def p12_for(self, email: str, password: str = P12_PASSWORD) -> tuple[Any, Any, bytes]:
        key = new_key("ec256")
        cert = make_cert(key, email, issuer=self.ca)
        return key, cert, make_p12(key, cert, password)


def b64(data: bytes, wrap: int | None = 76) -> str:
    """Base64 as scripts send it: wrapped in lines, as the `base64` command does."""
    text = base64.b64encode(data).decode()
    if wrap is None:
        return text
    return "\n".join(text[i : i + wrap] for i in range(0, len(text), wrap))


def build_scm_world(ports: Ports, operator: Actor) -> ScmWorld:
    accounts.create_account(ports, operator, "Other Inc", "other", key_vault_enabled=True)
    robot = admins.create_admin(
        ports, operator, "acme", "robot", privileges=PRIVILEGES, api_only=True, password=PASSWORD
    )
    admins.create_admin(ports, operator, "acme", "human", privileges=PRIVILEGES, password=PASSWORD)
    token = tokens.create_token(ports, operator, "acme", "robot")
    ca = make_ca("Compat CA")
    key = new_key("ec256")
    cert = make_cert(key, "olga@other.example", issuer=ca)
    [entry] = import_p12(ports, operator, "other", make_p12(key, cert, P12_PASSWORD), P12_PASSWORD)
    assert entry.ok and entry.client_cert_id is not None
    with ports.db.read() as s:
        olga = s.scalars(select(Person.id).where(Person.email == "olga@other.example")).one()
        default_org = tenancy.default_organization(s, tenancy.get_account(s, "acme")).id
    limiter = DatabaseRateLimiter(ports.db, clock=lambda: FIXED_TIME)
    app = create_app(ports, limiter=limiter)
    return ScmWorld(
        ports=ports,
        client=TestClient(app, client=(CLIENT_IP, 50000)),
        limiter=limiter,
        token=token.token,
        token_id=token.token_id,
        robot_id=robot.admin_id,
        default_org=default_org,
        olga=Escrowed(person_id=olga, cert_id=entry.client_cert_id),
        ca=ca,
    )


@pytest.fixture(name="scm")
def scm_world(ports: Ports, operator: Actor, account: str) -> Iterator[ScmWorld]:
    world = build_scm_world(ports, operator)
    with world.client:
        yield world
