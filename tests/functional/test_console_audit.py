"""The Audit page: the account's own events, newest first, filters and keyset paging, and the
"Verify chain" button (the check of `certvault audit verify`, on this account's chain)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from sqlalchemy import delete, select, update

from certvault.db.models import Account, AuditEvent
from certvault.services.access import admins
from certvault.services.audit import log as audit
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import (
    console_fixture,  # noqa: F401
    csrf_of,
)
from tests.functional.helpers import events

ROW = re.compile(r'<tr id="event-(\d+)"')
OLDER = re.compile(r'<a href="(/admin/audit\?[^"]+)" id="next-page"')
NEWER = re.compile(r'<a href="(/admin/audit\?[^"]+)" id="previous-page"')


def _account_id(ports, slug: str) -> int:
    with ports.db.read() as s:
        return s.scalars(select(Account.id).where(Account.slug == slug)).one()


def _account_events(ports, slug: str) -> list[AuditEvent]:
    account_id = _account_id(ports, slug)
    return [e for e in events(ports) if e.account_id == account_id]


def _rows(html: str) -> list[int]:
    return [int(i) for i in ROW.findall(html)]


def _all_pages(client, path: str) -> tuple[list[int], str]:
    """The event ids of every page from ``path`` on, following "Older events"; and all text."""
    ids, texts = [], []
    while path:
        page = client.get(path)
        assert page.status_code == 200, page.text
        ids += _rows(page.text)
        texts.append(page.text)
        found = OLDER.search(page.text)
        path = found.group(1).replace("&amp;", "&") if found else ""
    return ids, "\n".join(texts)


def _refused_sign_in(console, login: str) -> None:
    """A wrong password for ``login`` at acme: audited on acme's chain as "refused"."""
    anonymous = console.client()
    page = anonymous.get("/admin/login")
    anonymous.post(
        "/admin/login",
        data={
            "csrf_token": csrf_of(page.text),
            "account": "acme",
            "login": login,
            "password": "wrong-password-123",
            "code": "",
        },
    )


def _tamper(ports, event_id: int) -> None:
    with ports.db.transaction() as s:
        s.execute(
            update(AuditEvent).where(AuditEvent.id == event_id).values(details='{"forged":true}')
        )


def _fill(ports, slug: str, count: int) -> None:
    """``count`` more events on the account's chain, so that its log spans pages."""
    with ports.db.transaction() as s:
        account = s.scalars(select(Account).where(Account.slug == slug)).one()
        for n in range(count):
            audit.record(
                s, ports, account=account, actor=TEST_OPERATOR, action="test.fill", details={"n": n}
            )


def test_boss_sees_every_acme_event_newest_first_and_nothing_of_other(console):
    _fill(console.ports, "acme", 90)
    _fill(console.ports, "other", 5)
    boss = console.sign_in("boss")
    ids, text = _all_pages(boss, "/admin/audit")
    acme = _account_events(console.ports, "acme")
    assert text.count('id="next-page"') == 2
    assert len(acme) > 2 * 50  # three pages: the pager was followed twice
    assert ids == sorted((e.id for e in acme), reverse=True)
    other_ids = {e.id for e in _account_events(console.ports, "other")}
    assert other_ids and not other_ids & set(ids)
    assert console.world.olga.email not in text
    first = boss.get("/admin/audit").text
    newest = max(e.id for e in acme if e.action == "admin.sign_in")
    assert f'<tr id="event-{newest}"' in first and "admin:boss" in first


def test_previous_walks_back_the_pages_and_time_sorts_both_ways(console):
    _fill(console.ports, "acme", 90)
    boss = console.sign_in("boss")
    pages, path = [], "/admin/audit?action=test.fill"
    text = ""
    while path:
        text = boss.get(path).text
        pages.append(_rows(text))
        found = OLDER.search(text)
        path = found.group(1).replace("&amp;", "&") if found else ""
    assert len(pages) == 2 and 'id="event-count">90 events' in text
    found = NEWER.search(text)
    assert found
    assert _rows(boss.get(found.group(1).replace("&amp;", "&")).text) == pages[0]
    newest_first = [i for page in pages for i in page]
    oldest = boss.get("/admin/audit?action=test.fill&sort=oldest").text
    assert _rows(oldest) == sorted(newest_first)[:50]
    assert 'href="/admin/audit?action=test.fill" id="sort-time"' in oldest


def test_long_details_show_one_line_and_open_in_full(console):
    with console.ports.db.transaction() as s:
        account = s.scalars(select(Account).where(Account.slug == "acme")).one()
        audit.record(
            s,
            console.ports,
            account=account,
            actor=TEST_OPERATOR,
            action="test.long",
            details={f"field{n}": "x" * 30 for n in range(8)},
        )
    text = console.sign_in("boss").get("/admin/audit?action=test.long").text
    cell = text.split('<td class="details">')[1].split("</td>")[0]
    summary = cell.split('<code class="summary">')[1].split("</code>")[0]
    assert summary.startswith("field0: " + "x" * 30 + " · field1") and summary.endswith("…")
    assert len(summary) <= 80
    assert "<details><summary>" in cell and "field7: " + "x" * 30 in cell


def test_foreign_boss_sees_only_his_account(console):
    foreign = console.sign_in("foreignboss")
    ids, text = _all_pages(foreign, "/admin/audit")
    assert set(ids) == {e.id for e in _account_events(console.ports, "other")}
    assert "alice@acme.example" not in text and "admin:boss" not in text


