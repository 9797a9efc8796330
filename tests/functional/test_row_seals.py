"""The database is not trusted (DESIGN.md §5.10): rows that grant access or decide policy are
sealed, on SQLite and PostgreSQL.

Each attack is made with SQL, as by someone who holds the database's credentials but not the
master key: a row altered, inserted, or put back from an older copy. Each is refused over the real
interface (the API, the console, a service call), audited as ``integrity.row_refused``, and
reported by the check `certvault verify` runs. Changes made through certvault keep working, and a
crash between a commit and the witness write locks nobody out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import delete, insert, select, text, update

from certvault.db.models import Admin, ApiToken, EnrollmentForm, Organization, Person
from certvault.errors import ConfigurationError
from certvault.services.access import admins, tokens, web_sessions
from certvault.services.audit import log as audit
from certvault.services.directory import accounts, persons
from certvault.services.kernel import seals
from certvault.services.kernel.passwords import hash_password
from certvault.services.kernel.ports import open_ports
from certvault.services.kernel.witness import AuditHeadStore
from certvault.services.pki import enrollment_forms
from certvault.services.vault import settings as kv_settings
from certvault.services.vault.release import release_key
from tests.conftest import TEST_OPERATOR
from tests.factories import make_ca, make_cert, make_p12, new_key
from tests.functional import cli_env
from tests.functional.api_fixtures import P12_PASSWORD, ApiWorld, api_fixture  # noqa: F401
from tests.functional.console_fixtures import (  # noqa: F401 - `console`
    PASSWORD,
    ConsoleWorld,
    console_fixture,
    csrf_of,
)
from tests.functional.helpers import events

V1 = "/api/v1"
PASSPHRASE = "a-good-long-passphrase"


# --- the attacker's tools: SQL only ---------------------------------------------------------------


def _sql(api_or_ports: Any, statement: str, **params: Any) -> None:
    ports = getattr(api_or_ports, "ports", api_or_ports)
    with ports.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def _row(api_or_ports: Any, table: str, where: str, **params: Any) -> dict[str, Any]:
    ports = getattr(api_or_ports, "ports", api_or_ports)
    with ports.db.engine.connect() as conn:
        found = conn.execute(text(f"SELECT * FROM {table} WHERE {where}"), params).mappings().one()
    return dict(found)


def _put_back(api_or_ports: Any, table: str, old: dict[str, Any], key: str = "id") -> None:
    """Write an older copy of a row over the current one (every column, its MAC too)."""
    columns = ", ".join(f"{name} = :{name}" for name in old if name != key)
    _sql(api_or_ports, f"UPDATE {table} SET {columns} WHERE {key} = :{key}", **old)


def _insert(api_or_ports: Any, table: str, values: dict[str, Any]) -> None:
    names = ", ".join(values)
    _sql(
        api_or_ports,
        f"INSERT INTO {table} ({names}) VALUES ({', '.join(':' + n for n in values)})",
        **values,
    )


# --- what the defender sees -----------------------------------------------------------------------


def _refused(ports: Any) -> list[tuple[str, str]]:
    """(table, uuid) of every audited refusal of a row."""
    found = []
    for e in events(ports, audit.ROW_REFUSED):
        assert e.outcome == "refused"
        details = json.loads(e.details)
        assert details["reason"] == "row_tampered" and details["uuid"] == e.target_id
        found.append((e.target_type, e.target_id))
    return found


def _reason(kind: str) -> str:
    return {
        "altered": "MAC does not match: the row was altered, inserted or moved",
        "replayed": "below the account's grant generation: an old copy put back",
    }[kind]


def _reported(ports: Any) -> dict[tuple[str, str], str]:
    return {(p.table, p.uuid): p.reason for p in seals.check_rows(ports).problems}


def _assert_refused(r: Any) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "row_tampered"


def _download(api: ApiWorld, name: str, cert_id: int, **body: Any) -> Any:
    body.setdefault("passphrase", PASSPHRASE)
    body.setdefault("reason", "ticket 1")
    return api.post(name, f"{V1}/certificates/{cert_id}/key", json=body)


def _live(api: ApiWorld) -> None:
    """Everything certvault wrote itself still works."""
    assert api.get("keys", f"{V1}/certificates").status_code == 200
    assert _download(api, "keys", api.alice.cert_ids[1]).status_code == 200
    assert _download(api, "sales", api.sam.cert_ids[0]).status_code == 200


# --- a clean installation -------------------------------------------------------------------------


def test_rows_written_through_certvault_verify(api):
    report = seals.check_rows(api.ports)
    assert report.ok, report.problems
    assert report.rows > 20
    _live(api)
    assert _refused(api.ports) == []


# --- api_tokens -----------------------------------------------------------------------------------


def test_an_inserted_token_is_refused(api):
    chosen = tokens.PREFIX + "chosen-by-the-attacker-0123456789abcdefghij"
    real = _row(api, "api_tokens", "id = :id", id=api.token_ids["keys"])
    forged = {
        **{k: v for k, v in real.items() if k != "id"},
        "uuid": str(uuid.uuid4()),
        "token_sha256": hashlib.sha256(chosen.encode()).hexdigest(),
        "prefix": chosen[:12],
        # A MAC taken from a real row does not fit another one.
    }
    _insert(api, "api_tokens", forged)

    r = api.client.get(f"{V1}/certificates", headers={"Authorization": f"Bearer {chosen}"})
    _assert_refused(r)
    assert _refused(api.ports) == [("api_tokens", forged["uuid"])]
    assert _reported(api.ports) == {("api_tokens", forged["uuid"]): _reason("altered")}
    _live(api)


def test_a_revoked_token_put_back_is_refused(api):
    before = _row(api, "api_tokens", "id = :id", id=api.token_ids["keys_read"])
    tokens.revoke_token(api.ports, TEST_OPERATOR, "acme", api.token_ids["keys_read"])
    assert api.get("keys_read", f"{V1}/certificates").status_code == 401

    _put_back(api, "api_tokens", before)
    _assert_refused(api.get("keys_read", f"{V1}/certificates"))
    assert _refused(api.ports) == [("api_tokens", before["uuid"])]
    assert _reported(api.ports) == {("api_tokens", before["uuid"]): _reason("replayed")}
    # Un-revoking it by hand, keeping the current MAC, is an alteration.
    _sql(api, "UPDATE api_tokens SET revoked_at = NULL WHERE id = :id", id=before["id"])
    _assert_refused(api.get("keys_read", f"{V1}/certificates"))
    _live(api)


# --- admins ---------------------------------------------------------------------------------------


def test_an_admin_made_account_wide_is_refused(api):
    """The organization administrator of Sales gives themselves the account role, or another
    organization: alice's keys (default organization) stay out of reach."""
    sales = _row(api, "admins", "login = 'sales'")
    alice_new = api.alice.cert_ids[1]
    assert _download(api, "sales", alice_new).status_code == 404

    _sql(api, "UPDATE admins SET role = 'account' WHERE id = :id", id=sales["id"])
    _assert_refused(_download(api, "sales", alice_new))
    _put_back(api, "admins", sales)

    both = " ".join(sorted(str(i) for i in (api.orgs["default"], api.orgs["sales"])))
    _sql(api, "UPDATE admins SET organization_ids = :o WHERE id = :id", o=both, id=sales["id"])
    _assert_refused(_download(api, "sales", alice_new))
    _put_back(api, "admins", sales)
    assert _download(api, "sales", api.sam.cert_ids[0]).status_code == 200

    # The links of admin_organizations carry no MAC and decide nothing: the sealed copy does.
    _sql(
        api,
        "INSERT INTO admin_organizations (admin_id, organization_id) VALUES (:a, :o)",
        a=sales["id"],
        o=api.orgs["default"],
    )
    assert _download(api, "sales", alice_new).status_code == 404
    assert _reported(api.ports) == {
        ("admin_organizations", sales["uuid"]): "differs from the administrator's sealed "
        "organizations"
    }
    assert _refused(api.ports) == [("admins", sales["uuid"])] * 2


