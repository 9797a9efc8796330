"""The built-in CA as a service, on SQLite and PostgreSQL: init, issuance through the issuer seam,
CRLs at their public URL, an offline root, an issuing CA made by openssl, and CA keys that no
download path can reach. Checked with the real openssl."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.crypto.profiles import PROFILES, KeyType, get_profile
from certvault.db.models import Base, CertificateAuthority, EscrowedKey, ServiceKey
from certvault.errors import CaInvalid, Conflict, P12NoCertificate, P12WrongPassword
from certvault.services.audit import log as audit
from certvault.services.directory import accounts
from certvault.services.kernel import keyring, tenancy
from certvault.services.pki.authorities import CA_KEY_PURPOSE, NoIssuingCa
from certvault.services.pki.ca import (
    BuiltinIssuer,
    CaExists,
    OfflineRootExists,
    import_issuing,
    init_ca,
    issuing_chain,
)
from certvault.services.pki.crl import crl_for, revoke_certificate
from certvault.services.pki.issuance import IssueRequest
from certvault.services.vault.archive import EscrowRequest, ServiceKeyRefused, archive_entry
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from certvault.services.vault.verification import verify_escrow
from certvault.web.app import create_app
from tests.factories import make_p12, new_key
from tests.functional import cli_env
from tests.functional.cli_env import openssl, text, write_secret
from tests.functional.helpers import events

PUBLIC_URL = "https://pki.example.test/certvault/"  # the trailing slash is not doubled
ISSUING_CRL = "https://pki.example.test/certvault/crl/acme/issuing.crl"
ROOT_CRL = "https://pki.example.test/certvault/crl/acme/root.crl"
P12_PASSWORD = "external-ca-password"


@pytest.fixture
def ca_ports(ports, account):  # type: ignore[no-untyped-def]
    ports.settings.public_url = PUBLIC_URL
    return ports


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _verify(tmp_path: Path, root: x509.Certificate, untrusted, leaf, *extra: str | Path):  # type: ignore[no-untyped-def]
    """openssl verify, strict; the caller looks at the outcome."""
    args: list[str | Path] = ["-x509_strict", "-CAfile", _write(tmp_path / "root.pem", _pem(root))]
    if untrusted:
        args += ["-untrusted", _write(tmp_path / "untrusted.pem", _pem(*untrusted))]
    return subprocess.run(
        [
            "openssl",
            "verify",
            *map(str, args),
            *map(str, extra),
            str(_write(tmp_path / "leaf.pem", _pem(leaf))),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _issue(ports, profile: str = "smime", email: str = "alice@example.org"):  # type: ignore[no-untyped-def]
    key = new_key("ec256")
    with ports.db.transaction() as s:
        account = tenancy.get_account(s, "acme")
        request = IssueRequest(key.public_key(), get_profile(profile), email)
        return key, BuiltinIssuer(ports).issue(s, account, request)


def _enroll(ports, operator, email: str, profile: str = "smime"):  # type: ignore[no-untyped-def]
    """What web-form enrollment does: issue and escrow in one transaction."""
    key = new_key("ec256")
    with ports.db.transaction() as s:
        account = tenancy.get_account(s, "acme")
        issued = BuiltinIssuer(ports).issue(
            s, account, IssueRequest(key.public_key(), get_profile(profile), email)
        )
        entry = archive_entry(
            s,
            ports,
            account,
            operator,
            EscrowRequest(
                key=key,
                certificate=issued.certificate,
                chain=issued.chain,
                source="enroll",
                profile=get_profile(profile),
                ca_id=issued.ca_id,
            ),
        )
    return key, issued, entry.client_cert_id


def _ext(cert, cls):  # type: ignore[no-untyped-def]
    return cert.extensions.get_extension_for_class(cls).value


def _crl_url(cert: x509.Certificate) -> str:
    [point] = _ext(cert, x509.CRLDistributionPoints)
    [uri] = point.full_name
    return str(uri.value)


def _crl_number(der: bytes) -> int:
    return int(
        x509.load_der_x509_crl(der)
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
    )


def _ca_rows(ports) -> list[CertificateAuthority]:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        return list(s.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)))


def _ca_keys(ports) -> list[ServiceKey]:  # type: ignore[no-untyped-def]
    with ports.db.read() as s:
        return list(s.scalars(select(ServiceKey).where(ServiceKey.purpose == CA_KEY_PURPOSE)))


# --- init and issuance ---------------------------------------------------------------------------


def test_init_makes_a_chain_openssl_validates_for_every_profile(ca_ports, operator, tmp_path):
    result = init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256, organization="Acme Ltd")
    root, issuing = result.root, result.issuing
    assert result.crl_url == ISSUING_CRL and result.root_passphrase is None
    assert issuing.issuer == root.subject
    assert root.subject.rfc4514_string() == "CN=Acme Corp Root CA,O=Acme Ltd"
    # The CA keys are account-scoped service keys, with the fingerprint and certificate set.
    rows = _ca_rows(ca_ports)
    assert [(r.name, r.role, r.active) for r in rows] == [
        ("root", "root", True),
        ("issuing", "issuing", True),
    ]
    assert rows[1].parent_id == rows[0].id
    sealed = {k.id: k for k in _ca_keys(ca_ports)}
    assert set(sealed) == {rows[0].service_key_id, rows[1].service_key_id}
    for row, cert in zip(rows, (root, issuing), strict=True):
        key_row = sealed[row.service_key_id]
        assert key_row.account_id == row.account_id
        assert key_row.certificate_der == cert.public_bytes(Encoding.DER)
        assert key_row.spki_sha256 == keylib.spki_sha256(cert.public_key())
        key = keylib.load_pkcs8_der(keyring.open_service_key(ca_ports, key_row), validate=True)
        assert keylib.key_matches_certificate(key, cert)
    # The issuing CA points at the root's CRL, and names the root by its key identifier.
    assert _crl_url(issuing) == ROOT_CRL
    root_ski = _ext(root, x509.SubjectKeyIdentifier).digest
    assert _ext(issuing, x509.AuthorityKeyIdentifier).key_identifier == root_ski
    assert _verify(tmp_path, root, [], issuing).returncode == 0

    for name in PROFILES:
        _, issued = _issue(ca_ports, name, f"{name}@example.org")
        leaf = issued.certificate
        assert issued.chain == [issuing, root] and issued.ca_id == rows[1].id
        assert _crl_url(leaf) == ISSUING_CRL  # under CERTVAULT_PUBLIC_URL
        assert _ext(leaf, x509.AuthorityKeyIdentifier).key_identifier == (
            _ext(issuing, x509.SubjectKeyIdentifier).digest
        )
        proc = _verify(tmp_path, root, [issuing], leaf)
        assert proc.returncode == 0, (name, proc.stdout + proc.stderr)
        assert proc.stdout.strip().endswith(": OK")

    [event_] = events(ca_ports, "ca.init")
    details = json.loads(event_.details)
    assert event_.outcome == "success" and details["offline_root"] is False
    assert details["key_type"] == "ec256"
    assert issuing_chain(ca_ports, operator, "acme") == [issuing, root]


def test_second_init_is_refused_and_audited(ca_ports, operator):
    init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    before = [(r.id, r.certificate_der) for r in _ca_rows(ca_ports)]
    with pytest.raises(CaExists) as caught:
        init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    assert caught.value.status == 409
    assert [(r.id, r.certificate_der) for r in _ca_rows(ca_ports)] == before
    assert len(_ca_keys(ca_ports)) == 2
    refused = [e for e in events(ca_ports, "ca.init") if e.outcome == "refused"]
    assert [json.loads(e.details)["reason"] for e in refused] == ["ca_exists"]


def test_issuing_without_a_ca_says_what_to_run(ca_ports):
    with pytest.raises(NoIssuingCa) as caught:
        _issue(ca_ports)
    assert caught.value.status == 409
    assert "certvault ca init --account acme" in caught.value.message


# --- revocation and the CRL ----------------------------------------------------------------------


def test_a_revoked_certificate_is_on_the_crl_served_at_its_url(ca_ports, operator, tmp_path):
    init = init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    _, revoked, revoked_id = _enroll(ca_ports, operator, "mallory@example.org")
    _, kept, _ = _enroll(ca_ports, operator, "bob@example.org", profile="client-auth")
    client = TestClient(create_app(ca_ports))
    path = ISSUING_CRL.removeprefix(PUBLIC_URL.rstrip("/"))
    first = client.get(path)
    assert first.status_code == 200

    revoke_certificate(ca_ports, operator, "acme", revoked_id, "keyCompromise")
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/pkix-crl"
    assert answer.headers["cache-control"] == "public, max-age=3600"
    crl = x509.load_der_x509_crl(answer.content)
    assert crl.is_signature_valid(init.issuing.public_key())
    # The revocation published a new CRL in its own transaction, before any fetch.
    assert _crl_number(answer.content) == _crl_number(first.content) + 1
    entry = crl.get_revoked_certificate_by_serial_number(revoked.certificate.serial_number)
    assert entry is not None
    assert crl.get_revoked_certificate_by_serial_number(kept.certificate.serial_number) is None

    crl_file = _write(tmp_path / "issuing.crl", answer.content)
    listing = openssl("crl", "-inform", "DER", "-in", crl_file, "-noout", "-text").stdout
    serials = {int(s, 16) for s in re.findall(r"Serial Number: ([0-9A-Fa-f]+)", listing)}
    assert serials == {revoked.certificate.serial_number}
    assert "Key Compromise" in listing

    def verify(
        leaf: x509.Certificate, check: str, *crls: bytes
    ) -> subprocess.CompletedProcess[str]:
        pem = b"".join(x509.load_der_x509_crl(der).public_bytes(Encoding.PEM) for der in crls)
        crl_file = _write(tmp_path / "crls.pem", pem)
        return _verify(tmp_path, init.root, [init.issuing], leaf, check, "-CRLfile", crl_file)

    proc = verify(revoked.certificate, "-crl_check", answer.content)
    assert proc.returncode != 0 and "certificate revoked" in proc.stdout + proc.stderr
    assert verify(kept.certificate, "-crl_check", answer.content).returncode == 0
    # The root's CRL is published too: the whole chain checks out against both.
    root_crl = client.get(ROOT_CRL.removeprefix(PUBLIC_URL.rstrip("/")))
    assert root_crl.status_code == 200
    proc = verify(kept.certificate, "-crl_check_all", answer.content, root_crl.content)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verify(kept.certificate, "-crl_check_all", answer.content).returncode != 0


def test_unknown_crls_answer_404_in_the_own_error_shape(ca_ports, operator):
    init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    accounts.create_account(ca_ports, operator, "Other", "other")
    client = TestClient(create_app(ca_ports))
    for path in (
        "/crl/nobody/issuing.crl",
        "/crl/acme/nothing.crl",
        "/crl/other/issuing.crl",
        f"/crl/acme/{'x' * 300}.crl",
    ):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert answer.json() == {
            "code": "not_found",
            "description": "No CRL is published at this address.",
        }
    assert client.get("/crl/acme/issuing.crl").status_code == 200


def test_a_fetch_near_expiry_publishes_a_fresh_crl(ca_ports, operator):
    init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    start = ca_ports.clock()
    first = crl_for(ca_ports, "acme", "issuing")
    first_root = crl_for(ca_ports, "acme", "root")
    ca_ports.clock = lambda: start + dt.timedelta(days=5)  # two days before nextUpdate: as is
    assert crl_for(ca_ports, "acme", "issuing") == first
    later = start + dt.timedelta(days=6, hours=1)  # inside the last 24 hours
    ca_ports.clock = lambda: later
    fresh = crl_for(ca_ports, "acme", "issuing")
    assert _crl_number(fresh) == _crl_number(first) + 1
    crl = x509.load_der_x509_crl(fresh)
    assert crl.last_update_utc == later.replace(microsecond=0)
    assert crl.next_update_utc == (later + dt.timedelta(days=7)).replace(microsecond=0)
    assert crl_for(ca_ports, "acme", "issuing") == fresh  # published once, not on every fetch
    assert _crl_number(crl_for(ca_ports, "acme", "root")) == _crl_number(first_root) + 1


# --- an offline root -----------------------------------------------------------------------------


def _every_stored_value(ports) -> list[bytes]:  # type: ignore[no-untyped-def]
    found: list[bytes] = []
    with ports.db.read() as s:
        for table in Base.metadata.sorted_tables:
            for row in s.execute(table.select()):
                for value in row:
                    if isinstance(value, bytes):
                        found.append(value)
                    elif isinstance(value, str):
                        found.append(value.encode())
    return found


def test_an_offline_root_leaves_no_root_key_behind(ca_ports, operator, tmp_path):
    out = tmp_path / "root.p12"
    result = init_ca(ca_ports, operator, "acme", key_type=KeyType.EC384, offline_root=out)
    assert result.offline_root == out and result.root_passphrase
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    [entry] = read_pkcs12(out.read_bytes(), result.root_passphrase).entries
    assert entry.certificate == result.root
    root_key = entry.key
    root_der = keylib.to_pkcs8_der(root_key)
    scalar = root_key.private_numbers().private_value.to_bytes(48, "big")

    root_row, issuing_row = _ca_rows(ca_ports)
    assert root_row.service_key_id is None and issuing_row.service_key_id is not None
    [only] = _ca_keys(ca_ports)
    assert only.id == issuing_row.service_key_id
    # No service key of any purpose opens to the root key ...
    with ca_ports.db.read() as s:
        every = list(s.scalars(select(ServiceKey)))
    assert all(keyring.open_service_key(ca_ports, row) != root_der for row in every)
    # ... and no row of any table holds it in any encoding; nor does the SQLite file.
    needles = [scalar, scalar.hex().encode(), base64.b64encode(scalar), root_der]
    stored = _every_stored_value(ca_ports)
    assert not [n for n in needles for value in stored if n in value]
    if ca_ports.db.is_sqlite:
        raw = b"".join(
            p.read_bytes() for p in ca_ports.settings.database_dir.glob("certvault.sqlite3*")
        )
        assert scalar not in raw and root_der not in raw
    # The passphrase was shown once and written nowhere.
    assert not [v for v in stored if result.root_passphrase.encode() in v]

    # Issuance works without the root key, and the root's CRL signed at init is published.
    _, issued = _issue(ca_ports)
    assert issued.chain == [result.issuing, result.root]
    root_crl = x509.load_der_x509_crl(crl_for(ca_ports, "acme", "root"))
    assert root_crl.is_signature_valid(result.root.public_key())
    assert root_crl.next_update_utc - root_crl.last_update_utc == dt.timedelta(days=365)
    # Nobody can re-sign it here: near its end it is still served, with caching bounded by it.
    ca_ports.clock = lambda: root_crl.next_update_utc - dt.timedelta(minutes=30)
    answer = TestClient(create_app(ca_ports)).get("/crl/acme/root.crl")
    assert answer.content == root_crl.public_bytes(Encoding.DER)
    assert answer.headers["cache-control"] == "public, max-age=1800"
    assert json.loads(events(ca_ports, "ca.init")[0].details)["offline_root"] is True


def test_an_offline_root_file_is_never_overwritten(ca_ports, operator, tmp_path):
    out = _write(tmp_path / "root.p12", b"someone else's file")
    with pytest.raises(OfflineRootExists):
        init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256, offline_root=out)
    assert out.read_bytes() == b"someone else's file"
    assert _ca_rows(ca_ports) == [] and _ca_keys(ca_ports) == []
    # A refused init leaves no file behind either.
    init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    again = tmp_path / "second.p12"
    with pytest.raises(CaExists):
        init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256, offline_root=again)
    assert not again.exists()


def test_a_failed_init_removes_its_root_file_unless_the_ca_was_recorded(
    ca_ports, operator, tmp_path, monkeypatch
):
    from certvault.services.pki import ca as ca_service

    class Boom(RuntimeError):
        pass

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise Boom()

    # Rolled back: nothing refers to the file, so it goes.
    out = tmp_path / "rolled-back.p12"
    with monkeypatch.context() as m:
        m.setattr(ca_service.audit, "record", fail)
        with pytest.raises(Boom):
            init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256, offline_root=out)
    assert not out.exists() and _ca_rows(ca_ports) == []
    # Committed, but the answer failed afterwards: the file is the root key's only copy; kept.
    out = tmp_path / "committed.p12"
    with monkeypatch.context() as m:
        m.setattr(ca_ports.audit_heads, "advance", fail)
        with pytest.raises(Boom):
            init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256, offline_root=out)
    assert out.exists() and [r.name for r in _ca_rows(ca_ports)] == ["root", "issuing"]


# --- an issuing CA signed elsewhere --------------------------------------------------------------


CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE",
    "keyUsage=critical,keyCertSign,cRLSign",
    "subjectKeyIdentifier=hash",
)


def _openssl_cert(
    directory: Path, stem: str, subject: str, extensions: tuple[str, ...], issuer: str | None
) -> None:
    """``stem``.key (P-256) and ``stem``.pem made by openssl: self-signed, or by ``issuer``."""
    key, cert, csr = (directory / f"{stem}.{ext}" for ext in ("key", "pem", "csr"))
    new = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key]
    if issuer is None:
        adds = [arg for line in extensions for arg in ("-addext", line)]
        openssl("req", "-x509", *new, "-out", cert, "-subj", subject, "-days", "60", *adds)
        return
    openssl("req", "-new", *new, "-out", csr, "-subj", subject)
    ext_file = directory / f"{stem}.ext"
    ext_file.write_text("\n".join((*extensions, "authorityKeyIdentifier=keyid")) + "\n")
    ca_files = ["-CA", directory / f"{issuer}.pem", "-CAkey", directory / f"{issuer}.key"]
    openssl("x509", "-req", "-in", csr, *ca_files, "-set_serial", str(len(stem) + 4242),
            "-days", "30", "-extfile", ext_file, "-out", cert)  # fmt: skip


def _openssl_ca(directory: Path) -> dict[str, Path]:
    """A root and an issuing CA made with openssl commands; the p12 password in "pw"."""
    _openssl_cert(directory, "root", "/O=Elsewhere/CN=Elsewhere Root", CA_EXTENSIONS, None)
    issuing = (CA_EXTENSIONS[0] + ",pathlen:0", *CA_EXTENSIONS[1:])
    _openssl_cert(directory, "iss", "/O=Elsewhere/CN=Elsewhere Issuing", issuing, "root")
    names = ("root.key", "root.pem", "iss.key", "iss.pem")
    d = {name: directory / name for name in names}
    d["pw"] = write_secret(directory / "pw", P12_PASSWORD)
    return d


def _openssl_p12(d: dict[str, Path], out: Path, key: str, cert: str, *chain: Path) -> bytes:
    args: list[str | Path] = ["pkcs12", "-export", "-inkey", d[key], "-in", d[cert], "-out", out]
    for extra in chain:
        args += ["-certfile", extra]
    openssl(*args, "-passout", f"file:{d['pw']}")
    return out.read_bytes()


def _load_pem(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_import_issuing_made_by_openssl_replaces_the_active_ca(ca_ports, operator, tmp_path):
    old = init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    _, before, before_id = _enroll(ca_ports, operator, "early@example.org")
    d = _openssl_ca(tmp_path)
    p12 = _openssl_p12(d, tmp_path / "iss.p12", "iss.key", "iss.pem", d["root.pem"])
    row = import_issuing(ca_ports, operator, "acme", p12, P12_PASSWORD, name="external")
    ext_root, ext_issuing = _load_pem(d["root.pem"]), _load_pem(d["iss.pem"])

    rows = {r.name: r for r in _ca_rows(ca_ports)}
    assert set(rows) == {"root", "issuing", "external", "external-root"}
    assert rows["issuing"].active is False and rows["external"].active is True
    assert rows["external"].id == row.id and row.parent_id == rows["external-root"].id
    # The chain above it is kept without keys; its CRL is the other CA's business.
    assert rows["external-root"].role == "root" and rows["external-root"].service_key_id is None
    assert rows["external-root"].certificate_der == ext_root.public_bytes(Encoding.DER)
    [key_row] = [k for k in _ca_keys(ca_ports) if k.id == row.service_key_id]
    assert key_row.spki_sha256 == keylib.spki_sha256(ext_issuing.public_key())

    _, issued = _issue(ca_ports, "smime", "late@example.org")
    assert issued.ca_id == row.id and issued.chain == [ext_issuing, ext_root]
    assert (
        _crl_url(issued.certificate) == "https://pki.example.test/certvault/crl/acme/external.crl"
    )
    proc = _verify(tmp_path, ext_root, [ext_issuing], issued.certificate)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert issuing_chain(ca_ports, operator, "acme") == [ext_issuing, ext_root]

    client = TestClient(create_app(ca_ports))
    crl = x509.load_der_x509_crl(client.get("/crl/acme/external.crl").content)
    assert crl.is_signature_valid(ext_issuing.public_key())
    assert client.get("/crl/acme/external-root.crl").status_code == 404
    # The replaced CA still publishes, and revocations of what it issued still reach its CRL.
    revoke_certificate(ca_ports, operator, "acme", before_id, "superseded")
    old_crl = x509.load_der_x509_crl(client.get("/crl/acme/issuing.crl").content)
    assert old_crl.is_signature_valid(old.issuing.public_key())
    assert old_crl.get_revoked_certificate_by_serial_number(before.certificate.serial_number)
    [ev] = events(ca_ports, "ca.import_issuing")
    assert ev.outcome == "success" and json.loads(ev.details)["replaced"] == rows["issuing"].id


def test_import_issuing_refuses_what_cannot_sign(ca_ports, operator, tmp_path):
    d = _openssl_ca(tmp_path)
    good = _openssl_p12(d, tmp_path / "good.p12", "iss.key", "iss.pem", d["root.pem"])
    # A leaf certificate (CA:FALSE) issued by the external CA, with its own key.
    leaf_extensions = ("basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature")
    _openssl_cert(tmp_path, "leaf", "/CN=not a ca", leaf_extensions, "iss")
    d["leaf.key"], d["leaf.pem"] = tmp_path / "leaf.key", tmp_path / "leaf.pem"
    not_a_ca = _openssl_p12(
        d, tmp_path / "leaf.p12", "leaf.key", "leaf.pem", d["iss.pem"], d["root.pem"]
    )
    no_chain = _openssl_p12(d, tmp_path / "nochain.p12", "iss.key", "iss.pem")
    # openssl refuses to pair a key with a certificate it does not match; an attacker's tool
    # need not: the CA certificate with another key.
    chain = [_load_pem(d["iss.pem"]), _load_pem(d["root.pem"])]
    mismatched = make_p12(new_key("ec256"), None, P12_PASSWORD, chain)
    cases = [
        (good, "wrong-password", P12WrongPassword),
        (not_a_ca, P12_PASSWORD, CaInvalid),
        (no_chain, P12_PASSWORD, CaInvalid),
        (mismatched, P12_PASSWORD, P12NoCertificate),
    ]
    for data, password, error in cases:
        with pytest.raises(error):
            import_issuing(ca_ports, operator, "acme", data, password)
    assert _ca_rows(ca_ports) == [] and _ca_keys(ca_ports) == []
    reasons = [json.loads(e.details)["reason"] for e in events(ca_ports, "ca.import_issuing")]
    assert reasons == ["p12_wrong_password", "ca_invalid", "ca_invalid", "p12_no_certificate"]
    assert not [
        e for e in events(ca_ports) if P12_PASSWORD in e.details or "wrong-password" in e.details
    ]
    # The same file, right password: installed, and only once.
    import_issuing(ca_ports, operator, "acme", good, P12_PASSWORD)
    with pytest.raises(Conflict):
        import_issuing(ca_ports, operator, "acme", good, P12_PASSWORD, name="again")
    assert len(_ca_keys(ca_ports)) == 1


# --- no download path reaches a CA key -----------------------------------------------------------


def test_ca_keys_never_enter_the_vault(ca_ports, operator, tmp_path):
    out = tmp_path / "root.p12"
    init = init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256, offline_root=out)
    # An attacker who got hold of the issuing CA's key puts it in a p12 with the CA certificate.
    [issuing_key_row] = _ca_keys(ca_ports)
    stolen = keylib.load_pkcs8_der(
        keyring.open_service_key(ca_ports, issuing_key_row), validate=True
    )
    p12 = make_p12(stolen, init.issuing, P12_PASSWORD, [init.root])
    [entry] = import_p12(ca_ports, operator, "acme", p12, P12_PASSWORD)
    assert entry.code == ServiceKeyRefused.code
    # The offline root's key is held nowhere in certvault, and cannot be brought in either.
    [root_entry] = read_pkcs12(out.read_bytes(), init.root_passphrase).entries
    p12 = make_p12(root_entry.key, init.root, P12_PASSWORD)
    [entry] = import_p12(ca_ports, operator, "acme", p12, P12_PASSWORD)
    assert entry.code == ServiceKeyRefused.code
    with ca_ports.db.read() as s:
        assert s.scalar(select(func.count()).select_from(EscrowedKey)) == 0


def test_release_and_the_drill_read_escrowed_keys_only(ca_ports, operator, monkeypatch):
    init_ca(ca_ports, operator, "acme", key_type=KeyType.EC256)
    key, issued, cert_id = _enroll(ca_ports, operator, "alice@example.org")
    assert audit.AUDIT_KEY_PURPOSE in ca_ports.cache  # so no audit-key read muddies the record
    opened: list[str] = []
    statements: list[str] = []
    real_open = keyring.open_service_key

    def spy(ports, row):  # type: ignore[no-untyped-def]
        opened.append(row.purpose)
        return real_open(ports, row)

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    monkeypatch.setattr(keyring, "open_service_key", spy)
    event.listen(ca_ports.db.engine, "before_cursor_execute", record)
    try:
        batch = release_key(ca_ports, operator, "acme", cert_id, passphrase=None, reason="test")
        report = verify_escrow(ca_ports, operator, "acme")
    finally:
        event.remove(ca_ports.db.engine, "before_cursor_execute", record)
    assert report.ok and report.keys == 1
    assert opened == []
    assert statements and not [
        s for s in statements if "service_keys" in s or "certificate_authorities" in s
    ]
    assert [s for s in statements if "escrowed_keys" in s]
    [released] = read_pkcs12(batch.releases[0].data, batch.generated_passphrase).entries
    assert keylib.to_pkcs8_der(released.key) == keylib.to_pkcs8_der(key)
    assert released.certificate == issued.certificate


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):  # type: ignore[no-untyped-def]
    yield from cli_env.cli_for("sqlite", tmp_path)


def test_cli_ca_init_show_and_refusals(cli, tmp_path):
    cli.bootstrap()
    env = {"CERTVAULT_PUBLIC_URL": "https://pki.example.test"}
    out = tmp_path / "offline-root.p12"
    proc = cli.run(
        "ca", "init", "--account", "acme", "--offline-root", out, "--key-type", "ec256", env=env
    )
    assert proc.returncode == 0, text(proc)
    assert "root CA: CN=Acme Corp Root CA" in proc.stdout
    assert "issuing CA: CN=Acme Corp Issuing CA" in proc.stdout
    assert "CRL: https://pki.example.test/crl/acme/issuing.crl" in proc.stdout
    assert f"the root CA key now exists ONLY in {out}" in text(proc)
    [passphrase] = re.findall(r"root key passphrase \(shown once, not stored\): (\S+)", proc.stdout)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    [entry] = read_pkcs12(out.read_bytes(), passphrase).entries

    show = cli.run("ca", "show", "--account", "acme")
    assert show.returncode == 0, text(show)
    issuing, root = x509.load_pem_x509_certificates(show.stdout.encode())
    assert root == entry.certificate and issuing.issuer == root.subject
    assert _verify(tmp_path, root, [], issuing).returncode == 0

    again = cli.run("ca", "init", "--account", "acme")
    assert again.returncode == 1 and "[ca_exists]" in text(again)
    assert passphrase not in text(again)
    bad_type = cli.run("ca", "init", "--account", "acme", "--key-type", "dsa1024")
    assert bad_type.returncode == 1 and "[invalid_input]" in text(bad_type)

    d = _openssl_ca(tmp_path)
    p12 = tmp_path / "iss.p12"
    _openssl_p12(d, p12, "iss.key", "iss.pem", d["root.pem"])
    import_issuing_ = ("ca", "import-issuing", "--account", "acme", p12, "--password-file")
    wrong = write_secret(tmp_path / "wrong.txt", "not-the-password")
    refused = cli.run(*import_issuing_, wrong)
    assert refused.returncode == 1 and "[p12_wrong_password]" in text(refused)
    assert "not-the-password" not in text(refused)
    done = cli.run(*import_issuing_, d["pw"], "--name", "external")
    assert done.returncode == 0, text(done)
    assert (
        "issuing CA external installed; CRL: http://127.0.0.1:8080/crl/acme/external.crl"
        in done.stdout
    )
    shown = x509.load_pem_x509_certificates(
        cli.run("ca", "show", "--account", "acme").stdout.encode()
    )
    assert [c.subject.rfc4514_string() for c in shown] == [
        "CN=Elsewhere Issuing,O=Elsewhere",
        "CN=Elsewhere Root,O=Elsewhere",
    ]


def test_cli_ca_init_can_install_an_issuing_ca_signed_elsewhere(cli, tmp_path):
    cli.bootstrap()
    d = _openssl_ca(tmp_path)
    p12 = tmp_path / "iss.p12"
    _openssl_p12(d, p12, "iss.key", "iss.pem", d["root.pem"])
    usage = cli.run("ca", "init", "--account", "acme", "--import-issuing", p12)
    assert usage.returncode == 2 and "--password-file" in text(usage)
    done = cli.run(
        "ca", "init", "--account", "acme", "--import-issuing", p12, "--password-file", d["pw"]
    )
    assert done.returncode == 0, text(done)
    assert "issuing CA issuing installed" in done.stdout
    shown = x509.load_pem_x509_certificates(
        cli.run("ca", "show", "--account", "acme").stdout.encode()
    )
    assert shown[0].subject.rfc4514_string() == "CN=Elsewhere Issuing,O=Elsewhere"
