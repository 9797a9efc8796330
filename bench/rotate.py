"""Account-key rotation: the rewrap rate of `rotate_account_key` beside, in the same run, the raw
AES-GCM rewrap (cryptography only) and a plain set-based UPDATE of rows of the same shape.

    python bench/rotate.py [--count N] [--small N] [--backends postgresql,sqlite]
                           [--batch-size N] [--provider file|pkcs11]

For each backend: a throwaway installation with two accounts of --count escrowed keys each,
sealed the way the service seals them (a 138-byte private key, an EC P-256 PKCS#8's size, under
its own data key under the account key), written with multi-row INSERTs.
- UPDATE: the keys of the second account, read in keyset-paged batches of --batch-size (the same
  columns the rotation reads) and written back with one set-based UPDATE per batch and one
  commit each (unnest on PostgreSQL, executemany on SQLite): a fresh 12-byte nonce, a 48-byte
  wrapped key and the version, as a rewrap writes them; no cryptography, no compare-and-set, no
  lock;
- rewrap: `rotate_account_key` on the first account (its lock and lease renewed per batch, the
  compare-and-set, the retirement and the audit event included), in a process of its own, which
  also reports its peak RSS (from /proc/self/status, started over once the installation is
  open). A sample of keys is opened afterwards and compared with what was sealed;
- raw AES-GCM: opening and sealing a 32-byte data key --count times with one key object each,
  as the rotation does, and nothing else.
Then the peak RSS of the rotation of --small keys in a fresh installation, against --count.
Printed: "rewrap/UPDATE" (target: >= 0.50x: the database write, not the cryptography, should be
the cost), "rewrap/raw AES-GCM", and "peak RSS full/small" (flat is 1.00x).

--provider names the master-key provider: `file`, or `pkcs11` (a throwaway SoftHSM2 token made
for the run, its key made there). The rotation unwraps one account key per version through it, so
the rewrap rate should hardly depend on it; the run says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import OPERATOR, installation, report
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from certvault.config import Settings
from certvault.crypto import envelope
from certvault.db.models import Account, EscrowedKey, new_uuid
from certvault.services.directory import accounts
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports, open_ports
from certvault.services.kernel.tenancy import get_account
from certvault.services.vault.rotation import page_of_keys, rotate_account_key

PRIVATE_KEY_BYTES = 138  # an EC P-256 key's PKCS#8 DER
INSERT_BATCH = 2_000
SAMPLE = 50  # keys opened after the rotation


def use_provider(provider: str, workdir: Path) -> None:
    """Configure the master-key provider through the environment, which the rotation's own
    process inherits: `file` is the default; `pkcs11` is a throwaway SoftHSM2 token in
    ``workdir`` holding a new master key."""
    if provider == "file":
        return
    from certvault.masterkey.pkcs11 import Pkcs11MasterKeyProvider
    from tests.pkcs11_fixtures import MODULE, PIN, make_token

    token = make_token(workdir)
    pin_file = workdir / "pin"
    pin_file.write_text(PIN)
    pin_file.chmod(0o600)
    os.environ.update(token.env(pin_file), CERTVAULT_MASTER_KEY_PROVIDER="pkcs11")
    made = Pkcs11MasterKeyProvider(MODULE, token.label, "certvault-master", PIN)
    try:
        made.create_version()
    finally:
        made.close()


def _private_key(index: int) -> bytes:
    """A stand-in private key of the real size, known again from its index."""
    return hashlib.shake_256(index.to_bytes(8, "big")).digest(PRIVATE_KEY_BYTES)


def _spki(slug: str, index: int) -> bytes:
    return hashlib.sha256(f"{slug}:{index}".encode()).digest()


def populate(ports: Ports, slug: str, count: int) -> None:
    """``count`` escrowed keys in account ``slug``, sealed by keyring.seal_private_key."""
    with ports.db.read() as s:
        account_id = get_account(s, slug).id
    for first in range(0, count, INSERT_BATCH):

        def batch(s: Session, first: int = first) -> None:
            account = s.get_one(Account, account_id)
            rows = []
            for i in range(first, min(first + INSERT_BATCH, count)):
                key_uuid, spki = new_uuid(), _spki(slug, i)
                sealed = keyring.seal_private_key(
                    s, ports, account, key_uuid, spki, _private_key(i)
                )
                rows.append(
                    {
                        "uuid": key_uuid,
                        "account_id": account_id,
                        "spki_sha256": spki,
                        "algorithm": "EC",
                        "key_size": "256",
                        "nonce": sealed.nonce,
                        "ciphertext": sealed.ciphertext,
                        "data_key_nonce": sealed.data_key_nonce,
                        "wrapped_data_key": sealed.wrapped_data_key,
                        "account_key_version": sealed.account_key_version,
                        "source": "import",
                        "created_by": OPERATOR.name,
                    }
                )
            s.connection().execute(EscrowedKey.__table__.insert(), rows)

        ports.db.run(batch)
    if not ports.db.is_sqlite:
        with ports.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("ANALYZE escrowed_keys"))


_PLAIN_UPDATE_POSTGRESQL = text(
    "UPDATE escrowed_keys AS e SET data_key_nonce = v.n, wrapped_data_key = v.w,"
    " account_key_version = :version"
    " FROM unnest(CAST(:ids AS integer[]), CAST(:nonces AS bytea[]), CAST(:wrapped AS bytea[]))"
    " AS v(id, n, w) WHERE e.id = v.id"
)
_PLAIN_UPDATE_SQLITE = (
    "UPDATE escrowed_keys SET data_key_nonce = ?, wrapped_data_key = ?, account_key_version = ?"
    " WHERE id = ?"
)


def _pages(ports: Ports, account_id: int, batch: int) -> Iterator[list[Any]]:
    after = 0
    while True:
        with ports.db.read() as s:
            rows = s.execute(page_of_keys(account_id, 1, after, batch)).all()
        if not rows:
            return
        after = rows[-1][0]
        yield rows


def plain_update(ports: Ports, slug: str, batch: int) -> tuple[int, float]:
    """Rows written and seconds: the rotation's reads and writes, without what makes it one."""
    with ports.db.read() as s:
        account_id = get_account(s, slug).id
    written = 0
    start = time.perf_counter()
    for rows in _pages(ports, account_id, batch):
        values = [(r[0], os.urandom(12), os.urandom(48)) for r in rows]

        def write(s: Session, values: list[tuple[int, bytes, bytes]] = values) -> int:
            connection = s.connection()
            if ports.db.is_sqlite:
                result = connection.exec_driver_sql(
                    _PLAIN_UPDATE_SQLITE, [(n, w, 2, i) for i, n, w in values]
                )
            else:
                result = connection.execute(
                    _PLAIN_UPDATE_POSTGRESQL,
                    {
                        "version": 2,
                        "ids": [v[0] for v in values],
                        "nonces": [v[1] for v in values],
                        "wrapped": [v[2] for v in values],
                    },
                )
            return int(result.rowcount)

        written += ports.db.run(write)
    return written, time.perf_counter() - start


