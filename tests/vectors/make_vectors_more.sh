#!/usr/bin/env bash
# Adds the bad-input and compatibility vectors to tests/vectors/p12/ (see p12/README.md, second
# table). Unlike make_vectors.sh it only creates its own files and never touches the others: it
# builds on the keys and certificates make_vectors.sh made (T.key.pem, T.cert.pem, p256.p12,
# pbmac1.p12). Re-running replaces only the files named below.
#
# Tools: OpenSSL 3.0 (`openssl`), GnuTLS's `certtool` 3.7, and a Python with cryptography and
# asn1crypto (PYTHON, default: the project's .venv) to patch or assemble openssl-made pieces
# ("Python-made" in the README).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/p12"
PYTHON="${PYTHON:-$here/../../.venv/bin/python}"
PW="vector-pass-1234"
PW_NONASCII="pässwörd-Ω-12345"

cd "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '[req]\ndistinguished_name = dn\n[dn]\n' > "$work/req.cnf"

# Self-signed CA certificates for the long chains; their keys are thrown away.
extra_ca() {
  openssl req -config "$work/req.cnf" -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -nodes -keyout "$work/extra-$1.key.pem" -subj "/CN=Extra CA $1" -days 36500 \
    -addext basicConstraints=critical,CA:TRUE -out "$work/extra-$1.cert.pem" 2>/dev/null
}
for i in $(seq -w 1 70); do extra_ca "$i"; done

# A key and 70 CA certificates, OpenSSL 3 defaults (all certificates in one EncryptedData).
cat "$work"/extra-*.cert.pem > "$work/ca70.pem"
openssl pkcs12 -export -in p256.cert.pem -inkey p256.key.pem -certfile "$work/ca70.pem" \
  -name "alice p256" -passout "pass:$PW" -out p256-70ca.p12

# certtool: the leaf and 8 CA certificates, each in its own EncryptedData; PBES2 AES-128 with
# 600,000 PBKDF2-HMAC-SHA256 rounds for every section, the key and the MAC (GnuTLS defaults).
cat p256.cert.pem "$work"/extra-0[1-8].cert.pem > "$work/chain9.pem"
certtool --to-p12 --load-privkey p256.key.pem --load-certificate "$work/chain9.pem" \
  --p12-name "alice p256" --password "$PW" --outder --outfile certtool-p256-9certs.p12 >/dev/null

# OpenSSL 1.0 with a non-ASCII password: each UTF-8 byte of the password became one BMP code
# unit. OpenSSL 3 writes the same bytes when given the password's UTF-8 bytes read as Latin-1.
PW_OPENSSL10="$("$PYTHON" -c 'import sys; print(sys.argv[1].encode().decode("latin-1"))' \
  "$PW_NONASCII")"
openssl pkcs12 -export -legacy -in p256.cert.pem -inkey p256.key.pem \
  -passout "pass:$PW_OPENSSL10" -out p256-openssl10-nonascii.p12

# An RSA key whose CRT exponent dP is wrong (everything else right), exported by openssl.
"$PYTHON" - rsa2048.key.pem "$work/rsa2048-bad-crt.key.pem" <<'PYEOF'
import sys

from asn1crypto import keys, pem

with open(sys.argv[1], "rb") as f:
    _, _, der = pem.unarmor(f.read())
info = keys.PrivateKeyInfo.load(der)
rsa = keys.RSAPrivateKey.load(info["private_key"].parsed.dump())
rsa["exponent1"] = rsa["exponent1"].native + 2  # dP = d mod (p-1) no longer
info["private_key"] = rsa
with open(sys.argv[2], "wb") as f:
    f.write(pem.armor("PRIVATE KEY", info.dump(force=True)))
PYEOF
openssl pkcs12 -export -in rsa2048.cert.pem -inkey "$work/rsa2048-bad-crt.key.pem" \
  -name "alice rsa2048" -passout "pass:$PW" -out rsa2048-bad-crt.p12

# Pieces for the assembled files (not kept)
export_nomac() { openssl pkcs12 -export -nomac -passout "pass:$PW" "$@"; }
export_nomac -nocerts -inkey rsa2048.key.pem -out "$work/rsa2048-keyonly.p12"
export_nomac -nocerts -inkey p384.key.pem -out "$work/p384-keyonly.p12"
export_nomac -nokeys -in p256.cert.pem -out "$work/p256-certonly.p12"

"$PYTHON" - "$work" <<'PYEOF'
"""Python-made: patched or assembled from openssl-made pieces. See p12/README.md."""

import sys

from asn1crypto import algos, cms, pkcs12

work = sys.argv[1]


def load(path):
    with open(path, "rb") as f:
        return pkcs12.Pfx.load(f.read())


def write(name, p):
    data = p.dump(force=True)
    pkcs12.Pfx.load(data).native  # parses back completely
    with open(name, "wb") as f:
        f.write(data)


# p256.p12 with one bit of its MAC flipped.
p = load("p256.p12")
digest = bytearray(p["mac_data"]["mac"]["digest"].native)
digest[-1] ^= 1
p["mac_data"]["mac"]["digest"] = bytes(digest)
write("p256-bad-mac.p12", p)

# Two keys (rsa2048, p384) and one certificate (p256) that belongs to neither; no MAC.
infos = [
    ci
    for name in ("rsa2048-keyonly", "p384-keyonly", "p256-certonly")
    for ci in load(f"{work}/{name}.p12").authenticated_safe
]
auth = pkcs12.AuthenticatedSafe([cms.ContentInfo.load(ci.dump()) for ci in infos])
write(
    "two-keys-foreign-cert.p12",
    pkcs12.Pfx({"version": "v3", "auth_safe": {"content_type": "data", "content": auth.dump()}}),
)

# pbmac1.p12 with its PBKDF2 key length raised to 1,000,000 bytes (digest left as it was).
p = load("pbmac1.p12")
alg = p["mac_data"]["mac"]["digest_algorithm"]
params = algos.Pbmac1Params.load(alg["parameters"].dump())
params["key_derivation_func"]["parameters"]["key_length"] = 1_000_000
mac = pkcs12.MacData(
    {
        "mac": {
            "digest_algorithm": {
                "algorithm": alg["algorithm"].dotted,
                "parameters": algos.Pbmac1Params.load(params.dump(force=True)),
            },
            "digest": p["mac_data"]["mac"]["digest"].native,
        },
        "mac_salt": p["mac_data"]["mac_salt"].native,
        "iterations": p["mac_data"]["iterations"].native,
    }
)
write("pbmac1-keylen-huge.p12", pkcs12.Pfx({"version": "v3", "auth_safe": p["auth_safe"], "mac_data": mac}))
PYEOF
