"""The `certvault` command as an operator runs it: a subprocess with its own home, starting from an
empty database, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import hashes

from certvault.masterkey.shares import split_secret
from certvault.services.vault.imports import import_p12
from tests.conftest import TEST_OPERATOR
from tests.factories import make_cert, make_p12, new_key, pool_key
from tests.functional import cli_env
from tests.functional.cli_env import (
    CERTVAULT,
    openssl,
    openssl_p12,
    text,
    write_key_and_cert,
    write_secret,
)
from tests.functional.smtp_server import free_port

IMPORTED = "Imported successfully"
WRONG_PASSWORD = "The password does not open this PKCS#12 file."
GENERATED = re.compile(r"passphrase \(shown once, not stored\): (\S+)")


@pytest.fixture
def cli(backend, tmp_path):
    yield from cli_env.cli_for(backend, tmp_path)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _import_one(cli, key, email: str, password: str = "setup-password-1") -> int:  # type: ignore[no-untyped-def]
    """Put one key into the vault in-process (the CLI import has its own test)."""
    ports = cli.ports()
    try:
        [entry] = import_p12(
            ports, TEST_OPERATOR, "acme", make_p12(key, make_cert(key, email), password), password
        )
    finally:
        ports.close()
    assert entry.message == IMPORTED
    return int(entry.client_cert_id)


# --- init ----------------------------------------------------------------------------------------


def test_init_creates_everything_once_and_refuses_an_exposed_key(cli):
    first = cli.run("init")
    assert first.returncode == 0, first.stderr
    key_file = cli.master_key_dir / "master-v1.key"
    assert cli.home.is_dir()
    assert _mode(cli.master_key_dir) == 0o700 and _mode(key_file) == 0o600
    key_bytes = key_file.read_bytes()
    assert len(key_bytes) == 32
    if cli.database_url is None:
        assert cli.sqlite_path.is_file()
    assert cli.sql("SELECT count(*) FROM installation") == [(1,)]
    assert "master key: created" in first.stdout
    warning = text(first)
    assert "WARNING" in first.stderr and "ONE file only" in warning
    assert "certvault kek export-shares" in warning

    again = cli.run("init")
    assert again.returncode == 0, again.stderr
    assert "present (never overwritten)" in again.stdout and "up to date" in again.stdout
    assert key_file.read_bytes() == key_bytes
    assert "WARNING" in again.stderr  # still no shares
    assert cli.sql("SELECT count(*) FROM installation") == [(1,)]

    key_file.chmod(0o644)
    exposed = cli.run("init")
    assert exposed.returncode != 0
    said = text(exposed)
    assert "[master_key_exposed]" in said and "0644" in said and "Set it to 0600" in said
    assert "Traceback" not in exposed.stderr
    assert key_file.read_bytes() == key_bytes


# --- accounts and administrators -----------------------------------------------------------------


def test_accounts_and_administrators(cli, tmp_path):
    assert cli.run("init").returncode == 0

    created = cli.run("account", "create", "Beta Ltd", "--slug", "beta")
    assert created.returncode == 0, created.stderr
    assert "account beta created (Key Vault disabled)" in created.stdout
    shown = cli.run("account", "show", "beta")
    assert shown.returncode == 0
    # rich expands the tabs between the fields
    assert re.match(r"beta\s+Beta Ltd\s+key_vault=off\s+uuid=[0-9a-f-]{36}$", shown.stdout)

    on = cli.run("account", "enable-key-vault", "beta")
    assert on.returncode == 0 and "Key Vault enabled for beta" in on.stdout
    assert cli.sql("SELECT key_vault_enabled FROM accounts WHERE slug = ?", ["beta"]) in (
        [(1,)],
        [(True,)],
    )
    off = cli.run("account", "disable-key-vault", "beta")
    assert off.returncode == 0 and "Key Vault disabled for beta" in off.stdout
    assert cli.sql("SELECT key_vault_enabled FROM accounts WHERE slug = ?", ["beta"]) in (
        [(0,)],
        [(False,)],
    )

    missing = cli.run("account", "enable-key-vault", "nope")
    assert missing.returncode == 1
    assert "error [not_found]: Account not found." in text(missing)
    assert "Traceback" not in missing.stderr

    hasher = PasswordHasher()

    def stored_hash(login: str) -> str:
        [(value,)] = cli.sql("SELECT password_hash FROM admins WHERE login = ?", [login])
        return str(value)

    generated = cli.run("admin", "create", "alice", "--account", "beta")
    assert generated.returncode == 0, generated.stderr
    [password] = re.findall(r"password \(shown once\): (\S+)", generated.stdout)
    assert len(password) >= 12
    assert (generated.stdout + generated.stderr).count(password) == 1
    assert hasher.verify(stored_hash("alice"), password)

    chosen = write_secret(tmp_path / "admin-pw", "a long enough password")
    given = cli.run("admin", "create", "carol", "--account", "beta", "--password-file", chosen)
    assert given.returncode == 0, given.stderr
    assert "password" not in given.stdout and "a long enough password" not in text(given)
    assert hasher.verify(stored_hash("carol"), "a long enough password")

    short = write_secret(tmp_path / "short-pw", "short-pw")
    refused = cli.run("admin", "create", "dave", "--account", "beta", "--password-file", short)
    assert refused.returncode == 1
    assert "[invalid_input]" in text(refused) and "at least 12 characters" in text(refused)
    assert cli.sql("SELECT count(*) FROM admins WHERE login = ?", ["dave"]) == [(0,)]


# --- import --------------------------------------------------------------------------------------


def test_a_large_folder_is_read_by_worker_processes(cli, tmp_path):
    """Enough files for the import's worker processes (CERTVAULT_IMPORT_POOL_FROM): every file
    answered once, in order, the good ones stored, the bad ones refused with the reader's own
    code."""
    cli.bootstrap()
    folder = tmp_path / "many"
    folder.mkdir()
    password = write_secret(tmp_path / "pw", "import-pass-1")
    count = 26
    for i in range(count):
        key = new_key("ec256")
        data = make_p12(key, make_cert(key, f"many{i}@example.org"), "import-pass-1")
        (folder / f"{i:03}.p12").write_bytes(data if i % 10 else b"not a PKCS#12 file")
    done = cli.run(
        "import",
        *("--account", "acme", folder, "--password-file", password, "--json"),
        env={"CERTVAULT_IMPORT_POOL_FROM": "20", "CERTVAULT_IMPORT_WORKERS": "2"},
    )
    assert done.returncode == 1, done.stderr
    rows = json.loads(done.stdout)
    assert [row["file"] for row in rows] == [str(folder / f"{i:03}.p12") for i in range(count)]
    refused = [row["file"] for row in rows if row["clientCertId"] is None]
    assert refused == [str(folder / f"{i:03}.p12") for i in range(0, count, 10)]
    assert "[p12_malformed]" in text(done)
    stored = count - len(refused)
    assert cli.sql("SELECT count(*) FROM escrowed_keys") == [(stored,)]


def test_import_folder_reports_every_file_and_manifest_takes_a_password_per_file(cli, tmp_path):
    cli.bootstrap()
    src, folder = tmp_path / "src", tmp_path / "incoming"
    src.mkdir()
    (folder / "sub").mkdir(parents=True)
    password = write_secret(tmp_path / "pw", "import-pass-1")
    other = write_secret(tmp_path / "other-pw", "another-pass-2")

    good: dict[str, tuple[str, object]] = {}  # file -> (alias, certificate)
    for stem, key, target in [
        ("alpha", new_key("ec256"), folder / "alpha.p12"),
        ("bravo", pool_key("rsa2048-2"), folder / "bravo.PFX"),
        ("charlie", new_key("ec384"), folder / "sub" / "charlie.p12"),
    ]:
        cert = make_cert(key, f"{stem}@example.org")
        k, c = write_key_and_cert(src, stem, key, cert)
        openssl_p12(k, c, target, password, name=f"{stem}-alias")
        good[str(target)] = (f"{stem}-alias", cert)
    wrong_key = new_key("ec256")
    k, c = write_key_and_cert(src, "wrong", wrong_key, make_cert(wrong_key, "w@example.org"))
    wrong = openssl_p12(k, c, folder / "wrong.p12", other)
    junk = folder / "junk.p12"
    junk.write_bytes(os.urandom(700))
    (folder / "notes.txt").write_text("not a p12")

    first = cli.run("import", "--account", "acme", folder, "--password-file", password, "--json")
    assert first.returncode == 1, first.stderr
    rows = {row["file"]: row for row in json.loads(first.stdout)}
    assert set(rows) == set(good) | {str(wrong), str(junk)}
    for row in rows.values():
        assert set(row) == {"alias", "clientCertId", "md5", "sha1", "message", "file", "warnings"}
    for name, (alias, cert) in good.items():
        row = rows[name]
        assert row["message"] == IMPORTED and row["alias"] == alias
        assert isinstance(row["clientCertId"], int)
        assert row["md5"] == cert.fingerprint(hashes.MD5()).hex()  # type: ignore[attr-defined]
        assert row["sha1"] == cert.fingerprint(hashes.SHA1()).hex()  # type: ignore[attr-defined]
    assert rows[str(wrong)]["message"] == WRONG_PASSWORD
    assert "not a readable PKCS#12" in rows[str(junk)]["message"]
    for name in (str(wrong), str(junk)):
        assert rows[name]["clientCertId"] is None and rows[name]["md5"] is None
    summary = text(first)
    assert "files: 5, imported: 3, already there: 0, failed: 2" in summary
    assert "[p12_wrong_password]" in summary and "[p12_malformed]" in summary
    assert cli.sql("SELECT count(*) FROM escrowed_keys") == [(3,)]

    again = cli.run("import", "--account", "acme", *good, "--password-file", password, "--json")
    assert again.returncode == 0, again.stderr
    rerun = {row["file"]: row for row in json.loads(again.stdout)}
    assert {r["message"] for r in rerun.values()} == {"Already exists"}
    assert {n: r["clientCertId"] for n, r in rerun.items()} == {
        n: rows[n]["clientCertId"] for n in good
    }
    assert "files: 3, imported: 0, already there: 3, failed: 0" in text(again)
    assert cli.sql("SELECT count(*) FROM escrowed_keys") == [(3,)]

    batch = tmp_path / "batch"
    batch.mkdir()
    lines = ["file,password_file,email,organization"]
    for n, owner, org in [(1, "owner-one@example.org", "Acme Corp"), (2, "", "")]:
        key = new_key("ec256")
        k, c = write_key_and_cert(src, f"m{n}", key, make_cert(key, f"m{n}@example.org"))
        secret = write_secret(batch / f"pw{n}.txt", f"manifest-pass-{n}")
        openssl_p12(k, c, batch / f"m{n}.p12", secret)
        lines.append(f"m{n}.p12,pw{n}.txt,{owner},{org}")
    (batch / "manifest.csv").write_text("\n".join(lines) + "\n")
    manifest = cli.run(
        "import", "--account", "acme", "--manifest", batch / "manifest.csv", "--json"
    )
    assert manifest.returncode == 0, manifest.stderr
    assert [r["message"] for r in json.loads(manifest.stdout)] == [IMPORTED, IMPORTED]
    persons = {e for (e,) in cli.sql("SELECT email FROM persons")}
    assert {"owner-one@example.org", "m2@example.org"} <= persons
    assert "m1@example.org" not in persons  # the manifest named the owner


def test_import_one_bad_file_never_stops_the_others(cli, tmp_path):
    """A file whose key is named '6BC162DA\x00' (as in pyca's no-password.p12), one whose
    certificate names an address with a NUL, and two good ones, in one call and one batch: the
    good ones and the cleaned name are stored, the address is refused, the exit code says so."""
    cli.bootstrap()
    folder = tmp_path / "incoming"
    folder.mkdir()
    password = write_secret(tmp_path / "pw", "import-pass-1")
    made = {
        "a-good.p12": ("good1@example.org", b"good"),
        "b-nul-name.p12": ("nulname@example.org", b"6BC162DA\x00"),
        "c-nul-address.p12": ("mallory\x00@example.org", b"evil"),
        "d-good.p12": ("good2@example.org", b"good"),
    }
    for file, (email, name) in made.items():
        key = new_key("ec256")
        data = make_p12(key, make_cert(key, email), "import-pass-1", name=name)
        (folder / file).write_bytes(data)
    done = cli.run("import", "--account", "acme", folder, "--password-file", password, "--json")
    assert done.returncode == 1, done.stderr
    assert "[internal]" not in text(done)
    rows = {Path(row["file"]).name: row for row in json.loads(done.stdout)}
    assert [rows[f]["message"] for f in ("a-good.p12", "b-nul-name.p12", "d-good.p12")] == [
        IMPORTED
    ] * 3
    assert rows["b-nul-name.p12"]["alias"] == "6BC162DA"
    assert rows["c-nul-address.p12"]["clientCertId"] is None
    assert "files: 4, imported: 3, already there: 0, failed: 1" in text(done)
    assert "[certificate_email_invalid]" in text(done)
    assert cli.sql("SELECT count(*) FROM escrowed_keys") == [(3,)]
    assert sorted(e for (e,) in cli.sql("SELECT emails FROM certificates")) == [
        "good1@example.org",
        "good2@example.org",
        "nulname@example.org",
    ]

    del made["c-nul-address.p12"]
    for file in made:
        (folder / file).unlink()
    key = new_key("ec256")
    (folder / "e-nul-name.p12").write_bytes(
        make_p12(key, make_cert(key, "e@example.org"), "import-pass-1", name=b"E\x00")
    )
    (folder / "c-nul-address.p12").unlink()
    clean = cli.run("import", "--account", "acme", folder, "--password-file", password)
    assert clean.returncode == 0, clean.stderr  # everything was imported
    assert "files: 1, imported: 1, already there: 0, failed: 0" in text(clean)


def test_import_reports_the_readers_warnings(cli, tmp_path):
    cli.bootstrap()
    vector = Path(__file__).parents[1] / "vectors" / "p12" / "p256-openssl10-nonascii.p12"
    password = write_secret(tmp_path / "pw", "pässwörd-Ω-12345")
    done = cli.run("import", "--account", "acme", vector, "--password-file", password, "--json")
    assert done.returncode == 0, done.stderr
    [row] = json.loads(done.stdout)
    assert row["message"] == IMPORTED and row["warnings"] == ["legacy_password_encoding"]
    assert f"WARNING {vector}: [legacy_password_encoding]" in text(done)
    assert "OpenSSL 1.0" in text(done)


# --- export --------------------------------------------------------------------------------------


def _public_and_private(pem_file: Path) -> tuple[str, str]:
    return (
        openssl("pkey", "-in", pem_file, "-pubout").stdout,
        openssl("pkey", "-in", pem_file).stdout,
    )


def test_export_writes_a_p12_openssl_opens_with_an_honest_mac(cli, tmp_path):
    cli.bootstrap()
    key = pool_key("rsa2048-3")
    cert_id = _import_one(cli, key, "erin@example.org")
    original, _ = write_key_and_cert(tmp_path, "original", key, make_cert(key))
    # An own passphrase gets the configured count (not the 2,048 other tools use by default); a
    # generated one the low count, 2,048 here as by default.
    rounds = {"CERTVAULT_P12_KDF_ROUNDS": "3000"}

    def export(*args: str | Path):  # type: ignore[no-untyped-def]
        return cli.run("export", str(cert_id), "--account", "acme", *args, env=rounds)

    def check_file(p12: Path, passphrase_file: Path, legacy: bool, count: int) -> str:
        extra = ["-legacy"] if legacy else []
        pem = tmp_path / f"{p12.stem}.key.pem"
        openssl(
            "pkcs12",
            "-in",
            p12,
            "-nodes",
            "-nocerts",
            "-passin",
            f"file:{passphrase_file}",
            "-out",
            pem,
            *extra,
        )
        assert _public_and_private(pem) == _public_and_private(original)
        info = openssl(
            "pkcs12", "-info", "-noout", "-in", p12, "-passin", f"file:{passphrase_file}", *extra
        )
        said = info.stdout + info.stderr
        assert {int(n) for n in re.findall(r"Iteration (\d+)", said)} == {count}
        assert len(re.findall(r"Iteration", said)) >= 2  # the MAC and at least one bag
        return said

    out1 = tmp_path / "out1.p12"
    done = export("--out", out1, "--reason", "ticket 42")
    assert done.returncode == 0, done.stderr
    [phrase] = GENERATED.findall(done.stderr)
    assert phrase not in done.stdout and done.stderr.count(phrase) == 1
    assert _mode(out1) == 0o600
    phrase_file = write_secret(tmp_path / "phrase", phrase)
    info = check_file(out1, phrase_file, legacy=False, count=2048)
    assert "MAC: sha256, Iteration 2048" in info and "AES-256-CBC" in info

    before = out1.read_bytes()
    clash = export("--out", out1, "--reason", "ticket 42")
    assert clash.returncode == 1 and "[exists]" in text(clash)
    assert out1.read_bytes() == before and not GENERATED.search(clash.stderr)

    own = write_secret(tmp_path / "own-phrase", "correct horse battery staple")
    out2 = tmp_path / "out2.p12"
    legacy = export(
        "--out",
        out2,
        "--reason",
        "old phone",
        "--passphrase-file",
        own,
        "--encryption",
        "TripleDES-SHA1",
    )
    assert legacy.returncode == 0, legacy.stderr
    assert "(TripleDES-SHA1)" in legacy.stdout and not GENERATED.search(legacy.stderr)
    assert "correct horse" not in text(legacy)
    info = check_file(out2, own, legacy=True, count=3000)
    assert "MAC: sha1, Iteration 3000" in info and "pbeWithSHA1And3-KeyTripleDES-CBC" in info

    out3 = tmp_path / "out3.p12"
    no_reason = export("--out", out3)
    assert no_reason.returncode == 2
    assert "Missing option" in text(no_reason) and "--reason" in text(no_reason)
    empty = export("--out", out3, "--reason", "  ")
    assert empty.returncode == 1 and "[reason_required]" in text(empty)
    assert not out3.exists()

    releases = cli.sql(
        "SELECT outcome, details FROM audit_events WHERE action = ? ORDER BY id", ["key.release"]
    )
    assert [o for o, _ in releases] == ["success", "success", "refused"]
    assert json.loads(releases[0][1])["reason"] == "ticket 42"
    assert json.loads(releases[2][1])["reason"] == "reason_required"


@pytest.mark.parametrize("encryption", ["AES256-SHA256", "TripleDES-SHA1"])
def test_export_refuses_an_own_passphrase_easy_to_guess(cli, tmp_path, encryption):
    cli.bootstrap()
    cert_id = _import_one(cli, new_key("ec256"), "gail@example.org")
    weak = write_secret(tmp_path / "weak", "iloveyou12345678")
    out = tmp_path / "out.p12"
    done = cli.run(
        "export",
        str(cert_id),
        "--account",
        "acme",
        "--out",
        out,
        "--reason",
        "new phone",
        "--passphrase-file",
        weak,
        "--encryption",
        encryption,
    )
    assert done.returncode == 1, done.stderr
    said = text(done)
    assert "[weak_passphrase]" in said and "too easy to guess: a commonly used password" in said
    assert "iloveyou" not in said
    assert not out.exists()
    releases = cli.sql(
        "SELECT outcome, details FROM audit_events WHERE action = ? ORDER BY id", ["key.release"]
    )
    assert [(o, json.loads(d)["reason"]) for o, d in releases] == [("refused", "weak_passphrase")]


# --- verify and audit ----------------------------------------------------------------------------


def test_verify_and_audit_verify_find_an_edited_event(cli):
    cli.bootstrap()
    _import_one(cli, new_key("ec256"), "frank@example.org")

    verify = cli.run("verify")
    assert verify.returncode == 0, verify.stderr
    assert "keys checked: 1, certificates: 1, failures: 0" in verify.stdout

    [(total,)] = cli.sql("SELECT count(*) FROM audit_events")
    ok = cli.run("audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert f"OK: 2 chains, {total} events verified" in ok.stdout

    [(row_id, chain, seq)] = cli.sql(
        "SELECT id, chain, seq FROM audit_events WHERE action = ?", ["key.archive"]
    )
    cli.sql("UPDATE audit_events SET target_id = ? WHERE id = ?", ["999999", row_id])
    broken = cli.run("audit", "verify")
    assert broken.returncode == 1
    said = text(broken)
    assert f"BROKEN chain {chain}: event #{seq} (row {row_id}): MAC does not match" in said
    assert said.count("BROKEN") == 1 and "OK:" not in said


# --- master-key custody --------------------------------------------------------------------------


def test_kek_shares_rebuild_a_lost_master_key(cli, tmp_path):
    cli.bootstrap()
    _import_one(cli, new_key("ec256"), "grace@example.org")
    key_file = cli.master_key_dir / "master-v1.key"
    original = key_file.read_bytes()

    shares_dir = tmp_path / "shares"
    exported = cli.run(
        "kek", "export-shares", "--threshold", "2", "--shares", "3", "--out-dir", shares_dir
    )
    assert exported.returncode == 0, exported.stderr
    files = sorted(shares_dir.iterdir())
    assert [f.name for f in files] == ["share-1.txt", "share-2.txt", "share-3.txt"]
    assert all(_mode(f) == 0o600 for f in files)
    assert len({f.read_text() for f in files}) == 3
    assert all(f.read_text().strip() not in exported.stdout for f in files)

    shutil.rmtree(cli.master_key_dir)
    refused = cli.run("init")
    assert refused.returncode == 1
    assert "[master_key_missing]" in text(refused) and "restore-shares" in text(refused)
    assert not cli.master_key_dir.exists()

    one = cli.run("kek", "restore-shares", "--share-file", files[0])
    assert one.returncode == 1
    assert "2 different shares are needed; 1 were given" in text(one)

    foreign_dir = tmp_path / "foreign"
    foreign_dir.mkdir()
    foreign = [
        write_secret(foreign_dir / f"f{n}", s)
        for n, s in enumerate(split_secret(os.urandom(32), 2, 3))
    ]
    strange = cli.run(
        "kek", "restore-shares", "--share-file", foreign[0], "--share-file", foreign[2]
    )
    assert strange.returncode == 1
    assert "not the one that protects this installation's data" in text(strange)
    assert not key_file.exists()

    restored = cli.run("kek", "restore-shares", "--share-file", files[0], "--share-file", files[2])
    assert restored.returncode == 0, restored.stderr
    assert "master key restored" in restored.stdout
    assert key_file.read_bytes() == original and _mode(key_file) == 0o600

    verify = cli.run("verify")
    assert verify.returncode == 0, verify.stderr
    assert "keys checked: 1, certificates: 1, failures: 0" in verify.stdout
    init = cli.run("init")
    assert init.returncode == 0, init.stderr
    assert "WARNING" not in init.stderr and "ONE file only" not in text(init)


# --- serve ---------------------------------------------------------------------------------------


def test_serve_answers_health_and_readiness(cli, tmp_path):
    cli.bootstrap()
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(CERTVAULT), "serve", "--port", str(port)],
        env=cli.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        health = None
        while health is None:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not come up in 20 s"
                time.sleep(0.1)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {"database": True, "master_key": True}}
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
