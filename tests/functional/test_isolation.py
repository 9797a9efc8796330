"""Tenant isolation over every endpoint that takes an object id (DESIGN.md §5, invariant 4).

The routes are read from the application itself: a route with a path parameter that the table
below does not describe fails the test, so a new endpoint cannot slip through. For each one:

- a token of another account asking for this account's object answers exactly like a missing
  id (same status, byte-identical body), and so does this account's token asking for the other
  account's object;
- an organization administrator asking for an object of another organization, likewise;
- on the SCM-compatible paths, header authentication (`login`/`password`/`customerUri`) of an
  administrator of the other account, likewise;
- a token of this account without the scope the operation needs answers 403 for a visible object;
- the public pages addressed by slug (enrollment forms, CRLs) answer for another account's form or
  CA exactly as for a missing one.

None of it changes persons, certificates, escrowed keys or the mail outbox, and every refused
release is in the audit log with outcome "refused". Finally each id is shown to be a real one:
the right caller reaches the object (neither 401, 403 nor 404).
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from certvault.services.access import admins, tokens
from certvault.services.directory import persons
from certvault.services.kernel.actors import Actor, Scope
from certvault.services.pki import ca, enrollment_forms
from certvault.services.vault.release import RELEASE
from tests.conftest import TEST_OPERATOR
from tests.factories import make_p12
from tests.functional.api_fixtures import (  # noqa: F401 - `api`
    ALL_PRIVILEGES,
    P12_PASSWORD,
    ApiWorld,
    api_fixture,
)
from tests.functional.helpers import counts, events

PASSPHRASE = "a-good-long-passphrase"
ROBOT_PASSWORD = "other-robot-password-0123"
MISSING_ID = 999_999
ALL_SCOPES = {s.value for s in Scope}


# --- the table ----------------------------------------------------------------------------------

Body = Callable[["World"], dict[str, Any] | None]


@dataclass(frozen=True)
class Entry:
    """How to call one operation, and what it needs."""

    kind: str  # "api" (own API, bearer), "scm" (bearer or header auth), "public" (by slug)
    scope: str | None = None  # the token scope the operation needs
    body: Body = lambda w: None
    release: bool = False  # hands out a key: refusals must be audited as key.release
    listing: bool = False  # a filtered list: an unseen id gives the empty list, like a missing one


def _p12_upload(w: World) -> dict[str, Any]:
    p12 = make_p12(w.api.alice.keys[1], w.api.alice.certs[1], P12_PASSWORD)
    return {"p12": base64.b64encode(p12).decode(), "password": P12_PASSWORD}


def _download(w: World) -> dict[str, Any]:
    return {"passphrase": PASSPHRASE}


def _keystore(w: World) -> dict[str, Any]:
    return {"passphrase": PASSPHRASE, "encryptionType": "AES256-SHA256"}


def _person_change(w: World) -> dict[str, Any]:
    return {"phone": "+1 555 0100"}


def _public_form(w: World) -> dict[str, Any]:
    return {"csrf_token": w.csrf_token, "email": "someone@example.org", "code": "12345678"}


V1 = "/api/v1"
READ, UPLOAD, DOWNLOAD, MANAGE = "read", "keys:upload", "keys:download", "manage"

TABLE: dict[tuple[str, str], Entry] = {
    # the own API
    ("GET", f"{V1}/persons/{{person_id}}"): Entry("api", READ),
    ("PATCH", f"{V1}/persons/{{person_id}}"): Entry("api", MANAGE, _person_change),
    ("GET", f"{V1}/certificates/{{certificate_id}}"): Entry("api", READ),
    ("GET", f"{V1}/certificates/{{certificate_id}}/certificate"): Entry("api", READ),
    ("POST", f"{V1}/persons/{{person_id}}/keys"): Entry("api", UPLOAD, _p12_upload),
    ("POST", f"{V1}/certificates/{{certificate_id}}/key"): Entry(
        "api", DOWNLOAD, _download, release=True
    ),
    ("POST", f"{V1}/persons/{{person_id}}/keys/download"): Entry(
        "api", DOWNLOAD, _download, release=True
    ),
    ("PATCH", f"{V1}/forms/{{form_id}}"): Entry("api", MANAGE, lambda w: {"name": "Renamed"}),
    # the SCM-compatible API, both versions
    **{
        key: entry
        for v in ("v1", "v2")
        for key, entry in {
            ("POST", f"/api/person/{v}/{{personId}}/import-key"): Entry("scm", UPLOAD, _p12_upload),
            ("GET", f"/api/person/{v}/id/byEmail/{{email}}"): Entry("scm", READ),
            ("GET", f"/api/person/{v}/{{personId}}"): Entry("scm", READ),
            ("PUT", f"/api/person/{v}/{{personId}}"): Entry("scm", MANAGE, _person_change),
            ("DELETE", f"/api/person/{v}/{{personId}}"): Entry("scm", MANAGE),
            ("GET", f"/api/smime/{v}/byPersonEmail/{{email}}"): Entry("scm", READ, listing=True),
            ("POST", f"/api/smime/{v}/keystore/{{certId}}"): Entry(
                "scm", DOWNLOAD, _keystore, release=True
            ),
            ("POST", f"/api/smime/{v}/revoke/{{certId}}"): Entry(
                "scm", MANAGE, lambda w: {"reason": "superseded"}
            ),
            ("POST", f"/api/smime/{v}/revoke/order/{{certId}}"): Entry(
                "scm", MANAGE, lambda w: {"reason": "superseded"}
            ),
            ("GET", f"/api/smime/{v}/collect/{{certId}}"): Entry("scm", READ),
        }.items()
    },
    # public pages, addressed by account and form or CA name
    ("GET", "/enroll/{account_slug}/{form_slug}"): Entry("public"),
    ("POST", "/enroll/{account_slug}/{form_slug}/code"): Entry("public", body=_public_form),
    ("POST", "/enroll/{account_slug}/{form_slug}/enroll"): Entry("public", body=_public_form),
    ("GET", "/crl/{account_slug}/{ca_name}.crl"): Entry("public"),
}

# Which object each path parameter names.
ROLES = {
    "person_id": "person",
    "personId": "person",
    "certificate_id": "cert",
    "certId": "cert",
    "email": "email",
    "form_id": "form",
    "account_slug": "slug",
    "form_slug": "form_slug",
    "ca_name": "ca_name",
}


# --- the installation ---------------------------------------------------------------------------


@dataclass
class World:
    api: ApiWorld
    # role -> (this account's object, the other account's object, a missing one)
    ids: dict[str, tuple[Any, Any, Any]]
    tokens: dict[str, str]  # "full" and "no:<scope>" for the administrator "iso" of acme
    robot_headers: dict[str, str]  # header credentials of an api-only admin of "other"
    csrf_token: str = ""
    calls: list[str] = field(default_factory=list)

    @property
    def client(self) -> TestClient:
        return self.api.client


@pytest.fixture
def world(api: ApiWorld, operator: Actor) -> World:
    ports = api.ports
    s = ports.settings
    # Refused downloads count against the download limits too; these tests are not about them.
    s.downloads_per_hour_admin = s.downloads_per_hour_token = s.downloads_per_hour_ip = 1_000_000

    admins.create_admin(ports, operator, "acme", "iso", privileges=ALL_PRIVILEGES)
    made = {"full": tokens.create_token(ports, operator, "acme", "iso").token}
    for scope in sorted(ALL_SCOPES):
        rest = sorted(ALL_SCOPES - {scope})
        made[f"no:{scope}"] = tokens.create_token(ports, operator, "acme", "iso", scopes=rest).token
    admins.create_admin(
        ports,
        operator,
        "other",
        "other-robot",
        privileges=ALL_PRIVILEGES,
        api_only=True,
        password=ROBOT_PASSWORD,
    )

    ca.init_ca(ports, operator, "acme", root_name="acme-root", issuing_name="acme-issuing")
    ca.init_ca(ports, operator, "other", root_name="other-root", issuing_name="other-issuing")
    forms = {
        slug: enrollment_forms.create_form(
            ports, operator, account, slug=slug, profile="smime", access_code=None
        ).id
        for account, slug in (("acme", "acme-form"), ("other", "other-form"))
    }
    w = World(
        api=api,
        ids={
            "person": (api.alice.person_id, api.olga.person_id, MISSING_ID),
            "cert": (api.alice.cert_ids[1], api.olga.cert_ids[0], MISSING_ID),
            "email": (api.alice.email, api.olga.email, "nobody@acme.example"),
            "form": (forms["acme-form"], forms["other-form"], MISSING_ID),
            "slug": ("acme", "acme", "acme"),
            "form_slug": ("acme-form", "other-form", "no-such-form"),
            "ca_name": ("acme-issuing", "other-issuing", "no-such-ca"),
        },
        tokens=made,
        robot_headers={"login": "other-robot", "password": ROBOT_PASSWORD, "customerUri": "other"},
    )
    # The public POSTs check their CSRF token first: get one (and its cookie) from a real page.
    page = w.client.get("/enroll/acme/acme-form")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "no CSRF token on the form page"
    w.csrf_token = found.group(1)
    return w


# --- calling ------------------------------------------------------------------------------------

WHICH = {"visible": 0, "hidden": 1, "missing": 2}


def _path(template: str, w: World, which: str) -> str:
    def value(match: re.Match[str]) -> str:
        return str(w.ids[ROLES[match.group(1)]][WHICH[which]])

    return re.sub(r"\{(\w+)\}", value, template)


def _call(w: World, method: str, template: str, which: str, headers: dict[str, str] | None) -> Any:
    entry = TABLE[(method, template)]
    body = entry.body(w)
    path = _path(template, w, which)
    w.calls.append(f"{method} {path}")
    kw: dict[str, Any] = {"headers": headers or {}}
    if body is not None:
        kw["data" if entry.kind == "public" else "json"] = body
    return w.client.request(method, path, **kw)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _path_routes(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) of the application whose path takes a parameter."""
    found = set()
    for route in iter_route_contexts(app.routes):
        path = route.path or ""
        if "{" in path:
            methods = set(route.methods or ())
            if "GET" in methods:
                methods.discard("HEAD")  # Starlette adds it to every GET route
            found |= {(m, path) for m in methods}
    return found


