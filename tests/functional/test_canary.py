"""Secrets are never echoed (DESIGN.md §5, invariant 7).

One recognizable secret is given as every password, passphrase and share, and every error path of
the CLI and of the services is driven with it. Then its text is searched for in everything
certvault said or kept: the commands' output, exceptions and their tracebacks, log records, every
table (audit events and the mail outbox included), the raw SQLite files and every file under
CERTVAULT_HOME. Each path asserts its own error code, so the test cannot pass by not running.
"""

from __future__ import annotations

import logging
import os
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import create_engine, inspect, text

from certvault.crypto.passphrase import check_passphrase
from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.errors import CertvaultError
from certvault.masterkey.shares import combine_shares, split_secret
from certvault.services.access import admins
from certvault.services.directory import accounts
from certvault.services.vault.custody import restore_master_key
from certvault.services.vault.imports import ImportItem, import_files, import_p12
from certvault.services.vault.release import release_key
from tests.factories import make_cert, make_p12, new_key
from tests.functional import cli_env
from tests.functional.cli_env import openssl, openssl_p12, write_key_and_cert, write_secret
from tests.functional.smtp_server import free_port

CANARY = "CANARY-5ecret-Pa55-7a1c"
NEEDLE = "5ecret"  # in every variant below; searched for case-insensitively
SHORT = "5ecret-Pa5"  # shorter than any minimum (12)
VARIANTS = {
    "short": SHORT,
    "long": CANARY * 50,  # over the 1,024-character ceiling
    "padded": " " + CANARY,  # leading white space
    "control": CANARY + "\x07",  # a control character
}
OTHER = "not-the-same-password-1"
ENCODINGS = ("utf-8", "utf-16-le", "utf-16-be")  # PKCS#12 passwords travel as UTF-16-BE
HEX_NEEDLES = (NEEDLE.encode().hex(), NEEDLE.upper().encode().hex())


def _leaks(value: str | bytes) -> bool:
    if isinstance(value, str):
        flat = "".join(value.split()).lower()  # a wrapped line must not hide it
        return NEEDLE in flat or any(h in flat for h in HEX_NEEDLES)
    data = bytes(value).lower()
    return any(NEEDLE.encode(enc) in data for enc in ENCODINGS)


def _assert_clean(found: list[tuple[str, str | bytes]]) -> None:
    leaks = [label for label, value in found if _leaks(value)]
    assert not leaks, f"the canary secret shows in: {leaks}"


def test_the_detector_finds_every_form_of_the_canary():
    for secret in (CANARY, *VARIANTS.values()):
        assert _leaks(f"error: {secret}") and _leaks(f"x {secret.lower()} y")
        for enc in ENCODINGS:
            assert _leaks(b"\x00" + secret.encode(enc) + b"\x00")
    assert _leaks(f"bytea \\x{CANARY.encode().hex()}")
    assert _leaks("CANARY-5ec\n  ret-Pa55")  # broken by a line wrap
    assert not _leaks("CANARY secret password test_canary_cli") and not _leaks(b"secret")


def _stored(database_url: str, home: Path) -> list[tuple[str, str | bytes]]:
    """Every cell of every table, the raw SQLite files and every file under the home."""
    found: list[tuple[str, str | bytes]] = []
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
            assert {"audit_events", "mail_outbox", "admins"} <= set(tables)
            for table in tables:
                for n, row in enumerate(conn.execute(text(f'SELECT * FROM "{table}"'))):
                    for column, cell in row._mapping.items():
                        label = f"{table}[{n}].{column}"
                        if isinstance(cell, bytes | bytearray | memoryview):
                            found.append((label, bytes(cell)))
                        elif cell is not None:
                            found.append((label, str(cell)))
    finally:
        engine.dispose()
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name.startswith("master-v") for p in files)
    found += [(f"file {p.relative_to(home)}", p.read_bytes()) for p in files]
    return found


def _column(database_url: str, statement: str) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text(statement))]
    finally:
        engine.dispose()


# --- the CLI ------------------------------------------------------------------------------------


