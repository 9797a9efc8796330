"""The own REST API under /api/v1, in process, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import plistlib
import zipfile

import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import pkcs12 as asn1_pkcs12
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import event, select

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.db.models import Account, AuditEvent, Certificate, RateLimitCounter
from certvault.services.kernel import notify
from certvault.services.pki import crl
from certvault.services.vault.archive import ALREADY_EXISTS, IMPORTED
from tests.factories import make_cert, make_p12, new_key
from tests.functional.api_fixtures import P12_PASSWORD, api_fixture  # noqa: F401 - `api`
from tests.functional.helpers import counts, events, mails

V1 = "/api/v1"
PASSPHRASE = "a-good-long-passphrase"
CANARY = "Zq7-canary-Zq7-secret"  # searched for (case-insensitively) in every 422 answer
NEEDLE = "canary"
MISSING = 999_999
OID_3DES = bytes.fromhex("060a2a864886f70d010c0103")  # pbeWithSHAAnd3-KeyTripleDES-CBC
OID_PBES2 = bytes.fromhex("06092a864886f70d01050d")  # PBES2


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pkcs8(key) -> bytes:  # type: ignore[no-untyped-def]
    return keylib.to_pkcs8_der(key)


def _download(api, name, cert_id, **body):  # type: ignore[no-untyped-def]
    body.setdefault("passphrase", PASSPHRASE)
    return api.post(name, f"{V1}/certificates/{cert_id}/key", json=body)


def _refusals(ports, reason: str | None = None) -> list[dict]:
    found = []
    for e in events(ports, "key.release"):
        details = json.loads(e.details)
        if e.outcome == "refused" and (reason is None or details.get("reason") == reason):
            found.append({"actor": e.actor, "target": e.target_id, **details})
    return found


def _released(ports) -> list[AuditEvent]:
    return [e for e in events(ports, "key.release") if e.outcome == "success"]


def _two_entry_p12(pairs) -> bytes:  # type: ignore[no-untyped-def]
    """An unencrypted PKCS#12 (no MAC) with several key/certificate pairs, in this order."""
    bags = []
    for key, cert in pairs:
        bags.append({"bag_id": "key_bag", "bag_value": asn1_keys.PrivateKeyInfo.load(_pkcs8(key))})
        bags.append(
            {
                "bag_id": "cert_bag",
                "bag_value": {
                    "cert_id": "x509",
                    "cert_value": asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER)),
                },
            }
        )
    contents = asn1_pkcs12.SafeContents(bags).dump()
    safe = asn1_pkcs12.AuthenticatedSafe([{"content_type": "data", "content": contents}])
    return asn1_pkcs12.Pfx(
        {"version": "v3", "auth_safe": {"content_type": "data", "content": safe.dump()}}
    ).dump()


# --- persons ------------------------------------------------------------------------------------


def test_person_create_get_update_and_list(api):
    r = api.post(
        "keys",
        f"{V1}/persons",
        json={
            "email": "Bob@Acme.Example",
            "first_name": "Bob",
            "last_name": "Builder",
            "secondary_emails": ["bob.b@acme.example"],
            "validation_type": "HIGH",
        },
    )
    assert r.status_code == 201, r.text
    bob = r.json()
    assert r.headers["location"] == f"/api/v1/persons/{bob['id']}"
    assert bob["email"] == "bob@acme.example" and bob["validation_type"] == "HIGH"
    assert bob["secondary_emails"] == ["bob.b@acme.example"]
    assert bob["organization_id"] == api.orgs["default"]
    assert api.get("keys", r.headers["location"]).json() == bob

    again = api.post("keys", f"{V1}/persons", json={"email": "BOB@acme.example"})
    assert again.status_code == 409 and again.json()["code"] == "conflict"

    r = api.patch("keys", f"{V1}/persons/{bob['id']}", json={"phone": "+1 555 0100"})
    assert r.status_code == 200, r.text
    assert r.json() == {**bob, "phone": "+1 555 0100"}  # a PATCH changes only what it names
    moved = api.patch(
        "keys", f"{V1}/persons/{bob['id']}", json={"organization_id": api.orgs["sales"]}
    )
    assert moved.json()["organization_id"] == api.orgs["sales"]

    def emails(query: str, name: str = "keys") -> list[str]:
        r = api.get(name, f"{V1}/persons{query}")
        assert r.status_code == 200, r.text
        return [p["email"] for p in r.json()["items"]]

    assert emails("") == ["alice@acme.example", "sam@acme.example", "bob@acme.example"]
    assert emails("?email=ALICE@acme.example") == ["alice@acme.example"]
    assert emails("?name=build") == ["bob@acme.example"]
    assert emails(f"?organization_id={api.orgs['sales']}") == [
        "sam@acme.example",
        "bob@acme.example",
    ]
    # An organization administrator sees the persons of their organizations only.
    assert emails("", "sales") == ["sam@acme.example", "bob@acme.example"]
    assert emails("", "foreign") == ["olga@other.example"]

    created = api.post(
        "sales",
        f"{V1}/persons",
        json={"email": "sue@acme.example", "organization_id": api.orgs["sales"]},
    )
    assert created.status_code == 201, created.text
    audited = [json.loads(e.details) for e in events(api.ports, "person.create")]
    assert [d["email"] for d in audited] == ["bob@acme.example", "sue@acme.example"]


def _file_certificates_of(api, person_id: int, organization_id: int) -> None:
    """Put every certificate of a person in another organization (the person stays where it is)."""
    with api.ports.db.transaction() as s:
        for cert in s.scalars(select(Certificate).where(Certificate.person_id == person_id)):
            cert.organization_id = organization_id