# --- the tests ----------------------------------------------------------------------------------


def test_the_table_covers_every_route_with_a_path_parameter(api: ApiWorld) -> None:
    # The console's routes have a table of their own, with sessions instead of tokens:
    # test_console_isolation.py. The recovery form's are addressed by the account alone and
    # carry their objects (requests, links, page tokens) in the body: test_recovery_pages.py
    # shows another account's answer exactly like a forged one.
    routes = {r for r in _path_routes(api.client.app) if not r[1].startswith(("/admin/", "/kv/"))}
    missing = sorted(routes - set(TABLE))
    assert not missing, f"routes with a path parameter not in the isolation table: {missing}"
    stale = sorted(set(TABLE) - routes)
    assert not stale, f"table entries for routes that no longer exist: {stale}"
    for _, template in TABLE:
        assert all(name in ROLES for name in re.findall(r"\{(\w+)\}", template)), template


def test_other_tenants_and_organizations_see_nothing(world: World) -> None:
    w, api = world, world.api
    before = counts(api.ports)
    refused_before = _refused_releases(w)
    expected_refusals: Counter[tuple[str, str]] = Counter()
    checked: Counter[str] = Counter()

    def alike(method: str, template: str, who: str, headers: dict[str, str], which: str) -> None:
        """Asking for ``which`` answers exactly like asking for a missing id."""
        entry = TABLE[(method, template)]
        seen = _call(w, method, template, which, headers)
        missing = _call(w, method, template, "missing", headers)
        label = (who, method, template)
        expected = 200 if entry.listing else 404
        assert seen.status_code == expected, (label, seen.status_code, seen.text)
        assert missing.status_code == expected, (label, missing.status_code, missing.text)
        assert seen.content == missing.content, (label, seen.text, missing.text)
        assert seen.headers.get("content-type") == missing.headers.get("content-type"), label
        if entry.listing:
            assert seen.json() == [], label
        if entry.release:
            expected_refusals[(who, "not_found")] += 2
        checked[who] += 1

    for (method, template), entry in sorted(TABLE.items()):
        if entry.kind == "public":
            # The other account's form or CA, addressed under this account's slug.
            alike(method, template, "public", {}, "hidden")
            continue
        # A token of the other account asking for this account's objects, and back.
        alike(method, template, "admin:foreign", api.headers("foreign"), "visible")
        alike(method, template, "admin:iso", _bearer(w.tokens["full"]), "hidden")
        # An organization administrator (Sales) asking for an object of the default organization.
        alike(method, template, "admin:sales", api.headers("sales"), "visible")
        if entry.kind == "scm":
            alike(method, template, "admin:other-robot", w.robot_headers, "visible")
        # The right account and organization, without the scope: 403 for the visible object.
        assert entry.scope in ALL_SCOPES, (method, template)
        r = _call(w, method, template, "visible", _bearer(w.tokens[f"no:{entry.scope}"]))
        assert r.status_code == 403, (method, template, r.status_code, r.text)
        code = r.json()["code"]
        assert code == ("insufficient_scope" if entry.kind == "api" else -403), (template, code)
        if entry.release:
            expected_refusals[("admin:iso", "insufficient_scope")] += 1

    kinds = Counter(e.kind for e in TABLE.values())
    assert checked["public"] == kinds["public"] and checked["admin:other-robot"] == kinds["scm"]
    assert checked["admin:foreign"] == checked["admin:sales"] == kinds["api"] + kinds["scm"]
    assert counts(api.ports) == before, "a refused call changed persons, certificates, keys or mail"

    # Every refused release is in the audit log, refused, and nothing was released.
    new = _refused_releases(w)[len(refused_before) :]
    assert Counter((actor, reason) for actor, reason, _ in new) == expected_refusals
    # Per release route 7 refused calls (3 outsiders, each for a hidden and a missing id, and
    # the token without the scope); on the SCM paths 2 more by header credentials.
    releases = [e for e in TABLE.values() if e.release]
    assert len(releases) >= 4
    assert sum(expected_refusals.values()) == sum(7 + 2 * (e.kind == "scm") for e in releases)
    assert not [e for e in events(api.ports, RELEASE) if e.outcome == "success"]


