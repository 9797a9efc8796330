"""Download key in Chromium against `certvault serve`: confirm password and code, read the
passphrase the page shows, download with each encryption type, and open every file with the
real openssl using that passphrase. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import zipfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Page, expect

from tests.browser.console_server import ConsoleServer, console_server_fixture  # noqa: F401
from tests.functional.cli_env import openssl

ENCRYPTIONS = (("AES256-SHA256", False), ("TripleDES-SHA1", True))


def _public_key_of_p12(path: Path, passphrase: str, legacy: bool) -> tuple[bytes, bytes]:
    """The SubjectPublicKeyInfo of the file's key and of its certificate, as openssl reads them."""
    pw = path.with_suffix(".pw")
    pw.write_text(passphrase + "\n")
    out = openssl(
        "pkcs12", "-in", path, "-passin", f"file:{pw}", "-nodes", *(["-legacy"] if legacy else [])
    ).stdout
    key = serialization.load_pem_private_key(
        out[out.index("-----BEGIN PRIVATE KEY") :].encode(), None
    )
    cert_pem = out[out.index("-----BEGIN CERTIFICATE") :]
    cert_key = openssl("x509", "-pubkey", "-noout", "-in", _write(path, cert_pem)).stdout
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return (
        key.public_key().public_bytes(serialization.Encoding.DER, spki),
        serialization.load_pem_public_key(cert_key.encode()).public_bytes(
            serialization.Encoding.DER, spki
        ),
    )


def _write(path: Path, text: str) -> Path:
    target = path.with_suffix(".pem")
    target.write_text(text)
    return target


def _alice_spki(server: ConsoleServer, generation: int) -> bytes:
    key = server.world.world.alice.keys[generation]
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_download_key_with_each_encryption_type(
    page: Page, console_server: ConsoleServer, tmp_path: Path
) -> None:
    console_server.sign_in(page, "boss")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    newest = console_server.world.world.alice.cert_ids[1]
    for i, (encryption, legacy) in enumerate(ENCRYPTIONS):
        page.goto(f"{console_server.url}/admin/certificates/{newest}/download")
        expect(page.get_by_role("heading", level=1)).to_have_text("Download key")
        if i == 0:  # just signed in, and asked all the same: a sign-in is no re-authentication
            console_server.reauthenticate(page)
        else:  # confirmed a moment ago: not asked again
            expect(page.locator("#password")).to_have_count(0)
        passphrase = page.locator("#passphrase").inner_text().strip()
        assert len(passphrase) == 29
        if i == 0:
            # A form error keeps the passphrase shown, and the file opens with it (below).
            page.get_by_label("Use my own passphrase").check()
            page.locator("#own-passphrase").fill("one long passphrase typed here")
            page.locator("#own-passphrase-confirm").fill("another long passphrase typed")
            page.get_by_role("button", name="Download").click()
            expect(page.locator("#error")).to_contain_text("not the same")
            expect(page.locator("#error")).to_be_focused()
            assert page.locator("#passphrase").inner_text().strip() == passphrase
            expect(page.locator("#passphrase-renewed")).to_have_count(0)
            page.get_by_label("Use the passphrase certvault made").check()
        page.get_by_role("button", name="Copy").click()
        expect(page.locator("#copy-passphrase")).to_have_attribute("data-copied", "true")
        page.get_by_label("Encryption type").select_option(encryption)
        page.get_by_label("Reason").fill(f"browser test {encryption}")
        console_server.shot(page, f"download-form-{encryption}")
        with page.expect_download() as info:
            page.get_by_role("button", name="Download").click()
        download = info.value
        assert download.suggested_filename == f"{newest}.p12"
        saved = tmp_path / f"{encryption}.p12"
        download.save_as(saved)
        key_spki, cert_spki = _public_key_of_p12(saved, passphrase, legacy)
        assert key_spki == cert_spki == _alice_spki(console_server, 1)
        # The page stays, says which file came and what next, without the stale error; the
        # form is used up (posting it again is refused: tests/functional/test_console_download).
        expect(page.locator("#download-done")).to_be_visible()
        expect(page.locator("#download-file")).to_have_text(download.suggested_filename)
        expect(page.locator("#download-done")).to_contain_text("apart from the file")
        if i == 0:
            expect(page.locator("#error")).to_be_hidden()
        expect(page.get_by_role("button", name="Download")).to_be_disabled()
        console_server.shot(page, f"download-after-{encryption}")


def test_download_all_keys_of_a_person(
    page: Page, console_server: ConsoleServer, tmp_path: Path
) -> None:
    console_server.sign_in(page, "boss")
    alice = console_server.world.world.alice
    page.goto(f"{console_server.url}/admin/persons/{alice.person_id}/download")
    expect(page.get_by_role("heading", level=1)).to_have_text("Download all keys")
    expect(page.locator("#download-keys tbody tr")).to_have_count(2)
    console_server.reauthenticate(page)
    passphrase = page.locator("#passphrase").inner_text().strip()
    page.get_by_label("Reason").fill("mailbox migration")
    console_server.shot(page, "download-person-form")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    download = info.value
    assert download.suggested_filename == f"person-{alice.person_id}-keys.zip"
    expect(page.locator("#download-file")).to_have_text(download.suggested_filename)
    saved = tmp_path / "keys.zip"
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        names = sorted(archive.namelist())
        assert len(names) == 2
        archive.extractall(tmp_path / "keys")
    found = set()
    for name in names:
        key_spki, cert_spki = _public_key_of_p12(tmp_path / "keys" / name, passphrase, False)
        assert key_spki == cert_spki
        found.add(key_spki)
    assert found == {_alice_spki(console_server, 0), _alice_spki(console_server, 1)}
    console_server.shot(page, "download-person-after")