def test_a_removed_privilege_altered_or_put_back_is_refused(api):
    keys = _row(api, "admins", "login = 'keys'")
    view = admins.update_admin(
        api.ports,
        TEST_OPERATOR,
        "acme",
        keys["id"],
        role="account",
        organizations=[],
        privileges=["certificates_manage", "persons_manage"],
        email=None,
    )
    assert "key_vault_download" not in {p.value for p in view.privileges}
    assert _download(api, "keys", api.alice.cert_ids[1]).status_code == 403

    _sql(
        api, "UPDATE admins SET privileges = :p WHERE id = :id", p=keys["privileges"], id=keys["id"]
    )
    _assert_refused(_download(api, "keys", api.alice.cert_ids[1]))
    assert _reported(api.ports) == {("admins", keys["uuid"]): _reason("altered")}

    _put_back(api, "admins", keys)
    _assert_refused(_download(api, "keys", api.alice.cert_ids[1]))
    assert _reported(api.ports) == {("admins", keys["uuid"]): _reason("replayed")}
    assert _refused(api.ports) == [("admins", keys["uuid"])] * 2


def test_a_deactivated_admin_put_back_is_refused(api):
    admin = _row(api, "admins", "login = 'keys'")
    token = _row(api, "api_tokens", "id = :id", id=api.token_ids["keys"])
    admins.deactivate_admin(api.ports, TEST_OPERATOR, "acme", admin["id"])
    assert api.get("keys", f"{V1}/certificates").status_code == 401

    _put_back(api, "admins", admin)
    _put_back(api, "api_tokens", token)
    _assert_refused(api.get("keys", f"{V1}/certificates"))
    reported = _reported(api.ports)
    assert reported[("admins", admin["uuid"])] == _reason("replayed")
    assert reported[("api_tokens", token["uuid"])] == _reason("replayed")
    # Everyone else keeps working: the bump sealed their rows again.
    assert api.get("sales", f"{V1}/certificates").status_code == 200
    assert api.get("reader", f"{V1}/certificates").status_code == 200


