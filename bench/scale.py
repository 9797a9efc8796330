"""Scale: the REST paths at a large and a small vault, database bytes per key, and the memory of
a bulk import at two sizes, in one run.

    python bench/scale.py [--large N] [--small N] [--backends postgresql,sqlite] [--repeat N]
                          [--rss-large N] [--rss-small N]

For each backend and size: a throwaway installation filled with synthetic escrowed keys (see
bench/_synthetic.py: each key a record of its own, sealed as the service seals it, two per
person), then through the application (in-process, with the Server-Timing middleware on), each
timed --repeat times on persons spread over the whole vault: listing a person's certificates
with keyVault=true (SCM `GET /api/smime/v2?personId=…&keyVault=true`, and REST v1
`GET /api/v1/certificates?person_id=…&key_vault=true`), fetching one certificate
(`GET /api/v1/certificates/{id}`) and releasing one key (`POST /api/smime/v2/keystore/{id}`,
with the KDF at 2,048 rounds; its time outside the KDF is printed too). Printed: the p50 of
each at both sizes and "large/small" (target: <= 2x), and the database bytes per escrowed key.

Then the peak RSS of `import_files` over --rss-small and --rss-large PKCS#12 files loaded
lazily (each made when the import asks for it), run as `certvault import` runs it (each file's
answer handed on, none kept), each import in a process of its own (the peak from
/proc/self/status, started over once the master key is open), on SQLite: "import peak RSS
large/small" (flat is 1.00x). `--backends ""` measures only this.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from _common import OPERATOR, installation, report
from _synthetic import Population, populate
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import text

from certvault.config import Settings
from certvault.services.access import admins, tokens
from certvault.services.kernel.ports import Ports, open_ports
from certvault.services.vault.imports import FileResult, ImportItem, import_files
from certvault.web import timing as web_timing
from certvault.web.app import create_app
from tests.factories import make_ca, make_cert, make_p12

UNLIMITED = 1_000_000_000
PASSPHRASE = "bench-scale-passphrase-1"
TABLES = ("persons", "escrowed_keys", "certificates")
UNITS = {"keys": "keys", "bytes_per_key": "bytes", "build_s": "s"}
# What is timed: the SCM list and the REST v1 list of a person's certificates with a key in the
# vault, one certificate, one release, and that release outside the KDF.
PATHS = {
    "list": "list",
    "list v1": "list v1",
    "fetch": "fetch",
    "release": "release",
    "outside": "release outside the KDF",
}


def _token(ports: Ports) -> str:
    admins.create_admin(
        ports,
        OPERATOR,
        "bench",
        "scale",
        privileges=["key_vault_download", "certificates_manage", "persons_manage"],
        api_only=True,
    )
    return tokens.create_token(ports, OPERATOR, "bench", "scale").token


def database_bytes(ports: Ports) -> int:
    """What the vault's rows take: the person, certificate and key tables with their indexes on
    PostgreSQL, the whole database on SQLite (its file and write-ahead log)."""
    if ports.db.is_sqlite:
        path = Path(ports.db.url.database or "")
        wal = path.with_name(path.name + "-wal")
        return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    with ports.db.engine.connect() as c:
        sizes = (c.scalar(text(f"SELECT pg_total_relation_size('{t}')")) for t in TABLES)  # noqa: S608
        return sum(int(s or 0) for s in sizes)


def _timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = call()
    elapsed = time.perf_counter() - start
    assert response.status_code == 200, (response.status_code, response.text[:300])
    return elapsed * 1000, response


def _kdf_ms(response: httpx.Response) -> float:
    for part in response.headers.get("server-timing", "").split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name == "kdf":
            return float(duration)
    return 0.0


def _persons(population: Population, repeat: int) -> Iterator[int]:
    """Person indexes spread over the whole vault, in a fixed order (same at every size)."""
    rng = random.Random(7)  # noqa: S311 - picks test rows, nothing secret
    for _ in range(repeat):
        yield rng.randrange(len(population.person_ids))


def time_paths(ports: Ports, population: Population, token: str, repeat: int) -> dict[str, float]:
    """p50 milliseconds of each path."""
    times: dict[str, list[float]] = {name: [] for name in PATHS}
    auth = {"Authorization": f"Bearer {token}"}
    app = create_app(ports)
    app.add_middleware(web_timing.ServerTiming)  # the release's KDF, subtracted
    with TestClient(app, base_url="https://testserver", headers=auth) as web:
        for n, index in enumerate(_persons(population, repeat + 2)):
            person_id = population.person_ids[index]
            cert_id = population.certificates_of(index)[n % 2]
            query = {"personId": person_id, "keyVault": "true"}
            listed, response = _timed(lambda q=query: web.get("/api/smime/v2", params=q))
            assert sorted(c["id"] for c in response.json()) == population.certificates_of(index)
            query = {"person_id": person_id, "key_vault": "true"}
            listed_v1, response = _timed(lambda q=query: web.get("/api/v1/certificates", params=q))
            assert len(response.json()["items"]) == len(population.certificates_of(index))
            fetched, response = _timed(lambda c=cert_id: web.get(f"/api/v1/certificates/{c}"))
            assert response.json()["key_in_vault"] is True
            released, response = _timed(
                lambda c=cert_id: web.post(
                    f"/api/smime/v2/keystore/{c}",
                    json={"passphrase": PASSPHRASE, "encryptionType": "AES256-SHA256"},
                )
            )
            if n >= 2:  # two warm-ups: compiled statements, connections, service keys
                times["list"].append(listed)
                times["list v1"].append(listed_v1)
                times["fetch"].append(fetched)
                times["release"].append(released)
                times["outside"].append(released - _kdf_ms(response))
    return {name: statistics.median(values) for name, values in times.items()}


def run_size(backend: str, keys: int, repeat: int) -> dict[str, float]:
    overrides = {
        "p12_kdf_rounds": 2048,
        "downloads_per_hour_admin": UNLIMITED,
        "downloads_per_hour_token": UNLIMITED,
        "downloads_per_hour_ip": UNLIMITED,
    }
    with installation(backend, **overrides) as ports:
        token = _token(ports)
        start = time.perf_counter()
        population = populate(ports, keys)
        built = time.perf_counter() - start
        stored = 1 + len(population.certificate_ids)
        per_key = database_bytes(ports) / stored
        print(
            f"  {backend} {stored:,} keys: built in {built:,.1f} s "
            f"({stored / built:,.0f} keys/s); {per_key:,.0f} database bytes per key",
            flush=True,
        )
        p50 = time_paths(ports, population, token, repeat)
        print(
            f"  {backend} {stored:,} keys, p50 ms: "
            + ", ".join(f"{label} {p50[path]:.2f}" for path, label in PATHS.items()),
            flush=True,
        )
        return p50 | {"keys": stored, "bytes_per_key": per_key, "build_s": built}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _reset_peak_rss() -> int:
    """Start the peak over from the current RSS (Linux: clear_refs 5), and return that RSS, so
    that what ran before the import (imports, opening the installation) is not counted."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def _peak_rss() -> int:
    return _status_kib("VmHWM")


