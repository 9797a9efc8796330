"""The SCM-compatible endpoints, driven as an existing script would: paths, bodies, header
credentials or a bearer token, SCM error forms; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import NoEncryption, pkcs12
from sqlalchemy import select

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.db.models import Admin, AuditEvent, Certificate
from certvault.services.access import tokens
from certvault.services.kernel.ratelimit import Limit
from certvault.services.vault.release import RELEASE
from certvault.web.compat.smime import revocation_reason
from tests.conftest import make_settings
from tests.factories import make_cert, new_key
from tests.functional.compat_fixtures import (  # noqa: F401 - scm_world is the fixture scm
    P12_PASSWORD,
    PASSWORD,
    ScmWorld,
    b64,
    scm_world,
)
from tests.functional.helpers import counts, events

PASSPHRASE = "download-passphrase-42"
CANARY = "canary-Zq8xV3-secret"
AUTH_MODES = ["headers", "bearer"]


@pytest.fixture
def settings(tmp_path, database_url):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path / "home",
        database_url,
        logins_per_minute_login=3,
        downloads_per_hour_admin=5,
        downloads_per_hour_token=5,
        downloads_per_hour_ip=5,
    )


def scm_error(response, status: int) -> str:  # type: ignore[no-untyped-def]
    """Assert the SCM error form; return the description."""
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert set(body) == {"code", "description"} and body["code"] == -status
    return str(body["description"])


def create_person(scm: ScmWorld, auth: dict[str, str], email: str, **fields) -> int:  # type: ignore[no-untyped-def]
    body = {
        "firstName": "Alice",
        "middleName": None,
        "lastName": "Liddell",
        "email": email,
        "organizationId": scm.default_org,
        "validationType": "STANDARD",
        "phone": None,
        "secondaryEmails": None,
        "commonName": None,
        "eppn": None,
        "upn": None,
        **fields,
    }
    r = scm.client.post("/api/person/v1", json=body, headers=auth)
    assert r.status_code == 201, r.text
    assert r.content == b""
    location = r.headers["Location"]
    assert location.startswith("http://testserver/api/person/v1/")
    return int(location.rsplit("/", 1)[-1])


def der(key) -> bytes:  # type: ignore[no-untyped-def]
    return keylib.to_pkcs8_der(key)


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_scm_script_flow(scm: ScmWorld, mode: str) -> None:
    auth = scm.auth(mode)
    c = scm.client

    orgs = c.get("/api/organization/v1", headers=auth)
    assert orgs.status_code == 200
    assert {"id": scm.default_org, "name": "Acme Corp", "departments": []} in orgs.json()

    person_id = create_person(scm, auth, "alice@acme.example")
    found = c.get(f"/api/person/v1/id/byEmail/{quote('Alice@acme.example')}", headers=auth)
    assert found.json() == {"personId": person_id}
    person = c.get(f"/api/person/v2/{person_id}", headers=auth).json()
    assert person == {
        "personId": person_id,
        "id": person_id,
        "firstName": "Alice",
        "middleName": "",
        "lastName": "Liddell",
        "email": "alice@acme.example",
        "organizationId": scm.default_org,
        "validationType": "STANDARD",
        "phone": "",
        "secondaryEmails": [],
        "commonName": "",
        "eppn": "",
        "upn": "",
    }
    listed = c.get("/api/person/v1", params={"email": "alice@acme.example"}, headers=auth)
    assert [p["personId"] for p in listed.json()] == [person_id]

    # Upload: imported once, then "Already exists" for the same file.
    key, cert, p12 = scm.p12_for("alice@acme.example")
    upload = {"p12": b64(p12), "password": P12_PASSWORD, "customFields": None}
    r = c.post(f"/api/person/v2/{person_id}/import-key", json=upload, headers=auth)
    assert r.status_code == 200, r.text
    [entry] = r.json()["entries"]
    cert_id = entry["clientCertId"]
    assert entry == {
        "alias": "alias",
        "clientCertId": cert_id,
        "md5": cert.fingerprint(hashes.MD5()).hex(),
        "sha1": cert.fingerprint(hashes.SHA1()).hex(),
        "message": "Imported successfully",
    }
    again = c.post(f"/api/person/v1/{person_id}/import-key", json=upload, headers=auth)
    assert again.json()["entries"][0]["message"] == "Already exists"
    assert again.json()["entries"][0]["clientCertId"] == cert_id

    # The list with the Key Vault filter, its count, and the list by the person's email.
    query = {"keyVault": "true", "personId": person_id, "size": 10, "position": 0}
    [item] = c.get("/api/smime/v2", params=query, headers=auth).json()
    assert item["id"] == cert_id and item["orderNumber"] == cert_id
    assert item["backendCertId"] == str(cert_id) and item["state"] == "issued"
    serial = format(cert.serial_number, "X")
    assert item["serialNumber"] == serial.zfill(len(serial) + len(serial) % 2)
    assert item["expires"] == cert.not_valid_after_utc.date().isoformat()
    assert item["certificateDetails"] == {
        "issuer": cert.issuer.rfc4514_string(),
        "subject": cert.subject.rfc4514_string(),
        "subjectAltNames": "rfc822Name=alice@acme.example",
        "md5Hash": entry["md5"],
        "sha1Hash": entry["sha1"],
    }
    assert c.get("/api/smime/v1", params=query, headers=auth).json() == [item]
    head = c.head("/api/smime/v2", params={"keyVault": "true"}, headers=auth)
    assert head.status_code == 200 and head.headers["X-Total-Count"] == "1"  # not olga's
    assert c.head("/api/smime/v1", params=query, headers=auth).headers["X-Total-Count"] == "1"
    no_key = {"keyVault": "false", "personId": person_id}
    assert c.get("/api/smime/v2", params=no_key, headers=auth).json() == []
    assert c.head("/api/smime/v2", params=no_key, headers=auth).headers["X-Total-Count"] == "0"
    by_email = c.get("/api/smime/v1/byPersonEmail/alice@acme.example", headers=auth)
    assert [i["id"] for i in by_email.json()] == [cert_id]

    # Download with each encryption type (and the default, sent as null).
    for path, encryption in [
        ("/api/smime/v2/keystore", "AES256-SHA256"),
        ("/api/smime/v2/keystore", "TripleDES-SHA1"),
        ("/api/smime/v1/keystore", None),
    ]:
        body = {"passphrase": PASSPHRASE, "encryptionType": encryption}
        r = c.post(f"{path}/{cert_id}", json=body, headers=auth)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"] == 'attachment; filename="key_vault.p12"'
        assert r.headers["cache-control"] == "no-store"
        assert int(r.headers["content-length"]) == len(r.content)
        [back] = read_pkcs12(r.content, PASSPHRASE).entries
        assert der(back.key) == der(key) and back.certificate == cert
    released = [e for e in events(scm.ports, RELEASE) if e.outcome == "success"]
    assert [json.loads(e.details)["encryption"] for e in released] == [
        "AES256-SHA256",
        "TripleDES-SHA1",
        "AES256-SHA256",
    ]
    assert all(json.loads(e.details)["channel"] == "scm" for e in released)

    # Update: nulls leave fields as they are.
    update = {"firstName": "Alicia", "lastName": None, "email": None, "organizationId": None}
    r = c.put(f"/api/person/v1/{person_id}", json=update, headers=auth)
    assert r.status_code == 200 and r.content == b""
    person = c.get(f"/api/person/v1/{person_id}", headers=auth).json()
    assert (person["firstName"], person["lastName"]) == ("Alicia", "Liddell")

    # Revoke with SCM's free-text reason; the key stays in the vault.
    r = c.post(f"/api/smime/v1/revoke/{cert_id}", json={"reason": "Left the company"}, headers=auth)
    assert r.status_code == 204
    [revoked] = events(scm.ports, "certificate.revoke")
    assert json.loads(revoked.details) == {
        "reason": "unspecified",
        "serial": format(cert.serial_number, "x"),
        "comment": "Left the company",
    }
    [item] = c.get("/api/smime/v2", params=query, headers=auth).json()
    assert item["state"] == "revoked"
    scm_error(c.post(f"/api/smime/v2/revoke/order/{cert_id}", json={}, headers=auth), 409)

    # A person with certificates is kept; one without is deleted.
    scm_error(c.delete(f"/api/person/v2/{person_id}", headers=auth), 409)
    bob = create_person(scm, auth, "bob@acme.example", firstName="Bob")
    assert c.delete(f"/api/person/v1/{bob}", headers=auth).status_code == 200
    scm_error(c.get(f"/api/person/v1/{bob}", headers=auth), 404)
    scm_error(c.get("/api/person/v1/id/byEmail/bob@acme.example", headers=auth), 404)


def upload(scm: ScmWorld, auth: dict[str, str], email: str):  # type: ignore[no-untyped-def]
    """A person with one escrowed key, through the SCM paths: (person id, certificate id, key)."""
    person_id = create_person(scm, auth, email)
    key, _, p12 = scm.p12_for(email)
    r = scm.client.post(
        f"/api/person/v2/{person_id}/import-key",
        json={"p12": b64(p12), "password": P12_PASSWORD},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    return person_id, r.json()["entries"][0]["clientCertId"], key


def refused(scm: ScmWorld, action: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(e.details) for e in events(scm.ports, action) if e.outcome == "refused"]


# --- authentication -------------------------------------------------------------------------


def test_header_auth_is_refused_for_a_console_administrator(scm: ScmWorld) -> None:
    r = scm.client.get("/api/person/v1", headers=ScmWorld.header_auth("human", PASSWORD))
    scm_error(r, 401)
    assert r.headers["WWW-Authenticate"]
    assert refused(scm, "auth.login") == [{"method": "header", "reason": "unauthenticated"}]
    # Half a credential is no credential.
    scm_error(scm.client.get("/api/person/v1", headers={"login": "robot"}), 401)
    scm_error(scm.client.get("/api/person/v1", headers={"password": PASSWORD}), 401)


def test_header_auth_holds_to_the_ip_allow_list(scm: ScmWorld) -> None:
    with scm.ports.db.transaction() as s:
        s.get_one(Admin, scm.robot_id).allowed_ips = "198.51.100.0/24 2001:db8::/32"
    auth = scm.auth("headers")
    scm_error(scm.client.get("/api/organization/v1", headers=auth), 401)  # from 192.0.2.10
    with scm.client_from("198.51.100.7") as inside:
        assert inside.get("/api/organization/v1", headers=auth).status_code == 200
    # The bearer token is not bound to the allow-list of header credentials.
    assert scm.client.get("/api/organization/v1", headers=scm.auth("bearer")).status_code == 200


def test_wrong_passwords_are_rate_limited(scm: ScmWorld) -> None:
    wrong = ScmWorld.header_auth("robot", CANARY)
    for _ in range(3):  # logins_per_minute_login=3
        r = scm.client.get("/api/person/v1", headers=wrong)
        scm_error(r, 401)
        assert CANARY not in r.text
    limited = scm.client.get("/api/person/v1", headers=wrong)
    scm_error(limited, 429)
    assert int(limited.headers["Retry-After"]) >= 1
    # Limited before any password check: the right password waits as well.
    scm_error(scm.client.get("/api/person/v1", headers=scm.auth("headers")), 429)
    assert scm.client.get("/api/person/v1", headers=scm.auth("bearer")).status_code == 200


@pytest.mark.parametrize("counter", ["admin", "token", "ip"])
def test_downloads_share_the_rate_limit_counters_of_the_own_api(
    scm: ScmWorld, counter: str
) -> None:
    auth = scm.auth("bearer")
    _, cert_id, _ = upload(scm, auth, "alice@acme.example")
    key = {
        "admin": f"dl-admin:{scm.robot_id}",
        "token": f"dl-token:{scm.token_id}",
        "ip": "dl-ip:192.0.2.10",
    }[counter]
    for _ in range(5):  # downloads_per_hour_* = 5: as if made through /api/v1
        assert scm.limiter.hit(Limit(key, 5, 3600)).allowed
    r = scm.client.post(
        f"/api/smime/v2/keystore/{cert_id}", json={"passphrase": PASSPHRASE}, headers=auth
    )
    scm_error(r, 429)
    assert int(r.headers["Retry-After"]) >= 1
    assert [e for e in events(scm.ports, RELEASE) if e.outcome == "success"] == []


def test_token_scopes_hold_on_scm_paths(scm: ScmWorld, operator) -> None:  # type: ignore[no-untyped-def]
    _, cert_id, _ = upload(scm, scm.auth("bearer"), "alice@acme.example")
    reader = {
        "Authorization": "Bearer "
        + tokens.create_token(scm.ports, operator, "acme", "robot", scopes=["read"]).token
    }
    assert len(scm.client.get("/api/smime/v2", headers=reader).json()) == 1
    r = scm.client.post(
        f"/api/smime/v2/keystore/{cert_id}", json={"passphrase": PASSPHRASE}, headers=reader
    )
    scm_error(r, 403)
    _, _, p12 = scm.p12_for("alice@acme.example")
    person_id = scm.client.get("/api/person/v1/id/byEmail/alice@acme.example", headers=reader)
    r = scm.client.post(
        f"/api/person/v2/{person_id.json()['personId']}/import-key",
        json={"p12": b64(p12), "password": P12_PASSWORD},
        headers=reader,
    )
    scm_error(r, 403)
    scm_error(
        scm.client.post("/api/person/v1", json={"email": "x@acme.example"}, headers=reader), 403
    )
    assert [d["reason"] for d in refused(scm, RELEASE)] == ["insufficient_scope"]


def test_refused_keystore_calls_use_up_no_quota(scm: ScmWorld, operator) -> None:  # type: ignore[no-untyped-def]
    bearer = scm.auth("bearer")
    _, cert_id, _ = upload(scm, bearer, "alice@acme.example")
    reader = {
        "Authorization": "Bearer "
        + tokens.create_token(scm.ports, operator, "acme", "robot", scopes=["read"]).token
    }
    path = f"/api/smime/v2/keystore/{cert_id}"
    for _ in range(12):  # downloads_per_hour_* = 5
        scm_error(scm.client.post(path, json={"passphrase": PASSPHRASE}, headers=reader), 403)
        scm_error(scm.client.post(path, json={"passphrase": "short"}, headers=bearer), 422)
    downloads = [
        scm.client.post(path, json={"passphrase": PASSPHRASE}, headers=bearer).status_code
        for _ in range(6)
    ]
    assert downloads == [200] * 5 + [429]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_nulls_are_accepted_in_optional_fields(scm: ScmWorld, mode: str) -> None:
    auth = scm.auth(mode)
    person_id = create_person(scm, auth, "nora@acme.example", organizationId=None, firstName=None)
    key = new_key("ec256")
    cert = make_cert(key, "nora@acme.example", issuer=scm.ca)
    unprotected = pkcs12.serialize_key_and_certificates(b"nora", key, cert, None, NoEncryption())
    r = scm.client.post(
        f"/api/person/v2/{person_id}/import-key",
        json={"p12": b64(unprotected, wrap=None), "password": None, "customFields": None},
        headers=auth,
    )
    assert r.json()["entries"][0]["message"] == "Imported successfully", r.text
    cert_id = r.json()["entries"][0]["clientCertId"]
    nulls = {
        f: None
        for f in (
            "firstName",
            "middleName",
            "lastName",
            "email",
            "organizationId",
            "validationType",
            "phone",
            "secondaryEmails",
            "commonName",
            "eppn",
            "upn",
        )
    }
    before = scm.client.get(f"/api/person/v1/{person_id}", headers=auth).json()
    assert before["organizationId"] == scm.default_org
    assert (
        scm.client.put(f"/api/person/v2/{person_id}", json=nulls, headers=auth).status_code == 200
    )
    assert scm.client.get(f"/api/person/v1/{person_id}", headers=auth).json() == before
    r = scm.client.post(
        f"/api/smime/v2/keystore/{cert_id}",
        json={"passphrase": PASSPHRASE, "encryptionType": None, "reason": None},
        headers=auth,
    )
    assert r.status_code == 200
    listed = scm.client.get(
        "/api/smime/v2", params={"keyVault": "true", "email": "nora@acme.example"}, headers=auth
    )
    assert [i["id"] for i in listed.json()] == [cert_id]
    r = scm.client.post(f"/api/smime/v2/revoke/{cert_id}", json={"reason": None}, headers=auth)
    assert r.status_code == 204
    [event] = events(scm.ports, "certificate.revoke")
    assert json.loads(event.details)["reason"] == "unspecified"


def test_a_certificate_of_another_person_is_refused(scm: ScmWorld) -> None:
    auth = scm.auth("headers")
    alice = create_person(scm, auth, "alice@acme.example")
    create_person(scm, auth, "bob@acme.example", firstName="Bob")
    _, _, p12 = scm.p12_for("bob@acme.example")
    before = counts(scm.ports)
    r = scm.client.post(
        f"/api/person/v2/{alice}/import-key",
        json={"p12": b64(p12), "password": P12_PASSWORD},
        headers=auth,
    )
    assert "person" in scm_error(r, 422)
    assert counts(scm.ports) == before
    assert [d["reason"] for d in refused(scm, "key.archive")] == ["person_mismatch"]


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_foreign_tenant_ids_answer_like_missing_ones(scm: ScmWorld, mode: str) -> None:
    auth = scm.auth(mode)
    olga = scm.olga
    key = new_key("ec256")
    cert = make_cert(key, "olga@other.example", issuer=scm.ca)
    olga_p12 = pkcs12.serialize_key_and_certificates(b"o", key, cert, None, NoEncryption())
    before = counts(scm.ports)
    calls = [
        ("GET", "/api/person/v1/{p}", None),
        ("PUT", "/api/person/v2/{p}", {"firstName": "Mallory"}),
        ("DELETE", "/api/person/v1/{p}", None),
        ("POST", "/api/person/v2/{p}/import-key", {"p12": b64(olga_p12), "password": None}),
        ("POST", "/api/smime/v2/keystore/{c}", {"passphrase": PASSPHRASE}),
        ("POST", "/api/smime/v1/keystore/{c}", {"passphrase": PASSPHRASE}),
        ("POST", "/api/smime/v1/revoke/{c}", {"reason": "keyCompromise"}),
        ("POST", "/api/smime/v2/revoke/order/{c}", {"reason": None}),
    ]
    for method, template, body in calls:
        foreign = scm.client.request(
            method,
            template.format(p=olga.person_id, c=olga.cert_id),
            json=body,
            headers=auth,
        )
        missing = scm.client.request(
            method, template.format(p=999_999, c=999_999), json=body, headers=auth
        )
        scm_error(foreign, 404)
        assert foreign.json() == missing.json(), template
    for path in (
        f"/api/smime/v2?personId={olga.person_id}",
        "/api/smime/v1?email=olga@other.example",
        "/api/smime/v2/byPersonEmail/olga@other.example",
        "/api/person/v1?email=olga@other.example",
    ):
        assert scm.client.get(path, headers=auth).json() == [], path
    scm_error(scm.client.get("/api/person/v1/id/byEmail/olga@other.example", headers=auth), 404)
    assert counts(scm.ports) == before
    with scm.ports.db.read() as s:
        assert s.get_one(Certificate, olga.cert_id).status == "issued"
    assert [d["reason"] for d in refused(scm, RELEASE)] == ["not_found"] * 4


def test_errors_never_echo_submitted_secrets(scm: ScmWorld, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    auth = scm.auth("headers")
    person_id, cert_id, _ = upload(scm, auth, "alice@acme.example")
    _, _, p12 = scm.p12_for("alice@acme.example")
    short = "Zq8x!"
    imp = f"/api/person/v2/{person_id}/import-key"
    ks = f"/api/smime/v2/keystore/{cert_id}"
    cases = [
        (imp, {"p12": CANARY, "password": CANARY}, 422),
        (imp, {"p12": b64(p12), "password": CANARY}, 422),
        (imp, {"p12": [CANARY], "password": CANARY}, 422),
        (imp, {"p12": b64(p12), "password": {"x": CANARY}}, 422),
        (imp, {"p12": b64(p12), "password": CANARY * 100}, 422),
        (ks, {"passphrase": [CANARY]}, 422),
        (ks, {"passphrase": CANARY, "encryptionType": CANARY}, 422),
        (ks, {"passphrase": short}, 422),
        (ks, {"encryptionType": "AES256-SHA256", "reason": CANARY}, 422),
        ("/api/person/v1", {"email": CANARY, "firstName": CANARY}, 422),
        ("/api/person/v1", {"email": "x@acme.example", "validationType": CANARY}, 422),
        ("/api/person/v1", {"email": "x@acme.example", "phone": CANARY + "\x00"}, 422),
        (f"/api/smime/v1/revoke/{cert_id}", {"reason": CANARY * 40}, 422),
    ]
    for path, body, status in cases:
        r = scm.client.post(path, json=body, headers=auth)
        scm_error(r, status)
        assert CANARY not in r.text and short not in r.text, (path, r.text)
    truncated = b'{"passphrase": "' + CANARY.encode()
    r = scm.client.post(ks, content=truncated, headers={**auth, "content-type": "application/json"})
    assert scm_error(r, 422) == "the body is not valid JSON" and CANARY not in r.text
    r = scm.client.get("/api/person/v1", headers=ScmWorld.header_auth("robot", CANARY))
    scm_error(r, 401)
    assert CANARY not in r.text
    assert CANARY not in caplog.text and short not in caplog.text
    with scm.ports.db.read() as s:
        assert not any(CANARY in e.details for e in s.scalars(select(AuditEvent)))


def test_invalid_base64_and_bad_ids(scm: ScmWorld) -> None:
    auth = scm.auth("bearer")
    person_id = create_person(scm, auth, "alice@acme.example")
    before = counts(scm.ports)
    for p12 in ("not base64!!", "QUJD=x", "===="):
        r = scm.client.post(
            f"/api/person/v2/{person_id}/import-key", json={"p12": p12}, headers=auth
        )
        assert "base64" in scm_error(r, 422)
    r = scm.client.post(f"/api/person/v2/{person_id}/import-key", json={"p12": ""}, headers=auth)
    scm_error(r, 422)
    r = scm.client.post(
        f"/api/person/v2/{person_id}/import-key",
        json={"p12": b64(b"not a PKCS#12 file"), "password": "x"},
        headers=auth,
    )
    scm_error(r, 422)
    r = scm.client.post(
        f"/api/person/v2/{person_id}/import-key",
        content=b'{"p12": "' + b"A" * (1024 * 1024 + 1) + b'"}',
        headers={**auth, "content-type": "application/json"},
    )
    scm_error(r, 413)
    for path in (
        "/api/person/v1/abc",
        "/api/person/v1/0",
        f"/api/person/v1/{2**40}",
        f"/api/smime/v2?personId={2**63}",
        "/api/smime/v2?size=0",
        "/api/smime/v2?position=-1",
        "/api/person/v1/%00",
    ):
        scm_error(scm.client.get(path, headers=auth), 422)
    scm_error(scm.client.get("/api/smime/v2?state=pending", headers=auth), 422)
    scm_error(scm.client.get("/api/person/v1/id/byEmail/a%00b@acme.example", headers=auth), 422)
    scm_error(scm.client.get("/api/smime/v3", headers=auth), 404)
    assert counts(scm.ports) == before


def test_unsupported_encryption_type_is_refused_and_audited(scm: ScmWorld) -> None:
    auth = scm.auth("headers")
    _, cert_id, _ = upload(scm, auth, "alice@acme.example")
    mail_before = counts(scm.ports)["mail"]
    for kind in ("RC2-40", "AES128", ""):
        r = scm.client.post(
            f"/api/smime/v1/keystore/{cert_id}",
            json={"passphrase": PASSPHRASE, "encryptionType": kind},
            headers=auth,
        )
        assert "AES256-SHA256" in scm_error(r, 422)
    assert [d["reason"] for d in refused(scm, RELEASE)] == ["unsupported_encryption"] * 3
    assert [e for e in events(scm.ports, RELEASE) if e.outcome == "success"] == []
    assert counts(scm.ports)["mail"] == mail_before  # the owner is told of releases only


def test_free_text_revocation_reasons() -> None:
    assert revocation_reason("Key Compromise") == ("keyCompromise", None)
    assert revocation_reason("superseded") == ("superseded", None)
    assert revocation_reason("  ") == ("unspecified", None)
    assert revocation_reason(None) == ("unspecified", None)
    assert revocation_reason(" Laptop stolen ") == ("unspecified", "Laptop stolen")


def test_openapi_documents_the_scm_operations_and_header_credentials(scm: ScmWorld) -> None:
    spec = scm.client.get("/openapi.json").json()
    for path, method in [
        ("/api/person/v2/{personId}/import-key", "post"),
        ("/api/smime/v1/keystore/{certId}", "post"),
        ("/api/smime/v2", "head"),
        ("/api/person/v1/id/byEmail/{email}", "get"),
        ("/api/organization/v1", "get"),
    ]:
        operation = spec["paths"][path][method]
        headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        assert set(headers) == {"login", "password", "customerUri"}, path
        assert not any(p["required"] for p in headers.values())
        assert operation["security"] == [{"HTTPBearer": []}]
        assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ScmError"
        }
    assert spec["paths"]["/api/person/v1/{personId}/import-key"]["post"]["deprecated"] is True
    keystore = spec["paths"]["/api/smime/v2/keystore/{certId}"]["post"]["responses"]["200"]
    assert set(keystore["content"]) == {"application/octet-stream"}