def test_taking_a_grant_away_does_not_wait_for_a_tampered_row(api):
    """A bump seals the account's grant rows again; one that does not verify is left refused
    (and audited) rather than blocking the revocation."""
    reader = _row(api, "admins", "login = 'reader'")
    _sql(api, "UPDATE admins SET privileges = 'key_vault_download' WHERE id = :id", id=reader["id"])
    tokens.revoke_token(api.ports, TEST_OPERATOR, "acme", api.token_ids["keys_read"])
    assert api.get("keys_read", f"{V1}/certificates").status_code == 401
    assert _refused(api.ports) == [("admins", reader["uuid"])]
    assert _reported(api.ports) == {("admins", reader["uuid"]): _reason("altered")}
    _assert_refused(api.get("reader", f"{V1}/certificates"))
    assert api.get("keys", f"{V1}/certificates").status_code == 200


# --- certificates and persons ---------------------------------------------------------------------


def test_a_certificate_moved_into_another_organization_is_refused(api):
    alice_new = api.alice.cert_ids[1]
    cert = _row(api, "certificates", "id = :id", id=alice_new)
    assert _download(api, "sales", alice_new).status_code == 404

    _sql(
        api,
        "UPDATE certificates SET organization_id = :o WHERE id = :id",
        o=api.orgs["sales"],
        id=alice_new,
    )
    with pytest.raises(seals.TamperedRow):
        release_key(api.ports, TEST_OPERATOR, "acme", alice_new, passphrase=None, reason="r")
    _assert_refused(_download(api, "sales", alice_new))
    assert _reported(api.ports) == {("certificates", cert["uuid"]): _reason("altered")}
    assert ("certificates", cert["uuid"]) in _refused(api.ports)


