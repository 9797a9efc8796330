"""The real `certvault retention`, `certvault hold` and `certvault account destroy-keys`
commands, on SQLite and PostgreSQL, with hostile arguments and a tampered row."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from certvault.cli.main import app
from certvault.services.vault.imports import import_p12
from tests.conftest import TEST_OPERATOR
from tests.factories import make_ca, make_cert, make_p12, new_key
from tests.functional import cli_env
from tests.functional.cli_env import Cli, text

PW = "import-password-1"
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def cli(backend: str, tmp_path: Path) -> Iterator[Cli]:
    yield from cli_env.cli_for(backend, tmp_path)


def _vault(cli: Cli) -> tuple[int, int]:
    """Two certificates of two persons: one expired 40 days ago, one valid."""
    cli.bootstrap()
    ports = cli.ports()
    try:
        ca = make_ca()
        ids = []
        for email, start, days in (
            ("old@x.org", NOW - dt.timedelta(days=70), 30),
            ("new@x.org", NOW - dt.timedelta(days=1), 365),
        ):
            key = new_key()
            cert = make_cert(key, email, issuer=ca, not_before=start, days=days)
            [entry] = import_p12(ports, TEST_OPERATOR, "acme", make_p12(key, cert, PW), PW)
            ids.append(entry.client_cert_id)
        return ids[0], ids[1]
    finally:
        ports.close()


def _export(cli: Cli, tmp_path: Path, cid: int, name: str):  # type: ignore[no-untyped-def]
    return cli.run(
        "export", str(cid), "--account", "acme", "--out", tmp_path / name, "--reason", "test"
    )


def _invoke(cli: Cli, *args: str) -> tuple[int, str]:
    """The command in this process (typer's runner): for the many hostile arguments, which
    would take a second each as subprocesses."""
    result = CliRunner().invoke(app, list(args), env=cli.env)
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL: in-process tests
def test_hostile_arguments_get_clear_errors_and_change_nothing(cli: Cli) -> None:
    old, _ = _vault(cli)
    for days in ["-1", "abc", "1.5", "99999999999999999999", "36501", "", "1e3"]:
        code, said = _invoke(cli, "retention", "set", "--account", "acme", "--days", days)
        assert code == 1 and "[invalid_days]" in said, (days, said)
    code, said = _invoke(
        cli, "retention", "set", "--account", "acme", "--days", "1", "--profile", "nope"
    )
    assert code == 1 and "[unknown_profile]" in said
    code, said = _invoke(cli, "retention", "set", "--account", "nobody", "--days", "1")
    assert code == 1 and "[not_found]" in said
    for args in (
        ["--certificate", "abc"],
        ["--certificate", "-1"],
        ["--certificate", "99999999999999999999"],
        ["--certificate", "999999"],
        ["--person", "not-an-address"],
        ["--person", "nobody@x.org"],
        ["--certificate", str(old), "--person", "old@x.org"],
        [],
    ):
        code, said = _invoke(cli, "hold", "add", "--account", "acme", *args, "--reason", "r")
        assert code in (1, 2) and "error" in said, (args, said)
    for reason in ["", "x" * 501, "a\x1b[2Jb"]:
        code, said = _invoke(
            cli, "hold", "add", "--account", "acme", "--person", "old@x.org", "--reason", reason
        )
        assert code == 1 and "[invalid_input]" in said, said
    for hold_id in ["abc", "0", "-5", "99999999999999"]:
        code, said = _invoke(cli, "hold", "release", "--account", "acme", hold_id, "--reason", "r")
        # "-5" reads as an option: the usage error says so (exit 2).
        assert (code, "HOLD_ID" in said) == (1, True) or "No such option: -5" in said, said
    code, said = _invoke(cli, "hold", "release", "--account", "acme", "7", "--reason", "r")
    assert code == 1 and "[not_found]" in said
    code, said = _invoke(cli, "retention", "run", "--account", "nobody")
    assert code == 1 and "[not_found]" in said
    code, said = _invoke(cli, "account", "destroy-keys", "nobody", "--confirm")
    assert code == 1 and "[not_found]" in said
    code, said = _invoke(cli, "retention", "show", "--account", "acme")
    assert "no retention policy" in said and "active legal holds: 0" in said
    code, said = _invoke(cli, "hold", "list", "--account", "acme")
    assert code == 0 and said == ""


@pytest.mark.parametrize("backend", ["sqlite"])  # PostgreSQL: in-process tests
def test_each_command_as_a_subprocess(cli: Cli, tmp_path: Path) -> None:
    old, new = _vault(cli)
    proc = cli.run("retention", "set", "--account", "acme", "--days", "30")
    assert proc.returncode == 0 and "destroyed 30 days after" in text(proc), text(proc)
    proc = cli.run("hold", "add", "--account", "acme", "--person", "OLD@x.org", "--reason", "c-1")
    assert proc.returncode == 0 and "on person old@x.org" in text(proc), text(proc)
    hold_id = text(proc).split()[1]
    proc = cli.run("retention", "show", "--account", "acme")
    assert "account\tdestroyed 30 days after" in proc.stdout
    assert "active legal holds: 1" in text(proc)
    proc = cli.run("account", "destroy-keys", "acme", "--confirm")
    assert proc.returncode == 1 and "[legal_hold_active]" in text(proc)

    proc = cli.run("hold", "release", "--account", "acme", hold_id, "--reason", "done")
    assert proc.returncode == 0 and "released" in text(proc)
    [line] = cli.run("hold", "list", "--account", "acme").stdout.splitlines()
    assert line.split("\t")[0] == hold_id and line.split("\t")[1].startswith("released ")
    assert line.endswith("\tc-1")

    proc = cli.run("retention", "run", "--account", "acme")
    assert "acme: due 1, destroyed 1, held back 0" in text(proc), text(proc)
    assert "database time" in text(proc)
    proc = _export(cli, tmp_path, old, "old.p12")
    assert proc.returncode == 1 and "[account_key_destroyed]" in text(proc)
    assert not (tmp_path / "old.p12").exists()
    proc = cli.run("retention", "clear", "--account", "acme")
    assert proc.returncode == 0 and "policy removed" in text(proc)

    proc = cli.run("account", "destroy-keys", "acme", "--confirm")
    assert proc.returncode == 0, text(proc)
    assert "destroyed 1 account-key version(s) and 1 escrowed key(s)" in text(proc)
    assert "every backup of this installation taken before" in text(proc)

    # A hold altered by SQL: `certvault verify` names it.
    cli.sql("UPDATE legal_holds SET reason = 'nothing to see'")
    proc = cli.run("verify")
    assert proc.returncode == 1 and "TAMPERED legal_holds" in text(proc)


def test_the_whole_course_in_process(cli: Cli, tmp_path: Path) -> None:
    old, new = _vault(cli)
    code, said = _invoke(cli, "retention", "set", "--account", "acme", "--days", "30")
    assert code == 0
    code, said = _invoke(
        cli, "retention", "set", "--account", "acme", "--days", "off", "--profile", "client-auth"
    )
    assert code == 0 and "off: kept forever" in said
    code, said = _invoke(cli, "retention", "clear", "--account", "acme", "--profile", "smime")
    assert code == 0 and "had no policy" in said
    code, said = _invoke(
        cli, "hold", "add", "--account", "acme", "--certificate", str(old), "--reason", "c-2"
    )
    assert code == 0 and f"on certificate {old}" in said
    hold_id = said.split()[1]
    code, said = _invoke(cli, "retention", "run")
    assert code == 0 and "acme: due 1, destroyed 0, held back 1" in said
    # Without --confirm it only says what it would do (and that a hold stops it).
    code, said = _invoke(cli, "account", "destroy-keys", "acme")
    assert code == 2 and "Nothing was done" in said
    assert "2 escrowed key(s)" in said and "1 legal hold(s) active" in said
    assert "Backups taken before would still hold them" in said
    code, said = _invoke(cli, "hold", "release", "--account", "acme", hold_id, "--reason", "ok")
    assert code == 0
    code, said = _invoke(cli, "retention", "run", "--account", "acme", "--dry-run")
    assert "due 1, would destroy 1, held back 0" in said, said
    code, said = _invoke(cli, "retention", "run", "--account", "acme")
    assert "acme: due 1, destroyed 1, held back 0" in said, said
    code, said = _invoke(cli, "retention", "run", "--account", "acme")
    assert "due 0, destroyed 0" in said
    # A tampered policy: the run is refused, and `certvault verify` names the row.
    cli.sql("UPDATE retention_policies SET days = 0 WHERE profile IS NULL")
    code, said = _invoke(cli, "retention", "run", "--account", "acme")
    assert code == 1 and "[row_tampered]" in said
    code, said = _invoke(cli, "verify")
    assert code == 1 and "TAMPERED retention_policies" in said
    cli.sql("DELETE FROM retention_policies")
    code, said = _invoke(cli, "account", "destroy-keys", "acme", "--confirm")
    assert code == 0 and "1 escrowed key(s)" in said
    code, said = _invoke(
        cli,
        "export",
        str(new),
        "--account",
        "acme",
        "--out",
        str(tmp_path / "n.p12"),
        "--reason",
        "test",
    )
    assert code == 1 and "[account_key_destroyed]" in said
    code, said = _invoke(cli, "audit", "verify")
    assert code == 0, said
