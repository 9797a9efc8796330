"""Release cost outside the passphrase KDF, for an RSA-4096 key, in one run.

    python bench/release.py

The KDF cost grows linearly with the iteration count and everything else does not, so the release
is timed at several iteration counts and the line through them is extended to zero iterations: its
intercept is the time spent outside the KDF (target: <= 5 ms, no re-validation of the key).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from _common import OPERATOR, installation
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certvault.services.imports import import_p12
from certvault.services.release import release_key
from tests.factories import make_cert, make_p12

ROUNDS = [2_048, 50_000, 100_000, 200_000]
REPEAT = 7


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    xs, ys = zip(*points, strict=True)
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def measure(backend: str) -> None:
    key = load_pem_private_key(
        (Path(__file__).parents[1] / "tests/vectors/keys/rsa4096.pem").read_bytes(), None
    )
    cert = make_cert(key, "release@bench.example")
    points = []
    for rounds in ROUNDS:
        with installation(backend, p12_kdf_rounds=rounds) as ports:
            [entry] = import_p12(
                ports, OPERATOR, "bench", make_p12(key, cert, "pw-123456789"), "pw-123456789"
            )
            for _ in range(2):  # warm caches (audit key, compiled statements, connections)
                release_key(
                    ports,
                    OPERATOR,
                    "bench",
                    entry.client_cert_id or 0,
                    passphrase=None,
                    reason="warm-up",
                )
            times = []
            for _ in range(REPEAT):
                start = time.perf_counter()
                release_key(
                    ports,
                    OPERATOR,
                    "bench",
                    entry.client_cert_id or 0,
                    passphrase=None,
                    reason="benchmark",
                )
                times.append(time.perf_counter() - start)
            median = statistics.median(times)
            points.append((float(rounds), median))
            print(f"  {backend:10s} rounds={rounds:>7,}: release median {median * 1000:7.1f} ms")
    intercept, slope = fit(points)
    print(
        f"  {backend:10s} outside the KDF: {intercept * 1000:.1f} ms (target <= 5 ms); "
        f"KDF: {slope * 100_000 * 1000:.1f} ms per 100,000 rounds"
    )


def main() -> None:
    print("RSA-4096 release (generated passphrase, AES256-SHA256):")
    for backend in ("sqlite", "postgresql"):
        measure(backend)


if __name__ == "__main__":
    main()
