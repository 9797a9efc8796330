"""The PKCS#12 KDF at native speed, and what it buys when writing and reading files, in one run.

    python bench/kdf.py [--rounds N] [--budget N] [--repeat N]

- the native PKCS#12 KDF (libcrypto) against the plain-Python reference, at --rounds;
- the PKCS#12 MAC's KDF (SHA-256, ID 3) against OpenSSL's PBKDF2-HMAC-SHA256 (hashlib) at the
  same count, the two KDFs of a released file;
- two native KDFs on two threads against one after the other: near 0.5 on two free cores when
  the GIL is released during the KDF, 1.0 when it is held;
- certvault writing a p12 (`write_pkcs12`) against `openssl pkcs12 -export` at the same
  iteration count, for both encryption types (target: within 1.5x). openssl runs as a process,
  so its time includes starting it; its time at one iteration is printed beside it;
- reading a legacy file (PKCS#12-PBE 3DES, SHA-1 MAC) that uses up the KDF budget against a
  PBES2 file (AES-256, PBKDF2-HMAC-SHA256) that uses up the same budget: the budget counts
  rounds x output blocks, so neither kind gets more time out of it than the other.

EC P-256 keys throughout, so that RSA validation does not hide the KDF. Timings are medians.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _common import Report, report
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from certvault.crypto.pkcs12.limits import P12Limits  # noqa: E402
from certvault.crypto.pkcs12.pbe import bmp_password, pkcs12_kdf  # noqa: E402
from certvault.crypto.pkcs12.reader import read_pkcs12  # noqa: E402
from certvault.crypto.pkcs12.writer import EncryptionType, write_pkcs12  # noqa: E402
from tests.unit.crypto.pkcs12.reference_kdf import pkcs12_kdf_reference  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "tests/vectors/p12"
PASSPHRASE = "bench-kdf-passphrase-1"
SALT = bytes(range(16))
# openssl's options for the files certvault writes with each encryption type.
OPENSSL_OPTIONS = {
    EncryptionType.AES256_SHA256: ["-keypbe", "AES-256-CBC", "-certpbe", "AES-256-CBC"],
    EncryptionType.TRIPLEDES_SHA1: [
        *("-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1"),
    ],
}
# KDF work of a file certvault writes at one iteration, in rounds x output blocks: the MAC,
# the certificates' EncryptedData and the key bag. 3DES: a 24-byte key is two SHA-1 blocks and
# the IV one more; AES-256 with PBKDF2-HMAC-SHA256: one block each.
WORK_PER_ITERATION = {EncryptionType.TRIPLEDES_SHA1: 1 + 3 + 3, EncryptionType.AES256_SHA256: 3}


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    run()  # warm-up: loading libcrypto, caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def kdf(rounds: int) -> None:
    """A 3DES key's derivation: 24 bytes, two SHA-1 blocks."""
    pkcs12_kdf("sha1", bmp_password(PASSPHRASE), SALT, 1, rounds, 24)


def compare_mac_kdf(rounds: int, repeat: int, figures: Report) -> None:
    password = bmp_password(PASSPHRASE)
    mac = median_seconds(lambda: pkcs12_kdf("sha256", password, SALT, 3, rounds, 32), repeat)
    pbkdf2 = median_seconds(
        lambda: hashlib.pbkdf2_hmac("sha256", PASSPHRASE.encode(), SALT, rounds, 32), repeat
    )
    figures.value("MAC KDF", mac, "s")
    figures.value("PBKDF2-SHA256", pbkdf2, "s")
    print(
        f"{rounds:,} rounds: PKCS#12 MAC KDF (SHA-256) {ms(mac)}, OpenSSL PBKDF2-HMAC-SHA256 "
        f"{ms(pbkdf2)}"
    )
    # One SHA-256 compression per round against HMAC's two: about 0.5 when both run natively.
    figures.ratio("MAC KDF/PBKDF2-SHA256", mac / pbkdf2, "about 0.5 at native speed")