def rss_child(home: str, files: int) -> None:
    """Import ``files`` lazily made PKCS#12 files into the installation at ``home``; print the
    RSS before and the peak during the import. The parent set the installation up."""
    ports = open_ports(Settings(home=Path(home), p12_kdf_rounds=2048))
    try:
        ca = make_ca("Bench RSS CA")

        def load(i: int) -> bytes:
            key = ec.generate_private_key(ec.SECP256R1())
            return make_p12(key, make_cert(key, f"r{i}@rss.bench.example", issuer=ca), "pw-rss-1")

        items = (
            ImportItem(name=f"{i}.p12", load=lambda i=i: load(i), password="pw-rss-1")
            for i in range(files)
        )
        load(-1)  # warm-up: the first certificate and file made
        answers = {"ok": 0, "failed": 0}

        def on_file(result: FileResult) -> None:
            answers["ok" if result.ok else "failed"] += 1

        before = _reset_peak_rss()
        # As `certvault import` runs it: each file's answer handed on, none kept.
        kept = import_files(ports, OPERATOR, "bench", items, on_file=on_file, keep=False)
        peak = _peak_rss()
        assert not kept and answers == {"ok": files, "failed": 0}, "the import failed"
    finally:
        ports.close()
    print(json.dumps({"before_kib": before, "peak_kib": peak}))


def rss_of(files: int) -> dict[str, int]:
    with installation("sqlite") as ports:
        argv = [sys.executable, __file__, "--rss-child", str(files), str(ports.settings.home_dir)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    figures: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large", type=int, default=1_000_000, help="escrowed keys")
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--backends", default="postgresql,sqlite")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rss-large", type=int, default=100_000, help="files")
    parser.add_argument("--rss-small", type=int, default=10_000)
    parser.add_argument("--rss-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[1], int(args.rss_child[0]))
        return
    sizes = {k: v for k, v in vars(args).items() if k != "rss_child"}
    with report("scale", sizes) as figures:
        for backend in [b for b in args.backends.split(",") if b]:  # "": the import's memory only
            small = run_size(backend, args.small, args.repeat)
            large = run_size(backend, args.large, args.repeat)
            for size, measured in (("small", small), ("large", large)):
                for name, value in measured.items():
                    figures.value(f"{backend} {size} {name}", value, UNITS.get(name, "ms"))
            for path, label in PATHS.items():
                figures.ratio(
                    f"{backend} {label} large/small",
                    large[path] / small[path],
                    f"p50 {large[path]:.2f} ms at {large['keys']:,} keys, "
                    f"{small[path]:.2f} ms at {small['keys']:,}; target <= 2x",
                )
        print(f"bulk import, files made lazily (SQLite): {args.rss_small:,}, {args.rss_large:,}")
        rss = {files: rss_of(files) for files in (args.rss_small, args.rss_large)}
        for files, kib in rss.items():
            figures.value(f"import peak RSS {files}", kib["peak_kib"], "KiB")
            figures.value(f"RSS before import {files}", kib["before_kib"], "KiB")
            print(
                f"  {files:,} files: peak RSS {kib['peak_kib'] / 1024:,.1f} MiB "
                f"({kib['before_kib'] / 1024:,.1f} MiB before the import)"
            )
        figures.ratio(
            "import peak RSS large/small",
            rss[args.rss_large]["peak_kib"] / rss[args.rss_small]["peak_kib"],
            "flat is 1.00x",
        )


if __name__ == "__main__":
    main()
