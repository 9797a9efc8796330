"""Server-side enrollments per second through the web-form service, beside the raw keygen + sign
cost, in one run.

    python bench/enroll.py [--count N] [--kind ec256|rsa2048|both] [--backends ...]

Raw: `generate_key` + `issue_certificate` with an in-memory CA of the built-in CA's key type.
Service: `services.pki.enrollment.enroll` (form and code checks, rate limits, key generation, the
built-in CA opening its service key and signing, escrow through the vault's one way in, the
certificate record, audit, outbox, the p12), one enrollment per call, codes mailed beforehand to a
local SMTP server and not timed. Key generation and signing inside each enrollment are timed
too, so the overhead is measured on the same enrollments (RSA key generation varies by tens of
milliseconds from key to key, far more than the overhead itself), as medians (other work on the
machine shows as outliers); the service's steps are timed alike, to show where the rest goes.
The p12 KDF runs at 2,048 rounds here and is counted as overhead; in production it is the one
deliberate cost of the delivery (DESIGN.md §10) and grows with CERTVAULT_P12_KDF_ROUNDS alone.
Target (issue): overhead beyond keygen and signing <= 20 ms per enrollment, on SQLite and
on PostgreSQL.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _common import OPERATOR, installation, report

from certvault.crypto import ca as calib
from certvault.crypto.profiles import KeyType, generate_key, get_profile
from certvault.services.kernel.ports import Ports
from certvault.services.pki import enrollment, enrollment_forms
from certvault.services.pki.ca import CA_KEY_TYPES, init_ca
from tests.functional.smtp_server import SmtpServer

KDF_ROUNDS = 2_048
UNLIMITED = 1_000_000_000
WARMUP = 3  # enrollments before timing: connections, compiled statements, cached service keys
CA_KEY_TYPE = CA_KEY_TYPES[0]  # what `certvault ca init` uses by default
_CODE = re.compile(r"^\s+(\d{8})\s*$", re.MULTILINE)


def raw_rate(kind: KeyType, count: int) -> float:
    """Enrollments per second if nothing but key generation and signing took time."""
    profile = get_profile("smime")
    root_key = generate_key(CA_KEY_TYPE)
    root = calib.build_root(root_key, "Bench Root CA")
    ca_key = generate_key(CA_KEY_TYPE)
    ca = calib.build_issuing(root_key, root, ca_key, "Bench Issuing CA")
    start = time.perf_counter()
    for i in range(count):
        key = generate_key(kind)
        calib.issue_certificate(ca_key, ca, key.public_key(), profile, email=f"u{i}@bench.example")
    return count / (time.perf_counter() - start)


class Stopwatch:
    """Time spent inside wrapped functions since the last reset."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


# What each enrollment is taken apart into: the crypto the target leaves out, the p12, and the
# service's steps (each step's own transaction commit is counted in "other").
TIMED = {
    "keygen": (enrollment, "generate_key"),
    "sign": (calib, "issue_certificate"),
    "p12": (enrollment, "write_pkcs12_entries"),
    "form": (enrollment, "form_state"),
    "limits": (enrollment, "enforce"),
    "code": (enrollment, "_verify_code"),
    "issue tx": (enrollment, "_issue"),
}


@contextmanager
def timed_parts() -> Iterator[dict[str, Stopwatch]]:
    """Stopwatches on the functions of TIMED, wherever the enrollment calls them."""
    watches = {name: Stopwatch() for name in TIMED}
    originals = {name: getattr(module, attr) for name, (module, attr) in TIMED.items()}
    for name, (module, attr) in TIMED.items():
        setattr(module, attr, watches[name].wrap(originals[name]))
    try:
        yield watches
    finally:
        for name, (module, attr) in TIMED.items():
            setattr(module, attr, originals[name])


def mailed_codes(ports: Ports, smtp: SmtpServer, addresses: list[str]) -> dict[str, str]:
    for address in addresses:
        enrollment.send_code(ports, "bench", "form", address, None, "192.0.2.1")
    codes = {}
    for mail in smtp.messages:
        found = _CODE.search(mail.body)
        assert found is not None, "no code in the mail"
        codes[mail.rcpt_tos[0]] = found.group(1)
    return codes


def service_run(backend: str, kind: KeyType, count: int) -> tuple[float, list[dict[str, float]]]:
    """Enrollments per second, and each enrollment's seconds: in all and in each timed part."""
    smtp = SmtpServer()
    smtp.start()
    try:
        with installation(
            backend,
            p12_kdf_rounds=KDF_ROUNDS,
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            enrollment_codes_per_hour_ip=UNLIMITED,
            enrollment_checks_per_hour_ip=UNLIMITED,
        ) as ports:
            init_ca(ports, OPERATOR, "bench", key_type=CA_KEY_TYPE)
            enrollment_forms.create_form(
                ports, OPERATOR, "bench", slug="form", profile="smime", access_code=None
            )
            addresses = [f"user{i}@bench.example" for i in range(WARMUP + count)]
            codes = mailed_codes(ports, smtp, addresses)

            def enroll(address: str) -> None:
                result = enrollment.enroll(
                    ports,
                    "bench",
                    "form",
                    email=address,
                    code=codes[address],
                    key_type=kind.value,
                    ip="192.0.2.1",
                )
                assert result.escrowed, "the benchmark enrollment escrowed nothing"

            for address in addresses[:WARMUP]:
                enroll(address)
            samples = []
            with timed_parts() as watches:
                begin = time.perf_counter()
                for address in addresses[WARMUP:]:
                    for watch in watches.values():
                        watch.seconds = 0.0
                    start = time.perf_counter()
                    enroll(address)
                    total = time.perf_counter() - start
                    samples.append({"total": total} | {n: w.seconds for n, w in watches.items()})
                rate = count / (time.perf_counter() - begin)
    finally:
        smtp.stop()
    return rate, samples


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--kind", choices=["ec256", "rsa2048", "both"], default="both")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    kinds = [KeyType.EC256, KeyType.RSA2048] if args.kind == "both" else [KeyType(args.kind)]
    print(f"built-in CA key: {CA_KEY_TYPE.value}; p12 KDF: {KDF_ROUNDS:,} rounds")
    with report("enroll", vars(args)) as figures:
        for kind in kinds:
            count = args.count or (100 if kind is KeyType.RSA2048 else 300)
            raw = figures.value(f"{kind.value} raw", raw_rate(kind, count), "enrollments/s")
            print(f"{kind.value}: {count} enrollments; raw keygen + sign: {raw:,.1f}/s")
            for backend in args.backends.split(","):
                rate, samples = service_run(backend, kind, count)
                # Medians: other work on the machine shows up as outliers, not as overhead.
                overhead = statistics.median(s["total"] - s["keygen"] - s["sign"] for s in samples)
                median = {name: statistics.median(s[name] for s in samples) for name in samples[0]}
                steps = ", ".join(f"{name} {ms(median[name])}" for name in TIMED)
                figures.value(f"{kind.value} {backend} service", rate, "enrollments/s")
                figures.value(f"{kind.value} {backend} overhead p50", overhead, "s")
                print(
                    f"  {backend:10s}: {rate:,.1f}/s; median ms per enrollment: total "
                    f"{ms(median['total'])} ({steps})\n"
                    f"  {'':10s}  overhead beyond keygen and signing, median: {ms(overhead)} ms "
                    f"(target <= 20 ms)"
                )
                figures.ratio(f"{kind.value} {backend} service/raw", rate / raw)


if __name__ == "__main__":
    main()