def test_an_inserted_certificate_with_a_victims_key_is_refused(api):
    """A throwaway issuer certifies alice's public key for the attacker's address, and the row
    points at her escrowed key, in the organization of a colluding administrator."""
    victim = _row(api, "certificates", "id = :id", id=api.alice.cert_ids[1])
    cert = make_cert(api.alice.keys[1], "mallory@evil.example", issuer=make_ca("Throwaway"))
    der = cert.public_bytes(Encoding.DER)
    forged = {
        **{k: v for k, v in victim.items() if k != "id"},
        "uuid": str(uuid.uuid4()),
        "organization_id": api.orgs["sales"],
        "der": der,
        "sha256": hashlib.sha256(der).digest(),
        "sha1_hex": cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303
        "md5_hex": cert.fingerprint(hashes.MD5()).hex(),  # noqa: S303
        "serial": format(cert.serial_number, "x"),
        "issuer_sha256": hashlib.sha256(cert.issuer.public_bytes()).digest(),
        "emails": "mallory@evil.example",
    }
    _insert(api, "certificates", forged)
    forged_id = _row(api, "certificates", "uuid = :u", u=forged["uuid"])["id"]
    _assert_refused(_download(api, "sales", forged_id))
    _assert_refused(api.get("sales", f"{V1}/certificates"))
    assert _reported(api.ports) == {("certificates", forged["uuid"]): _reason("altered")}


def test_an_altered_person_is_refused(api):
    alice = _row(api, "persons", "id = :id", id=api.alice.person_id)
    _sql(
        api,
        "UPDATE persons SET email = 'mallory@evil.example', secret_id_hash = :h WHERE id = :id",
        h=hash_password(api.ports, "mallory's secret"),
        id=alice["id"],
    )
    _assert_refused(api.get("keys", f"{V1}/persons/{alice['id']}"))
    with pytest.raises(seals.TamperedRow):
        persons.get_person(api.ports, TEST_OPERATOR, "acme", alice["id"])
    assert _reported(api.ports) == {("persons", alice["uuid"]): _reason("altered")}


# --- the account's Key Vault and release policy ---------------------------------------------------


def test_key_vault_turned_off_cannot_be_turned_on_in_the_database(api):
    account = _row(api, "accounts", "slug = 'acme'")
    accounts.set_key_vault(api.ports, TEST_OPERATOR, "acme", False)
    assert _download(api, "keys", api.alice.cert_ids[1]).json()["code"] == "key_vault_disabled"

    _sql(api, "UPDATE accounts SET key_vault_enabled = :on WHERE slug = 'acme'", on=True)
    _assert_refused(_download(api, "keys", api.alice.cert_ids[1]))
    _put_back(api, "accounts", account)
    _assert_refused(_download(api, "keys", api.alice.cert_ids[1]))
    assert _reported(api.ports)[("accounts", account["uuid"])] == _reason("replayed")
    # The account's own row is the one refused: its refusals go to the installation's chain.
    refused = [e for e in events(api.ports, audit.ROW_REFUSED)]
    assert refused and {e.account_id for e in refused} == {None}
    assert {json.loads(e.details)["account_id"] for e in refused} == {account["id"]}


def test_a_tightened_release_policy_cannot_be_loosened_in_the_database(api):
    accounts.set_release_policy(api.ports, TEST_OPERATOR, "acme", reason_required=True)
    r = _download(api, "keys", api.alice.cert_ids[1], reason=None)
    assert r.json()["code"] == "reason_required"
    _sql(api, "UPDATE accounts SET reason_required = :off WHERE slug = 'acme'", off=False)
    _assert_refused(_download(api, "keys", api.alice.cert_ids[1], reason=None))


def test_key_vault_settings_altered_or_put_back_are_refused(api):
    options = kv_settings.RecoveryOptions(recovery_method="email_code")
    kv_settings.update_recovery_options(api.ports, TEST_OPERATOR, "acme", options)
    account_id = _row(api, "accounts", "slug = 'acme'")["id"]
    before = _row(api, "key_vault_settings", "account_id = :a", a=account_id)
    kv_settings.update_recovery_options(
        api.ports, TEST_OPERATOR, "acme", kv_settings.RecoveryOptions(recovery_method="disabled")
    )

    _put_back(api, "key_vault_settings", before, key="account_id")
    with pytest.raises(seals.TamperedRow):
        kv_settings.get_key_vault_settings(api.ports, TEST_OPERATOR, "acme")
    assert _reported(api.ports) == {("key_vault_settings", before["uuid"]): _reason("replayed")}
    _sql(
        api,
        "UPDATE key_vault_settings SET mac = NULL, grant_generation = 99 WHERE account_id = :a",
        a=account_id,
    )
    with pytest.raises(seals.TamperedRow):
        kv_settings.get_key_vault_settings(api.ports, TEST_OPERATOR, "acme")