class _RefuseEveryLogin:
    def __call__(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        return AuthResult(success=False, handled=False)


class _Discard:
    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
        return "250 OK"


@pytest.fixture
def refusing_smtp():
    """An SMTP server that offers AUTH and refuses every login."""
    port = free_port()
    controller = Controller(
        _Discard(),
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,
        authenticator=_RefuseEveryLogin(),
    )
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def test_cli_never_echoes_a_secret(cli, tmp_path, refusing_smtp):
    cli.bootstrap()
    inputs = tmp_path / "inputs"  # outside CERTVAULT_HOME: only certvault's own files are searched
    inputs.mkdir()
    canary = write_secret(inputs / "canary", CANARY)
    variant = {name: write_secret(inputs / name, value) for name, value in VARIANTS.items()}
    other = write_secret(inputs / "other", OTHER)

    def p12(stem: str, password_file: Path) -> Path:
        key = new_key("ec256")
        k, c = write_key_and_cert(inputs, stem, key, make_cert(key, f"{stem}@example.org"))
        return openssl_p12(k, c, inputs / f"{stem}.p12", password_file)

    locked_elsewhere = p12("elsewhere", other)
    opened_by_canary = p12("canary-made", canary)
    junk = inputs / "junk.p12"
    junk.write_bytes(os.urandom(600))
    (inputs / "manifest.csv").write_text(
        "file,password_file,email,organization\nelsewhere.p12,canary,,\n"
    )

    def expect(exit_code: int, says: str, *args: str | Path, **kw: Any) -> str:
        proc = cli.run(*args, **kw)
        said = cli_env.text(proc)
        assert proc.returncode == exit_code, said
        assert says in said, said
        return said

    # import: wrong password, unreadable file, manifest, unknown account, then one that opens
    said = expect(
        1,
        "[p12_wrong_password]",
        "import",
        "--account",
        "acme",
        locked_elsewhere,
        junk,
        "--password-file",
        canary,
        "--json",
    )
    assert "[p12_malformed]" in said
    expect(
        1,
        "[p12_wrong_password]",
        "import",
        "--account",
        "acme",
        "--manifest",
        inputs / "manifest.csv",
    )
    expect(
        1, "[not_found]", "import", "--account", "nope", locked_elsewhere, "--password-file", canary
    )
    expect(
        0,
        "Imported successfully",
        "import",
        "--account",
        "acme",
        opened_by_canary,
        "--password-file",
        canary,
        "--json",
    )
    [cert_id] = _column(
        cli.settings().effective_database_url,
        "SELECT id FROM certificates WHERE emails = 'canary-made@example.org'",
    )

    # export: every refusal with the canary as passphrase (or as the encryption name)
    out = inputs / "released.p12"

    def export(*args: str | Path) -> tuple[str | Path, ...]:
        return ("export", *args, "--account", "acme", "--out", out)

    expect(1, "[not_found]", *export("999999", "--reason", "r", "--passphrase-file", canary))
    for name in ("short", "control"):  # the services' test below takes every variant
        expect(
            1,
            "[weak_passphrase]",
            *export(str(cert_id), "--reason", "r", "--passphrase-file", variant[name]),
        )
    expect(
        1,
        "[unsupported_encryption]",
        *export(str(cert_id), "--reason", "r", "--passphrase-file", canary, "--encryption", CANARY),
    )
    expect(
        1,
        "[unsupported_encryption]",
        *export(
            str(cert_id), "--reason", "r", "--passphrase-file", canary, "--encryption", "RC2-40"
        ),
    )
    expect(2, "Missing option", *export(str(cert_id), "--passphrase-file", canary))
    expect(
        1, "[reason_required]", *export(str(cert_id), "--reason", " ", "--passphrase-file", canary)
    )
    assert not out.exists()
    expect(0, "wrote", *export(str(cert_id), "--reason", "r", "--passphrase-file", canary))
    opened = openssl("pkcs12", "-in", out, "-nokeys", "-passin", f"file:{canary}")
    assert "BEGIN CERTIFICATE" in opened.stdout  # the canary really was the passphrase
    out.unlink()

    # Key Vault off: both ways refused
    expect(0, "Key Vault disabled", "account", "disable-key-vault", "acme")
    expect(
        1,
        "[key_vault_disabled]",
        *export(str(cert_id), "--reason", "r", "--passphrase-file", canary),
    )
    expect(
        1,
        "[key_vault_disabled]",
        "import",
        "--account",
        "acme",
        opened_by_canary,
        "--password-file",
        canary,
    )

    # administrators: too short, then accepted (stored as a hash only), then a duplicate
    expect(
        1,
        "[invalid_input]",
        "admin",
        "create",
        "ivan",
        "--account",
        "acme",
        "--password-file",
        variant["short"],
    )
    expect(
        0,
        "administrator judy created",
        "admin",
        "create",
        "judy",
        "--account",
        "acme",
        "--password-file",
        canary,
        "--email",
        "judy@example.org",
    )
    expect(
        1, "[conflict]", "admin", "create", "judy", "--account", "acme", "--password-file", canary
    )

    # shares: the canary is no share, from a file or from standard input
    expect(1, "[master_key_exists]", "kek", "restore-shares", "--share-file", canary)
    aside = tmp_path / "master-key-aside"
    shutil.move(cli.master_key_dir, aside)
    try:
        expect(
            1,
            "[shares_invalid]",
            "kek",
            "restore-shares",
            "--share-file",
            canary,
            "--share-file",
            variant["short"],
        )
        expect(1, "[shares_invalid]", "kek", "restore-shares", input=f"{CANARY}\n{SHORT}\n\n")
        assert not cli.master_key_dir.exists()
    finally:
        shutil.move(aside, cli.master_key_dir)

    # mail: the SMTP password is refused by the server
    smtp = {
        "CERTVAULT_SMTP_HOST": "127.0.0.1",
        "CERTVAULT_SMTP_PORT": str(refusing_smtp),
        "CERTVAULT_SMTP_USER": "certvault",
        "CERTVAULT_SMTP_PASSWORD": CANARY,
    }
    said = expect(1, "sent 0, failed", "mail", "send", env=smtp)

    url = cli.settings().effective_database_url
    errors = _column(url, "SELECT last_error FROM mail_outbox WHERE last_error IS NOT NULL")
    assert errors and all("SMTPAuthenticationError" in e for e in errors)
    refused = _column(url, "SELECT action FROM audit_events WHERE outcome = 'refused'")
    assert refused.count("key.release") >= 7 and refused.count("key.archive") >= 4
    assert _column(url, "SELECT count(*) FROM admins WHERE login = 'judy'") == [1]

    found: list[tuple[str, str | bytes]] = []
    for n, proc in enumerate(cli.calls):
        found += [
            (f"call {n} {proc.args[1:3]} stdout", proc.stdout),
            (f"call {n} {proc.args[1:3]} stderr", proc.stderr),
        ]
    found += _stored(url, cli.home)
    if cli.database_url is None:
        sqlite_files = list(cli.sqlite_path.parent.iterdir())
        assert cli.sqlite_path in sqlite_files
        found += [(f"raw {p.name}", p.read_bytes()) for p in sqlite_files]
    _assert_clean(found)


# --- the services -------------------------------------------------------------------------------


def _exception_texts(exc: BaseException) -> list[str]:
    """What could reach a log or a screen: the traceback, and message and repr of every exception
    in the chain as Python, logging and error trackers show it (a context hidden by
    ``raise ... from None`` is not shown, like the frames' local variables)."""
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return texts


def _record_texts(record: logging.LogRecord) -> list[str]:
    texts = [record.getMessage(), repr(record.args), repr(record.msg)]
    if record.exc_info and record.exc_info[1] is not None:
        texts += _exception_texts(record.exc_info[1])
    if record.exc_text:
        texts.append(record.exc_text)
    return texts


def test_services_never_echo_a_secret(ports, operator, account, settings, database_url, caplog):
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        # Libraries that set their own level (SQLAlchemy sets WARN) are turned up too.
        if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG:
            caplog.set_level(logging.DEBUG, logger=name)
    found: list[tuple[str, str | bytes]] = []
    ran: list[str] = []

    def expect(code: str, label: str, call: Callable[[], object]) -> None:
        with pytest.raises(CertvaultError) as info:
            call()
        assert info.value.code == code, (label, info.value.code)
        ran.append(label)
        found.extend((f"{label}: exception", t) for t in _exception_texts(info.value))

    key = new_key("ec256")
    cert = make_cert(key, "kim@example.org")
    elsewhere = make_p12(key, cert, OTHER)
    mine = make_p12(key, cert, CANARY)

    expect(
        "p12_wrong_password",
        "import wrong password",
        lambda: import_p12(ports, operator, account, elsewhere, CANARY),
    )
    expect(
        "p12_malformed",
        "import junk",
        lambda: import_p12(ports, operator, account, os.urandom(500), CANARY),
    )
    expect(
        "not_found",
        "import unknown account",
        lambda: import_p12(ports, operator, "nope", elsewhere, CANARY),
    )
    [result] = import_files(
        ports, operator, account, [ImportItem("batch.p12", lambda: elsewhere, CANARY)]
    )
    assert result.error is not None and result.error_code == "p12_wrong_password"
    found += [("import_files error", t) for t in _exception_texts(result.error)]
    [entry] = import_p12(ports, operator, account, mine, CANARY)
    cert_id = entry.client_cert_id
    assert cert_id is not None

    def release(
        passphrase: str,
        *,
        target: int = cert_id,
        encryption: str | None = None,
        reason: str | None = "r",
    ) -> Callable[[], object]:
        return lambda: release_key(
            ports,
            operator,
            account,
            target,
            passphrase=passphrase,
            encryption=encryption,
            reason=reason,
        )

    expect("not_found", "release unknown certificate", release(CANARY, target=999999))
    for name, value in VARIANTS.items():
        expect("weak_passphrase", f"release {name} passphrase", release(value))
        expect(
            "weak_passphrase",
            f"check {name} passphrase",
            lambda value=value: check_passphrase(value, 12),
        )
    expect(
        "unsupported_encryption",
        "release encryption named by the canary",
        release(CANARY, encryption=CANARY),
    )
    expect("unsupported_encryption", "release RC2", release(CANARY, encryption="RC2-40"))
    expect("unsupported_encryption", "parse encryption", lambda: EncryptionType.parse(CANARY))
    expect("reason_required", "release without reason", release(CANARY, reason=None))
    expect("reason_required", "release with empty reason", release(CANARY, reason=""))
    batch = release_key(ports, operator, account, cert_id, passphrase=CANARY, reason="r")
    assert batch.generated_passphrase is None and batch.releases[0].data

    accounts.set_key_vault(ports, operator, account, False)
    expect("key_vault_disabled", "release with Key Vault off", release(CANARY))
    expect(
        "key_vault_disabled",
        "import with Key Vault off",
        lambda: import_p12(ports, operator, account, mine, CANARY),
    )
    accounts.set_key_vault(ports, operator, account, True)

    expect(
        "invalid_input",
        "admin password too short",
        lambda: admins.create_admin(ports, operator, account, "ivan", password=SHORT),
    )
    admins.create_admin(ports, operator, account, "judy", password=CANARY, email="judy@example.org")
    expect(
        "conflict",
        "admin exists",
        lambda: admins.create_admin(ports, operator, account, "judy", password=CANARY),
    )

    real_share = split_secret(os.urandom(32), 2, 3)[0]
    expect("shares_invalid", "combine the canary", lambda: combine_shares([CANARY]))
    expect(
        "shares_invalid",
        "combine a share and the canary",
        lambda: combine_shares([real_share, CANARY]),
    )
    expect("shares_invalid", "combine variants", lambda: combine_shares(list(VARIANTS.values())))
    expect(
        "master_key_exists",
        "restore over a present key",
        lambda: restore_master_key(ports, [CANARY, SHORT]),
    )
    key_dir = settings.effective_master_key_dir
    aside = key_dir.with_name("master-key-aside")
    shutil.move(key_dir, aside)
    try:
        expect(
            "shares_invalid",
            "restore from the canary",
            lambda: restore_master_key(ports, [CANARY, real_share]),
        )
    finally:
        shutil.move(aside, key_dir)

    assert len(ran) == 26
    records = list(caplog.records)
    assert any(r.name.startswith("sqlalchemy.engine") for r in records)  # the logs were on
    for record in records:
        found += [(f"log {record.name}", t) for t in _record_texts(record)]
    found.append(("caplog text", caplog.text))

    url = settings.effective_database_url
    actions = _column(url, "SELECT action FROM audit_events")
    assert "key.release" in actions and "admin.create" in actions
    assert _column(url, "SELECT count(*) FROM audit_events WHERE outcome = 'refused'")[0] >= 12
    assert _column(url, "SELECT count(*) FROM mail_outbox")[0] >= 2
    found += _stored(url, settings.home_dir)
    if database_url is None:
        found += [(f"raw {p.name}", p.read_bytes()) for p in settings.database_dir.iterdir()]
    _assert_clean(found)
