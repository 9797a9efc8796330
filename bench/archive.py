"""Bulk import through the service layer against the raw PKCS#12-load + seal rate, in one run.

    python bench/archive.py [--count N] [--kind rsa2048|ec256]

Raw rate: cryptography's load_pkcs12 (with key validation) + sealing the key (data key + wrap).
Service rate: `import_files` (our reader, checks, persons, certificates, audit, outbox,
batch commits).
Target (issue): service >= 70% of raw, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import argparse
import time

from _common import OPERATOR, installation
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certvault.crypto import envelope
from certvault.crypto import keys as keylib
from certvault.services.vault.imports import ImportItem, import_files
from tests.factories import make_ca, make_cert

PASSWORD = "bench-password-1"


def make_files(count: int, kind: str) -> list[bytes]:
    ca = make_ca()
    files = []
    enc = (
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


def raw_rate(files: list[bytes]) -> float:
    master = envelope.new_key()
    start = time.perf_counter()
    for data in files:
        p12 = pkcs12.load_pkcs12(data, PASSWORD.encode())
        assert p12.key is not None
        der = keylib.to_pkcs8_der(p12.key)  # type: ignore[arg-type]
        data_key = envelope.new_key()
        envelope.seal(data_key, der, b"aad")
        envelope.seal(master, data_key, b"aad")
    return len(files) / (time.perf_counter() - start)


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
    args = parser.parse_args()
    kinds = ["rsa2048", "ec256"] if args.kind == "both" else [args.kind]
    for kind in kinds:
        count = args.count or (150 if kind == "rsa2048" else 1000)
        files = make_files(count, kind)
        raw = raw_rate(files)
        print(f"{kind}: {count} files; raw load_pkcs12 + seal: {raw:,.0f} keys/s")
        for backend in ("sqlite", "postgresql"):
            rate = service_rate(files, backend)
            print(f"  {backend:10s}: {rate:,.0f} keys/s = {rate / raw:.0%} of raw (target >= 70%)")


if __name__ == "__main__":
    main()