def raw_rewrap(count: int) -> float:
    """Seconds to open and seal ``count`` 32-byte data keys, cryptography only."""
    old, new = AESGCM(envelope.new_key()), AESGCM(envelope.new_key())
    aad_old, aad_new = b"a" * 100, b"b" * 100  # the size of data_key_aad's output
    sealed = []
    for _ in range(500):
        nonce = os.urandom(12)
        sealed.append((nonce, old.encrypt(nonce, envelope.new_key(), aad_old)))
    start = time.perf_counter()
    done = 0
    while done < count:
        for nonce, ciphertext in sealed[: count - done]:
            key = old.decrypt(nonce, ciphertext, aad_old)
            fresh = os.urandom(12)
            new.encrypt(fresh, key, aad_new)
        done += min(len(sealed), count - done)
    return time.perf_counter() - start


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def rotation_child(home: str, database_url: str, batch: int) -> None:
    """Rotate account "bench" of the installation at ``home``; print seconds, keys and RSS."""
    settings = Settings(home=Path(home), database_url=database_url or None)  # type: ignore[arg-type]
    ports = open_ports(settings)
    try:
        with ports.db.read() as s:  # warm: connections, statements, the account key
            s.scalar(select(func.count()).select_from(EscrowedKey))
        Path("/proc/self/clear_refs").write_text("5")  # the peak starts over here
        before = _status_kib("VmRSS")
        start = time.perf_counter()
        result = rotate_account_key(ports, OPERATOR, "bench", batch_size=batch)
        elapsed = time.perf_counter() - start
        peak = _status_kib("VmHWM")
    finally:
        ports.close()
    assert result.ok and result.retired == (1,), result
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "rewrapped": result.rewrapped,
                "batches": result.batches,
                "before_kib": before,
                "peak_kib": peak,
            }
        )
    )


