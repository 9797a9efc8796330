"""An installation to drive the HTTP API against, shared by the API tests.

Account "acme" (Key Vault on) with its default organization and "Sales"; account "other".
Administrators and one bearer token each:

| token        | administrator | role / organizations | privileges / scopes                       |
|--------------|---------------|----------------------|-------------------------------------------|
| keys         | acme keys     | account              | key_vault_download, certificates_manage,  |
|              |               |                      | persons_manage; every scope they back     |
| keys_read    | acme keys     | account              | the same admin, token scope `read` only   |
| reader       | acme reader   | account              | none (scope `read`)                       |
| sales        | acme sales    | organization: Sales  | every privilege                           |
| foreign      | other foreign | account              | every privilege                           |
| expired      | acme keys     |                      | expired yesterday                         |
| revoked      | acme keys     |                      | revoked                                   |

Data: ``alice@acme.example`` (default organization) with two generations of certificates whose
keys are escrowed (``old``: expired last year, ``new``: valid) and one certificate without a key;
``sam@acme.example`` in Sales with one escrowed key; ``olga@other.example`` in "other" with one.
Key uploads and releases here go through the services as the operator, so the audit log and the
rate-limit counters hold nothing of the API callers yet.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy import select

from certvault.db.models import Account, ApiToken, Certificate, Organization, Person
from certvault.services.access import admins, tokens
from certvault.services.directory import accounts
from certvault.services.kernel import tenancy
from certvault.services.kernel.actors import Actor, Privilege
from certvault.services.kernel.ports import Ports
from certvault.services.vault.imports import import_p12
from certvault.web.app import create_app
from tests.factories import NOW, make_ca, make_cert, make_p12, new_key

P12_PASSWORD = "fixture-p12-password"
ALL_PRIVILEGES = [p.value for p in Privilege]


@dataclass(frozen=True)
class Holder:
    """A person with escrowed keys: ids, and the keys and certificates as made."""

    person_id: int
    email: str
    cert_ids: list[int]
    keys: list[Any]
    certs: list[x509.Certificate]


@dataclass
class ApiWorld:
    ports: Ports
    client: TestClient
    tokens: dict[str, str]  # name in the table above -> bearer value
    token_ids: dict[str, int]
    orgs: dict[str, int]  # "default", "sales" (acme), "other" (the other account's default)
    alice: Holder  # two generations: cert_ids == [old, new]
    sam: Holder  # in Sales
    olga: Holder  # in the other account
    keyless_cert_id: int  # alice's certificate without a key in the vault
    ca: tuple[Any, x509.Certificate] = field(repr=False)  # issued every certificate above

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def get(self, name: str, path: str, **kw: Any) -> Any:
        return self.client.get(path, headers=self.headers(name), **kw)

    def post(self, name: str, path: str, **kw: Any) -> Any:
        return self.client.post(path, headers=self.headers(name), **kw)

    def patch(self, name: str, path: str, **kw: Any) -> Any:
        return self.client.patch(path, headers=self.headers(name), **kw)


def _escrow(
    ports: Ports,
    operator: Actor,
    slug: str,
    email: str,
    ca: Any,
    *,
    generations: int = 1,
    organization: str | None = None,
) -> Holder:
    keys, certs, ids = [], [], []
    for g in range(generations):
        key = new_key("ec256")
        # Older generations were issued, and expired, years ago: old mail still needs their keys.
        start = NOW - dt.timedelta(days=400 * (generations - 1 - g) + 1)
        cert = make_cert(key, email, issuer=ca, not_before=start, days=365)
        [entry] = import_p12(ports, operator, slug, make_p12(key, cert, P12_PASSWORD), P12_PASSWORD)
        assert entry.ok and entry.client_cert_id is not None
        keys.append(key)
        certs.append(cert)
        ids.append(entry.client_cert_id)
    with ports.db.transaction() as s:
        person = s.scalars(select(Person).where(Person.email == email)).one()
        if organization is not None:
            org = tenancy.find_organization(s, s.get_one(Account, person.account_id), organization)
            person.organization_id = org.id
            for c in s.scalars(select(Certificate).where(Certificate.person_id == person.id)):
                c.organization_id = org.id
        person_id = person.id
    return Holder(person_id, email, ids, keys, certs)


def _keyless_certificate(ports: Ports, holder: Holder, ca: Any) -> int:
    """A certificate known without its key (as if imported from a CA's records)."""
    cert = make_cert(new_key("ec256"), holder.email, issuer=ca)
    der = cert.public_bytes(Encoding.DER)
    with ports.db.transaction() as s:
        person = s.get_one(Person, holder.person_id)
        row = Certificate(
            account_id=person.account_id,
            organization_id=person.organization_id,
            person_id=person.id,
            der=der,
            sha256=hashlib.sha256(der).digest(),
            sha1_hex=cert.fingerprint(hashes.SHA1()).hex(),
            md5_hex=cert.fingerprint(hashes.MD5()).hex(),
            serial=format(cert.serial_number, "x"),
            issuer=cert.issuer.rfc4514_string(),
            issuer_sha256=hashlib.sha256(cert.issuer.public_bytes()).digest(),
            subject=cert.subject.rfc4514_string(),
            emails=holder.email,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            spki_sha256=hashlib.sha256(b"not escrowed").digest(),
            source="ca",
        )
        s.add(row)
        s.flush()
        return row.id


def build_world(ports: Ports, operator: Actor) -> ApiWorld:
    accounts.create_account(ports, operator, "Acme Corp", "acme", key_vault_enabled=True)
    accounts.create_account(ports, operator, "Other Inc", "other", key_vault_enabled=True)
    with ports.db.transaction() as s:
        acme = tenancy.get_account(s, "acme")
        s.add(Organization(account_id=acme.id, name="Sales"))
        s.flush()
        orgs = {
            "default": tenancy.default_organization(s, acme).id,
            "sales": tenancy.find_organization(s, acme, "Sales").id,
            "other": tenancy.default_organization(s, tenancy.get_account(s, "other")).id,
        }
    admins.create_admin(
        ports,
        operator,
        "acme",
        "keys",
        privileges=["key_vault_download", "certificates_manage", "persons_manage"],
    )
    admins.create_admin(ports, operator, "acme", "reader")
    admins.create_admin(
        ports,
        operator,
        "acme",
        "sales",
        role="organization",
        organizations=["Sales"],
        privileges=ALL_PRIVILEGES,
    )
    admins.create_admin(ports, operator, "other", "foreign", privileges=ALL_PRIVILEGES)

    made = {
        "keys": tokens.create_token(ports, operator, "acme", "keys"),
        "keys_read": tokens.create_token(ports, operator, "acme", "keys", scopes=["read"]),
        "reader": tokens.create_token(ports, operator, "acme", "reader"),
        "sales": tokens.create_token(ports, operator, "acme", "sales"),
        "foreign": tokens.create_token(ports, operator, "other", "foreign"),
        "expired": tokens.create_token(ports, operator, "acme", "keys", expires_days=1),
        "revoked": tokens.create_token(ports, operator, "acme", "keys"),
    }
    tokens.revoke_token(ports, operator, "acme", made["revoked"].token_id)
    with ports.db.transaction() as s:
        s.get_one(ApiToken, made["expired"].token_id).expires_at = NOW - dt.timedelta(days=1)

    ca = make_ca("Fixture CA")
    alice = _escrow(ports, operator, "acme", "alice@acme.example", ca, generations=2)
    sam = _escrow(ports, operator, "acme", "sam@acme.example", ca, organization="Sales")
    olga = _escrow(ports, operator, "other", "olga@other.example", ca)
    keyless = _keyless_certificate(ports, alice, ca)
    return ApiWorld(
        ports=ports,
        # Over https, as a deployment serves it: the pages' CSRF cookie is Secure.
        client=TestClient(create_app(ports), base_url="https://testserver"),
        tokens={name: t.token for name, t in made.items()},
        token_ids={name: t.token_id for name, t in made.items()},
        orgs=orgs,
        alice=alice,
        sam=sam,
        olga=olga,
        keyless_cert_id=keyless,
        ca=ca,
    )


@pytest.fixture(name="api")
def api_fixture(ports: Ports, operator: Actor) -> Iterator[ApiWorld]:
    """Import ``api_fixture`` into a test module to get the fixture ``api``."""
    world = build_world(ports, operator)
    with world.client:
        yield world
