"""The bad-input and compatibility vectors of make_vectors_more.sh through the REST upload: a
stable code and nothing stored, or the key stored with the reader's warnings in the answer."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from certvault.services.vault.archive import ALREADY_EXISTS, IMPORTED
from tests.functional.api_fixtures import api_fixture  # noqa: F401 - `api`
from tests.functional.helpers import counts, events

VECTORS = Path(__file__).parents[1] / "vectors" / "p12"
P = "vector-pass-1234"
N = "pässwörd-Ω-12345"
V1 = "/api/v1"


def _upload(api, person_id: int, name: str, password: str = P):  # type: ignore[no-untyped-def]
    p12 = base64.b64encode((VECTORS / name).read_bytes()).decode()
    return api.post(
        "keys", f"{V1}/persons/{person_id}/keys", json={"p12": p12, "password": password}
    )


def _vector_owner(api) -> int:  # type: ignore[no-untyped-def]
    """A person with the address of the vectors' p256 certificate."""
    r = api.post("keys", f"{V1}/persons", json={"email": "alice.p256@example.org"})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("p256-bad-mac.p12", "p12_wrong_password"),
        ("two-keys-foreign-cert.p12", "p12_no_certificate"),
        ("pbmac1-keylen-huge.p12", "p12_malformed"),
        ("rsa2048-bad-crt.p12", "p12_key_inconsistent"),
        ("certs-only.p12", "p12_no_key"),
        ("mismatch.p12", "p12_no_certificate"),
    ],
)
def test_bad_vectors_are_refused_by_code_and_change_nothing(api, name, code):
    before = counts(api.ports)
    r = _upload(api, api.alice.person_id, name)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert counts(api.ports) == before
    [refused] = [e for e in events(api.ports, "key.archive") if e.outcome == "refused"]
    assert json.loads(refused.details)["reason"] == code


def test_files_read_with_warnings_answer_with_them(api):
    owner = _vector_owner(api)

    first = _upload(api, owner, "p256-openssl10-nonascii.p12", N)
    assert first.status_code == 200, first.text
    assert first.json()["entries"][0]["message"] == IMPORTED
    [warning] = first.json()["warnings"]
    assert warning["code"] == "legacy_password_encoding" and "OpenSSL 1.0" in warning["message"]
    archived = [e for e in events(api.ports, "key.archive") if e.outcome == "success"]
    assert json.loads(archived[-1].details)["password_encoding"] == "openssl-1.0"
    assert "password_encoding" not in json.loads(archived[0].details)  # the fixture's keys

    # The same key and certificate in the other files: already there, with their own warnings.
    skipped = _upload(api, owner, "certtool-p256-9certs.p12")
    assert skipped.status_code == 200, skipped.text
    assert skipped.json()["entries"][0]["message"] == ALREADY_EXISTS
    assert [w["code"] for w in skipped.json()["warnings"]] == ["chain_certificates_skipped"]

    chain = _upload(api, owner, "p256-70ca.p12")
    assert chain.status_code == 200, chain.text
    assert chain.json()["warnings"] == []
