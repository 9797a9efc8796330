"""IMPORT: PKCS#12 files made by OpenSSL, Java keytool, NSS pk12util and GnuTLS certtool (the
committed vectors in tests/vectors/interop/) go into the vault through the REST API, and what the
vault then releases is the key the tool was given, with its CA certificate. For every file,
certvault's reader and pyca's load_pkcs12 find the same key and certificates, or both refuse."""

from __future__ import annotations

import base64
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.errors import CertvaultError
from tests.functional.api_fixtures import ApiWorld
from tests.interop.compatibility import FAILS, Cell, Recorder
from tests.interop.tools import key_identity

V1 = "/api/v1"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "interop"
EMAIL = "interop@acme.example"  # every vector's certificate is issued to this address
PASSWORD_KINDS = {"P": "ASCII", "N": "non-ASCII", "E": "empty"}


@dataclass(frozen=True)
class Refusal:
    """A file certvault refuses on purpose or by a known gap: the code, and why."""

    code: str
    why: str


# Files certvault does not import; each is asserted, so that a change in the reader shows.
# None today: RC4 (certtool's arcfour), the last one, is read since it is what pyca reads too.
REFUSED: dict[str, Refusal] = {}


@dataclass(frozen=True)
class Vector:
    file: str
    tool: str
    variant: str
    password_id: str
    keys: tuple[str, ...]
    command: str

    @property
    def password(self) -> str:
        text = (VECTORS / "passwords" / f"{self.password_id}.txt").read_text(encoding="utf-8")
        return text.removesuffix("\n")

    def key(self, name: str) -> Any:
        return serialization.load_pem_private_key(
            (VECTORS / "keys" / f"{name}.key.pem").read_bytes(), None
        )

    def cert(self, name: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((VECTORS / "certs" / f"{name}.pem").read_bytes())


def _manifest() -> list[Vector]:
    rows = (VECTORS / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    vectors = []
    for row in rows:
        file, tool, variant, password_id, keys, command = row.split("\t")
        vectors.append(Vector(file, tool, variant, password_id, tuple(keys.split(",")), command))
    return vectors


VECTOR_LIST = _manifest()
RECORDER = Recorder("import", {v.file for v in VECTOR_LIST})


def _key_type(key: Any) -> str:
    identity = key_identity(key)
    if identity[0] == "rsa":
        return f"RSA-{key.key_size}"
    if identity[0] == "ec":
        return {"secp256r1": "P-256", "secp384r1": "P-384"}[identity[1]]
    return "Ed25519"


def _fingerprints(certs: list[x509.Certificate]) -> set[bytes]:
    return {c.fingerprint(hashes.SHA256()) for c in certs}


def _agreement(vector: Vector, data: bytes) -> tuple[str, str]:
    """Whether certvault's reader and pyca's load_pkcs12 read the file alike: result, detail."""
    try:
        ours = read_pkcs12(data, vector.password)
        ours_error = None
    except CertvaultError as exc:
        ours, ours_error = None, exc.code
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # pyca warns about BER (NSS writes it) and reads on
        try:
            theirs = pkcs12.load_pkcs12(data, vector.password.encode("utf-8"))
            theirs_error = None
        except ValueError as exc:
            theirs, theirs_error = None, str(exc)
    note = "; pyca warns: BER, not DER" if any("BER" in str(w.message) for w in caught) else ""
    if ours is None and theirs is None:
        return "both refuse", f"{ours_error}{note}"
    if ours is None or theirs is None:
        return (
            "differ",
            f"certvault: {ours_error or 'reads it'}; pyca: {theirs_error or 'reads it'}",
        )
    assert theirs.key is not None and theirs.cert is not None
    first = ours.entries[0]
    problems = []
    if key_identity(first.key) != key_identity(theirs.key):
        problems.append("another key")
    if first.certificate != theirs.cert.certificate:
        problems.append("another certificate")
    all_ours = [e.certificate for e in ours.entries] + ours.extra_certificates
    all_theirs = [theirs.cert.certificate] + [c.certificate for c in theirs.additional_certs]
    if _fingerprints(all_ours) != _fingerprints(all_theirs):
        problems.append("other certificates")
    # pyca reads the friendly name as bytes; certvault cleans it to text.
    theirs_name = theirs.cert.friendly_name.decode("utf-8") if theirs.cert.friendly_name else None
    if first.friendly_name != theirs_name:
        problems.append("another friendly name")
    if problems:
        return "differ", ", ".join(problems)
    return "agree", f"{len(ours.entries)} key(s), {len(all_ours)} certificates{note}"


def _released(world: ApiWorld, cert_id: int) -> pkcs12.PKCS12KeyAndCertificates:
    r = world.post(
        "keys",
        f"{V1}/certificates/{cert_id}/key",
        json={"generate_passphrase": True, "reason": "interop import check"},
    )
    assert r.status_code == 200, r.text
    return pkcs12.load_pkcs12(r.content, r.headers["x-certvault-passphrase"].encode())


def _import(world: ApiWorld, person_id: int, vector: Vector, data: bytes) -> tuple[str, str]:
    """Upload through the API, then release every stored key and compare: result, detail."""
    r = world.post(
        "keys",
        f"{V1}/persons/{person_id}/keys",
        json={"p12": base64.b64encode(data).decode(), "password": vector.password},
    )
    if r.status_code != 200:
        return "refused", r.json()["code"]
    entries = r.json()["entries"]
    if [e["message"] for e in entries] != ["Imported successfully"] * len(vector.keys):
        return FAILS, f"entries: {[e['message'] for e in entries]}"
    issuing = x509.load_pem_x509_certificate((VECTORS / "ca" / "issuing.pem").read_bytes())
    for entry, name in zip(entries, vector.keys, strict=True):
        got = _released(world, entry["clientCertId"])
        assert got.key is not None and got.cert is not None
        if key_identity(got.key) != key_identity(vector.key(name)):
            return FAILS, f"the released key is not {name}"
        if got.cert.certificate != vector.cert(name):
            return FAILS, f"the released certificate is not {name}'s"
        if issuing not in [c.certificate for c in got.additional_certs]:
            return FAILS, "the issuing CA is not released with the key"
    return "imported", "key matches" if len(entries) == 1 else f"{len(entries)} keys match"


@pytest.fixture(scope="module")
def person_id(world: ApiWorld) -> int:
    r = world.post("keys", f"{V1}/persons", json={"email": EMAIL})
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


@pytest.fixture(scope="module", autouse=True)
def _publish() -> Any:
    yield
    RECORDER.publish()


@pytest.mark.parametrize("vector", VECTOR_LIST, ids=lambda v: v.file)
def test_vector_imports_and_readers_agree(world: ApiWorld, person_id: int, vector: Vector) -> None:
    data = (VECTORS / vector.file).read_bytes()
    key_types = ", ".join(sorted({_key_type(vector.key(name)) for name in vector.keys}))
    agreement, agreement_detail = _agreement(vector, data)
    result, detail = _import(world, person_id, vector, data)
    refusal = REFUSED.get(vector.file)

    def cell(check: str, result: str, detail: str) -> Cell:
        kind = PASSWORD_KINDS[vector.password_id]
        return Cell(
            "import",
            vector.tool,
            vector.variant,
            key_types,
            kind,
            result,
            detail,
            check,
            vector.file,
        )

    RECORDER.record(
        vector.file,
        [
            cell(
                "certvault import",
                result,
                refusal.why if refusal and result == "refused" else detail,
            ),
            cell("reader vs pyca", agreement, agreement_detail),
        ],
    )
    if refusal is None:
        assert (result, agreement) == ("imported", "agree"), (detail, agreement_detail)
    else:
        assert (result, detail) == ("refused", refusal.code)
        # The one known disagreement: pyca reads the file, certvault's reader does not.
        assert agreement == "differ", agreement_detail
        assert agreement_detail.startswith(f"certvault: {refusal.code}; pyca: reads it")
