"""EXPORT: every file certvault releases opens in the tools people use, with exactly the
passphrase as typed, and holds the escrowed key and its CA certificate.

Six key types, both profiles, four kinds of passphrase, released over the REST API and opened
with OpenSSL 3 (default and -legacy), NSS pk12util, Java keytool, GnuTLS certtool and pyca. The
tools' known limits are expected failures, asserted like successes, so that a change shows.
"""

from __future__ import annotations

import base64
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.factories import make_cert, make_p12, pool_key
from tests.functional.api_fixtures import ApiWorld
from tests.interop import tools
from tests.interop.compatibility import FAILS, KINDS, LIMIT, OPENS, REFUSED, Cell, Recorder
from tests.interop.tools import Opened, ToolRefused, key_identity, password_file

V1 = "/api/v1"
POOL = {
    "RSA-2048": "rsa2048-3",
    "RSA-3072": "rsa3072",
    "RSA-4096": "rsa4096",
    "P-256": "ec256",
    "P-384": "ec384",
    "Ed25519": "ed25519",
}
PROFILES = ("AES256-SHA256", "TripleDES-SHA1")
_NON_ASCII = "Grüße aus Köln, über Ærøskøbing nach Ωmega 7"
OWN = {
    "ASCII": "Quiet-harbour-lantern-97-sparrow",
    "NFC": unicodedata.normalize("NFC", _NON_ASCII),
    "NFD": unicodedata.normalize("NFD", _NON_ASCII),
}
OPENERS: dict[str, tools.Opener] = {
    "OpenSSL 3": tools.openssl,
    "OpenSSL 3 -legacy": tools.openssl_legacy,
    "NSS pk12util -i (Firefox, Thunderbird)": tools.nss,
    "Java keytool -list": tools.keytool_list,
    "Java keytool -importkeystore": tools.keytool_import,
    "GnuTLS certtool --p12-info": tools.certtool,
    "pyca load_pkcs12": tools.pyca,
}
# Opened with the passphrase in the other normalisation form: must fail, and for that reason.
OTHER_FORM = {"OpenSSL 3, other form": tools.openssl_legacy, "pyca, other form": tools.pyca}
WRONG_PASSWORD = {
    "OpenSSL 3, other form": "Mac verify error: invalid password?",
    "pyca, other form": "Invalid password or PKCS12 data",
}


@dataclass(frozen=True)
class Limit:
    """A tool's known limit: why, and what the tool says when it hits it."""

    why: str
    says: str


KEYTOOL_NON_ASCII = Limit(
    "Java keytool refuses non-ASCII passwords", "keystore password was incorrect"
)
GNUTLS_NFD = Limit(
    "GnuTLS certtool does not open a file whose passphrase is decomposed (NFD)",
    "verify_mac: The Message Authentication Code verification failed",
)
NSS_ED25519 = Limit(
    "NSS (Firefox, Thunderbird) cannot import Ed25519 keys", "SEC_ERROR_PKCS12_UNABLE_TO_IMPORT_KEY"
)


def expected_limit(tool: str, key: str, kind: str) -> Limit | None:
    if tool.startswith("Java keytool") and kind in ("NFC", "NFD"):
        return KEYTOOL_NON_ASCII
    if tool.startswith("NSS") and key == "Ed25519":
        return NSS_ED25519
    if tool.startswith("GnuTLS") and kind == "NFD":
        return GNUTLS_NFD
    return None


CASES = [(k, p, kind) for k in POOL for p in PROFILES for kind in KINDS]
RECORDER = Recorder("export", {"/".join(c) for c in CASES})


@dataclass
class Released:
    path: Path
    passphrase: str
    key: Any
    leaf: x509.Certificate
    ca: x509.Certificate


def _escrow(world: ApiWorld, key: Any) -> tuple[int, x509.Certificate]:
    cert = make_cert(key, world.alice.email, issuer=world.ca)
    pw = "upload-pass-1234"
    p12 = make_p12(key, cert, pw, chain=[world.ca[1]])
    r = world.post(
        "keys",
        f"{V1}/persons/{world.alice.person_id}/keys",
        json={"p12": base64.b64encode(p12).decode(), "password": pw},
    )
    assert r.status_code == 200, r.text
    [entry] = r.json()["entries"]
    assert entry["code"] is None, entry
    return entry["clientCertId"], cert


def _release(world: ApiWorld, cert_id: int, profile: str, kind: str) -> tuple[bytes, str]:
    body: dict[str, Any] = {"encryption_type": profile, "reason": "interop check"}
    if kind == "generated":
        body["generate_passphrase"] = True
    else:
        body["passphrase"] = OWN[kind]
    r = world.post("keys", f"{V1}/certificates/{cert_id}/key", json=body)
    assert r.status_code == 200, r.text
    if kind == "generated":
        return r.content, r.headers["x-certvault-passphrase"]
    assert "x-certvault-passphrase" not in r.headers
    return r.content, OWN[kind]


