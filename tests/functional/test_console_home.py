"""The console's home page: the account at a glance, and what needs attention."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import func, select

from certvault.db.models import Certificate, Person
from certvault.services.audit import checks
from certvault.services.vault import recovery, release, verification
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import ask_for_approval, console_fixture  # noqa: F401


def _figure(html: str, name: str) -> int:
    found = re.search(rf'id="figure-{name}"><a href="[^"]*">(\d+)</a>', html)
    assert found, name
    return int(found.group(1))


def _expected(console, organization: int | None = None) -> dict[str, int]:
    with console.ports.db.read() as s:
        where = [Certificate.account_id == Certificate.account_id]
        person_where = [Person.email.like("%acme.example")]
        if organization is not None:
            where.append(Certificate.organization_id == organization)
            person_where.append(Person.organization_id == organization)
        acme = s.scalar(select(Person.account_id).where(Person.email == console.world.alice.email))
        where.append(Certificate.account_id == acme)
        person_where = [Person.account_id == acme] + person_where[1:]
        return {
            "persons": s.scalar(select(func.count()).where(*person_where)),
            "certificates": s.scalar(select(func.count(Certificate.id)).where(*where)),
            "keys": s.scalar(
                select(func.count(func.distinct(Certificate.escrowed_key_id))).where(
                    *where, Certificate.escrowed_key_id.is_not(None)
                )
            ),
        }


def test_figures_and_checks_for_an_account_administrator(console):
    boss = console.sign_in("boss")
    html = boss.get("/admin/").text
    expected = _expected(console)
    for name, value in expected.items():
        assert _figure(html, name) == value, name
    assert expected["certificates"] >= 4 and expected["keys"] >= 2
    assert _figure(html, "releases") == 0
    # Nothing was ever checked: both checks ask to be run.
    assert 'id="attention-audit-check"' in html and 'id="attention-key-check"' in html
    assert "never run" in html.split('id="check-audit"')[1].split("</td>")[0]

    release.release_key(
        console.ports,
        TEST_OPERATOR,
        "acme",
        console.world.alice.cert_ids[1],
        passphrase=None,
        reason="laptop died",
    )
    checks.verify_account_chain(console.ports, TEST_OPERATOR, "acme")
    verification.verify_escrow(console.ports, TEST_OPERATOR, "acme")
    html = boss.get("/admin/").text
    assert _figure(html, "releases") == 1
    audit_cell = html.split('id="check-audit">')[1].split("</td>")[0]
    keys_cell = html.split('id="check-keys">')[1].split("</td>")[0]
    assert audit_cell.startswith("passed:") and "intact" in audit_cell
    assert keys_cell.startswith("passed:") and "0 failures" in keys_cell
    assert 'id="attention-audit-check"' not in html and 'id="attention-key-check"' not in html

    # A week later the checks are stale again; releases older than 7 days no longer count.
    console.clock.advance(days=8)
    html = console.sign_in("clerk").get("/admin/").text  # boss's session has ended by now
    assert _figure(html, "releases") == 0
    assert "over 7 days ago" in html.split('id="attention-key-check">')[1].split("</li>")[0]


def test_certificates_expiring_soon_need_attention(console):
    with console.ports.db.read() as s:
        soonest = min(
            c.not_after
            for c in s.scalars(select(Certificate).where(Certificate.escrowed_key_id.is_not(None)))
            if c.not_after > console.clock()
        )
    console.clock.advance(seconds=(soonest - console.clock() - timedelta(days=10)).total_seconds())
    html = console.sign_in("boss").get("/admin/").text
    assert _figure(html, "expiring") >= 1
    item = html.split('id="attention-expiring">')[1].split("</li>")[0]
    assert "expire within 30 days" in item and "sort=expires" in item


def test_an_organization_administrator_sees_only_their_organizations(console):
    sales = console.sign_in("salesboss")
    html = sales.get("/admin/").text
    expected = _expected(console, console.world.orgs["sales"])
    for name, value in expected.items():
        assert _figure(html, name) == value, name
    assert 'id="figure-releases"' not in html and 'id="check-audit"' not in html
    assert "Only account administrators see the audit log" in html


def test_the_other_account_sees_none_of_acme(console):
    foreign = console.sign_in("foreignboss")
    html = foreign.get("/admin/").text
    acme = _expected(console)
    assert _figure(html, "certificates") != acme["certificates"] or acme["certificates"] == 0
    assert console.world.alice.email not in html


def test_recovery_requests_waiting_are_counted_once_and_shown_alike(console, monkeypatch):
    ask_for_approval(console, "acme", console.world.alice.email)  # default organization
    recovery.request_recovery(console.ports, "acme", console.world.sam.email, "192.0.2.8")
    counted = []
    pending = recovery.pending_requests

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        counted.append(args[2])
        return pending(*args, **kwargs)

    monkeypatch.setattr(recovery, "pending_requests", counting)
    for login, waiting in (("boss", 2), ("salesboss", 1)):  # salesboss: only Sales (sam)
        client = console.sign_in(login)
        counted.clear()
        html = client.get("/admin/").text
        assert counted == ["acme"], login  # the home page counts them once
        item = html.split('id="attention-recovery">')[1].split("</li>")[0]
        plural = "s" if waiting != 1 else ""
        assert f"{waiting} recovery request{plural} waiting for approval." in item, login
        badge = f'<span class="count" id="nav-recovery-count">({waiting} waiting)</span>'
        assert badge in html, login
        # Another page counts them for its navigation, and shows the same number.
        counted.clear()
        assert badge in client.get("/admin/about").text
        assert counted == ["acme"], login