def test_an_email_change_needs_the_download_privilege_where_the_keys_are(api):
    """The sales administrator may download keys in Sales, where sam is; sam's escrowed
    certificate is in the default organization. Moving sam's address moves where recovery
    codes and release notices for that key go: refused."""
    sam = api.sam.person_id
    path = f"{V1}/persons/{sam}"
    # Where sam's key is in Sales, the sales administrator may change the address.
    r = api.patch("sales", path, json={"email": "samuel@acme.example"})
    assert r.status_code == 200, r.text

    _file_certificates_of(api, sam, api.orgs["default"])
    mailed = len(mails(api.ports))
    r = api.patch("sales", path, json={"email": "mallory@evil.example"})
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "forbidden" and "key_vault_download" in r.json()["description"]
    assert api.get("sales", path).json()["email"] == "samuel@acme.example"
    assert len(mails(api.ports)) == mailed
    # Names are not gated: only the address is.
    assert api.patch("sales", path, json={"phone": "+1 555 0199"}).status_code == 200
    refused = [
        (json.loads(e.details)["reason"], e.target_id, e.actor.split(" ")[0])
        for e in events(api.ports, "person.update")
        if e.outcome == "refused"
    ]
    assert refused == [("forbidden", str(sam), "admin:sales")]
    # An administrator with the privilege in both organizations may.
    r = api.patch("keys", path, json={"email": "sam.new@acme.example"})
    assert r.status_code == 200, r.text


def test_a_person_is_made_inactive_and_active_again(api):
    alice = api.alice.person_id
    path = f"{V1}/persons/{alice}"
    assert api.get("reader", path).json()["active"] is True
    r = api.patch("keys", path, json={"active": False, "phone": "+1 555 0142"})
    assert r.status_code == 200, r.text
    assert (r.json()["active"], r.json()["phone"]) == (False, "+1 555 0142")
    assert api.get("reader", path).json()["active"] is False
    listed = api.get("reader", f"{V1}/persons?email={api.alice.email}").json()["items"]
    assert [p["active"] for p in listed] == [False]
    assert api.patch("keys", path, json={"active": True}).json()["active"] is True
    assert api.patch("keys", path, json={"active": True}).status_code == 200  # no change
    done = [
        (e.actor.split(" ")[0], json.loads(e.details))
        for e in events(api.ports, "person.set_active")
    ]
    assert done == [("admin:keys", {"active": False}), ("admin:keys", {"active": True})]


@pytest.mark.parametrize("value", [CANARY, "false", 0, 1, None, [False], {"x": False}])
def test_active_that_is_not_a_boolean_is_a_clean_422(api, value):
    path = f"{V1}/persons/{api.alice.person_id}"
    r = api.patch("keys", path, json={"active": value})
    assert r.status_code == 422, r.text
    assert r.json()["code"] == "validation_error" and "active" in r.json()["description"]
    assert NEEDLE not in r.text.lower() and "false" not in r.text.lower()
    assert api.get("keys", path).json()["active"] is True
    assert events(api.ports, "person.set_active") == []


def test_active_is_not_changed_by_a_refused_patch_or_without_the_privilege(api):
    path = f"{V1}/persons/{api.alice.person_id}"
    taken = api.patch("keys", path, json={"active": False, "email": api.sam.email})
    assert taken.status_code == 409
    for name, status in (("reader", 403), ("keys_read", 403), ("foreign", 404)):
        r = api.patch(name, path, json={"active": False})
        assert r.status_code == status, (name, r.text)
    hidden = api.patch("sales", path, json={"active": False})
    assert hidden.status_code == 404
    assert api.get("keys", path).json()["active"] is True
    assert events(api.ports, "person.set_active") == []
    # Only an update sets it: a new person is active, and says so.
    created = api.post("keys", f"{V1}/persons", json={"email": "dan@acme.example"})
    assert created.status_code == 201 and created.json()["active"] is True
    refused = api.post("keys", f"{V1}/persons", json={"email": "eve@acme.example", "active": False})
    assert refused.status_code == 422