def _verdict(opened: Opened, released: Released) -> list[str]:
    """What is wrong with what the tool found; empty when it is the escrowed key and chain."""
    problems = []
    if [key_identity(k) for k in opened.keys] not in ([], [key_identity(released.key)]):
        problems.append("the key found is not the escrowed key")
    if opened.key_ids not in ([], [tools.nss_key_id(released.key)]):
        problems.append("the key id found is not the escrowed key's")
    fingerprints = {c.fingerprint(hashes.SHA256()) for c in opened.certs}
    for what, cert in (("certificate", released.leaf), ("CA certificate", released.ca)):
        if cert.fingerprint(hashes.SHA256()) not in fingerprints:
            problems.append(f"the {what} is missing")
    return problems


def _open(opener: tools.Opener, released: Released, work: Path, passphrase: str) -> Opened:
    work.mkdir(parents=True)
    return opener(released.path, password_file(work, "pw", passphrase), work)


def _check(tool: str, case: tuple[str, str, str], released: Released, work: Path) -> Cell:
    key, profile, kind = case
    limit = expected_limit(tool, key, kind)
    try:
        opened = _open(OPENERS[tool], released, work, released.passphrase)
    except ToolRefused as exc:
        if limit is not None and limit.says in exc.output:
            return Cell("export", tool, profile, key, kind, LIMIT, limit.why)
        return Cell("export", tool, profile, key, kind, FAILS, str(exc))
    problems = _verdict(opened, released)
    if limit is not None:
        problems.append(f"expected to fail ({limit.why}) but opened")
    if not (opened.keys or opened.key_ids) and tool != "Java keytool -list":  # shows no key
        problems.append("no key found")
    if problems:
        return Cell("export", tool, profile, key, kind, FAILS, "; ".join(problems))
    return Cell("export", tool, profile, key, kind, OPENS)


def _check_other_form(
    tool: str, case: tuple[str, str, str], released: Released, work: Path
) -> Cell:
    key, profile, kind = case
    other = unicodedata.normalize("NFD" if kind == "NFC" else "NFC", released.passphrase)
    assert other != released.passphrase
    try:
        _open(OTHER_FORM[tool], released, work, other)
    except ToolRefused as exc:
        if WRONG_PASSWORD[tool] in exc.output:
            return Cell("export", tool, profile, key, kind, REFUSED)
        return Cell("export", tool, profile, key, kind, FAILS, str(exc))
    return Cell("export", tool, profile, key, kind, FAILS, "opened with the other form")


class Checks:
    """Each key type's files, released and opened with every tool on first use: a test's
    setup pays for its own key type only."""

    def __init__(self, world: ApiWorld, folder: Path) -> None:
        self.world, self.folder = world, folder
        self.done: dict[str, dict[tuple[str, str], list[Cell]]] = {}

    def cells(self, key: str, profile: str, kind: str) -> list[Cell]:
        if key not in self.done:
            self.done[key] = self._run(key)
        return self.done[key][(profile, kind)]

    def _run(self, key_name: str) -> dict[tuple[str, str], list[Cell]]:
        key = pool_key(POOL[key_name])
        cert_id, leaf = _escrow(self.world, key)
        found: dict[tuple[str, str], list[Cell]] = {}
        with ThreadPoolExecutor(max_workers=3) as pool:
            jobs = []
            for profile in PROFILES:
                for kind in KINDS:
                    data, passphrase = _release(self.world, cert_id, profile, kind)
                    case = (key_name, profile, kind)
                    work = self.folder / "-".join(case)
                    work.mkdir()
                    (work / "released.p12").write_bytes(data)
                    item = Released(work / "released.p12", passphrase, key, leaf, self.world.ca[1])
                    checks = [(t, _check) for t in OPENERS]
                    if kind in ("NFC", "NFD"):
                        checks += [(t, _check_other_form) for t in OTHER_FORM]
                    for n, (tool, check) in enumerate(checks):
                        job = pool.submit(check, tool, case, item, work / f"tool-{n}")
                        jobs.append(((profile, kind), job))
            for where, job in jobs:
                found.setdefault(where, []).append(job.result())
        return found


@pytest.fixture(scope="module")
def checks(world: ApiWorld, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Checks]:
    yield Checks(world, tmp_path_factory.mktemp("export"))
    RECORDER.publish()


@pytest.mark.parametrize(("key", "profile", "kind"), CASES)
def test_released_file_opens_in_every_tool(
    checks: Checks, key: str, profile: str, kind: str
) -> None:
    cells = checks.cells(key, profile, kind)
    RECORDER.record(f"{key}/{profile}/{kind}", cells)
    failed = [f"{c.tool}: {c.detail}" for c in cells if c.result == FAILS]
    assert failed == []
    expected_tools = set(OPENERS) | (set(OTHER_FORM) if kind in ("NFC", "NFD") else set())
    assert {c.tool for c in cells} == expected_tools
    for cell in cells:
        limit = expected_limit(cell.tool, key, kind)
        if cell.tool in OTHER_FORM:
            assert cell.result == REFUSED
        elif limit is not None:
            assert (cell.result, cell.detail) == (LIMIT, limit.why)
        else:
            assert cell.result == OPENS, cell
