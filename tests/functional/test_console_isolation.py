"""Tenant and organization isolation over every console route that takes an object id
(DESIGN.md §5, invariant 4), the console's side of test_isolation.py.

The routes are read from the application: a console route with a path parameter that the table
does not name fails the test. For each one, an administrator of another account (a session
cookie of that account), and an organization administrator for another organization's object,
get exactly the answer a missing id gets (same status, same message), and nothing changes. Each
id is shown to be real: the account's own administrator reaches it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import func, select

from certvault.db.models import (
    Admin,
    AuditEvent,
    Certificate,
    EnrollmentForm,
    EscrowedKey,
    FormNonce,
    KeyVaultSettings,
    MailMessage,
    PasswordReset,
    Person,
    RecoveryRequest,
)
from certvault.services.pki import ca, enrollment_forms
from certvault.services.vault.release import RELEASE
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import (
    ConsoleClient,
    ConsoleWorld,
    ask_for_approval,
    console_fixture,  # noqa: F401
)

MISSING_ID = 999_999
ERROR_RE = re.compile(r'id="error"><p>(.*?)</p>', re.S)

# (method, path) -> the form fields of a POST (a valid CSRF token is added to each)
TABLE: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/admin/persons/{person_id}"): {},
    ("POST", "/admin/persons/{person_id}"): {"email": "x@acme.example", "first_name": "X"},
    ("POST", "/admin/persons/{person_id}/secret-id"): {"secret_id": "a-secret-id-value"},
    ("GET", "/admin/persons/{person_id}/download"): {},
    ("POST", "/admin/persons/{person_id}/download"): {"form_token": "x" * 43},
    ("GET", "/admin/certificates/{certificate_id}"): {},
    ("GET", "/admin/certificates/{certificate_id}/download"): {},
    ("POST", "/admin/certificates/{certificate_id}/download"): {"form_token": "x" * 43},
    ("GET", "/admin/admins/{admin_id}"): {},
    ("POST", "/admin/admins/{admin_id}"): {"email": "x@acme.example", "role": "account"},
    ("POST", "/admin/admins/{admin_id}/deactivate"): {},
    ("POST", "/admin/admins/{admin_id}/reset-totp"): {},
    ("POST", "/admin/admins/{admin_id}/reset-password"): {},
    ("GET", "/admin/forms/{form_id}"): {},
    ("POST", "/admin/forms/{form_id}"): {"name": "Renamed", "profile": "smime"},
    ("POST", "/admin/forms/{form_id}/disable"): {},
    ("POST", "/admin/forms/{form_id}/enable"): {},
    ("POST", "/admin/recovery/{request_uuid}"): {"decision": "approve"},
}
WATCHED = (
    Person,
    Certificate,
    EscrowedKey,
    MailMessage,
    Admin,
    EnrollmentForm,
    FormNonce,
    KeyVaultSettings,
    RecoveryRequest,
    PasswordReset,
)


def _console_routes(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in iter_route_contexts(app.routes):
        path = route.path or ""
        if path.startswith("/admin/") and "{" in path:
            found |= {(m, path) for m in (route.methods or ()) if m != "HEAD"}
    return found


def _snapshot(world: ConsoleWorld) -> dict[str, Any]:
    """Every row of the tables a console request could change, as plain values."""
    state: dict[str, Any] = {}
    with world.ports.db.read() as s:
        for model in WATCHED:
            rows = s.scalars(select(model)).all()
            state[model.__tablename__] = sorted(
                repr(sorted((c.key, getattr(r, c.key)) for c in model.__table__.columns))
                for r in rows
            )
    return state


def _releases_refused(world: ConsoleWorld) -> int:
    with world.ports.db.read() as s:
        return s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == RELEASE, AuditEvent.outcome == "refused")
        )


@pytest.fixture
def ids(console: ConsoleWorld) -> dict[str, tuple[int | str, int | str]]:
    """name -> (acme's object in the default organization, the other account's object)."""
    ports, w = console.ports, console.world
    for slug in ("acme", "other"):
        ca.init_ca(ports, TEST_OPERATOR, slug, root_name=f"{slug}-root", issuing_name=f"{slug}-ca")
    forms = {
        slug: enrollment_forms.create_form(
            ports, TEST_OPERATOR, slug, slug=f"{slug}-form", profile="smime", access_code=None
        ).id
        for slug in ("acme", "other")
    }
    return {
        "person_id": (w.alice.person_id, w.olga.person_id),
        "certificate_id": (w.alice.cert_ids[1], w.olga.cert_ids[0]),
        "admin_id": (console.admin_ids["clerk"], console.admin_ids["foreignboss"]),
        "form_id": (forms["acme"], forms["other"]),
        "request_uuid": (
            ask_for_approval(console, "acme", w.alice.email),
            ask_for_approval(console, "other", w.olga.email),
        ),
    }


def _call(who: ConsoleClient, method: str, template: str, object_id: int | str) -> tuple[int, str]:
    path = re.sub(r"\{\w+\}", str(object_id), template)
    if method == "GET":
        answer = who.get(path)
    else:
        answer = who.post(path, dict(TABLE[(method, template)]))
    found = ERROR_RE.search(answer.text)
    return answer.status_code, found.group(1).strip() if found else answer.text


def test_the_table_covers_every_console_route_with_a_path_parameter(console) -> None:
    routes = _console_routes(console.client().app)
    assert sorted(routes - set(TABLE)) == [], "console routes missing from the table"
    assert sorted(set(TABLE) - routes) == [], "table entries for routes that no longer exist"


def test_another_accounts_session_and_another_organization_see_nothing(console, ids) -> None:
    foreign = console.sign_in("foreignboss")
    sales = console.sign_in("salesboss")
    console.ports.settings.downloads_per_hour_admin = 1_000_000
    console.ports.settings.downloads_per_hour_ip = 1_000_000
    before = _snapshot(console)
    refused = _releases_refused(console)
    for method, template in sorted(TABLE):
        name = re.search(r"\{(\w+)\}", template).group(1)
        acme_id, other_id = ids[name]
        # foreignboss's session belongs to "other": acme's object is as missing as a made-up id.
        seen = _call(foreign, method, template, acme_id)
        missing = _call(foreign, method, template, MISSING_ID)
        assert seen == missing, (method, template, seen, missing)
        assert seen[0] == 404, (method, template, seen)
        # salesboss (organization "Sales" of acme) and alice's objects of the default
        # organization; the admin pages are for account administrators only (403 for any id).
        if name in ("person_id", "certificate_id"):
            seen = _call(sales, method, template, acme_id)
            assert seen == _call(sales, method, template, MISSING_ID), (method, template)
            assert seen[0] == 404
        if name in ("person_id", "certificate_id") and method == "GET":
            # and the other account's object, asked for by an acme administrator
            assert _call(sales, method, template, other_id)[0] == 404
    assert _snapshot(console) == before
    # Every refused download (4 calls per download route above) is audited as a refused release.
    downloads = [t for (m, t) in TABLE if m == "POST" and t.endswith("/download")]
    assert _releases_refused(console) == refused + 4 * len(downloads)


def test_every_id_in_the_table_is_real(console, ids) -> None:
    boss = console.sign_in("boss")
    for method, template in sorted(TABLE):
        if method != "GET":
            continue
        name = re.search(r"\{(\w+)\}", template).group(1)
        status, _ = _call(boss, method, template, ids[name][0])
        assert status == 200, (template, status)