def test_an_inserted_trusted_issuer_is_refused(api):
    accounts.set_require_trusted_issuer(api.ports, TEST_OPERATOR, "acme", True)
    rogue = make_ca("Rogue CA")
    key = new_key("ec256")
    p12 = make_p12(key, make_cert(key, "alice@acme.example", issuer=rogue), P12_PASSWORD)
    path = f"{V1}/persons/{api.alice.person_id}/keys"
    upload = {"p12": base64.b64encode(p12).decode(), "password": P12_PASSWORD}
    refused = api.post("keys", path, json=upload)
    assert refused.json()["code"] == "untrusted_issuer", refused.text

    der = rogue[1].public_bytes(Encoding.DER)
    issuer = {
        "uuid": str(uuid.uuid4()),
        "account_id": _row(api, "accounts", "slug = 'acme'")["id"],
        "der": der,
        "sha256": hashlib.sha256(der).digest(),
        "subject": rogue[1].subject.rfc4514_string(),
        "created_at": _row(api, "accounts", "slug = 'acme'")["created_at"],
        "grant_generation": 0,
        "mac": "0" * 64,
    }
    _insert(api, "trusted_issuers", issuer)
    _assert_refused(api.post("keys", path, json=upload))
    assert ("trusted_issuers", issuer["uuid"]) in _refused(api.ports)
    assert _reported(api.ports) == {("trusted_issuers", issuer["uuid"]): _reason("altered")}


# --- a crash between commit and the witness write -------------------------------------------------


@pytest.mark.parametrize("crash", ["skipped", "raised"])
def test_a_crash_before_the_witness_write_locks_nobody_out(api, monkeypatch, crash):
    store = api.ports.audit_heads
    account_uuid = _row(api, "accounts", "slug = 'acme'")["uuid"]
    before = store.generation(account_uuid)
    real = store.advance_generation

    def lost(account: str, generation: int) -> None:
        monkeypatch.setattr(store, "advance_generation", real)  # once
        if crash == "raised":
            raise OSError("killed before the witness was written")

    monkeypatch.setattr(store, "advance_generation", lost)
    try:
        tokens.revoke_token(api.ports, TEST_OPERATOR, "acme", api.token_ids["keys_read"])
    except OSError:
        assert crash == "raised"
    assert store.generation(account_uuid) == before  # the witness write was lost

    assert api.get("keys_read", f"{V1}/certificates").status_code == 401  # committed
    _live(api)  # rows one generation ahead of the witness are the crash's trace, not tampering
    assert store.generation(account_uuid) == before + 1  # and the witness caught up
    assert seals.check_rows(api.ports).ok
    assert _refused(api.ports) == []


def test_a_read_that_overlaps_a_bump_is_not_taken_for_an_old_copy(api):
    """A read whose snapshot began before a bump committed, and which meets the moved witness
    after it, holds rows one generation behind: it is told to try again, and nothing is refused
    or audited as tampering."""
    with api.ports.db.read() as s:
        s.scalars(select(Organization)).all()  # on SQLite the read's snapshot begins here
        tokens.revoke_token(api.ports, TEST_OPERATOR, "acme", api.token_ids["keys_read"])
        try:
            row = s.get(ApiToken, api.token_ids["keys"])
        except seals.RowChanged:
            assert api.ports.db.is_sqlite  # the snapshot is older than the bump
        else:
            assert not api.ports.db.is_sqlite  # READ COMMITTED: this statement sees the bump
            assert row is not None and row.revoked_at is None
    assert _refused(api.ports) == []
    assert api.get("keys", f"{V1}/certificates").status_code == 200


