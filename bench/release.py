"""Admin release of an RSA-4096 key: the time outside the passphrase KDF, and a generated
passphrase against an own one, in one run.

    python bench/release.py [--rounds N] [--repeat N] [--backends ...]

Per backend, through `release_key` by an administrator holding the download privilege (the
common case; an operator release also reads and mails the account's administrators), in the
request's transaction as the console and the API run it (`Database.run_request`):
- "generated/own passphrase": a release whose passphrase certvault generates against one with
  the administrator's own passphrase, at the production count (--rounds). A generated 120-bit
  passphrase gains nothing from stretching (DESIGN.md §10), so it may cost far less;
- the time outside the KDF (target: <= 5 ms p50, with no re-validation of the key): each
  release's total time, until the caller has its file, minus the time its writer thread spent
  writing the PKCS#12 (`timing`'s "kdf" phase: the PBKDF2 of the bags and the MAC's KDF, and a
  little ASN.1 work, so this slightly flatters the result). The release's transaction commits
  while the writer works, so under an own passphrase, whose KDF outlasts the transaction, what
  is left outside is the work before the KDF starts (the strength check among it) and the
  hand-over after; under a generated one the transaction outlasts the KDF and counts in full.
  Printed for both passphrases, and as "outside the KDF/release", the share of a generated
  passphrase's release it takes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import OPERATOR, installation, report
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import select

from certvault import timing
from certvault.db.models import Admin
from certvault.services.access import admins
from certvault.services.kernel.actors import Actor
from certvault.services.kernel.ports import Ports
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from tests.factories import make_cert, make_p12

KEY = Path(__file__).parents[1] / "tests/vectors/keys/rsa4096.pem"
OWN = "an own passphrase, long enough 1"
WARMUPS = 6


@contextmanager
def vault(backend: str) -> Iterator[tuple[Ports, Actor, int]]:
    """An installation holding the RSA-4096 key, its administrator, and the certificate's id."""
    key = load_pem_private_key(KEY.read_bytes(), None)
    cert = make_cert(key, "release@bench.example")
    with installation(backend) as ports:
        [entry] = import_p12(
            ports, OPERATOR, "bench", make_p12(key, cert, "pw-123456789"), "pw-123456789"
        )
        admins.create_admin(ports, OPERATOR, "bench", "keys", privileges=["key_vault_download"])
        with ports.db.read() as s:
            actor = admins.actor_for(s.scalars(select(Admin)).one())
        yield ports, actor, entry.client_cert_id or 0


def releases(
    held: tuple[Ports, Actor, int], rounds: int, repeat: int, passphrase: str | None
) -> tuple[list[float], list[float]]:
    """Seconds of each release at ``rounds``, in all and outside the KDF."""
    ports, actor, cert_id = held
    ports.settings.p12_kdf_rounds = rounds
    totals, outside = [], []
    # Warm-ups: the audit key, compiled statements, the connection, and the statements prepared
    # by psycopg, which prepares one on its fifth run on a connection.
    for i in range(repeat + WARMUPS):
        with timing.collecting() as phases:
            start = time.perf_counter()
            batch = ports.db.run_request(
                lambda s: release_key(
                    ports, actor, "bench", cert_id, passphrase=passphrase, session=s
                )
            )
            # As a caller does once the release has committed: take the file, written meanwhile.
            assert all(r.data for r in batch.releases)
            total = time.perf_counter() - start
        if i >= WARMUPS:
            totals.append(total)
            outside.append(total - phases["kdf"])
    return totals, outside


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=600_000, help="the production KDF rounds")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    print(f"RSA-4096 release (AES256-SHA256, administrator), {args.rounds:,} rounds:")
    with report("release", vars(args)) as figures:
        for backend in args.backends.split(","):
            with vault(backend) as held:
                totals, outside = releases(held, args.rounds, args.repeat, None)
                own, own_outside = releases(held, args.rounds, args.repeat, OWN)
            whole = figures.value(f"{backend} release p50", statistics.median(totals), "s")
            direct = figures.value(
                f"{backend} outside the KDF direct p50", statistics.median(outside), "s"
            )
            own_p50 = figures.value(f"{backend} own passphrase p50", statistics.median(own), "s")
            print(
                f"  {backend}: release p50 {ms(whole)} (generated passphrase), {ms(own_p50)} "
                f"(own passphrase); generated passphrase, outside the KDF p50 {ms(direct)} "
                "(target <= 5 ms)"
            )
            figures.ratio(f"{backend} generated/own passphrase", whole / own_p50)
            figures.ratio(f"{backend} outside the KDF/release", direct / whole)
            own_direct = figures.value(
                f"{backend} own passphrase outside the KDF p50", statistics.median(own_outside), "s"
            )
            print(
                f"  {backend}: own passphrase, outside the KDF p50 {ms(own_direct)} "
                "(target <= 5 ms; includes the strength check)"
            )


if __name__ == "__main__":
    main()