def rotate_in_child(ports: Ports, batch: int) -> dict[str, Any]:
    url = ports.settings.database_url or ""
    argv = [
        sys.executable,
        __file__,
        "--rotation-child",
        str(ports.settings.home_dir),
        url,
        str(batch),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def check_sample(ports: Ports, count: int) -> None:
    """Keys spread over the account open to what was sealed, from the new version."""
    step = max(1, count // SAMPLE)
    wanted = {_spki("bench", i): _private_key(i) for i in range(0, count, step)}
    with ports.db.read() as s:
        account = get_account(s, "bench")
        rows = s.scalars(
            select(EscrowedKey).where(
                EscrowedKey.account_id == account.id, EscrowedKey.spki_sha256.in_(wanted)
            )
        ).all()
        assert len(rows) == len(wanted)
        for row in rows:
            assert row.account_key_version == 2
            assert keyring.open_private_key(s, ports, account, row) == wanted[row.spki_sha256]


def checkpoint(ports: Ports) -> None:
    """Write back what earlier phases left in the log, so that neither timed phase pays for the
    other's writes (SQLite checkpoints its write-ahead log from whichever writer comes next)."""
    if ports.db.is_sqlite:
        raw = ports.db.engine.raw_connection()  # outside any transaction: SQLite refuses it in one
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
        return
    with ports.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.exec_driver_sql("CHECKPOINT")


def run_backend(
    backend: str, label: str, args: argparse.Namespace, figures: Any
) -> dict[str, float]:
    with installation(backend) as ports:
        assert args.provider in ports.master_key.name, ports.master_key.name
        accounts.create_account(ports, OPERATOR, "Baseline", "baseline", key_vault_enabled=True)
        start = time.perf_counter()
        populate(ports, "bench", args.count)
        populate(ports, "baseline", args.count)
        print(
            f"  {backend}: {2 * args.count:,} keys written in {time.perf_counter() - start:,.1f} s"
        )
        checkpoint(ports)
        updated, update_s = plain_update(ports, "baseline", args.batch_size)
        assert updated == args.count, updated
        checkpoint(ports)
        rotated = rotate_in_child(ports, args.batch_size)
        assert rotated["rewrapped"] == args.count, rotated
        check_sample(ports, args.count)
    raw_s = raw_rewrap(args.count)
    with installation(backend) as ports:
        populate(ports, "bench", args.small)
        small = rotate_in_child(ports, args.batch_size)
    rates = {
        "rewrap": args.count / rotated["seconds"],
        "UPDATE": args.count / update_s,
        "raw AES-GCM": args.count / raw_s,
    }
    for name, rate in rates.items():
        figures.value(f"{label} {name} rate", rate, "keys/s")
    figures.value(f"{label} rotation peak RSS {args.count}", rotated["peak_kib"], "KiB")
    figures.value(f"{label} rotation peak RSS {args.small}", small["peak_kib"], "KiB")
    print(
        f"  {label}: rewrap {rates['rewrap']:,.0f} keys/s ({rotated['batches']:,} batches), "
        f"plain UPDATE {rates['UPDATE']:,.0f} rows/s, raw AES-GCM {rates['raw AES-GCM']:,.0f}/s"
    )
    print(
        f"  {label}: rotation peak RSS {rotated['peak_kib'] / 1024:,.1f} MiB at "
        f"{args.count:,} keys, {small['peak_kib'] / 1024:,.1f} MiB at {args.small:,} "
        f"({rotated['before_kib'] / 1024:,.1f} / {small['before_kib'] / 1024:,.1f} MiB before)"
    )
    return {
        "rewrap/UPDATE": rates["rewrap"] / rates["UPDATE"],
        "rewrap/raw": rates["rewrap"] / rates["raw AES-GCM"],
        "rss": rotated["peak_kib"] / small["peak_kib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100_000, help="escrowed keys rotated")
    parser.add_argument("--small", type=int, default=10_000, help="keys of the RSS comparison")
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--provider", choices=["file", "pkcs11"], default="file")
    parser.add_argument("--rotation-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rotation_child:
        home, url, batch = args.rotation_child
        rotation_child(home, url, int(batch))
        return
    sizes = {k: v for k, v in vars(args).items() if k != "rotation_child"}
    with tempfile.TemporaryDirectory() as workdir, report("rotate", sizes) as figures:
        use_provider(args.provider, Path(workdir))
        for backend in args.backends.split(","):
            # Another provider's figures are kept apart from the file provider's.
            label = backend if args.provider == "file" else f"{backend} {args.provider}"
            ratios = run_backend(backend, label, args, figures)
            figures.ratio(
                f"{label} rewrap/UPDATE",
                ratios["rewrap/UPDATE"],
                f"{args.provider} provider, {args.count:,} keys; target >= 0.50x",
            )
            figures.ratio(f"{label} rewrap/raw AES-GCM", ratios["rewrap/raw"])
            figures.ratio(
                f"{label} peak RSS full/small",
                ratios["rss"],
                f"{args.count:,} and {args.small:,} keys; flat is 1.00x",
            )


if __name__ == "__main__":
    main()