# --- console sessions, passwords and TOTP ---------------------------------------------------------


def _session_row(console: ConsoleWorld, client: Any) -> dict[str, Any]:
    sid = web_sessions.session_id_of(client.cookies[web_sessions.SESSION_COOKIE])
    return _row(console.ports, "web_sessions", "id = :id", id=sid)


def test_a_signed_out_session_put_back_is_refused(console):
    boss = console.sign_in("boss")
    cookie = boss.client.cookies[web_sessions.SESSION_COOKIE]
    row = _session_row(console, boss.client)
    assert boss.post("/admin/logout").url.path == "/admin/login"

    _put_back(console.ports, "web_sessions", row)
    thief = console.client()
    thief.cookies.set(web_sessions.SESSION_COOKIE, cookie)
    assert thief.get("/admin/").status_code == 503
    assert _reported(console.ports) == {("web_sessions", row["uuid"]): _reason("replayed")}


def test_an_inserted_session_is_refused(console):
    boss = console.sign_in("boss")
    real = _session_row(console, boss.client)
    chosen = "a-cookie-the-attacker-chose-0123456789"
    forged = {**real, "id": web_sessions.session_id_of(chosen), "uuid": str(uuid.uuid4())}
    _insert(console.ports, "web_sessions", forged)
    thief = console.client()
    thief.cookies.set(web_sessions.SESSION_COOKIE, chosen)
    assert thief.get("/admin/").status_code == 503
    assert _refused(console.ports) == [("web_sessions", forged["uuid"])]
    assert boss.get("/admin/").status_code == 200


def _password_login(console: ConsoleWorld, login: str, password: str, code: str) -> Any:
    client = console.client()
    page = client.get("/admin/login")
    data = {"account": "acme", "login": login, "password": password, "code": code}
    return client.post("/admin/login", data={"csrf_token": csrf_of(page.text), **data})


def test_a_replaced_password_hash_is_refused(console):
    boss = console.sign_in("boss")
    admin = _row(console.ports, "admins", "login = 'boss'")
    chosen = "the-attacker-knows-this-one"
    _sql(
        console.ports,
        "UPDATE admins SET password_hash = :h WHERE id = :id",
        h=hash_password(console.ports, chosen),
        id=admin["id"],
    )
    answer = _password_login(console, "boss", chosen, boss.next_code())
    assert answer.status_code == 503
    assert web_sessions.SESSION_COOKIE not in answer.cookies
    assert _reported(console.ports) == {("admins", admin["uuid"]): _reason("altered")}


def test_a_reset_totp_put_back_is_refused(console):
    boss = console.sign_in("boss")
    before = _row(console.ports, "admins", "login = 'boss'")
    admins.reset_totp(console.ports, TEST_OPERATOR, "acme", "boss")
    assert boss.get("/admin/").url.path == "/admin/login"  # sessions ended

    _put_back(console.ports, "admins", before)
    answer = _password_login(console, "boss", PASSWORD, boss.next_code())
    assert answer.status_code == 503
    assert _reported(console.ports)[("admins", before["uuid"])] == _reason("replayed")


def test_sign_in_and_out_through_certvault_keeps_every_row_sealed(console):
    boss = console.sign_in("boss")
    clerk = console.sign_in("clerk")
    assert boss.post("/admin/logout").url.path == "/admin/login"  # a bump
    assert clerk.get("/admin/").status_code == 200
    again = _password_login(console, "boss", PASSWORD, boss.next_code())
    assert again.status_code == 200 and again.url.path == "/admin/"
    assert seals.check_rows(console.ports).ok


# --- upgrading, `certvault verify`, and what is bound ---------------------------------------------


