"""`certvault account release-policy`: how an account's keys are released."""

from __future__ import annotations

import json

import pytest

from tests.functional import cli_env


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def test_release_policy_is_shown_changed_and_audited(cli):
    cli.bootstrap()
    shown = cli.run("account", "release-policy", "acme")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == [
        "reason_required=no",
        "allow_own_passphrase=yes",
        "min_passphrase_length=12",
    ]
    changed = cli.run(
        "account",
        "release-policy",
        "acme",
        "--reason-required",
        "--generated-passphrase-only",
        "--min-passphrase-length",
        "20",
    )
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.split() == [
        "reason_required=yes",
        "allow_own_passphrase=no",
        "min_passphrase_length=20",
    ]
    [(details,)] = cli.sql(
        "SELECT details FROM audit_events WHERE action = 'account.release_policy'"
    )
    assert json.loads(details) == {
        "old": {
            "reason_required": False,
            "allow_own_passphrase": True,
            "min_passphrase_length": 12,
        },
        "new": {
            "reason_required": True,
            "allow_own_passphrase": False,
            "min_passphrase_length": 20,
        },
    }
    # Asking for what is already set records nothing more.
    assert cli.run("account", "release-policy", "acme", "--reason-required").returncode == 0
    assert len(cli.sql("SELECT id FROM audit_events WHERE action = 'account.release_policy'")) == 1


@pytest.mark.parametrize("value", ["7", "65", "-1", "x"])
def test_a_minimum_out_of_range_is_refused_and_changes_nothing(cli, value):
    cli.bootstrap()
    answer = cli.run("account", "release-policy", "acme", "--min-passphrase-length", value)
    assert answer.returncode != 0
    assert cli.sql("SELECT min_passphrase_length FROM accounts WHERE slug = 'acme'") == [(12,)]
    assert cli.sql("SELECT id FROM audit_events WHERE action = 'account.release_policy'") == []


def test_an_unknown_account_is_refused(cli):
    cli.bootstrap()
    answer = cli.run("account", "release-policy", "nope", "--reason-required")
    assert answer.returncode != 0 and "not found" in cli_env.text(answer).lower()
