"""Enrollment with a client CSR over the own API and the SCM-compatible one, with the built-in CA,
on SQLite and PostgreSQL: the certificate chains (checked with openssl), nothing is escrowed, the
person is told, every refusal changes nothing and is audited."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select

from certvault.crypto import keys as keylib
from certvault.crypto.ca import build_csr
from certvault.crypto.profiles import PROFILES, KeyType, Profile
from certvault.db.models import Certificate, CertificateAuthority, Person
from certvault.errors import CertvaultError
from certvault.services.access import admins
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.pki import csr_enrollment
from certvault.services.pki.ca import init_ca
from certvault.services.pki.issuance import Issued, IssueRequest
from tests.factories import (
    csr_der,
    csr_with_spki,
    custom_curve_spki,
    explicit_p256_csr,
    new_key,
    pool_key,
    rsa_key_with_exponent,
    rsa_spki,
    small_rsa_key,
)
from tests.functional.api_fixtures import ApiWorld, api_fixture  # noqa: F401 - `api`
from tests.functional.compat_fixtures import ScmWorld, scm_world  # noqa: F401 - `scm`
from tests.functional.helpers import counts, events, mails

V1 = "/api/v1"
ENROLL = "certificate.enroll"


def csr_pem(key: Any, email: str = "ignored@elsewhere.example") -> str:
    return build_csr(key, email).public_bytes(Encoding.PEM).decode()


def csr_b64_der(key: Any, email: str = "ignored@elsewhere.example") -> str:
    return base64.b64encode(build_csr(key, email).public_bytes(Encoding.DER)).decode()


def openssl(*args: str, data: bytes | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=data, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def pem_certs(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def issuing_ca(ports: Ports, slug: str = "acme") -> tuple[int, x509.Certificate, x509.Certificate]:
    """The id of the account's issuing CA, its certificate and the root's."""
    with ports.db.read() as s:
        issuing = s.scalars(
            select(CertificateAuthority).where(CertificateAuthority.role == "issuing")
        ).one()
        root = s.get_one(CertificateAuthority, issuing.parent_id)
        return (
            issuing.id,
            x509.load_der_x509_certificate(issuing.certificate_der),
            x509.load_der_x509_certificate(root.certificate_der),
        )


def verify_with_openssl(tmp_path: Path, leaf: bytes, untrusted: bytes, root: bytes) -> None:
    (tmp_path / "leaf.pem").write_bytes(leaf)
    (tmp_path / "untrusted.pem").write_bytes(untrusted)
    (tmp_path / "root.pem").write_bytes(root)
    out = openssl(
        "verify",
        "-CAfile",
        str(tmp_path / "root.pem"),
        "-untrusted",
        str(tmp_path / "untrusted.pem"),
        "-purpose",
        "smimesign",
        str(tmp_path / "leaf.pem"),
    )
    assert out.strip().endswith(": OK")


def enroll_events(ports: Ports, outcome: str) -> list[dict[str, Any]]:
    return [
        {"actor": e.actor, "target": e.target_id, **json.loads(e.details)}
        for e in events(ports, ENROLL)
        if e.outcome == outcome
    ]


def certificate_row(ports: Ports, cert_id: int) -> Certificate:
    with ports.db.read() as s:
        return s.get_one(Certificate, cert_id)


# --- the own API ----------------------------------------------------------------------------------


@pytest.fixture
def api_ca(api: ApiWorld, operator: Actor) -> ApiWorld:
    init_ca(api.ports, operator, "acme")
    return api


@pytest.mark.parametrize("kind", ["ec256", "rsa2048"])
def test_enroll_and_collect_over_the_api(api_ca: ApiWorld, kind: str, tmp_path: Path) -> None:
    api = api_ca
    key = new_key("ec256") if kind == "ec256" else pool_key("rsa2048-1")
    before = counts(api.ports)
    # The CSR names another address: only its key is used, the request decides the names.
    csr = csr_pem(key) if kind == "ec256" else csr_b64_der(key)
    r = api.post(
        "keys",
        f"{V1}/certificates/enroll",
        json={"csr": csr, "profile": "smime", "email": "Carol@Acme.example"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["Location"] == f"/api/v1/certificates/{body['id']}"
    assert body["emails"] == ["carol@acme.example"]
    assert body["key_in_vault"] is False and body["source"] == "csr"
    assert body["status"] == "issued"
    after = counts(api.ports)
    assert after["keys"] == before["keys"]  # nothing escrowed
    assert after["certs"] == before["certs"] + 1
    assert after["persons"] == before["persons"] + 1

    ca_id, issuing, root = issuing_ca(api.ports)
    row = certificate_row(api.ports, body["id"])
    assert (row.profile, row.ca_id, row.source, row.escrowed_key_id) == (
        "smime",
        ca_id,
        "csr",
        None,
    )
    with api.ports.db.read() as s:
        person = s.get_one(Person, row.person_id)
        assert (person.email, person.organization_id) == ("carol@acme.example", api.orgs["default"])

    # pem: the certificate, its issuer, the root
    r = api.get("reader", f"{V1}/certificates/{body['id']}/certificate")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pem-certificate-chain"
    leaf, *chain = pem_certs(r.content)
    assert chain == [issuing, root]
    assert keylib.spki_der(leaf.public_key()) == keylib.spki_der(key.public_key())
    assert keylib.certificate_emails(leaf) == ["carol@acme.example"]
    verify_with_openssl(
        tmp_path,
        leaf.public_bytes(Encoding.PEM),
        issuing.public_bytes(Encoding.PEM),
        root.public_bytes(Encoding.PEM),
    )

    # der: the certificate alone
    r = api.get("reader", f"{V1}/certificates/{body['id']}/certificate", params={"format": "der"})
    assert r.headers["content-type"] == "application/pkix-cert"
    assert r.content == leaf.public_bytes(Encoding.DER) == row.der
    fp = openssl("x509", "-inform", "DER", "-noout", "-fingerprint", "-sha256", data=r.content)
    assert fp.split("=", 1)[1].strip().replace(":", "").lower() == body["sha256"]

    # pkcs7: all three, DER
    r = api.get("reader", f"{V1}/certificates/{body['id']}/certificate", params={"format": "pkcs7"})
    assert r.headers["content-type"] == "application/pkcs7-mime"
    assert r.headers["content-disposition"] == f'attachment; filename="{body["id"]}.p7c"'
    printed = openssl("pkcs7", "-inform", "DER", "-print_certs", data=r.content)
    assert set(pem_certs(printed.encode())) == {leaf, issuing, root}

    [event] = enroll_events(api.ports, "success")
    assert event["target"] == str(body["id"]) and event["actor"].startswith("admin:keys")
    assert event["profile"] == "smime" and event["ca_id"] == ca_id and event["channel"] == "api"
    assert event["spki_sha256"] == keylib.spki_sha256(key.public_key()).hex()
    [mail] = [m for m in mails(api.ports) if m.to_addr == "carol@acme.example"]
    assert "no copy of it is kept" in mail.body and row.serial in mail.body


def test_enroll_for_a_person_and_their_secondary_address(api_ca: ApiWorld) -> None:
    api = api_ca
    with api.ports.db.transaction() as s:
        s.get_one(Person, api.sam.person_id).secondary_emails = "samuel@acme.example"
    r = api.post(
        "sales",
        f"{V1}/certificates/enroll",
        json={
            "csr": csr_pem(new_key("ec384")),
            "profile": "smime-signing",  # never escrowed: fine, a CSR brings no key
            "email": "samuel@acme.example",
            "person_id": api.sam.person_id,
            "organization_id": api.orgs["sales"],
            "common_name": "Sam Sales",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["person_id"] == api.sam.person_id
    assert body["organization_id"] == api.orgs["sales"]
    assert body["subject"] == "CN=Sam Sales" and body["emails"] == ["samuel@acme.example"]
    assert certificate_row(api.ports, body["id"]).profile == "smime-signing"


def refused(api: ApiWorld, token: str, status: int, code: str, **fields: Any) -> str:
    body = {"csr": csr_pem(new_key("ec256")), "profile": "smime", "email": "dave@acme.example"}
    before = counts(api.ports)
    r = api.post(token, f"{V1}/certificates/enroll", json=body | fields)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code
    assert counts(api.ports) == before  # no certificate, no person, no key, no mail
    assert enroll_events(api.ports, "refused")[-1]["reason"] == code
    return str(r.json()["description"])


@pytest.fixture
def restricted_profile(monkeypatch: pytest.MonkeyPatch) -> str:
    """A profile that takes EC P-256 keys only (the shipped ones take every key type)."""
    profile = Profile(
        name="ec-only",
        purpose="test",
        validity_days=30,
        allowed_key_types=frozenset({KeyType.EC256}),
        escrow=False,
        extended_key_usages=PROFILES["smime"].extended_key_usages,
        signing=True,
        encryption=False,
    )
    monkeypatch.setitem(PROFILES, profile.name, profile)
    return profile.name


def test_bad_requests_change_nothing(api_ca: ApiWorld, restricted_profile: str) -> None:
    api = api_ca
    tampered = bytearray(
        build_csr(pool_key("rsa2048-2"), "x@acme.example").public_bytes(Encoding.DER)
    )
    tampered[-1] ^= 0x01  # the last byte of the signature
    refused(api, "keys", 422, "csr_invalid", csr=base64.b64encode(bytes(tampered)).decode())
    refused(api, "keys", 422, "csr_invalid", csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
    refused(api, "keys", 422, "csr_invalid", csr="not base64 at all!")
    refused(api, "keys", 422, "csr_unsupported_key", csr=csr_pem(new_key("ec521")))
    refused(api, "keys", 422, "csr_unsupported_key", csr=csr_pem(new_key("ed25519")))
    refused(
        api,
        "keys",
        422,
        "key_type_not_allowed",
        csr=csr_pem(pool_key("rsa2048-1")),
        profile=restricted_profile,
    )
    refused(api, "keys", 422, "invalid_input", profile="no-such-profile")
    refused(api, "keys", 422, "invalid_input", email="not-an-address")
    # Another person's address, for alice or for nobody in particular.
    refused(api, "keys", 422, "person_mismatch", person_id=api.alice.person_id, email=api.sam.email)
    refused(
        api,
        "keys",
        422,
        "organization_mismatch",
        email=api.alice.email,
        organization_id=api.orgs["sales"],
    )
    r = api.post("keys", f"{V1}/certificates/enroll", json={"csr": "x", "profile": "smime"})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"
    # A path of its own, not a certificate id "enroll".
    r = api.get("keys", f"{V1}/certificates/enroll")
    assert (r.status_code, r.headers["Allow"]) == (405, "POST")
    assert r.json()["code"] == "method_not_allowed"


# Keys no certificate may carry (S/MIME BR 6.1.5, 6.1.6): the rule each breaks, as its code.
# cryptography does not load an even exponent or a curve of its own at all: unreadable keys.
KEYS_OUTSIDE_THE_RULES = {
    "e=3": (lambda: csr_der(pool_key("rsa2048-e3")), "rsa_exponent_not_allowed"),
    "a 2,041-bit e": (
        lambda: csr_der(rsa_key_with_exponent(2**2040 + 1)),
        "rsa_exponent_not_allowed",
    ),
    "an even e": (
        lambda: csr_with_spki(
            csr_der(pool_key("rsa2048-2")),
            rsa_spki(pool_key("rsa2048-2").public_key().public_numbers().n, 65538),
        ),
        "csr_unsupported_key",
    ),
    "RSA-1024": (lambda: csr_der(small_rsa_key()), "rsa_modulus_not_allowed"),
    "secp256k1": (lambda: csr_der(ec.generate_private_key(ec.SECP256K1())), "ec_curve_not_allowed"),
    "explicit parameters of a curve of its own": (
        lambda: csr_with_spki(explicit_p256_csr(), custom_curve_spki(explicit_p256_csr())),
        "csr_unsupported_key",
    ),
}


# What each refusal's description names: the rule, never the key.
RULE_WORDS = {
    "rsa_exponent_not_allowed": "exponent must be odd and from 2^16+1 to 2^256-1",
    "rsa_modulus_not_allowed": "2048 to 8192 bits, a multiple of 8",
    "ec_curve_not_allowed": "named curves P-256, P-384 or P-521",
    "csr_unsupported_key": "public key cannot be read",
}


def test_keys_outside_the_baseline_requirements_are_refused(api_ca: ApiWorld) -> None:
    api = api_ca
    for label, (make, code) in KEYS_OUTSIDE_THE_RULES.items():
        data = base64.b64encode(make()).decode()
        description = refused(api, "keys", 422, code, csr=data)
        assert RULE_WORDS[code] in description, label
        assert data[60:100] not in description, label
    # The same key as the 2,041-bit e, with e = 65537, is certified.
    r = api.post(
        "keys",
        f"{V1}/certificates/enroll",
        json={"csr": csr_pem(pool_key("rsa2048-2")), "profile": "smime", "email": "d@acme.example"},
    )
    assert r.status_code == 201, r.text


def test_explicit_p256_parameters_are_certified_under_the_curve_s_name(api_ca: ApiWorld) -> None:
    api = api_ca
    data = explicit_p256_csr()
    r = api.post(
        "keys",
        f"{V1}/certificates/enroll",
        json={
            "csr": base64.b64encode(data).decode(),
            "profile": "smime",
            "email": "e@acme.example",
        },
    )
    assert r.status_code == 201, r.text
    leaf = x509.load_der_x509_certificate(certificate_row(api.ports, r.json()["id"]).der)
    text = openssl(
        "x509", "-inform", "DER", "-noout", "-text", data=leaf.public_bytes(Encoding.DER)
    )
    assert "ASN1 OID: prime256v1" in text and "Field Type: prime-field" not in text


def test_tenants_privileges_and_scopes(api_ca: ApiWorld) -> None:
    api = api_ca
    # Another account's person or organization answers like a missing one.
    refused(api, "foreign", 404, "not_found", person_id=api.alice.person_id)
    refused(api, "foreign", 404, "not_found", organization_id=api.orgs["default"])
    refused(api, "keys", 404, "not_found", person_id=999_999)
    # An organization administrator does not see the default organization.
    refused(api, "sales", 404, "not_found", person_id=api.alice.person_id, email=api.alice.email)
    refused(api, "sales", 404, "not_found")
    # Visible, but without the privilege or the token scope.
    refused(api, "reader", 403, "forbidden")
    refused(api, "keys_read", 403, "insufficient_scope")
    # The other account has no CA.
    refused(api, "foreign", 409, "no_issuing_ca", email="fay@other.example")

    r = api.post(
        "keys",
        f"{V1}/certificates/enroll",
        json={"csr": csr_pem(new_key("ec256")), "profile": "smime", "email": api.alice.email},
    )
    assert r.status_code == 201, r.text
    cert_id = r.json()["id"]
    assert api.get("foreign", f"{V1}/certificates/{cert_id}/certificate").status_code == 404
    r = api.get("sales", f"{V1}/certificates/{cert_id}/certificate")
    assert r.status_code == 404
    assert api.get("keys", f"{V1}/certificates/{cert_id}/certificate").status_code == 200
    r = api.get("keys", f"{V1}/certificates/{cert_id}/certificate", params={"format": "p12"})
    assert r.status_code == 422


def test_an_imported_certificate_without_chain_collects_alone(api_ca: ApiWorld) -> None:
    api = api_ca
    cert_id = api.alice.cert_ids[1]  # imported from a p12 without chain
    r = api.get("keys", f"{V1}/certificates/{cert_id}/certificate")
    assert pem_certs(r.content) == [api.alice.certs[1]]


def test_issuer_failure_rolls_everything_back(api_ca: ApiWorld) -> None:
    """The person certvault creates and the certificate are one transaction with the issuing."""
    api = api_ca

    class Broken(CertvaultError):
        code = "issuer_down"
        status = 503

    class FailingIssuer:
        def issue(self, session: Any, account: Any, request: IssueRequest) -> Issued:
            raise Broken("The CA is not answering.")

    before = counts(api.ports)
    actor = Actor.operator("operator:test@localhost")
    with pytest.raises(Broken):
        csr_enrollment.enroll_csr(
            api.ports,
            actor,
            "acme",
            csr_pem_or_der=csr_pem(new_key("ec256")).encode(),
            profile="smime",
            email="erin@acme.example",
            issuer=FailingIssuer(),
        )
    assert counts(api.ports) == before
    assert enroll_events(api.ports, "refused")[-1]["reason"] == "issuer_down"


# --- the SCM-compatible API -----------------------------------------------------------------------


@pytest.fixture
def scm_ca(scm: ScmWorld, operator: Actor) -> ScmWorld:
    init_ca(scm.ports, operator, "acme")
    return scm


def scm_enroll(scm: ScmWorld, mode: str, version: str = "v1", **fields: Any) -> Any:
    body = {
        "orgId": scm.default_org,
        "csr": csr_pem(new_key("ec256")),
        "certType": "smime",
        "term": None,
        "email": "gina@acme.example",
        "phone": None,
        "secondaryEmails": None,
        "firstName": "Gina",
        "middleName": None,
        "lastName": "Lovelace",
        "commonName": None,
        "eppn": None,
        "upn": None,
        "customFields": [{"name": "dept", "value": "R&D"}],
        "comments": "for the new laptop",
        **fields,
    }
    return scm.client.post(f"/api/smime/{version}/enroll", json=body, headers=scm.auth(mode))


def scm_error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"code", "description"} and body["code"] == -status
    return str(body["description"])


@pytest.mark.parametrize("kind", ["ec256", "rsa2048"])
def test_scm_enroll_and_collect_every_format(scm_ca: ScmWorld, kind: str, tmp_path: Path) -> None:
    scm = scm_ca
    key = new_key("ec256") if kind == "ec256" else pool_key("rsa2048-3")
    mode, version, cert_type = (
        ("headers", "v1", "smime") if kind == "ec256" else ("bearer", "v2", 1)
    )
    before = counts(scm.ports)
    r = scm_enroll(
        scm,
        mode,
        version,
        csr=csr_pem(key),
        certType=cert_type,
        term=30,
        secondaryEmails=["g.lovelace@acme.example"],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    cert_id = body["orderNumber"]
    assert body == {"orderNumber": cert_id, "backendCertId": str(cert_id)}
    after = counts(scm.ports)
    assert after["keys"] == before["keys"] and after["certs"] == before["certs"] + 1

    row = certificate_row(scm.ports, cert_id)
    assert row.profile == "smime" and row.source == "csr" and row.escrowed_key_id is None
    assert row.emails.split() == ["gina@acme.example", "g.lovelace@acme.example"]
    # term: 30 days (less the clock-skew allowance before now)
    assert dt.timedelta(days=30) <= row.not_after - row.not_before <= dt.timedelta(days=31)
    with scm.ports.db.read() as s:
        person = s.get_one(Person, row.person_id)
    assert (person.first_name, person.last_name) == ("Gina", "Lovelace")
    assert person.secondary_emails == "g.lovelace@acme.example"
    [event] = enroll_events(scm.ports, "success")
    assert event["channel"] == "scm" and event["comment"] == "for the new laptop"
    assert event["validity_days"] == 30

    _, issuing, root = issuing_ca(scm.ports)
    leaf = x509.load_der_x509_certificate(row.der)
    assert keylib.spki_der(leaf.public_key()) == keylib.spki_der(key.public_key())

    def collect(fmt: str | None) -> bytes:
        params = {"format": fmt} if fmt else {}
        r = scm.client.get(
            f"/api/smime/{version}/collect/{cert_id}", params=params, headers=scm.auth(mode)
        )
        assert r.status_code == 200, (fmt, r.text)
        return r.content

    orders = {
        "x509": [root, issuing, leaf],
        "pem": [root, issuing, leaf],
        "x509R": [leaf, issuing, root],
        "x509CO": [leaf],
        "pemco": [leaf],
        "pemia": [leaf, issuing],
        "x509IO": [root, issuing],
        "x509IOR": [issuing, root],
    }
    for fmt, expected in orders.items():
        assert pem_certs(collect(fmt)) == expected, fmt
    # The default and `base64`: PKCS#7, PEM; `bin`: the same, DER. openssl reads both.
    assert collect(None) == collect("base64")
    printed = openssl("pkcs7", "-print_certs", data=collect("base64"))
    assert set(pem_certs(printed.encode())) == {leaf, issuing, root}
    printed = openssl("pkcs7", "-inform", "DER", "-print_certs", data=collect("bin"))
    assert set(pem_certs(printed.encode())) == {leaf, issuing, root}
    verify_with_openssl(tmp_path, collect("x509CO"), collect("pemia"), collect("x509IO"))
    subject = openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", data=collect("pemco"))
    assert subject.strip() == "subject=CN=gina@acme.example"

    scm_error(
        scm.client.get(
            f"/api/smime/v1/collect/{cert_id}", params={"format": "pkcs12"}, headers=scm.auth(mode)
        ),
        422,
    )


def test_scm_refusals(scm_ca: ScmWorld) -> None:
    scm = scm_ca
    before = counts(scm.ports)
    assert "certType" in scm_error(scm_enroll(scm, "headers", certType=99), 422)
    assert "profile" in scm_error(scm_enroll(scm, "headers", certType="no-such-type"), 422)
    assert "365 days" in scm_error(scm_enroll(scm, "headers", term=366), 422)
    scm_error(scm_enroll(scm, "headers", csr="garbage"), 422)
    scm_error(scm_enroll(scm, "headers", csr=csr_pem(new_key("ec521"))), 422)
    # olga's address is hers, in another account: here it is simply a new person's. Her
    # organization id is foreign.
    with scm.ports.db.read() as s:
        foreign_org = s.get_one(Person, scm.olga.person_id).organization_id
    scm_error(scm_enroll(scm, "headers", orgId=foreign_org), 404)
    scm_error(scm_enroll(scm, "bearer", orgId=foreign_org), 404)
    scm_error(
        scm.client.get(f"/api/smime/v1/collect/{scm.olga.cert_id}", headers=scm.auth("headers")),
        404,
    )
    assert counts(scm.ports) == before
    reasons = [e["reason"] for e in enroll_events(scm.ports, "refused")]
    # An unknown certType id is refused by the SCM adapter, like a malformed body: before the
    # service, so not in the audit log; everything past the body's shape is.
    assert reasons == [
        "invalid_input",
        "invalid_term",
        "csr_invalid",
        "csr_unsupported_key",
        "not_found",
        "not_found",
    ]


def test_scm_refuses_keys_outside_the_baseline_requirements(scm_ca: ScmWorld) -> None:
    scm = scm_ca
    before = counts(scm.ports)
    for label, (make, code) in KEYS_OUTSIDE_THE_RULES.items():
        description = scm_error(
            scm_enroll(scm, "bearer", csr=base64.b64encode(make()).decode()), 422
        )
        assert RULE_WORDS[code] in description, label
    assert counts(scm.ports) == before
    reasons = [e["reason"] for e in enroll_events(scm.ports, "refused")]
    assert reasons == [code for _, code in KEYS_OUTSIDE_THE_RULES.values()]


def test_scm_person_mismatch_and_missing_privilege(scm_ca: ScmWorld, operator: Actor) -> None:
    scm = scm_ca
    admins.create_admin(
        scm.ports, operator, "acme", "viewer", api_only=True, password="viewer-password-0123456789"
    )
    r = scm_enroll(scm, "headers")
    assert r.status_code == 200, r.text
    before = counts(scm.ports)
    # hank's certificate may not name gina's address.
    scm_error(
        scm_enroll(
            scm, "headers", email="hank@acme.example", secondaryEmails=["gina@acme.example"]
        ),
        422,
    )
    viewer = scm.header_auth("viewer", "viewer-password-0123456789")
    body = {"csr": csr_pem(new_key("ec256")), "certType": 1, "email": "ivy@acme.example"}
    scm_error(scm.client.post("/api/smime/v1/enroll", json=body, headers=viewer), 403)
    assert counts(scm.ports) == before
    assert [e["reason"] for e in enroll_events(scm.ports, "refused")] == [
        "person_mismatch",
        "forbidden",
    ]


def test_names_given_with_a_csr_name_the_person_and_the_certificate(api_ca: ApiWorld) -> None:
    api = api_ca
    body = {"csr": csr_pem(new_key("ec256")), "profile": "smime", "email": "dave@acme.example"}
    made = api.post(
        "keys",
        f"{V1}/certificates/enroll",
        json=body | {"first_name": "Dave", "last_name": "Bowman"},
    )
    assert made.status_code == 201, made.text
    assert made.json()["subject"] == "CN=Dave Bowman"
    with api.ports.db.read() as s:
        dave = s.scalars(select(Person).where(Person.email == "dave@acme.example")).one()
        assert (dave.first_name, dave.last_name) == ("Dave", "Bowman")
        sam = s.get_one(Person, api.sam.person_id)
        sam_names = (sam.first_name, sam.last_name)
    # An existing person's names stay; an empty one is filled; common_name still wins.
    again = api.post(
        "keys",
        f"{V1}/certificates/enroll",
        json=body | {"email": "sam@acme.example", "first_name": "X", "last_name": "Y"},
    )
    assert again.status_code == 201, again.text
    expected = tuple(old or new for old, new in zip(sam_names, ("X", "Y"), strict=True))
    assert again.json()["subject"] == f"CN={' '.join(expected)}"
    with api.ports.db.read() as s:
        sam = s.get_one(Person, api.sam.person_id)
        assert (sam.first_name, sam.last_name) == expected
    chosen = api.post(
        "keys",
        f"{V1}/certificates/enroll",
        json=body | {"common_name": "Dr Bowman", "first_name": "Dave", "last_name": "Bowman"},
    )
    assert chosen.status_code == 201 and chosen.json()["subject"] == "CN=Dr Bowman"
    # Names over a CN's length, or with invisible formatting characters, change nothing.
    refused(api, "keys", 422, "name_invalid", first_name="D" * 40, last_name="B" * 40)
    refused(api, "keys", 422, "name_invalid", first_name="\u202eevaD", last_name="Bowman")