def compare_kdfs(rounds: int, repeat: int, figures: Report) -> None:
    password = bmp_password(PASSPHRASE)
    native = median_seconds(lambda: kdf(rounds), repeat)
    reference = median_seconds(
        lambda: pkcs12_kdf_reference("sha1", password, SALT, 1, rounds, 24), repeat
    )
    figures.value("PKCS#12 KDF native", native, "s")
    figures.value("PKCS#12 KDF plain Python", reference, "s")
    print(
        f"PKCS#12 KDF, SHA-1, 24 bytes, {rounds:,} rounds: native {ms(native)}, "
        f"plain Python {ms(reference)}"
    )
    figures.ratio("Python/native", reference / native)

    def two_threads() -> None:
        threads = [threading.Thread(target=kdf, args=(rounds,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    parallel = median_seconds(two_threads, repeat)
    serial = median_seconds(lambda: (kdf(rounds), kdf(rounds)), repeat)
    figures.ratio(
        "two native KDFs on two threads/one after the other",
        parallel / serial,
        "about 0.5 on two free cores: the GIL is released",
    )


def compare_writing(rounds: int, repeat: int, tmp: Path, figures: Report) -> None:
    key = load_pem_private_key((VECTORS / "p256.key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((VECTORS / "p256.cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((VECTORS / "ca.cert.pem").read_bytes())
    (tmp / "pass").write_text(PASSPHRASE + "\n")

    def openssl(iterations: int, options: list[str]) -> None:
        subprocess.run(
            [
                *("openssl", "pkcs12", "-export", "-inkey", str(VECTORS / "p256.key.pem")),
                *("-in", str(VECTORS / "p256.cert.pem"), "-certfile", str(VECTORS / "ca.cert.pem")),
                *("-name", "alice", "-passout", f"file:{tmp / 'pass'}", "-iter", str(iterations)),
                *("-out", str(tmp / "out.p12"), *options),
            ],
            check=True,
        )

    for encryption, options in OPENSSL_OPTIONS.items():
        ours = median_seconds(
            lambda e=encryption: write_pkcs12(key, cert, [ca], PASSPHRASE, e, rounds, "alice"),
            repeat,
        )
        theirs = median_seconds(lambda o=options: openssl(rounds, o), repeat)
        start_up = median_seconds(lambda o=options: openssl(1, o), repeat)
        figures.value(f"writing {encryption.value} certvault", ours, "s")
        figures.value(f"writing {encryption.value} openssl", theirs, "s")
        print(
            f"writing a p12, {encryption.value}, {rounds:,} rounds: certvault {ms(ours)}, "
            f"openssl pkcs12 -export {ms(theirs)} ({ms(start_up)} of it at 1 round)"
        )
        figures.ratio(
            f"writing {encryption.value} certvault/openssl", ours / theirs, "target <= 1.5x"
        )


def compare_reading(budget: int, repeat: int, figures: Report) -> None:
    key = load_pem_private_key((VECTORS / "p256.key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((VECTORS / "p256.cert.pem").read_bytes())
    limits = P12Limits(max_iterations=budget, max_work=budget)
    seconds = {}
    for encryption, per_iteration in WORK_PER_ITERATION.items():
        iterations = budget // per_iteration
        data = write_pkcs12(key, cert, [], PASSPHRASE, encryption, iterations, None)
        seconds[encryption] = median_seconds(
            lambda d=data: read_pkcs12(d, PASSPHRASE, limits), repeat
        )
        print(
            f"reading a {encryption.value} p12 at {iterations:,} rounds "
            f"({iterations * per_iteration:,} of a {budget:,} budget): {ms(seconds[encryption])}"
        )
    ratio = seconds[EncryptionType.TRIPLEDES_SHA1] / seconds[EncryptionType.AES256_SHA256]
    figures.ratio("legacy/PBES2 cost at the same budget", ratio, "<= 1: the budget holds for both")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=600_000, help="KDF rounds when writing")
    parser.add_argument(
        "--budget", type=int, default=P12Limits().max_work, help="KDF work of the files read"
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with report("kdf", vars(args)) as figures:
        compare_kdfs(args.rounds, args.repeat, figures)
        compare_mac_kdf(args.rounds, args.repeat, figures)
        with tempfile.TemporaryDirectory() as tmp:
            compare_writing(args.rounds, args.repeat, Path(tmp), figures)
        compare_reading(args.budget, args.repeat, figures)


if __name__ == "__main__":
    main()
