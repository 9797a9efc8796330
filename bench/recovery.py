"""How long a request at the Private Key Recovery Form takes for each kind of address, side by
side, in one run: the timing half of "the form does not tell addresses apart" (the structure half
is tests/functional/test_recovery_pages.py).

    python bench/recovery.py [--count N] [--backend sqlite|postgresql] [--floor-ms N]

Each kind of address is asked --count times, interleaved (so that other work on the machine
falls on every kind alike), through the HTTP pages (TestClient: the CSRF check, the service, the
outbox row, the audit event). Printed per kind: p10, p50 and p90 in milliseconds, and each p50
as a ratio of the unknown address's p50, twice: with the answer floor off (the work itself, where
an address with keys costs a few ms more) and at --floor-ms (what a client sees; the default is
the setting's default). Rate limits are lifted for the run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from _common import OPERATOR, Report, installation, report
from fastapi.testclient import TestClient

from certvault.config import Settings
from certvault.services.directory import accounts, persons
from certvault.services.pki import crl
from certvault.services.vault import settings as kv_settings
from certvault.services.vault.imports import import_p12
from certvault.web.app import create_app
from tests.factories import make_ca, make_cert, make_p12, new_key

UNLIMITED = 1_000_000_000
KINDS = {
    "unknown": "nobody@example.org",
    "in another account": "bob@example.org",
    "only in a person record": "carol@example.org",
    "key compromised": "dave@example.org",
    "with keys": "alice@example.org",
}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _vault(ports: object, slug: str, email: str, ca: object) -> int:
    key = new_key("ec256")
    data = make_p12(key, make_cert(key, email, issuer=ca), "bench-pw-1")
    [entry] = import_p12(ports, OPERATOR, slug, data, "bench-pw-1")  # type: ignore[arg-type]
    return entry.client_cert_id


def run(count: int, backend: str, floor_ms: int) -> dict[str, list[float]]:
    limits = {
        "recovery_answer_floor_ms": floor_ms,
        "recovery_requests_per_hour_email": UNLIMITED,
        "recovery_requests_per_hour_ip": UNLIMITED,
        "recovery_requests_per_hour_account": UNLIMITED,
        "p12_kdf_rounds": 2048,
    }
    with installation(backend, **limits) as ports:
        ca = make_ca("Bench CA")
        for slug in ("bench", "other"):
            if slug == "other":
                accounts.create_account(ports, OPERATOR, "Other", slug, key_vault_enabled=True)
            accounts.add_trusted_issuer(ports, OPERATOR, slug, ca[1])
            kv_settings.update_recovery_options(
                ports, OPERATOR, slug, kv_settings.RecoveryOptions(recovery_method="email_code")
            )
        _vault(ports, "bench", KINDS["with keys"], ca)
        _vault(ports, "other", KINDS["in another account"], ca)
        compromised = _vault(ports, "bench", KINDS["key compromised"], ca)
        crl.revoke_certificate(ports, OPERATOR, "bench", compromised, "keyCompromise")
        persons.create_person(
            ports,
            OPERATOR,
            "bench",
            persons.PersonFields(email=KINDS["only in a person record"], first_name="C"),
        )
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        with TestClient(create_app(ports), base_url="https://testserver") as web:
            page = web.get("/kv/bench").text
            found = _CSRF.search(page)
            assert found, "no CSRF token on the form"
            token = found.group(1)
            for round_ in range(count + 1):
                for kind, email in KINDS.items():
                    start = time.perf_counter()
                    answer = web.post(
                        "/kv/bench/request", data={"csrf_token": token, "email": email}
                    )
                    elapsed = time.perf_counter() - start
                    assert answer.status_code == 200, answer.text
                    if round_:  # the first round warms caches and connections
                        times[kind].append(elapsed * 1000)
        return times


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--floor-ms", type=int, default=Settings.model_fields["recovery_answer_floor_ms"].default
    )
    args = parser.parse_args()
    with report("recovery", vars(args)) as figures:
        for floor in (0, args.floor_ms):
            show(run(args.count, args.backend, floor), args.count, args.backend, floor, figures)


def show(
    times: dict[str, list[float]], count: int, backend: str, floor: int, figures: Report
) -> None:
    base = statistics.median(times["unknown"])
    print(f"recovery requests on {backend}, {count} per kind, answer floor {floor} ms (ms)")
    print(f"{'kind':<26}{'p10':>8}{'p50':>8}{'p90':>8}")
    for kind, values in times.items():
        print(
            f"{kind:<26}{percentile(values, 0.1):8.2f}{statistics.median(values):8.2f}"
            f"{percentile(values, 0.9):8.2f}"
        )
    for kind, values in times.items():
        figures.value(f"floor {floor} ms {kind} p50", statistics.median(values), "ms")
    for kind, values in times.items():
        if kind != "unknown":
            figures.ratio(
                f"floor {floor} ms {kind} p50/unknown p50", statistics.median(values) / base
            )


if __name__ == "__main__":
    main()
