"""A caller's own passphrase over the REST APIs: one that is easy to guess is refused on every
download path and with either encryption (nothing released, the refusal audited, the passphrase
never repeated), and a passphrase is used exactly as given: a file asked for with a decomposed
(NFD) passphrase opens in openssl with exactly those bytes. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import unicodedata
from pathlib import Path

import pytest

from tests.functional.api_fixtures import ApiWorld, api_fixture  # noqa: F401 - `api`
from tests.functional.helpers import events, mails

V1 = "/api/v1"
# At least the account's 12 characters, so that only their strength is wrong.
WEAK = {
    "aaaaaaaaaaaaaaaa": "repeated characters",
    "abcdefghijklmnop": "a run of characters",
    "iloveyou12345678": "a commonly used password",
}
ENCRYPTIONS = ("AES256-SHA256", "TripleDES-SHA1")


def _paths(api: ApiWorld) -> dict[str, tuple[str, str]]:
    """Every download path of both APIs: (path, the name of its encryption field)."""
    return {
        "own API, one key": (
            f"{V1}/certificates/{api.alice.cert_ids[1]}/key",
            "encryption_type",
        ),
        "own API, a person's keys": (
            f"{V1}/persons/{api.alice.person_id}/keys/download",
            "encryption_type",
        ),
        "SCM keystore": (f"/api/smime/v2/keystore/{api.alice.cert_ids[1]}", "encryptionType"),
    }


def _released(api: ApiWorld) -> list[dict]:
    return [
        json.loads(e.details) for e in events(api.ports, "key.release") if e.outcome != "refused"
    ]


def _refused(api: ApiWorld) -> list[str]:
    return [
        json.loads(e.details)["reason"]
        for e in events(api.ports, "key.release")
        if e.outcome == "refused"
    ]


def test_weak_own_passphrases_are_refused_on_every_api_path(api: ApiWorld) -> None:
    mailed = len(mails(api.ports))
    attempts = 0
    for label, (path, field) in _paths(api).items():
        for encryption in ENCRYPTIONS:
            for passphrase, why in WEAK.items():
                body = {"passphrase": passphrase, field: encryption, "reason": "lost laptop"}
                r = api.post("keys", path, json=body)
                attempts += 1
                assert r.status_code == 422, (label, encryption, r.text)
                answer = r.json()
                if path.startswith(V1):
                    assert answer["code"] == "weak_passphrase", (label, answer)
                else:
                    assert answer["code"] == -422, (label, answer)
                assert f"too easy to guess: {why}" in answer["description"], (label, answer)
                assert passphrase not in r.text and passphrase[:8] not in r.text
                assert "x-certvault-passphrase" not in r.headers
    assert _released(api) == []
    assert len(mails(api.ports)) == mailed  # no owner was told of a release that did not happen
    assert _refused(api) == ["weak_passphrase"] * attempts
    for event in events(api.ports, "key.release"):
        assert all(p[:8] not in event.details for p in WEAK)


def _openssl_opens(p12: Path, passphrase_file: Path, legacy: bool) -> bool:
    done = subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-in",
            str(p12),
            "-nokeys",
            "-passin",
            f"file:{passphrase_file}",
            *(["-legacy"] if legacy else []),
        ],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0 and b"BEGIN CERTIFICATE" in done.stdout


@pytest.mark.parametrize("encryption", ENCRYPTIONS)
def test_a_decomposed_passphrase_opens_the_file_with_exactly_those_bytes(
    api: ApiWorld, tmp_path: Path, encryption: str
) -> None:
    nfd = "Cafe\u0301-au-lait-sans-sucre-42"  # an e and a combining acute accent
    nfc = unicodedata.normalize("NFC", nfd)
    assert nfd != nfc
    for path, field in _paths(api).values():
        if "/persons/" in path:
            continue  # a zip of files; the single-file paths show the point
        r = api.post("keys", path, json={"passphrase": nfd, field: encryption, "reason": "x"})
        assert r.status_code == 200, r.text
        p12 = tmp_path / "key.p12"
        p12.write_bytes(r.content)
        typed, normalised = tmp_path / "typed", tmp_path / "normalised"
        # openssl reads the passphrase file's first line as bytes, as a person's tools pass it.
        typed.write_bytes(nfd.encode("utf-8") + b"\n")
        normalised.write_bytes(nfc.encode("utf-8") + b"\n")
        legacy = encryption == "TripleDES-SHA1"
        assert _openssl_opens(p12, typed, legacy), path
        assert not _openssl_opens(p12, normalised, legacy), path
