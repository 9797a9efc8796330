"""Release cost outside the passphrase KDF, for an RSA-4096 key, in one run.

    python bench/release.py [--rounds N]

Two measurements of the same thing:
- direct: each release's total time minus the time spent in `write_pkcs12` (the PBKDF2 of the bags
  and the MAC's KDF; it also holds a little ASN.1 work, so this slightly flatters the result);
- intercept: releases timed at several iteration counts, the line through them extended to zero
  iterations (the KDF grows linearly with the count, nothing else does).
Releases are made by an administrator holding the download privilege (the common case); an
operator release also reads and mails the account's administrators. Target: <= 5 ms, with no
re-validation of the key.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from _common import OPERATOR, installation
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from sqlalchemy import select

from certvault import timing
from certvault.db.models import Admin
from certvault.services.access import admins
from certvault.services.vault.imports import import_p12
from certvault.services.vault.release import release_key
from tests.factories import make_cert, make_p12

ROUNDS = [2_048, 50_000, 100_000, 200_000]
REPEAT = 9
KEY = Path(__file__).parents[1] / "tests/vectors/keys/rsa4096.pem"


def _releases(backend: str, rounds: int, repeat: int) -> tuple[list[float], list[float]]:
    key = load_pem_private_key(KEY.read_bytes(), None)
    cert = make_cert(key, "release@bench.example")
    with installation(backend, p12_kdf_rounds=rounds) as ports:
        [entry] = import_p12(
            ports, OPERATOR, "bench", make_p12(key, cert, "pw-123456789"), "pw-123456789"
        )
        admins.create_admin(ports, OPERATOR, "bench", "keys", privileges=["key_vault_download"])
        with ports.db.read() as s:
            actor = admins.actor_for(s.scalars(select(Admin)).one())
        totals, outside = [], []
        for i in range(repeat + 2):  # two warm-ups: audit key, compiled statements, connections
            with timing.collecting() as phases:
                start = time.perf_counter()
                release_key(ports, actor, "bench", entry.client_cert_id or 0, passphrase=None)
                total = time.perf_counter() - start
            if i >= 2:
                totals.append(total)
                outside.append(total - phases["kdf"])
        return totals, outside


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=600_000, help="the production KDF rounds")
    args = parser.parse_args()
    print("RSA-4096 release (generated passphrase, AES256-SHA256, administrator):")
    for backend in ("sqlite", "postgresql"):
        totals, outside = _releases(backend, args.rounds, REPEAT)
        print(
            f"  {backend:10s} rounds={args.rounds:,}: release p50 "
            f"{statistics.median(totals) * 1000:.1f} ms, outside the KDF (direct) p50 "
            f"{statistics.median(outside) * 1000:.2f} ms (target <= 5 ms)"
        )
        points = []
        for rounds in ROUNDS:
            totals, _ = _releases(backend, rounds, REPEAT)
            points.append((float(rounds), statistics.median(totals)))
        slope, intercept = statistics.linear_regression(*zip(*points, strict=True))
        print(
            f"  {backend:10s} outside the KDF (intercept over {len(ROUNDS)} counts): "
            f"{intercept * 1000:.2f} ms; KDF {slope * 100_000 * 1000:.1f} ms per 100,000 rounds"
        )


if __name__ == "__main__":
    main()
