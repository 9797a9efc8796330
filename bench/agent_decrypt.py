"""The failures of an archived key, timed beside a success: no failure kind should stand out.

    python bench/agent_decrypt.py [--repeat N]

Every request is built against the test exchange certificate (tests/vectors/cmc) with an RSA-2048
key, as a Windows client builds it, and goes through ``agent_requests.decrypt``: the one path of
the archival endpoint from the key hash to the key. Failure kinds: a key encrypted to another
certificate (wrong recipient), content whose CBC padding is wrong (bad padding), a well-padded
content that is no key BLOB (bad blob), a transported content key of the wrong length (wrong
length), and a key hash that does not match (bad hash). Each prints its median time over the
success's; the success does more (it loads and checks the key), so ratios below 1 are expected.

What must not stand out are the failures that depend on the exchange key (bad padding, bad blob,
wrong length: what a padding oracle would tell apart); their spread is printed last. A wrong
recipient and a bad hash are told by public data anyone can compute from the request (the
recipient's name, the hash of the envelope), so their timing gives nothing away; a bad hash
still decrypts, so that it costs what a decryption costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import report  # noqa: E402

from certvault.crypto.cmc import CmcRequest, parse_request  # noqa: E402
from certvault.errors import ArchivedKeyUndecryptable  # noqa: E402
from certvault.services.pki.agent_requests import decrypt  # noqa: E402
from tests import cmc_builder as cmc  # noqa: E402

VECTORS = Path(__file__).resolve().parents[1] / "tests/vectors/cmc"
KEYS = Path(__file__).resolve().parents[1] / "tests/vectors/keys"
SECRET_DEPENDENT = ("bad padding", "bad blob", "wrong length")


def _rsa(path: Path) -> rsa.RSAPrivateKey:
    key = load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def requests(exchange: x509.Certificate) -> dict[str, CmcRequest]:
    key = _rsa(KEYS / "rsa2048-1.pem")
    stranger = cmc.exchange_certificate(_rsa(KEYS / "rsa2048-4.pem"))
    blob = cmc.openssl_blob(key)
    whole = blob + b"\x00" * (-len(blob) % 16)  # whole blocks, so that no padding is added
    made = {
        "success": cmc.build_archival_request(key, exchange),
        "wrong recipient": cmc.build_archival_request(key, stranger),
        "bad padding": cmc.build_archival_request(
            key, exchange, enveloped=cmc.envelope(whole, exchange, pad=False)
        ),
        "bad blob": cmc.build_archival_request(key, exchange, blob=os.urandom(len(blob))),
        "wrong length": cmc.build_archival_request(
            key, exchange, enveloped=cmc.envelope(blob, exchange, transported_key_size=16)
        ),
        "bad hash": cmc.build_archival_request(key, exchange, key_hash=b"\x00" * 20),
    }
    return {name: parse_request(data) for name, data in made.items()}


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attempt(request: CmcRequest, recipients: list[tuple[x509.Certificate, rsa.RSAPrivateKey]]):  # type: ignore[no-untyped-def]
    def run() -> bool:
        try:
            decrypt(request, recipients)
        except ArchivedKeyUndecryptable:
            return False
        return True

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    exchange = x509.load_pem_x509_certificate((VECTORS / "exchange.cert.pem").read_bytes())
    recipients = [(exchange, _rsa(VECTORS / "exchange.key.pem"))]
    made = requests(exchange)
    assert attempt(made["success"], recipients)(), "the success case must succeed"
    times = {}
    for name, request in made.items():
        run = attempt(request, recipients)
        if name != "success":
            assert not run(), f"{name} must fail"
        times[name] = median_seconds(run, args.repeat)
    print(f"success: {times['success'] * 1e3:.3f} ms (median of {args.repeat})")
    with report("agent_decrypt", vars(args)) as figures:
        for name, seconds in times.items():
            figures.value(name, seconds, "s")
        for name, seconds in times.items():
            if name != "success":
                figures.ratio(f"{name}/success", seconds / times["success"])
        secret = [times[name] for name in SECRET_DEPENDENT]
        figures.ratio("slowest/fastest key-dependent failure", max(secret) / min(secret))


if __name__ == "__main__":
    main()