def test_every_id_in_the_table_is_real(world: World) -> None:
    """The right caller reaches each object: the 404s above are isolation, not bad ids."""
    w = world
    robot_own = dict(w.robot_headers)
    for (method, template), entry in sorted(TABLE.items()):
        if entry.kind == "public":
            # The other account's form and CA under their own slug.
            path = _path(template, w, "hidden").replace("/acme/", "/other/")
            kw = {"data": entry.body(w)} if entry.body(w) is not None else {}
            r = w.client.request(method, path, **kw)
            # Past the CSRF check and the lookup: the form page, a refused code, or 503 for the
            # mail that this installation cannot send; never the 404 of an unknown form or CA.
            assert r.status_code != 404 and "did not come from this site" not in r.text, path
            assert r.status_code < 500 or r.status_code == 503, (path, r.status_code)
            continue
        ids = dict(w.ids)
        if method == "DELETE":  # alice has certificates (409): a person without any
            email = f"delete-{len(w.calls)}@acme.example"
            fresh = persons.create_person(
                w.api.ports, TEST_OPERATOR, "acme", persons.PersonFields(email=email)
            )
            w.ids["person"] = (fresh.id, *w.ids["person"][1:])
        r = _call(w, method, template, "visible", _bearer(w.tokens["full"]))
        w.ids = ids
        # 2xx, or 409 for the second revocation of the same certificate: reached either way.
        assert r.status_code < 300 or r.status_code == 409, (method, template, r.text)
        if entry.kind == "scm" and method == "GET":
            # The other account's own administrator reaches its own objects by header.
            path = _path(template, w, "hidden")
            r = w.client.request(method, path, headers=robot_own)
            assert r.status_code == 200, (path, r.text)
            if entry.listing:
                assert r.json(), path


def _refused_releases(w: World) -> list[tuple[str, str, str]]:
    found = []
    for e in events(w.api.ports, RELEASE):
        if e.outcome == "refused":
            found.append((e.actor.split(" ")[0], json.loads(e.details)["reason"], e.target_id))
    return found