def test_person_paging_with_cursors(api):
    for i in range(5):
        assert (
            api.post("keys", f"{V1}/persons", json={"email": f"p{i}@acme.example"}).status_code
            == 201
        )
    everyone = [p["id"] for p in api.get("keys", f"{V1}/persons?limit=500").json()["items"]]
    assert len(everyone) == 7 and everyone == sorted(everyone)

    seen, cursor, pages = [], None, 0
    while True:
        query = f"?limit=3&cursor={cursor}" if cursor else "?limit=3"
        page = api.get("keys", f"{V1}/persons{query}").json()
        seen += [p["id"] for p in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == everyone and pages == 3

    for bad in ("?cursor=not-a-cursor", "?limit=0", "?limit=501", "?organization_id=x"):
        r = api.get("keys", f"{V1}/persons{bad}")
        assert r.status_code == 422, bad
        assert r.json()["code"] in ("invalid_input", "validation_error")


# --- certificates -------------------------------------------------------------------------------


def test_certificate_filters_count_and_details(api, operator):
    old, new = api.alice.cert_ids
    [sam] = api.sam.cert_ids
    keyless = api.keyless_cert_id

    def ids(query: str, name: str = "keys") -> list[int]:
        r = api.get(name, f"{V1}/certificates{query}")
        assert r.status_code == 200, r.text
        found = [c["id"] for c in r.json()["items"]]
        count = api.get(name, f"{V1}/certificates/count{query}")
        assert count.status_code == 200 and count.json() == {"count": len(found)}
        return found

    assert ids("") == [old, new, sam, keyless]
    assert ids("?key_vault=true") == [old, new, sam]
    assert ids("?key_vault=false") == [keyless]
    assert ids("?status=expired") == [old]
    assert ids("?status=issued") == [new, sam, keyless]
    assert ids("?status=revoked") == []
    assert ids("?email=Alice@ACME.example") == [old, new, keyless]
    assert ids("?email=alice@acme.example&key_vault=true&status=issued") == [new]
    assert ids(f"?person_id={api.sam.person_id}") == [sam]
    assert ids(f"?organization_id={api.orgs['sales']}") == [sam]
    assert ids("", "sales") == [sam]
    assert ids("", "foreign") == api.olga.cert_ids

    crl.revoke_certificate(api.ports, operator, "acme", sam, "superseded")
    assert ids("?status=revoked") == [sam]
    assert ids("?status=issued") == [new, keyless]

    r = api.get("keys", f"{V1}/certificates/{new}")
    assert r.status_code == 200
    cert = api.alice.certs[1]
    der = cert.public_bytes(Encoding.DER)
    body = r.json()
    assert body["sha256"] == hashlib.sha256(der).hexdigest()
    assert body["sha1"] == hashlib.sha1(der).hexdigest()
    assert body["serial"] == format(cert.serial_number, "x")
    assert body["emails"] == ["alice@acme.example"]
    assert body["person_id"] == api.alice.person_id
    assert body["organization_id"] == api.orgs["default"]
    assert body["status"] == "issued" and body["key_in_vault"] is True
    assert body["source"] == "import" and body["subject"] == "CN=alice@acme.example"
    assert api.get("keys", f"{V1}/certificates/{keyless}").json()["key_in_vault"] is False

    for bad in ("?status=valid", "?key_vault=maybe", "?limit=-1"):
        assert api.get("keys", f"{V1}/certificates{bad}").status_code == 422, bad


def test_certificate_paging_with_cursors(api):
    everyone = api.alice.cert_ids + api.sam.cert_ids + [api.keyless_cert_id]
    seen, cursor = [], None
    for _ in range(len(everyone)):
        query = f"?limit=1&cursor={cursor}" if cursor else "?limit=1"
        page = api.get("keys", f"{V1}/certificates{query}").json()
        assert len(page["items"]) == 1
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
    assert seen == everyone and cursor is None
    page = api.get("keys", f"{V1}/certificates?key_vault=true&limit=2").json()
    rest = api.get(
        "keys", f"{V1}/certificates?key_vault=true&limit=2&cursor={page['next_cursor']}"
    ).json()
    assert [c["id"] for c in page["items"] + rest["items"]] == everyone[:3]
    assert rest["next_cursor"] is None


# --- key upload ---------------------------------------------------------------------------------


def test_upload_for_a_person(api):
    key = new_key("ec256")
    cert = make_cert(key, "alice@acme.example", issuer=api.ca)
    p12 = make_p12(key, cert, P12_PASSWORD)
    path = f"{V1}/persons/{api.alice.person_id}/keys"
    # Line-wrapped base64, as `base64` prints it, is accepted.
    r = api.post(
        "keys", path, json={"p12": base64.encodebytes(p12).decode(), "password": P12_PASSWORD}
    )
    assert r.status_code == 200, r.text
    [entry] = r.json()["entries"]
    der = cert.public_bytes(Encoding.DER)
    assert entry == {
        "alias": "alias",
        "clientCertId": entry["clientCertId"],
        "md5": hashlib.md5(der).hexdigest(),
        "sha1": hashlib.sha1(der).hexdigest(),
        "message": IMPORTED,
        "code": None,
    }
    listed = api.get("keys", f"{V1}/certificates?person_id={api.alice.person_id}&key_vault=true")
    assert entry["clientCertId"] in [c["id"] for c in listed.json()["items"]]

    again = api.post("keys", path, json={"p12": _b64(p12), "password": P12_PASSWORD})
    assert again.status_code == 200
    assert again.json()["entries"][0]["message"] == ALREADY_EXISTS

    archived = [e for e in events(api.ports, "key.archive") if e.outcome == "success"]
    assert archived[-1].actor == f"admin:keys (token {api.token_ids['keys']})"


def test_subjects_read_as_names_with_an_email_attribute(api):
    key = new_key("ec256")
    cert = make_cert(key, "alice@acme.example", issuer=api.ca, cn="Alice Able", subject_email=True)
    assert "1.2.840.113549.1.9.1=" in cert.subject.rfc4514_string()
    path = f"{V1}/persons/{api.alice.person_id}/keys"
    r = api.post(
        "keys",
        path,
        json={"p12": _b64(make_p12(key, cert, P12_PASSWORD)), "password": P12_PASSWORD},
    )
    assert r.status_code == 200, r.text
    [entry] = r.json()["entries"]
    body = api.get("keys", f"{V1}/certificates/{entry['clientCertId']}").json()
    assert body["subject"] == "CN=Alice Able,emailAddress=alice@acme.example"
    assert body["display_name"] == "Alice Able"
    assert body["issuer"] == api.ca[1].subject.rfc4514_string()
    listed = api.get("keys", f"{V1}/certificates?person_id={api.alice.person_id}").json()
    assert "Alice Able" in [c["display_name"] for c in listed["items"]]
    # The owner's notice names the subject the same way.
    last = mails(api.ports)[-1]
    notice = notify._open_body(api.ports, last) if last.body_sealed else last.body
    assert "Certificate subject: CN=Alice Able,emailAddress=alice@acme.example" in notice


def test_upload_refusals(api):
    alice, sam = api.alice.person_id, api.sam.person_id
    before = counts(api.ports)

    def upload(person_id, p12, password=P12_PASSWORD, name="keys"):  # type: ignore[no-untyped-def]
        return api.post(
            name, f"{V1}/persons/{person_id}/keys", json={"p12": _b64(p12), "password": password}
        )

    # A certificate of another person, new or already known: every entry refused -> its error.
    key = new_key("ec256")
    sams = make_p12(key, make_cert(key, "sam@acme.example", issuer=api.ca), P12_PASSWORD)
    r = upload(alice, sams)
    assert r.status_code == 422 and r.json()["code"] == "person_mismatch", r.text
    known = make_p12(api.alice.keys[1], api.alice.certs[1], P12_PASSWORD)
    r = upload(sam, known)
    assert r.status_code == 422 and r.json()["code"] == "person_mismatch", r.text
    # A file that cannot be read at all.
    alices = make_p12(key, make_cert(key, "alice@acme.example", issuer=api.ca), P12_PASSWORD)
    r = upload(alice, alices, password="not-the-password")
    assert r.status_code == 422 and r.json()["code"] == "p12_wrong_password"
    r = upload(alice, b"not a pkcs12 file at all")
    assert r.status_code == 422 and r.json()["code"] == "p12_malformed"
    # Without the scope, or the privilege behind it.
    r = upload(alice, known, name="keys_read")
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
    r = upload(alice, known, name="reader")
    assert r.status_code == 403
    assert counts(api.ports) == before
    refused = [
        json.loads(e.details)["reason"]
        for e in events(api.ports, "key.archive")
        if e.outcome == "refused"
    ]
    assert refused == [
        "person_mismatch",
        "person_mismatch",
        "p12_wrong_password",
        "p12_malformed",
        "insufficient_scope",
        "insufficient_scope",
    ]


def test_upload_with_some_entries_refused_answers_200_with_codes(api):
    good_key, other_key = new_key("ec256"), new_key("ec256")
    good = make_cert(good_key, "alice@acme.example", issuer=api.ca)
    other = make_cert(other_key, "sam@acme.example", issuer=api.ca)
    p12 = _two_entry_p12([(good_key, good), (other_key, other)])
    r = api.post(
        "keys", f"{V1}/persons/{api.alice.person_id}/keys", json={"p12": _b64(p12), "password": ""}
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["entries"]
    assert first["message"] == IMPORTED and first["code"] is None
    assert second["code"] == "person_mismatch" and second["clientCertId"] is None
    assert second["sha1"] == hashlib.sha1(other.public_bytes(Encoding.DER)).hexdigest()


# --- key download -------------------------------------------------------------------------------


def _mac_iterations(p12: bytes) -> int:
    return int(asn1_pkcs12.Pfx.load(p12)["mac_data"]["iterations"].native)


def test_the_kdf_count_follows_who_chose_the_passphrase_never_the_client(api):
    """A generated passphrase gets the low count, the caller's own one the high count, and a
    caller cannot claim its passphrase was generated."""
    api.ports.settings.p12_kdf_rounds = 10_000  # high, and unlike the generated count
    generated_rounds = api.ports.settings.p12_generated_kdf_rounds
    assert generated_rounds == 2048
    cert_id = api.alice.cert_ids[1]
    own = _download(api, "keys", cert_id)
    assert own.status_code == 200, own.text
    assert _mac_iterations(own.content) == 10_000
    made = api.post("keys", f"{V1}/certificates/{cert_id}/key", json={"generate_passphrase": True})
    assert made.status_code == 200, made.text
    assert _mac_iterations(made.content) == generated_rounds
    claimed = _download(api, "keys", cert_id, passphrase_generated=True)
    assert claimed.status_code == 422, claimed.text
    assert len(_released(api.ports)) == 2


def test_a_download_writes_in_one_transaction(api):
    """The quota's count, the release's audit event and the owner's notice commit together, in
    the one transaction that writes. On PostgreSQL the release also reads in it, and the token
    was checked before by one statement outside any transaction (it must answer before the body
    is validated). On SQLite the release's reads come before, the KDF outside."""
    path = f"{V1}/certificates/{api.alice.cert_ids[1]}/key"
    body = {"generate_passphrase": True}
    # The token's first use is noted in a transaction of its own (at most once a minute).
    assert api.post("keys", path, json=body).status_code == 200
    commits: list[bool] = []
    wrote: dict[int, bool] = {}
    statements: list[tuple[str, bool]] = []  # (statement, run outside a transaction)

    def on_sql(conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE", "WITH")):
            wrote[id(conn)] = True
        alone = getattr(conn.connection.driver_connection, "autocommit", False) is True
        statements.append((statement, alone))

    def on_commit(conn):  # type: ignore[no-untyped-def]
        commits.append(wrote.pop(id(conn), False))

    engine = api.ports.db.engine
    event.listen(engine, "before_cursor_execute", on_sql)
    event.listen(engine, "commit", on_commit)
    try:
        r = api.post("keys", path, json=body)
    finally:
        event.remove(engine, "before_cursor_execute", on_sql)
        event.remove(engine, "commit", on_commit)
    assert r.status_code == 200, r.text
    assert commits.count(True) == 1
    if not api.ports.db.is_sqlite:
        (token, alone), *release = statements
        assert "FROM api_tokens" in token and "accounts" in token and alone
        assert release and not any(alone for _, alone in release)
        # Nor read apart: the account (read with the token), the account key (with the key).
        assert not [s for s, _ in release if "FROM accounts" in s or "FROM account_keys" in s]
    assert len(_released(api.ports)) == 2


def test_download_one_key_with_either_encryption(api):
    old, new = api.alice.cert_ids
    r = _download(api, "keys", new, reason="lost laptop")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-pkcs12"
    assert r.headers["content-disposition"] == f'attachment; filename="{new}.p12"'
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    assert "x-certvault-passphrase" not in r.headers
    [entry] = read_pkcs12(r.content, PASSPHRASE).entries
    assert _pkcs8(entry.key) == _pkcs8(api.alice.keys[1])
    assert entry.certificate == api.alice.certs[1]
    assert OID_PBES2 in r.content and OID_3DES not in r.content

    r = _download(api, "keys", old, encryption_type="TripleDES-SHA1")
    assert r.status_code == 200, r.text
    assert OID_3DES in r.content and OID_PBES2 not in r.content
    assert _pkcs8(read_pkcs12(r.content, PASSPHRASE).entries[0].key) == _pkcs8(api.alice.keys[0])

    r = api.post("keys", f"{V1}/certificates/{new}/key", json={"generate_passphrase": True})
    assert r.status_code == 200, r.text
    generated = r.headers["x-certvault-passphrase"]
    assert len(generated.split("-")) == 6 and r.headers["cache-control"] == "no-store"
    assert _pkcs8(read_pkcs12(r.content, generated).entries[0].key) == _pkcs8(api.alice.keys[1])

    released = _released(api.ports)
    assert [e.target_id for e in released] == [str(new), str(old), str(new)]
    details = [json.loads(e.details) for e in released]
    assert [d["encryption"] for d in details] == [
        "AES256-SHA256",
        "TripleDES-SHA1",
        "AES256-SHA256",
    ]
    assert [d["generated_passphrase"] for d in details] == [False, False, True]
    assert details[0]["reason"] == "lost laptop" and {d["channel"] for d in details} == {"api"}
    assert {e.actor for e in released} == {f"admin:keys (token {api.token_ids['keys']})"}
    assert all(generated not in json.dumps(d) for d in details)
    notices = [m for m in mails(api.ports) if m.subject == "Your private key was recovered"]
    assert [m.to_addr for m in notices] == ["alice@acme.example"] * 3

    r = _download(api, "keys", api.keyless_cert_id)
    assert r.status_code == 404 and r.json()["code"] == "no_escrowed_key"


def test_download_every_key_of_a_person_as_zip(api):
    r = api.post(
        "keys",
        f"{V1}/persons/{api.alice.person_id}/keys/download",
        json={"generate_passphrase": True},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="person-{api.alice.person_id}-keys.zip"'
    )
    passphrase = r.headers["x-certvault-passphrase"]
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        names = archive.namelist()
        files = {name: archive.read(name) for name in names}
    expected = [
        f"{cid}-{format(cert.serial_number, 'x')}.p12"
        for cid, cert in zip(api.alice.cert_ids, api.alice.certs, strict=True)
    ]
    assert names == expected  # both generations, the old one first; the keyless one is absent
    for name, key, cert in zip(names, api.alice.keys, api.alice.certs, strict=True):
        [entry] = read_pkcs12(files[name], passphrase).entries
        assert _pkcs8(entry.key) == _pkcs8(key) and entry.certificate == cert
    released = _released(api.ports)
    assert [e.target_id for e in released] == [str(i) for i in api.alice.cert_ids]

    r = api.post(
        "keys",
        f"{V1}/persons/{api.alice.person_id}/keys/download",
        json={"passphrase": PASSPHRASE, "encryption_type": "TripleDES-SHA1"},
    )
    assert r.status_code == 200 and "x-certvault-passphrase" not in r.headers
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert all(OID_3DES in archive.read(n) for n in archive.namelist())

    bob = api.post("keys", f"{V1}/persons", json={"email": "bob@acme.example"}).json()
    r = api.post("keys", f"{V1}/persons/{bob['id']}/keys/download", json={"passphrase": PASSPHRASE})
    assert r.status_code == 404 and r.json()["code"] == "no_escrowed_key"


def test_download_as_an_ios_configuration_profile(api):
    old, new = api.alice.cert_ids
    r = _download(api, "keys", new, format="mobileconfig", reason="new phone")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-apple-aspen-config"
    assert r.headers["content-disposition"] == f'attachment; filename="{new}.mobileconfig"'
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    profile = plistlib.loads(r.content)  # the account does not sign its profiles
    assert (
        profile["PayloadType"] == "Configuration" and profile["PayloadOrganization"] == "Acme Corp"
    )
    [payload] = profile["PayloadContent"]
    assert "Password" not in payload and OID_3DES in payload["PayloadContent"]
    [entry] = read_pkcs12(payload["PayloadContent"], PASSPHRASE).entries
    assert _pkcs8(entry.key) == _pkcs8(api.alice.keys[1])

    r = api.post(
        "keys",
        f"{V1}/persons/{api.alice.person_id}/keys/download",
        json={
            "generate_passphrase": True,
            "format": "mobileconfig",
            "encryption_type": "TripleDES-SHA1",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-apple-aspen-config"
    assert r.headers["content-disposition"] == (
        f'attachment; filename="person-{api.alice.person_id}-keys.mobileconfig"'
    )
    generated = r.headers["x-certvault-passphrase"]
    payloads = plistlib.loads(r.content)["PayloadContent"]
    assert [p["PayloadCertificateFileName"] for p in payloads] == [f"{old}.p12", f"{new}.p12"]
    for payload, key in zip(payloads, api.alice.keys, strict=True):
        [entry] = read_pkcs12(payload["PayloadContent"], generated).entries
        assert _pkcs8(entry.key) == _pkcs8(key)

    released = [json.loads(e.details) for e in _released(api.ports)]
    assert [(d["format"], d["encryption"]) for d in released] == [
        ("mobileconfig", "TripleDES-SHA1")
    ] * 3
    r = _download(api, "keys", new)
    assert r.headers["content-type"] == "application/x-pkcs12"
    assert json.loads(_released(api.ports)[-1].details)["format"] == "p12"


def test_reason_can_be_made_mandatory(api):
    with api.ports.db.transaction() as s:
        s.scalars(select(Account).where(Account.slug == "acme")).one().reason_required = True
    new = api.alice.cert_ids[1]
    for r in (
        _download(api, "keys", new),
        _download(api, "keys", new, reason="   "),
        api.post(
            "keys",
            f"{V1}/persons/{api.alice.person_id}/keys/download",
            json={"passphrase": PASSPHRASE},
        ),
    ):
        assert r.status_code == 422 and r.json()["code"] == "reason_required", r.text
    assert len(_refusals(api.ports, "reason_required")) == 3 and _released(api.ports) == []
    assert _download(api, "keys", new, reason="court order 17").status_code == 200
    assert json.loads(_released(api.ports)[0].details)["reason"] == "court order 17"


# --- authentication, authorization, isolation ---------------------------------------------------


ENDPOINTS = [
    ("get", "/persons"),
    ("get", "/persons/{alice}"),
    ("post", "/persons"),
    ("patch", "/persons/{alice}"),
    ("get", "/certificates"),
    ("get", "/certificates/count"),
    ("get", "/certificates/{cert}"),
    ("post", "/persons/{alice}/keys"),
    ("post", "/certificates/{cert}/key"),
    ("post", "/persons/{alice}/keys/download"),
    ("get", "/audit-events"),
]


@pytest.mark.parametrize("token", [None, "garbage", "expired", "revoked", "basic"])
def test_missing_or_invalid_tokens_are_401(api, token):
    odd = {
        None: {},
        "garbage": {"Authorization": "Bearer cvt_not-a-real-token"},
        "basic": {"Authorization": "Basic a2V5czpwYXNzd29yZA=="},
    }
    headers = odd[token] if token in odd else api.headers(token)
    before = counts(api.ports)
    for method, template in ENDPOINTS:
        path = V1 + template.format(alice=api.alice.person_id, cert=api.alice.cert_ids[1])
        kw = {"json": {"passphrase": PASSPHRASE}} if method != "get" else {}
        r = api.client.request(method.upper(), path, headers=headers, **kw)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json() == {"code": "unauthenticated", "description": r.json()["description"]}
        assert r.headers["www-authenticate"] == "Bearer"
    assert counts(api.ports) == before and _released(api.ports) == []


def test_missing_privilege_or_scope_is_403_and_refusals_are_audited(api):
    new = api.alice.cert_ids[1]
    r = _download(api, "keys_read", new)
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
    r = _download(api, "reader", new)
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
    r = api.post(
        "keys_read",
        f"{V1}/persons/{api.alice.person_id}/keys/download",
        json={"generate_passphrase": True},
    )
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
    r = api.post("reader", f"{V1}/persons", json={"email": "x@acme.example"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = api.patch("keys_read", f"{V1}/persons/{api.alice.person_id}", json={"phone": "1"})
    assert r.status_code == 403
    # Reading needs only the read scope.
    assert api.get("reader", f"{V1}/certificates/{new}").status_code == 200
    assert api.get("keys_read", f"{V1}/persons/{api.alice.person_id}").status_code == 200

    refused = _refusals(api.ports)
    assert [(d["reason"], d["target"]) for d in refused] == [
        ("insufficient_scope", str(new)),
        ("insufficient_scope", str(new)),
        ("insufficient_scope", str(api.alice.person_id)),
    ]
    assert _released(api.ports) == []


def test_foreign_and_out_of_organization_ids_answer_like_missing_ones(api):
    alice, olga = api.alice.person_id, api.olga.person_id
    alice_cert, olga_cert = api.alice.cert_ids[1], api.olga.cert_ids[0]
    p12 = make_p12(api.alice.keys[1], api.alice.certs[1], P12_PASSWORD)
    upload = {"p12": _b64(p12), "password": P12_PASSWORD}
    download = {"passphrase": PASSPHRASE}
    cases = [
        # (token, method, path template, hidden id, body)
        ("keys", "get", "/persons/{}", olga, None),
        ("keys", "patch", "/persons/{}", olga, {"phone": "1"}),
        ("keys", "get", "/certificates/{}", olga_cert, None),
        ("keys", "post", "/certificates/{}/key", olga_cert, download),
        ("keys", "post", "/persons/{}/keys/download", olga, download),
        ("keys", "post", "/persons/{}/keys", olga, upload),
        ("foreign", "get", "/persons/{}", alice, None),
        ("foreign", "get", "/certificates/{}", alice_cert, None),
        ("foreign", "post", "/certificates/{}/key", alice_cert, download),
        ("sales", "get", "/persons/{}", alice, None),
        ("sales", "patch", "/persons/{}", alice, {"phone": "1"}),
        ("sales", "get", "/certificates/{}", alice_cert, None),
        ("sales", "post", "/certificates/{}/key", alice_cert, download),
        ("sales", "post", "/persons/{}/keys/download", alice, download),
        ("sales", "post", "/persons/{}/keys", alice, upload),
    ]
    before = counts(api.ports)
    for token, method, template, hidden, body in cases:
        kw = {"json": body} if body is not None else {}
        seen = api.client.request(
            method.upper(), V1 + template.format(hidden), headers=api.headers(token), **kw
        )
        missing = api.client.request(
            method.upper(), V1 + template.format(MISSING), headers=api.headers(token), **kw
        )
        assert seen.status_code == 404, (token, template, seen.text)
        assert seen.json() == missing.json(), (token, template)
        assert seen.json()["code"] == "not_found"
    assert counts(api.ports) == before and _released(api.ports) == []
    refused = _refusals(api.ports, "not_found")
    assert len(refused) == 10  # every release attempt above (5), hidden and missing alike
    assert {r["actor"].split(" ")[0] for r in refused} == {
        "admin:keys",
        "admin:foreign",
        "admin:sales",
    }
    # What an organization administrator may see, they may take.
    r = _download(api, "sales", api.sam.cert_ids[0])
    assert r.status_code == 200, r.text
    r = api.post("sales", f"{V1}/persons/{api.sam.person_id}/keys/download", json=download)
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.namelist() == [
            f"{api.sam.cert_ids[0]}-{format(api.sam.certs[0].serial_number, 'x')}.p12"
        ]


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_422_and_never_echoed(api, caplog):
    caplog.set_level(logging.DEBUG)
    new, alice = api.alice.cert_ids[1], api.alice.person_id
    key_path = f"{V1}/certificates/{new}/key"
    upload_path = f"{V1}/persons/{alice}/keys"
    p12 = make_p12(api.alice.keys[1], api.alice.certs[1], P12_PASSWORD)
    raw = "application/json"
    cases = [
        # (path, method, json body or raw text, expected code)
        (key_path, "post", '{"passphrase": "' + CANARY, "validation_error"),  # malformed JSON
        (key_path, "post", {"passphrase": 12345}, "validation_error"),
        (
            key_path,
            "post",
            {"passphrase": CANARY, "generate_passphrase": "yes"},
            "validation_error",
        ),
        (key_path, "post", {"passphrase": CANARY, "generate_passphrase": True}, "validation_error"),
        (key_path, "post", {}, "validation_error"),
        (key_path, "post", [CANARY], "validation_error"),
        (
            key_path,
            "post",
            {"passphrase": CANARY, "encryption_type": "ROT13-" + CANARY},
            "validation_error",
        ),
        (key_path, "post", {"passphrase": CANARY, "reason": 5}, "validation_error"),
        (key_path, "post", {"passphrase": CANARY, "format": "zip-" + CANARY}, "validation_error"),
        (key_path, "post", {"passphrase": CANARY, "format": None}, "validation_error"),
        (
            key_path,
            "post",
            {
                "passphrase": PASSPHRASE,
                "format": "mobileconfig",
                "encryption_type": "AES256-SHA256",
            },
            "profile_encryption_fixed",
        ),
        (key_path, "post", {"passphrase": CANARY, "extra": CANARY}, "validation_error"),
        (key_path, "post", {"passphrase": "canary-Zq7"}, "weak_passphrase"),  # too short
        (key_path, "post", {"passphrase": " " + CANARY}, "weak_passphrase"),
        (key_path, "post", {"passphrase": CANARY * 60}, "weak_passphrase"),
        (upload_path, "post", {"p12": "!!" + CANARY, "password": CANARY}, "invalid_base64"),
        (upload_path, "post", {"p12": "é" + CANARY, "password": CANARY}, "invalid_base64"),
        (upload_path, "post", {"p12": _b64(p12), "password": CANARY}, "p12_wrong_password"),
        (upload_path, "post", {"p12": _b64(CANARY.encode()), "password": CANARY}, "p12_malformed"),
        (upload_path, "post", {"p12": None, "password": CANARY}, "validation_error"),
        (upload_path, "post", {"p12": _b64(p12), "password": None}, "validation_error"),
        (upload_path, "post", {"p12": _b64(p12)}, "validation_error"),
        (upload_path, "post", {"p12": _b64(p12), "password": [CANARY]}, "validation_error"),
        (f"{V1}/persons", "post", {"email": None, "last_name": CANARY}, "validation_error"),
        (f"{V1}/persons", "post", {"last_name": CANARY}, "validation_error"),
        (f"{V1}/persons", "post", {"email": CANARY}, "invalid_input"),
        (f"{V1}/persons", "post", {"email": "x@acme.example", "phone": 5}, "validation_error"),
        (
            f"{V1}/persons",
            "post",
            {"email": "x@acme.example", "validation_type": CANARY},
            "validation_error",
        ),
        (f"{V1}/persons/{alice}", "patch", {"first_name": None}, "validation_error"),
        (f"{V1}/persons/{alice}", "patch", {"email": CANARY}, "invalid_input"),
        (
            f"{V1}/persons/{alice}",
            "patch",
            {"organization_id": "sales-" + CANARY},
            "validation_error",
        ),
    ]
    before = counts(api.ports)
    for path, method, body, code in cases:
        kw = (
            {"content": body, "headers": {**api.headers("keys"), "content-type": raw}}
            if isinstance(body, str)
            else {"json": body, "headers": api.headers("keys")}
        )
        r = api.client.request(method.upper(), path, **kw)
        assert r.status_code == 422, (path, body, r.text)
        assert r.json()["code"] == code, (path, body, r.text)
        assert set(r.json()) == {"code", "description"}
        assert NEEDLE not in r.text.lower(), (path, body, r.text)
        assert NEEDLE not in json.dumps(dict(r.headers)).lower()
    assert counts(api.ports) == before and _released(api.ports) == []
    assert NEEDLE not in caplog.text.lower()
    with api.ports.db.read() as s:
        assert all(NEEDLE not in e.details.lower() for e in s.scalars(select(AuditEvent)))


def test_oversized_bodies_are_413(api):
    upload_path = f"{V1}/persons/{api.alice.person_id}/keys"
    big = {"p12": "A" * (1024 * 1024), "password": ""}
    r = api.post("keys", upload_path, json=big)
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    # Between the two caps: refused elsewhere, read (and found not to be a p12) on the upload path.
    medium = _b64(b"\x00" * 96 * 1024)
    r = api.post("keys", upload_path, json={"p12": medium, "password": ""})
    assert r.status_code == 422 and r.json()["code"] == "p12_malformed"
    r = api.post("keys", f"{V1}/persons", json={"email": "x@acme.example", "last_name": medium})
    assert r.status_code == 413 and r.json()["code"] == "too_large"
    r = _download(api, "keys", api.alice.cert_ids[1], reason="x" * 70 * 1024)
    assert r.status_code == 413
    assert _released(api.ports) == []


def test_out_of_range_values_are_refused_not_crashing(api):
    huge = 2**63
    for path in (
        f"/persons/{huge}",
        f"/certificates/{2**31}",
        f"/certificates?person_id={huge}",
        f"/persons?organization_id={2**31}",
        "/persons?cursor=" + base64.urlsafe_b64encode(f"v1:{huge}".encode()).decode(),
    ):
        r = api.get("keys", V1 + path)
        assert r.status_code == 422, (path, r.text)
    r = api.patch("keys", f"{V1}/persons/{api.alice.person_id}", json={"organization_id": huge})
    assert r.status_code == 422
    # Moments that leave the calendar when turned into UTC still compare.
    for query, found in (
        ("since=0001-01-01T00:00:00%2B05:00", True),
        ("until=9999-12-31T23:00:00-05:00", True),
        ("since=9999-12-31T23:00:00-05:00", False),
    ):
        r = api.get("keys", f"{V1}/audit-events?{query}")
        assert r.status_code == 200 and bool(r.json()["items"]) is found, query


# --- rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["admin", "token", "ip"])
def test_downloads_are_rate_limited(api, limit):
    setattr(api.ports.settings, f"downloads_per_hour_{limit}", 2)
    person_zip = f"{V1}/persons/{api.alice.person_id}/keys/download"
    new = api.alice.cert_ids[1]
    assert _download(api, "keys", new).status_code == 200
    # A zip of two keys counts as one download.
    assert api.post("keys", person_zip, json={"passphrase": PASSPHRASE}).status_code == 200
    r = _download(api, "keys", new)
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
    r = api.post("keys", person_zip, json={"passphrase": PASSPHRASE})
    assert r.status_code == 429
    assert len(_released(api.ports)) == 3  # nothing released past the limit
    # Refused by the release itself, like any refusal it makes: targets are the certificates.
    assert [d["target"] for d in _refusals(api.ports, "rate_limited")] == [
        str(new),
        ",".join(str(i) for i in api.alice.cert_ids),
    ]
    # Another administrator from the same address is held only by the address limit.
    other = _download(api, "sales", api.sam.cert_ids[0])
    assert other.status_code == (429 if limit == "ip" else 200)


def test_refused_downloads_use_up_no_quota(api):
    """Calls that could not release a key count against no limit: a read-only token of the
    administrator, an administrator without the privilege, a certificate out of sight. The
    administrator's keys:download token still downloads afterwards, up to its limit."""
    for limit in ("admin", "token", "ip"):
        setattr(api.ports.settings, f"downloads_per_hour_{limit}", 3)
    new = api.alice.cert_ids[1]
    person_zip = f"{V1}/persons/{api.alice.person_id}/keys/download"
    for _ in range(20):
        assert _download(api, "keys_read", new).status_code == 403
        assert api.post("keys_read", person_zip, json={"passphrase": PASSPHRASE}).status_code == 403
        assert _download(api, "reader", new).status_code == 403
        assert _download(api, "keys", api.olga.cert_ids[0]).status_code == 404
        assert _download(api, "keys", new, passphrase="short").status_code == 422
    assert [_download(api, "keys", new).status_code for _ in range(4)] == [200, 200, 200, 429]
    assert len(_released(api.ports)) == 3


def test_downloads_under_a_generated_passphrase_count_once_and_refused_ones_not_at_all(api):
    """On PostgreSQL such a download counts its quota before its (cheap) KDF instead of checking
    it there and counting after: each counts once, and one over the limit counts nothing."""
    for limit in ("admin", "token", "ip"):
        setattr(api.ports.settings, f"downloads_per_hour_{limit}", 3)
    path = f"{V1}/certificates/{api.alice.cert_ids[1]}/key"
    body = {"generate_passphrase": True}
    answers = [api.post("keys", path, json=body).status_code for _ in range(5)]
    assert answers == [200, 200, 200, 429, 429]
    assert len(_released(api.ports)) == 3
    with api.ports.db.read() as s:
        counted = s.execute(
            select(RateLimitCounter.key, RateLimitCounter.count).where(
                RateLimitCounter.key.like("dl-%")
            )
        ).all()
    assert sorted(key.split(":")[0] for key, _ in counted) == ["dl-admin", "dl-ip", "dl-token"]
    assert {count for _, count in counted} == {3}
    assert [d["target"] for d in _refusals(api.ports, "rate_limited")] == [
        str(api.alice.cert_ids[1])
    ] * 2


# --- audit log ----------------------------------------------------------------------------------


def test_audit_events_of_the_own_account_only(api):
    new = api.alice.cert_ids[1]
    assert _download(api, "keys", new).status_code == 200
    assert _download(api, "reader", new).status_code == 403

    def page_through(name: str, query: str = "") -> list[dict]:
        items, cursor = [], None
        while True:
            sep = "&" if query else "?"
            url = f"{V1}/audit-events{query}" + (
                f"{sep}limit=4&cursor={cursor}" if cursor else f"{sep}limit=4"
            )
            r = api.get(name, url)
            assert r.status_code == 200, r.text
            items += r.json()["items"]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return items

    with api.ports.db.read() as s:
        acme_id = s.scalars(select(Account.id).where(Account.slug == "acme")).one()
        other_id = s.scalars(select(Account.id).where(Account.slug == "other")).one()
        by_account = {
            a: [
                e.id
                for e in s.scalars(
                    select(AuditEvent).where(AuditEvent.account_id == a).order_by(AuditEvent.id)
                )
            ]
            for a in (acme_id, other_id)
        }
    acme = page_through("keys")
    assert [e["id"] for e in acme] == by_account[acme_id] and len(acme) > 8
    assert [e["seq"] for e in acme] == list(range(1, len(acme) + 1))
    assert [e["id"] for e in page_through("foreign")] == by_account[other_id]
    assert [e["id"] for e in page_through("reader")] == by_account[acme_id]  # no privilege needed

    releases = page_through("keys", "?action=key.release")
    assert [(e["outcome"], e["target_id"]) for e in releases] == [
        ("success", str(new)),
        ("refused", str(new)),
    ]
    assert releases[0]["details"]["channel"] == "api"
    refused = api.get("keys", f"{V1}/audit-events?outcome=refused").json()["items"]
    assert [e["details"]["reason"] for e in refused] == ["insufficient_scope"]
    targeted = api.get("keys", f"{V1}/audit-events?target_type=certificate&target_id={new}").json()[
        "items"
    ]
    assert [e["action"] for e in targeted] == ["key.archive", "key.release", "key.release"]

    first = acme[0]["occurred_at"]
    assert (
        api.get("keys", f"{V1}/audit-events?since=2000-01-01T00:00:00Z&limit=500").json()["items"]
        == acme
    )
    assert api.get("keys", f"{V1}/audit-events?until=2000-01-01T00:00:00").json()["items"] == []
    later = api.get("keys", f"{V1}/audit-events?until=2999-01-01T00:00:00Z&limit=500").json()
    assert [e["id"] for e in later["items"]] == by_account[acme_id]
    since_first = api.get("keys", f"{V1}/audit-events", params={"since": first, "limit": 500})
    assert since_first.json()["items"][0]["id"] == acme[0]["id"]  # since is inclusive
    assert api.get("keys", f"{V1}/audit-events", params={"until": first}).json()["items"] == []

    r = api.get("sales", f"{V1}/audit-events")
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    assert api.get("keys", f"{V1}/audit-events?since=yesterday").status_code == 422


def test_openapi_documents_every_operation(api):
    spec = api.client.get("/openapi.json").json()
    operations = {
        (method, path): op
        for path, item in spec["paths"].items()
        if path.startswith(V1)
        for method, op in item.items()
    }
    for method, template in ENDPOINTS:
        path = V1 + template.format(alice="{person_id}", cert="{certificate_id}")
        op = operations[(method, path)]
        assert {"401", "403", "404", "422"} <= set(op["responses"]), (method, path)
    download = operations[("post", V1 + "/certificates/{certificate_id}/key")]
    ok = download["responses"]["200"]
    assert "application/x-pkcs12" in ok["content"] and "X-Certvault-Passphrase" in ok["headers"]
    assert "application/x-apple-aspen-config" in ok["content"]
    assert "409" in download["responses"]
    assert "Retry-After" in download["responses"]["429"]["headers"]
    zipped = operations[("post", V1 + "/persons/{person_id}/keys/download")]["responses"]["200"]
    assert {"application/zip", "application/x-apple-aspen-config"} <= set(zipped["content"])
    upload = operations[("post", V1 + "/persons/{person_id}/keys")]
    assert "413" in upload["responses"] and "every entry is refused" in upload["description"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["KeyDownload"]["properties"]) == {
        "passphrase",
        "generate_passphrase",
        "encryption_type",
        "format",
        "reason",
    }
    assert schemas["PersonPage"]["properties"]["next_cursor"]
