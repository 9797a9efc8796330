"""Makes the AD CS key-archival vectors in this folder (see README.md for the table of files).

The outputs are committed: tests read them and never regenerate them. Re-running replaces every
file with new random keys, so only re-run when adding vectors, and commit the folder together.

    PYTHONPATH=. .venv/bin/python tests/vectors/cmc/make_vectors.py

The requests come from ``tests/cmc_builder.py`` (the client side, written apart from certvault's
parser); each PRIVATEKEYBLOB inside is the one ``openssl rsa -outform MSBLOB`` writes.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests import cmc_builder  # noqa: E402

# name: (key file, request options)
REQUESTS = {
    "rsa2048-aes256.der": ("alice-rsa2048", {}),
    "rsa2048-3des.req": ("alice-rsa2048", {"content": "3des"}),
    "rsa3072-aes256-sha256-hash.der": (
        "bob-rsa3072",
        {"hash_alg": "sha256", "recipient": "ski", "subject_email": "bob@example.org"},
    ),
    "rsa3072-3des-sha1.der": (
        "bob-rsa3072",
        {
            "content": "3des",
            "digest_alg": "sha1",
            "hash_placement": "tagged",
            "nonce": bytes(range(16)),
            "transaction_id": 4242,
            "subject_email": "bob@example.org",
        },
    ),
    "rsa2048-no-key.der": ("alice-rsa2048", {"archived": False, "hash_alg": None}),
}


def write_key(name: str, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (HERE / f"{name}.key.pem").write_bytes(pem)


def armoured(der: bytes) -> bytes:
    """Base64 in 64-character CRLF lines between the markers, as ``certreq -new`` writes it."""
    text = base64.b64encode(der).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    body = "\r\n".join(
        ["-----BEGIN NEW CERTIFICATE REQUEST-----", *lines, "-----END NEW CERTIFICATE REQUEST-----"]
    )
    return (body + "\r\n").encode()


def main() -> None:
    exchange_key = rsa.generate_private_key(65537, 2048)
    exchange_cert = cmc_builder.exchange_certificate(exchange_key)
    write_key("exchange", exchange_key)
    (HERE / "exchange.cert.pem").write_bytes(exchange_cert.public_bytes(serialization.Encoding.PEM))
    keys = {
        "alice-rsa2048": rsa.generate_private_key(65537, 2048),
        "bob-rsa3072": rsa.generate_private_key(65537, 3072),
    }
    for name, key in keys.items():
        write_key(name, key)
        (HERE / f"{name}.blob").write_bytes(cmc_builder.openssl_blob(key))
    for file_name, (key_name, options) in REQUESTS.items():
        der = cmc_builder.build_archival_request(keys[key_name], exchange_cert, **options)
        data = armoured(der) if file_name.endswith(".req") else der
        (HERE / file_name).write_bytes(data)


if __name__ == "__main__":
    main()