def test_outcome_action_actor_and_date_filters(console):
    boss = console.sign_in("boss")
    _refused_sign_in(console, "boss")
    acme = _account_events(console.ports, "acme")
    refused = {e.id for e in acme if e.outcome == "refused"}
    assert refused

    ids, _ = _all_pages(boss, "/admin/audit?outcome=refused")
    assert set(ids) == refused

    ids, _ = _all_pages(boss, "/admin/audit?action=admin.sign")
    expected = {e.id for e in acme if e.action.startswith("admin.sign")}
    assert set(ids) == expected and expected != {e.id for e in acme}

    ids, _ = _all_pages(boss, "/admin/audit?actor=admin:boss&outcome=success")
    assert set(ids) == {e.id for e in acme if e.actor == "admin:boss" and e.outcome == "success"}
    assert ids

    today = console.clock.now.date()
    tomorrow = (today + timedelta(days=1)).isoformat()
    yesterday = (today - timedelta(days=1)).isoformat()
    assert _rows(boss.get(f"/admin/audit?from={tomorrow}").text) == []
    assert _rows(boss.get(f"/admin/audit?to={yesterday}").text) == []
    ids, _ = _all_pages(boss, f"/admin/audit?from={today}&to={today}")
    assert set(ids) == {e.id for e in acme}


def test_junk_filters_and_cursors_get_a_clear_error_page(console):
    boss = console.sign_in("boss")
    for query, message in (
        ("outcome=maybe", "The outcome is one of"),
        ("from=31.01.2025", "A date looks like"),
        ("to=2025-02-30", "A date looks like"),
        ("cursor=!!!", "The cursor is not valid."),
        ("cursor=" + "A" * 201, "at most 200 characters"),
        ("sort=sideways", "Sort by one of"),
        ("sort=oldest&cursor=djI6bmV3ZXN0OmE6MTppMQ", "The cursor is not valid."),
        ("action=" + "a" * 65, "at most 64 characters"),
    ):
        page = boss.get("/admin/audit?" + query)
        assert page.status_code == 400, query
        assert message in page.text and 'id="error"' in page.text, query
        assert _rows(page.text) == [], query


def test_script_in_filters_and_in_events_is_escaped(console):
    boss = console.sign_in("boss")
    script = "<script>alert(1)</script>"
    _refused_sign_in(console, script)
    admins.create_admin(console.ports, TEST_OPERATOR, "acme", script)  # its login in details
    shown = boss.get("/admin/audit?outcome=refused").text
    assert "web-login:&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    shown = boss.get("/admin/audit?action=admin.create").text
    assert "login: &lt;script&gt;alert(1)&lt;/script&gt;" in shown
    shown = boss.get("/admin/audit", params={"actor": script}).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    assert script not in shown


def test_organization_admin_gets_403(console):
    sales = console.sign_in("salesboss")
    before = len(events(console.ports))
    page = sales.get("/admin/audit")
    assert page.status_code == 403 and "Only account administrators" in page.text
    assert _rows(page.text) == []
    answer = sales.post("/admin/audit/verify")
    assert answer.status_code == 403
    assert events(console.ports, "audit.verify") == []
    assert len(events(console.ports)) == before


def test_verify_an_intact_chain(console):
    boss = console.sign_in("boss")
    count = len(_account_events(console.ports, "acme"))
    answer = boss.post("/admin/audit/verify", csrf_from="/admin/audit")
    assert answer.status_code == 200
    assert f"The audit chain is intact: {count} events checked." in answer.text
    [recorded] = events(console.ports, "audit.verify")
    assert recorded.account_id == _account_id(console.ports, "acme")
    assert recorded.actor == "admin:boss"
    assert json.loads(recorded.details) == {"events": count, "intact": True}


def test_verify_names_the_tampered_event(console):
    boss = console.sign_in("boss")
    acme = _account_events(console.ports, "acme")
    victim = acme[len(acme) // 2]
    _tamper(console.ports, victim.id)
    answer = boss.post("/admin/audit/verify")
    assert answer.status_code == 200
    assert (
        f"The audit chain is broken at event #{victim.seq} (row {victim.id}): "
        "MAC does not match: the event was altered." in answer.text
    )
    assert "The audit chain is intact" not in answer.text
    [recorded] = events(console.ports, "audit.verify")
    details = json.loads(recorded.details)
    assert details["intact"] is False and details["seq"] == victim.seq
    assert details["event_id"] == victim.id


def test_verify_finds_newest_events_cut_off_by_the_head_kept_outside(console):
    boss = console.sign_in("boss")
    newest = _account_events(console.ports, "acme")[-1]
    with console.ports.db.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == newest.id))
    said = boss.post("/admin/audit/verify").text
    assert (
        f"The audit chain is broken at event #{newest.seq}: "
        f"events {newest.seq}..{newest.seq} are missing (cut off)." in said
    )


def test_another_accounts_tampered_chain_does_not_break_this_one(console):
    boss = console.sign_in("boss")
    foreign = console.sign_in("foreignboss")
    other = _account_events(console.ports, "other")
    _tamper(console.ports, other[0].id)
    assert "The audit chain is intact" in boss.post("/admin/audit/verify").text
    said = foreign.post("/admin/audit/verify").text
    assert f"The audit chain is broken at event #{other[0].seq}" in said


def test_verify_refuses_a_forged_or_missing_csrf_token(console):
    boss = console.sign_in("boss")
    for data in ({"csrf_token": "forged-token-forged-token"}, {}):
        answer = boss.client.post("/admin/audit/verify", data=data)
        assert answer.status_code == 403
        assert "The audit chain is intact" not in answer.text
    assert events(console.ports, "audit.verify") == []


def test_signed_out_visitor_is_sent_to_sign_in(console):
    client = console.client()
    page = client.get("/admin/audit", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/admin/login"
