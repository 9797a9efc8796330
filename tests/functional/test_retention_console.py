"""Retention in the console and the API: the Key Vault page shows the policies and the holds, a
certificate or person page shows a hold and a destroyed key (with no download), lists, filters
and the dashboard leave destroyed keys out, and a release of one answers 410."""

from __future__ import annotations

import json
import re

from certvault.services.vault import holds, retention
from tests.conftest import TEST_OPERATOR
from tests.functional.console_fixtures import console_fixture  # noqa: F401
from tests.functional.helpers import events
from tests.functional.test_console_download import Form, cert_path, confirmed

V1 = "/api/v1"


def _listed(text: str) -> list[int]:
    return [int(part.split('"')[0]) for part in text.split('<tr id="certificate-')[1:]]


def test_destroyed_and_held_keys_in_the_console_and_the_api(console):
    world, ports = console.world, console.ports
    old, new = world.alice.cert_ids  # old expired over a month ago; new is valid
    [sams] = world.sam.cert_ids
    boss = console.sign_in("boss")
    home = boss.get("/admin/")
    keys_before = int(re.search(r'id="figure-keys"><a [^>]*>(\d+)<', home.text).group(1))
    form = Form(boss, cert_path(old))  # opened while the key is still there

    retention.set_policy(ports, TEST_OPERATOR, "acme", days=30)
    retention.set_policy(ports, TEST_OPERATOR, "acme", days="off", profile="client-auth")
    holds.add_hold(ports, TEST_OPERATOR, "acme", certificate_id=sams, reason="Case <b>7</b>")
    report = retention.run_retention(ports, TEST_OPERATOR, "acme")
    assert report.destroyed == 1  # alice's old key; sam's is not due

    page = boss.get("/admin/key-vault").text
    assert "Keys destroyed 30 days after the certificate expires" in page
    assert 'id="retention-client-auth"' in page and "Keys kept forever" in page
    assert re.search(r'id="retention-holds"><th scope="row">Active legal holds</th><td>1<', page)

    page = boss.get(f"/admin/certificates/{old}").text
    assert 'id="key-in-vault">destroyed<' in page
    assert re.search(
        r'id="key-destroyed">Key destroyed on \d{4}-\d\d-\d\d \d\d:\d\d UTC under the retention '
        r"policy of the account, 30 days after expiry\.<",
        page,
    )
    assert 'id="download-key"' not in page and 'id="no-download"' not in page
    page = boss.get(f"/admin/certificates/{sams}").text
    assert "Legal hold</strong> on certificate" in page
    assert "Case &lt;b&gt;7&lt;/b&gt;" in page and "<b>7</b>" not in page

    page = boss.get(f"/admin/persons/{world.alice.person_id}").text
    row = page.split(f'<tr id="certificate-{old}">')[1].split("</tr>")[0]
    assert 'class="key-in-vault">destroyed<' in row and "Key destroyed on" in row
    assert f'id="download-{old}"' not in row
    assert f'id="download-{new}"' in page and 'id="download-all"' in page
    assert "Legal hold" not in page

    listed = _listed(boss.get("/admin/certificates?key=yes").text)
    assert old not in listed and new in listed
    assert old in _listed(boss.get("/admin/certificates?key=no").text)
    home = boss.get("/admin/")
    keys_after = int(re.search(r'id="figure-keys"><a [^>]*>(\d+)<', home.text).group(1))
    assert keys_after == keys_before - 1

    # A form opened now is not offered; one opened before is refused with 410 and audited.
    gone = boss.get(cert_path(old))
    assert gone.status_code == 410 and "This escrowed key was destroyed." in gone.text
    answer = form.post(encryption="AES256-SHA256", reason="lost", **confirmed(boss))
    assert answer.status_code == 410, answer.text
    refused = [e for e in events(ports, "key.release") if e.outcome == "refused"]
    assert json.loads(refused[-1].details)["reason"] == "account_key_destroyed"

    # The API: the filter leaves it out, the certificate says so, a release answers 410.
    found = world.get("keys", f"{V1}/certificates", params={"key_vault": "true"}).json()
    assert old not in [c["id"] for c in found["items"]]
    assert new in [c["id"] for c in found["items"]]
    assert world.get("keys", f"{V1}/certificates/{old}").json()["key_in_vault"] is False
    r = world.post("keys", f"{V1}/certificates/{old}/key", json={"generate_passphrase": True})
    assert r.status_code == 410 and r.json()["code"] == "account_key_destroyed"
    refused = [e for e in events(ports, "key.release") if e.outcome == "refused"]
    assert json.loads(refused[-1].details)["reason"] == "account_key_destroyed"
    assert json.loads(refused[-1].details)["channel"] == "api"
