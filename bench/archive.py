"""PKCS#12 import: certvault's reader and the service against cryptography's `load_pkcs12` and
the raw load + seal, on the same files, in one run.

    python bench/archive.py [--count N] [--kind rsa2048|ec256|both] [--backends ...]

The files are what OpenSSL 3 writes by default (`openssl pkcs12 -export`): PBES2 with
PBKDF2-HMAC-SHA256 at 2,048 rounds and AES-256-CBC for the key and the certificates, and a
SHA-256 MAC at 2,048 rounds; each with its own key and certificate, and the CA.
- load_pkcs12: cryptography's loader (it re-validates RSA keys: DESIGN.md §10);
- raw: load_pkcs12 + sealing the key (data key + wrap), the floor of an import that loads
  that way;
- read_pkcs12: certvault's reader, as the import calls it;
- import: `import_files` (the reader, in worker processes from CERTVAULT_IMPORT_POOL_FROM files
  on, 1,000 by default; checks, persons, certificates, audit, outbox, batch commits in this
  process) on SQLite and on PostgreSQL.
Targets (issue): RSA-2048 import >= 10x load_pkcs12; EC P-256 import >= 0.70x raw. By default
150 RSA files (read in-process) and 5,000 EC files (read by the workers, long enough that
starting them is a small share, as in a migration).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from _common import OPERATOR, installation, report
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certvault.crypto import envelope
from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.reader import read_pkcs12
from certvault.services.vault.imports import ImportItem, import_files
from tests.factories import make_ca, make_cert

PASSWORD = "bench-password-1"
TARGETS = {"rsa2048": ("load_pkcs12", 10.0), "ec256": ("raw", 0.70)}


def make_files(count: int, kind: str) -> list[bytes]:
    ca = make_ca()
    files = []
    enc = (  # OpenSSL 3's defaults for `pkcs12 -export`
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(2048)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(PASSWORD.encode())
    )
    for i in range(count):
        key = (
            rsa.generate_private_key(65537, 2048)
            if kind == "rsa2048"
            else ec.generate_private_key(ec.SECP256R1())
        )
        cert = make_cert(key, f"user{i}@bench.example", issuer=ca)
        files.append(pkcs12.serialize_key_and_certificates(b"k", key, cert, [ca[1]], enc))
    return files


def rate(files: list[bytes], each: Callable[[bytes], object]) -> float:
    each(files[0])  # warm-up
    start = time.perf_counter()
    for data in files:
        each(data)
    return len(files) / (time.perf_counter() - start)


def load(data: bytes) -> None:
    p12 = pkcs12.load_pkcs12(data, PASSWORD.encode())
    assert p12.key is not None


def load_and_seal(master: bytes) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        p12 = pkcs12.load_pkcs12(data, PASSWORD.encode())
        assert p12.key is not None
        der = keylib.to_pkcs8_der(p12.key)  # type: ignore[arg-type]
        data_key = envelope.new_key()
        envelope.seal(data_key, der, b"aad")
        envelope.seal(master, data_key, b"aad")

    return run


def read(data: bytes) -> None:
    assert read_pkcs12(data, PASSWORD).entries


def service_rate(files: list[bytes], backend: str) -> float:
    with installation(backend) as ports:
        items = [
            ImportItem(name=f"f{i}.p12", load=lambda d=d: d, password=PASSWORD)
            for i, d in enumerate(files)
        ]
        start = time.perf_counter()
        results = import_files(ports, OPERATOR, "bench", items)
        elapsed = time.perf_counter() - start
        assert all(r.ok for r in results), "benchmark import failed"
    return len(files) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--kind", choices=["rsa2048", "ec256", "both"], default="both")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    kinds = ["rsa2048", "ec256"] if args.kind == "both" else [args.kind]
    with report("archive", vars(args)) as figures:
        for kind in kinds:
            count = args.count or (150 if kind == "rsa2048" else 5000)
            files = make_files(count, kind)
            floors = {
                "load_pkcs12": rate(files, load),
                "raw": rate(files, load_and_seal(envelope.new_key())),
            }
            reader = rate(files, read)
            print(
                f"{kind}: {count} files; load_pkcs12 {floors['load_pkcs12']:,.0f}/s, raw "
                f"load_pkcs12 + seal {floors['raw']:,.0f}/s, read_pkcs12 {reader:,.0f}/s"
            )
            figures.value(f"{kind} files", count, "files")
            for name, value in (*floors.items(), ("read_pkcs12", reader)):
                figures.value(f"{kind} {name}", value, "keys/s")
            figures.ratio(f"{kind} read_pkcs12/load_pkcs12", reader / floors["load_pkcs12"])
            floor, target = TARGETS[kind]
            for backend in args.backends.split(","):
                imported = figures.value(
                    f"{kind} import {backend}", service_rate(files, backend), "keys/s"
                )
                print(f"  import_files on {backend}: {imported:,.0f} keys/s")
                for name, value in floors.items():
                    goal = f"target >= {target:.2f}x" if name == floor else ""
                    figures.ratio(f"{kind} {backend} import/{name}", imported / value, goal)


if __name__ == "__main__":
    main()
