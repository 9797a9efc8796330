"""MS agent enrollment with key archival, through the HTTP API, on SQLite and PostgreSQL.

Requests are built as a Windows client builds them (tests/cmc_builder.py) against the server's
own exchange certificate, fetched from the agent endpoint. Each good request must come back as a
CMC response signed by the issuing CA, with the key hash echoed and the certificate in the vault
with exactly the archived key; each bad one is refused with a stable code and Windows status,
audited, and changes nothing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from certvault.crypto import keys as keylib
from certvault.crypto.cmc import parse_response
from certvault.db.models import AgentRequest, Certificate
from certvault.services.access.agent_credentials import authenticate_agent
from certvault.services.directory import accounts
from certvault.services.kernel import keyring, seals
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.pki import agents, exchange
from certvault.services.pki.ca import init_ca, issuing_chain
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from certvault.web.app import create_app
from tests import cmc_builder as cmc
from tests.factories import make_p12, pool_key
from tests.functional import cli_env
from tests.functional.helpers import counts, events

V1 = "/api/v1/agent"
ARCHIVE = "agent.archive"
START = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
EMAIL = "alice@acme.example"


@dataclass
class World:
    ports: Ports
    client: TestClient
    token: str
    other_token: str
    now: list[dt.datetime]

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def exchange(self) -> x509.Certificate:
        r = self.client.get(f"{V1}/exchange-certificate", headers=self.headers())
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/pkix-cert"
        return x509.load_der_x509_certificate(r.content)

    def submit(
        self,
        request: bytes,
        template: str = "EFS",
        email: str | None = EMAIL,
        token: str | None = None,
    ) -> Any:
        body: dict[str, Any] = {"request": base64.b64encode(request).decode(), "template": template}
        if email is not None:
            body["requester"] = {"upn": "alice@ad.acme.example", "email": email}
        return self.client.post(f"{V1}/requests", headers=self.headers(token), json=body)

    def move(self, days: float) -> None:
        self.now[0] += dt.timedelta(days=days)


@pytest.fixture
def world(ports: Ports, operator: Actor) -> Any:
    now = [START]
    ports.clock = lambda: now[0]
    for slug in ("acme", "other"):
        accounts.create_account(ports, operator, slug.title(), slug, key_vault_enabled=True)
        init_ca(ports, operator, slug)
    made = agents.create_agent(ports, operator, "acme", "dc1")
    other = agents.create_agent(ports, operator, "other", "dc1")
    for slug in ("acme", "other"):
        agents.map_template(
            ports, operator, slug, "dc1", "EFS", profile="smime-encryption", require_archival=True
        )
    agents.map_template(
        ports, operator, "acme", "dc1", "Optional", profile="smime-encryption", archive_key=True
    )
    agents.map_template(ports, operator, "acme", "dc1", "Signing", profile="smime-signing")
    client = TestClient(create_app(ports), base_url="https://testserver")
    with client:
        yield World(ports, client, made.token, other.token, now)


def build(key: Any, exchange_cert: x509.Certificate, **options: Any) -> bytes:
    """A Windows client's archival request naming the requester's address."""
    options.setdefault("subject_email", EMAIL)
    return cmc.build_archival_request(key, exchange_cert, **options)


def _ca(ports: Ports, slug: str = "acme") -> list[x509.Certificate]:
    return issuing_chain(ports, Actor.operator("operator:test@localhost"), slug)


def _refusals(ports: Ports) -> list[dict[str, Any]]:
    return [json.loads(e.details) for e in events(ports, ARCHIVE) if e.outcome == "refused"]


def _released_key(ports: Ports, operator: Actor, cert_id: int) -> Any:
    batch = release_key(ports, operator, "acme", cert_id, passphrase=None, reason="test")
    key, _, _ = pkcs12.load_key_and_certificates(
        batch.releases[0].data, batch.generated_passphrase.encode()
    )
    return key


def _same_key(a: Any, b: Any) -> bool:
    der = serialization.Encoding.DER
    info = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_key().public_bytes(der, info) == b.public_key().public_bytes(der, info)


# --- the full path -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key_name", "content", "hash_alg", "digest_alg"),
    [
        ("rsa2048-1", "aes256", "sha1", "sha256"),
        ("rsa3072", "3des", "sha256", "sha256"),  # the request's own digest as the key hash
        ("rsa2048-2", "3des", "sha1", "sha1"),
        ("rsa3072", "aes256", "sha1", "sha256"),
    ],
)
def test_an_archival_request_is_issued_escrowed_and_answered(
    world: World, operator: Actor, key_name: str, content: str, hash_alg: str, digest_alg: str
) -> None:
    key = pool_key(key_name)
    request = build(
        key,
        world.exchange(),
        content=content,
        hash_alg=hash_alg,
        digest_alg=digest_alg,
        subject_email=EMAIL,
        nonce=b"\x01" * 16,
    )
    r = world.submit(request)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pkcs7-mime"
    chain = _ca(world.ports)
    answer = parse_response(r.content, chain[0])
    assert answer.status == "success" and answer.body_parts == (1,)
    assert answer.encrypted_key_hash == cmc.digest(hash_alg, _envelope_of(request))
    assert answer.recipient_nonce == b"\x01" * 16
    [issued] = [c for c in answer.certificates if c.subject != c.issuer and c not in chain]
    assert _same_key(issued, key)
    assert issued.issuer == chain[0].subject
    cert_id = int(r.headers["X-Certificate-Id"])
    with world.ports.db.read() as s:
        row = s.get_one(Certificate, cert_id)
        assert row.escrowed_key_id is not None and row.source == "agent"
        assert row.der == issued.public_bytes(serialization.Encoding.DER)
        assert row.emails == EMAIL
    released = _released_key(world.ports, operator, cert_id)
    assert released.private_numbers() == key.private_numbers()
    [done] = [e for e in events(world.ports, ARCHIVE) if e.outcome == "success"]
    details = json.loads(done.details)
    assert details["template"] == "EFS" and details["escrowed"] is True
    assert details["requester_upn"] == "alice@ad.acme.example" and done.actor == "agent:dc1"


def _envelope_of(request: bytes) -> bytes:
    from certvault.crypto.cmc import parse_request

    found = parse_request(request).encrypted_key
    assert found is not None
    return found


def test_a_pem_request_as_certreq_writes_it_and_the_pem_exchange_certificate(world: World) -> None:
    r = world.client.get(
        f"{V1}/exchange-certificate",
        headers={**world.headers(), "Accept": "application/x-pem-file"},
    )
    assert r.headers["content-type"] == "application/x-pem-file"
    pem_cert = x509.load_pem_x509_certificate(r.content)
    assert (
        world.client.get(f"{V1}/exchange-certificate?format=pem", headers=world.headers()).content
        == r.content
    )
    request = build(pool_key("rsa2048-3"), pem_cert, subject_email=EMAIL)
    text = "-----BEGIN NEW CERTIFICATE REQUEST-----\r\n"
    text += base64.encodebytes(request).decode().replace("\n", "\r\n")
    text += "-----END NEW CERTIFICATE REQUEST-----\r\n"
    body = {"request": text, "template": "EFS", "requester": {"email": EMAIL}}
    r = world.client.post(f"{V1}/requests", headers=world.headers(), json=body)
    assert r.status_code == 200, r.text


def test_the_exchange_certificate_is_the_issuing_cas_and_a_service_key(world: World) -> None:
    cert = world.exchange()
    chain = _ca(world.ports)
    cert.verify_directly_issued_by(chain[0])
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment and not usage.digital_signature
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ObjectIdentifier("1.3.6.1.4.1.311.21.5")]
    assert cert.not_valid_after_utc - START <= exchange.VALIDITY
    assert world.exchange() == cert  # the same until it is due
    status = exchange.exchange_status(world.ports, Actor.operator("op"), "acme")
    assert status.current is not None and status.current.certificate == cert


def test_a_request_without_a_key_on_a_non_archival_template_is_issued(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange(), archived=False, hash_alg=None)
    before = counts(world.ports)
    r = world.submit(request, template="Signing", email=None)  # the request's own address
    assert r.status_code == 200, r.text
    after = counts(world.ports)
    assert after["certs"] == before["certs"] + 1 and after["keys"] == before["keys"]
    answer = parse_response(r.content, _ca(world.ports)[0])
    assert answer.status == "success" and answer.encrypted_key_hash is None


# --- replay --------------------------------------------------------------------------------------


def test_a_replayed_request_gets_the_same_answer_and_one_certificate(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange())
    first = world.submit(request)
    assert first.status_code == 200, first.text
    before = counts(world.ports)
    again = world.submit(request)
    assert again.status_code == 200 and again.content == first.content
    assert again.headers["X-Replayed"] == "true"
    assert again.headers["X-Certificate-Id"] == first.headers["X-Certificate-Id"]
    assert counts(world.ports) == before
    replays = [json.loads(e.details) for e in events(world.ports, ARCHIVE)]
    assert [d.get("replayed", False) for d in replays] == [False, True]


# --- rotation ------------------------------------------------------------------------------------


def test_the_exchange_certificate_rotates_and_the_previous_one_decrypts_for_a_while(
    world: World,
) -> None:
    old = world.exchange()
    request = build(pool_key("rsa2048-1"), old)
    world.move(21)  # within the last third of its 30 days
    new = world.exchange()
    assert new != old and new.public_key() != old.public_key()
    assert world.exchange() == new
    r = world.submit(request)  # encrypted to the one just replaced: within its grace
    assert r.status_code == 200, r.text
    status = exchange.exchange_status(world.ports, Actor.operator("op"), "acme")
    assert status.current is not None and status.current.certificate == new
    assert [e.certificate for e in status.accepted] == [old]


def test_an_exchange_certificate_past_its_grace_is_refused(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange())
    world.move(30 + 7 + 1)
    _assert_refused(world, world.submit(request), 422, "archived_key_invalid", 0x8009400C)


# --- bad input -----------------------------------------------------------------------------------


def _assert_refused(world: World, r: Any, status: int, code: str, windows: int | None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    if windows is not None:
        assert body["windows_status"] == windows
    refusal = _refusals(world.ports)[-1]
    assert refusal["reason"] == code and refusal["agent"] == "dc1"


def test_not_cmc_is_refused_without_a_cmc_response(world: World) -> None:
    before = counts(world.ports)
    r = world.submit(b"not a cmc request at all")
    _assert_refused(world, r, 422, "cmc_invalid", 0x80090005)
    assert "cmc_response" not in r.json()
    assert counts(world.ports) == before


@pytest.mark.parametrize("how", ["no-pkcs10", "two-pkcs10", "bad-signature"])
def test_malformed_requests_are_refused(world: World, how: str) -> None:
    exchange_cert = world.exchange()
    key = pool_key("rsa2048-1")
    options: dict[str, Any] = {
        "no-pkcs10": {"requests": 0},
        "two-pkcs10": {"requests": 2},
        "bad-signature": {"signer_key": pool_key("rsa2048-2")},
    }[how]
    request = build(key, exchange_cert, **options)
    before = counts(world.ports)
    _assert_refused(world, world.submit(request), 422, "cmc_invalid", 0x80090005)
    assert counts(world.ports) == before


@pytest.mark.parametrize("how", ["other-recipient", "hash-mismatch", "wrong-key"])
def test_keys_that_cannot_be_taken_take_one_path(world: World, how: str) -> None:
    exchange_cert = world.exchange()
    key = pool_key("rsa2048-1")
    if how == "other-recipient":
        stranger = pool_key("rsa2048-4")
        request = build(key, cmc.exchange_certificate(stranger))
    elif how == "hash-mismatch":
        request = build(key, exchange_cert, key_hash=b"\x00" * 20)
    else:  # the key of another pair than the PKCS#10's, properly encrypted to us
        blob = cmc.openssl_blob(pool_key("rsa2048-2"))
        request = build(key, exchange_cert, blob=blob)
    before = counts(world.ports)
    r = world.submit(request)
    _assert_refused(world, r, 422, "archived_key_invalid", 0x8009400C)
    assert (
        r.json()["description"] == "The archived private key in the request could not be recovered."
    )
    answer = parse_response(base64.b64decode(r.json()["cmc_response"]), _ca(world.ports)[0])
    assert answer.status == "failed" and answer.windows_status == 0x8009400C
    # Nothing at all is stored: no certificate, no key, no person, no mail; one refusal.
    assert counts(world.ports) == before
    assert len(_refusals(world.ports)) == 1
    with world.ports.db.read() as s:
        [trail] = s.scalars(select(AgentRequest)).all()
        assert trail.outcome == "refused" and trail.certificate_id is None


def test_decryption_failures_count_against_the_agents_limit(world: World) -> None:
    world.ports.settings.agent_failures_per_hour_token = 2
    stranger = cmc.exchange_certificate(pool_key("rsa2048-4"))
    request = build(pool_key("rsa2048-1"), stranger)
    for _ in range(2):
        assert world.submit(request).json()["code"] == "archived_key_invalid"
    r = world.submit(request)
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    good = build(pool_key("rsa2048-2"), world.exchange())
    assert world.submit(good).status_code == 429  # the agent waits, whatever it sends


def test_an_unknown_template_is_refused(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange())
    _assert_refused(
        world, world.submit(request, template="Nope"), 404, "unknown_template", 0x80094800
    )


def test_a_template_requiring_archival_refuses_a_request_without_a_key(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange(), archived=False, hash_alg=None)
    r = world.submit(request)
    _assert_refused(world, r, 422, "archived_key_required", 0x80094804)
    answer = parse_response(base64.b64decode(r.json()["cmc_response"]), _ca(world.ports)[0])
    assert answer.windows_status == 0x80094804


def test_a_template_without_archival_refuses_a_request_with_a_key(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange())
    r = world.submit(request, template="Signing")
    _assert_refused(world, r, 422, "archived_key_unexpected", 0x80094810)


def test_key_vault_disabled_refuses_archival(world: World, operator: Actor) -> None:
    accounts.set_key_vault(world.ports, operator, "acme", False)
    request = build(pool_key("rsa2048-1"), world.exchange())
    before = counts(world.ports)
    _assert_refused(world, world.submit(request), 403, "key_vault_disabled", 0x8009400A)
    assert counts(world.ports) == before


def test_a_request_for_another_address_than_the_requesters_is_refused(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange(), subject_email="mallory@acme.example")
    _assert_refused(world, world.submit(request), 422, "requester_mismatch", None)


def test_an_agent_of_another_account_sees_its_own_exchange_and_cannot_use_ours(
    world: World,
) -> None:
    ours = world.exchange()
    r = world.client.get(f"{V1}/exchange-certificate", headers=world.headers(world.other_token))
    theirs = x509.load_der_x509_certificate(r.content)
    assert theirs != ours and theirs.issuer == _ca(world.ports, "other")[0].subject
    request = build(pool_key("rsa2048-1"), ours)
    r = world.submit(request, token=world.other_token)
    assert r.status_code == 422 and r.json()["code"] == "archived_key_invalid"
    with world.ports.db.read() as s:
        assert s.scalars(select(Certificate)).all() == []


@pytest.mark.parametrize("who", ["revoked", "unknown", "admin-token", "none"])
def test_agents_that_are_not_answer_as_unknown_tokens(
    world: World, operator: Actor, who: str
) -> None:
    token = world.token
    if who == "revoked":
        agents.revoke_agent(world.ports, operator, "acme", "dc1")
    elif who == "unknown":
        token = "cva_" + "x" * 43
    elif who == "admin-token":
        token = "cvt_" + "x" * 43
    headers = world.headers(token) if who != "none" else {}
    for r in (
        world.client.get(f"{V1}/exchange-certificate", headers=headers),
        world.client.post(
            f"{V1}/requests", headers=headers, json={"request": "x", "template": "EFS"}
        ),
    ):
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated"


# --- the database is not trusted ------------------------------------------------------------------


def _sql(ports: Ports, statement: str, **params: Any) -> None:
    with ports.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def _row(ports: Ports, table: str) -> dict[str, Any]:
    with ports.db.engine.connect() as conn:
        found = conn.execute(text(f"SELECT * FROM {table} ORDER BY id LIMIT 1")).mappings().one()
    return dict(found)


def _tampered(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "row_tampered"


def test_a_template_map_altered_by_sql_is_refused(world: World) -> None:
    request = build(pool_key("rsa2048-1"), world.exchange(), archived=False, hash_alg=None)
    _sql(world.ports, "UPDATE agent_templates SET require_archival = :f", f=False)
    before = counts(world.ports)
    _tampered(world.submit(request))
    assert counts(world.ports) == before
    refused = [json.loads(e.details) for e in events(world.ports, "integrity.row_refused")]
    assert {d["table"] for d in refused} == {"agent_templates"}


def test_an_agent_moved_to_another_account_by_sql_is_refused(world: World) -> None:
    with world.ports.db.engine.connect() as conn:
        other = conn.execute(text("SELECT id FROM accounts WHERE slug = 'other'")).scalar_one()
    _sql(world.ports, "UPDATE agents SET account_id = :a, name = 'dc9' WHERE id = 1", a=other)
    _sql(world.ports, "UPDATE agent_credentials SET account_id = :a WHERE agent_id = 1", a=other)
    _tampered(world.client.get(f"{V1}/exchange-certificate", headers=world.headers()))


def test_a_revoked_agent_put_back_by_sql_is_refused(world: World, operator: Actor) -> None:
    agent, credential = _row(world.ports, "agents"), _row(world.ports, "agent_credentials")
    agents.revoke_agent(world.ports, operator, "acme", "dc1")
    for table, old in (("agents", agent), ("agent_credentials", credential)):
        columns = ", ".join(f"{name} = :{name}" for name in old if name != "id")
        _sql(world.ports, f"UPDATE {table} SET {columns} WHERE id = :id", **old)
    _tampered(world.client.get(f"{V1}/exchange-certificate", headers=world.headers()))


def test_an_inserted_agent_token_is_refused(world: World) -> None:
    chosen = "cva_" + "chosen-by-the-attacker-0123456789abcdefghij"
    old = _row(world.ports, "agent_credentials")
    forged = {
        **{k: v for k, v in old.items() if k != "id"},
        "uuid": "00000000-0000-4000-8000-000000000001",
        "token_sha256": hashlib.sha256(chosen.encode()).hexdigest(),
    }
    names = ", ".join(forged)
    values = ", ".join(f":{n}" for n in forged)
    _sql(world.ports, f"INSERT INTO agent_credentials ({names}) VALUES ({values})", **forged)
    _tampered(world.client.get(f"{V1}/exchange-certificate", headers=world.headers(chosen)))
    assert seals.check_rows(world.ports).problems


# --- the CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli(backend: str, tmp_path: Any) -> Any:
    yield from cli_env.cli_for(backend, tmp_path)


def test_agent_commands(cli: Any) -> None:
    cli.bootstrap()
    made = cli.run("agent", "create", "--account", "acme", "dc1")
    assert made.returncode == 0, cli_env.text(made)
    [token] = [line for line in made.stdout.splitlines() if line.startswith("cva_")]
    assert made.stdout.count(token) == 1 and len(token) > 40
    assert cli.run("agent", "create", "--account", "acme", "dc1").returncode == 1  # taken

    mapped = cli.run(
        "agent", "map", "--account", "acme", "dc1", "EFS",
        "--profile", "smime-encryption", "--require-archival",
    )  # fmt: skip
    assert mapped.returncode == 0, cli_env.text(mapped)
    refused = cli.run("agent", "map", "--account", "acme", "dc1", "Sign", "--profile",
                      "smime-signing", "--archive-key")  # fmt: skip
    assert refused.returncode == 1 and "never escrows" in cli_env.text(refused)
    assert cli.run("agent", "map", "--account", "acme", "nobody", "EFS", "--profile",
                   "smime").returncode == 1  # fmt: skip

    listed = cli.run("agent", "list", "--account", "acme")
    assert listed.returncode == 0, cli_env.text(listed)
    assert "dc1\tactive\ttokens=1\tlast_contact=never" in listed.stdout
    [efs] = [line for line in listed.stdout.splitlines() if line.startswith("  EFS\t")]
    assert efs.startswith("  EFS\tsmime-encryption\t") and efs.endswith("\trequired")
    assert token not in listed.stdout

    revoked = cli.run("agent", "revoke", "--account", "acme", "dc1")
    assert revoked.returncode == 0 and "1 token(s)" in revoked.stdout
    assert "dc1\trevoked\ttokens=0" in cli.run("agent", "list", "--account", "acme").stdout
    ports = cli.ports()
    try:
        with pytest.raises(Exception) as refused_token:
            authenticate_agent(ports, token)
        assert getattr(refused_token.value, "code", "") == "unauthenticated"
        done = [(e.action, e.outcome) for e in events(ports) if e.action.startswith("agent.")]
        assert done == [
            ("agent.create", "success"),
            ("agent.create", "refused"),
            ("agent.map", "success"),
            ("agent.map", "refused"),
            ("agent.map", "refused"),
            ("agent.revoke", "success"),
        ]
    finally:
        ports.close()


def test_the_exchange_key_is_a_service_key_the_vault_refuses(world: World, operator: Actor) -> None:
    cert = world.exchange()
    with world.ports.db.read() as s:
        [(exchange_cert, key)] = exchange.recipients(s, world.ports, 1)
    assert exchange_cert == cert
    p12 = make_p12(key, cert, "pw-for-the-test-1")
    [entry] = import_p12(world.ports, operator, "acme", p12, "pw-for-the-test-1")
    assert entry.code == "service_key"


def test_the_agents_last_contact_is_kept(world: World, operator: Actor) -> None:
    [before] = agents.list_agents(world.ports, operator, "acme")
    assert before.last_contact_at is None and before.live_tokens == 1 and before.templates == 3
    world.exchange()
    [after] = agents.list_agents(world.ports, operator, "acme")
    assert after.last_contact_at == START


# --- the committed vectors, through the API ---------------------------------------------------

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "cmc"


def _vector_exchange_key(world: World) -> None:
    """The vectors were encrypted to a test-only exchange key: give it to "acme" as its newest
    exchange key (certvault only ever makes its own; this stands for a key made earlier)."""
    key = serialization.load_pem_private_key((VECTORS / "exchange.key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((VECTORS / "exchange.cert.pem").read_bytes())
    assert isinstance(key, rsa.RSAPrivateKey)
    with world.ports.db.transaction() as s:
        row = keyring.create_service_key(
            s,
            world.ports,
            purpose=exchange.EXCHANGE_KEY_PURPOSE,
            material=keylib.to_pkcs8_der(key),
            account=get_account(s, "acme"),
            spki_sha256=keylib.spki_sha256(key.public_key()),
            certificate_der=cert.public_bytes(serialization.Encoding.DER),
        )
        row.created_at = world.now[0]


@pytest.mark.parametrize(
    ("name", "holder"),
    [
        ("rsa2048-aes256.der", "alice-rsa2048"),
        ("rsa2048-3des.req", "alice-rsa2048"),
        ("rsa3072-aes256-sha256-hash.der", "bob-rsa3072"),
        ("rsa3072-3des-sha1.der", "bob-rsa3072"),
        ("rsa2048-no-key.der", None),
    ],
)
def test_each_committed_vector_goes_through_the_api(
    world: World, operator: Actor, name: str, holder: str | None
):
    _vector_exchange_key(world)
    data = (VECTORS / name).read_bytes()
    # certreq's PEM file as it is; DER in base64.
    request = data.decode() if data.startswith(b"-----") else base64.b64encode(data).decode()
    email = f"{(holder or 'alice').split('-')[0]}@example.org"
    r = world.client.post(
        f"{V1}/requests",
        headers=world.headers(),
        json={
            "request": request,
            "template": "Optional" if holder else "Signing",
            "requester": {"email": email},
        },
    )
    assert r.status_code == 200, r.text
    answer = parse_response(r.content, _ca(world.ports)[0])
    assert answer.status == "success"
    cert_id = int(r.headers["X-Certificate-Id"])
    with world.ports.db.read() as s:
        escrowed = s.get_one(Certificate, cert_id).escrowed_key_id
    if holder is None:
        assert escrowed is None
        return
    archived = serialization.load_pem_private_key(
        (VECTORS / f"{holder}.key.pem").read_bytes(), None
    )
    assert escrowed is not None
    assert _same_key(_released_key(world.ports, operator, cert_id), archived)