def test_an_installation_from_before_seals_is_sealed_once_by_init(ports, operator):
    accounts.create_account(ports, operator, "Acme Corp", "acme", key_vault_enabled=True)
    admins.create_admin(ports, operator, "acme", "boss", role="organization", organizations=["1"])
    made = tokens.create_token(ports, operator, "acme", "boss")
    # What the version before seals leaves after migration 0006: rows without MACs, no row-seal
    # key, and no mark beside the witness.
    for spec in seals.SEALED:
        _sql(ports, f"UPDATE {spec.table} SET mac = NULL")
    _sql(ports, "DELETE FROM service_keys WHERE purpose = :p", p=seals.SEAL_KEY_PURPOSE)
    (ports.audit_heads.directory / f"{seals.INSTALLATION}.generation").unlink()
    # A generation the witness already holds (as a table sealed by a later version would meet):
    # rows are sealed at it, never below it.
    account_uuid = _row(ports, "accounts", "slug = 'acme'")["uuid"]
    ports.audit_heads.advance_generation(account_uuid, 4)

    upgraded = open_ports(ports.settings)
    try:
        with pytest.raises(ConfigurationError, match="certvault init"):
            tokens.authenticate(upgraded, made.token)
        result = accounts.initialize(upgraded, operator)
        # The account, its default organization, the admin and the token.
        assert result.sealed_rows == seals.check_rows(upgraded).rows == 4
        actor, account = tokens.authenticate(upgraded, made.token)
        assert account.slug == "acme" and actor.organization_ids == {1}
        assert _row(upgraded, "api_tokens", "id = :id", id=made.token_id)["grant_generation"] == 4

        # Sealed once: a row without a MAC from now on is refused, and init leaves it so.
        chosen = tokens.PREFIX + "inserted-after-the-upgrade-0123456789abcdef"
        row = _row(upgraded, "api_tokens", "id = :id", id=made.token_id)
        forged = {
            **{k: v for k, v in row.items() if k != "id"},
            "uuid": str(uuid.uuid4()),
            "token_sha256": hashlib.sha256(chosen.encode()).hexdigest(),
            "mac": None,
        }
        _insert(upgraded, "api_tokens", forged)
        assert accounts.initialize(upgraded, operator).sealed_rows == 0
        with pytest.raises(seals.TamperedRow):
            tokens.authenticate(upgraded, chosen)
        assert _reported(upgraded) == {("api_tokens", forged["uuid"]): _reason("altered")}
    finally:
        upgraded.close()


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def test_certvault_verify_names_a_tampered_row(cli):
    cli.bootstrap()
    ports = cli.ports()
    try:
        admins.create_admin(ports, TEST_OPERATOR, "acme", "boss", privileges=["persons_manage"])
    finally:
        ports.close()
    ok = cli.run("verify")
    assert ok.returncode == 0, cli_env.text(ok)
    assert "sealed rows checked: 3, failures: 0" in ok.stdout  # account, organization, admin

    cli.sql("UPDATE admins SET privileges = 'key_vault_download persons_manage'")
    [(admin_uuid,)] = cli.sql("SELECT uuid FROM admins")
    broken = cli.run("verify")
    assert broken.returncode == 1
    said = cli_env.text(broken)
    assert f"TAMPERED admins row {admin_uuid}: MAC does not match" in said
    assert "key_vault_download" not in said  # the row's contents are never shown
    assert "keys checked" not in said


def test_every_column_of_a_sealed_table_is_bound_or_said_why_not():
    for spec in seals.SEALED:
        columns = set(spec.model.__table__.columns.keys())
        kept_apart = {"mac", "account_id"}  # the MAC itself; the account is bound by its uuid
        assert set(spec.columns) | set(spec.unbound) | kept_apart >= columns, spec.table
        assert not set(spec.columns) & set(spec.unbound), spec.table
        assert ("grant_generation" in spec.columns) == spec.grant, spec.table
        assert set(spec.later) <= set(spec.columns), spec.table
        # The MAC is the row's version: a write over a row changed since it was read fails.
        assert spec.model.__mapper__.version_id_col is spec.model.__table__.c.mac, spec.table


