"""The Agents page: agents, their last contact and template maps, the CA exchange certificate with
its expiry, the trail of archival requests; registering an agent shows its token once."""

from __future__ import annotations

import re

from certvault.services.pki import agents, ca, exchange
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import ConsoleWorld, console_fixture  # noqa: F401
from tests.functional.helpers import events

PAGE = "/admin/agents"


def test_the_agents_page_shows_agents_maps_and_the_exchange_certificate(console: ConsoleWorld):
    ports = console.ports
    ca.init_ca(ports, TEST_OPERATOR, "acme")
    agents.create_agent(ports, TEST_OPERATOR, "acme", "dc1")
    agents.map_template(
        ports, TEST_OPERATOR, "acme", "dc1", "EFS-User",
        profile="smime-encryption", archive_key=True, require_archival=True,
    )  # fmt: skip
    boss = console.sign_in("boss")
    before = boss.get(PAGE)
    assert before.status_code == 200
    assert 'id="no-exchange"' in before.text and 'id="agent-dc1"' in before.text
    assert "EFS-User" in before.text and "required" in before.text and "never" in before.text

    with ports.db.read() as s:
        account_id = s.scalar(
            __import__("sqlalchemy").text("SELECT id FROM accounts WHERE slug='acme'")
        )
    cert = exchange.current_exchange(ports, account_id)
    page = boss.get(PAGE).text
    assert 'id="exchange"' in page and cert.issuer.rfc4514_string() in page
    assert 'id="exchange-warning"' not in page
    # Within days of its replacement the page warns.
    console.clock.advance(days=(cert.not_valid_after_utc - console.clock.now).days - 11)
    clerk = console.sign_in("clerk")  # boss's sign-in has timed out by then
    assert 'id="exchange-warning"' in clerk.get(PAGE).text


def test_registering_an_agent_shows_its_token_once(console: ConsoleWorld):
    boss = console.sign_in("boss")
    made = boss.post(PAGE, {"name": "dc2"}, csrf_from=PAGE)
    assert made.status_code == 200
    token = re.search(r'id="agent-token">([^<]+)<', made.text)
    assert token and token.group(1).startswith("cva_")
    again = boss.get(PAGE).text
    assert token.group(1) not in again and 'id="agent-dc2"' in again
    taken = boss.post(PAGE, {"name": "dc2"}, csrf_from=PAGE)
    assert taken.status_code == 409 and 'id="error"' in taken.text
    [event] = [e for e in events(console.ports, "agent.create") if e.outcome == "success"]
    assert token.group(1) not in (event.details or "")


def test_the_page_is_for_account_administrators_and_registering_needs_the_privilege(
    console: ConsoleWorld,
):
    sales = console.sign_in("salesboss")
    assert sales.get(PAGE).status_code == 403
    assert 'href="/admin/agents"' not in sales.get("/admin/").text
    clerk = console.sign_in("clerk")  # an account administrator without settings_manage
    page = clerk.get(PAGE)
    assert page.status_code == 200 and 'id="create-agent"' not in page.text
    refused = clerk.post(PAGE, {"name": "dc3"}, csrf_from=PAGE)
    assert refused.status_code == 403
    assert agents.list_agents(console.ports, TEST_OPERATOR, "acme") == []
