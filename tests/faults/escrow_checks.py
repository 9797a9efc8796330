"""What a drill checks once the fault is over: every acknowledged key is present, opens, and is
the key that was sent; no partial records; `certvault verify` and `certvault audit verify` clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    pkcs12,
)
from sqlalchemy import select

from certvault.db.models import AuditEvent, Certificate, EscrowedKey
from certvault.services.audit import checks as audit_checks
from certvault.services.kernel import seals
from certvault.services.vault import release
from certvault.services.vault.archive import ARCHIVE
from certvault.services.vault.verification import verify_escrow
from tests.conftest import TEST_OPERATOR
from tests.faults.archiving_clients import ACCOUNT, Answer, Upload
from tests.functional import cli_env

REASON = "fault drill: check every acknowledged key"
BATCH = 50


@dataclass
class EscrowCheck:
    acknowledged: int = 0  # distinct keys answered 2xx
    verified: int = 0  # released from the vault and equal to the key sent
    lost: list[str] = field(default_factory=list)  # certificate SHA-256 (hex) of each lost key


def _pkcs8(key: object) -> bytes:
    return key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())  # type: ignore[attr-defined]


def check_acknowledged(cli: cli_env.Cli, answers: Sequence[Answer]) -> EscrowCheck:
    """Release every acknowledged key through the one way out (release.py, as the operator)
    and compare it, and its certificate, with what the client sent."""
    sent: dict[bytes, Upload] = {}
    for a in answers:
        if a.acknowledged and a.upload is not None:
            sent[a.upload.sha256] = a.upload
    check = EscrowCheck(acknowledged=len(sent))
    ports = cli.ports()
    try:
        with ports.db.read() as s:
            ids = dict(
                s.execute(
                    select(Certificate.sha256, Certificate.id).where(
                        Certificate.sha256.in_(list(sent)),
                        Certificate.escrowed_key_id.is_not(None),
                    )
                ).all()
            )
        check.lost = sorted(sha.hex() for sha in sent if sha not in ids)
        present = [sha for sha in sent if sha in ids]
        for start in range(0, len(present), BATCH):
            chunk = present[start : start + BATCH]
            batch = release.release_keys(
                ports,
                TEST_OPERATOR,
                ACCOUNT,
                [ids[sha] for sha in chunk],
                passphrase=None,
                reason=REASON,
            )
            assert batch.generated_passphrase
            by_id = {r.certificate_id: r for r in batch.releases}
            for sha in chunk:
                key, cert, _ = pkcs12.load_key_and_certificates(
                    by_id[ids[sha]].data, batch.generated_passphrase.encode()
                )
                upload = sent[sha]
                if (
                    key is not None
                    and cert is not None
                    and _pkcs8(key) == _pkcs8(upload.key)
                    and cert.public_bytes(Encoding.DER) == upload.cert.public_bytes(Encoding.DER)
                ):
                    check.verified += 1
                else:
                    check.lost.append(sha.hex())
    finally:
        ports.close()
    return check


@dataclass(frozen=True)
class Records:
    keys: int
    keyed_certificates: int
    keys_without_certificate: int
    certificates_without_key: int
    certificates_without_archive_event: int
    archive_events: int


def records(cli: cli_env.Cli) -> Records:
    """Counts that show partial records: a key no certificate uses, or a certificate with a key
    whose archival left no audit event."""
    ports = cli.ports()
    try:
        with ports.db.read() as s:
            key_ids = set(s.scalars(select(EscrowedKey.id)))
            keyed = dict(
                s.execute(
                    select(Certificate.id, Certificate.escrowed_key_id).where(
                        Certificate.escrowed_key_id.is_not(None)
                    )
                ).all()
            )
            archived = [
                target
                for target in s.scalars(
                    select(AuditEvent.target_id).where(
                        AuditEvent.action == ARCHIVE, AuditEvent.outcome == "success"
                    )
                )
            ]
    finally:
        ports.close()
    events = set(archived)
    return Records(
        keys=len(key_ids),
        keyed_certificates=len(keyed),
        keys_without_certificate=len(key_ids - set(keyed.values())),
        certificates_without_key=sum(1 for k in keyed.values() if k not in key_ids),
        certificates_without_archive_event=sum(1 for c in keyed if str(c) not in events),
        archive_events=len(archived),
    )


def assert_clean(cli: cli_env.Cli, *, commands: bool = True) -> None:
    """`certvault verify` (seals, and every key opened and matched) and `certvault audit
    verify` both exit 0, and no partial record is left. ``commands=False`` runs the same checks
    in-process (the services behind both commands), sparing two interpreter starts."""
    if commands:
        verify = cli.run("verify")
        assert verify.returncode == 0, cli_env.text(verify)
        audit = cli.run("audit", "verify")
        assert audit.returncode == 0, cli_env.text(audit)
    else:
        ports = cli.ports()
        try:
            rows = seals.check_rows(ports)
            assert rows.ok, rows.problems
            drill = verify_escrow(ports, TEST_OPERATOR)
            assert drill.ok, drill.failures
            chains = audit_checks.verify_chains(ports)
            assert chains.ok, chains.problems
        finally:
            ports.close()
    found = records(cli)
    assert found.keys_without_certificate == 0, found
    assert found.certificates_without_key == 0, found
    assert found.certificates_without_archive_event == 0, found