def test_a_column_added_later_keeps_old_seals_and_binds_new_values(ports, operator):
    """persons.active came after persons were first sealed: a row sealed before still verifies,
    and an inactive person made active again by SQL is refused."""
    accounts.create_account(ports, operator, "Acme Corp", "acme", key_vault_enabled=True)
    with ports.db.transaction() as s:
        acme = s.scalars(select(Organization)).first()
        assert acme is not None
        s.add(Person(account_id=acme.account_id, organization_id=acme.id, email="p@example.org"))
    spec = seals.sealed_table(Person)
    assert spec is not None and spec.later == {"active": True}
    with ports.db.engine.connect() as conn:  # typed, as certvault reads it
        row = dict(conn.execute(select(Person.__table__)).mappings().one())
    # The MAC of the row as the version before `active` would have sealed it is the same.
    before = {k: v for k, v in row.items() if k != "active"}
    old_spec = seals.SealedTable(Person, tuple(c for c in spec.columns if c != "active"))
    with ports.db.engine.connect() as conn:
        key = seals._key(conn, ports)
        account_uuid = seals._account_uuid(conn, ports, spec, row)
    assert seals._mac(key, old_spec, before, account_uuid) == row["mac"]

    with ports.db.transaction() as s:
        person = s.scalars(select(Person)).one()
        person.active = False
    assert seals.check_rows(ports).ok
    _sql(ports, "UPDATE persons SET active = :t", t=True)
    assert _reported(ports) == {("persons", row["uuid"]): _reason("altered")}


def test_bulk_writes_to_sealed_tables_are_refused(ports):
    """They pass no row events: the rows would be written unsealed, or left with a stale seal."""
    with ports.db.transaction() as s:
        for statement in (
            update(Admin).values(privileges=""),
            delete(ApiToken),
            insert(Person).values(email="x@example.org"),
        ):
            with pytest.raises(ConfigurationError, match="through the ORM"):
                s.execute(statement)


def test_the_witness_generation_moves_forward_only(tmp_path):
    store = AuditHeadStore(tmp_path / "heads")
    account = str(uuid.uuid4())
    assert store.generation(account) == 0
    store.advance_generation(account, 3)
    store.advance_generation(account, 2)  # a writer that finished late
    assert store.generation(account) == 3
    path = store.directory / f"{account}.generation"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in store.directory.iterdir() if p.name != ".lock"] == [path.name]
    with pytest.raises(ValueError):
        store.generation("../escape")


def test_forms_sealed_before_ask_name_keep_verifying(ports, operator):
    """enrollment_forms.ask_name came after forms were first sealed: a form sealed before still
    verifies and asks for no name, and a form made to ask (or not) by SQL is refused."""
    accounts.create_account(ports, operator, "Acme Corp", "acme", key_vault_enabled=True)
    old = enrollment_forms.create_form(
        ports, operator, "acme", slug="old", profile="smime", access_code=None
    )
    spec = seals.sealed_table(EnrollmentForm)
    assert spec is not None and spec.later == {"ask_name": "off"}
    with ports.db.engine.connect() as conn:
        row = dict(
            conn.execute(select(EnrollmentForm.__table__).where(EnrollmentForm.id == old.id))
            .mappings()
            .one()
        )
        key = seals._key(conn, ports)
        account_uuid = seals._account_uuid(conn, ports, spec, row)
    # The MAC is the one the version before `ask_name` gave the row.
    old_spec = seals.SealedTable(
        EnrollmentForm, tuple(c for c in spec.columns if c != "ask_name"), grant=True
    )
    before = {k: v for k, v in row.items() if k != "ask_name"}
    assert seals._mac(key, old_spec, before, account_uuid) == row["mac"]
    assert enrollment_forms.get_form_public(ports, "acme", "old").ask_name == "off"

    asking = enrollment_forms.create_form(
        ports,
        operator,
        "acme",
        slug="asking",
        profile="smime",
        access_code=None,
        ask_name="required",
    )
    assert seals.check_rows(ports).ok
    _sql(ports, "UPDATE enrollment_forms SET ask_name = 'optional' WHERE id = :i", i=old.id)
    _sql(ports, "UPDATE enrollment_forms SET ask_name = 'off' WHERE id = :i", i=asking.id)
    assert _reported(ports) == {
        ("enrollment_forms", old.uuid): _reason("altered"),
        ("enrollment_forms", asking.uuid): _reason("altered"),
    }
