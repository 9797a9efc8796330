#!/usr/bin/env bash
# Generates the PKCS#12 test vectors in tests/vectors/p12/ (see p12/README.md for the table of
# files and passwords). The outputs are committed: tests read them, they never regenerate them.
# Re-running replaces every file with new random keys, so only re-run when adding vectors, and
# commit the whole folder together.
#
# Tools: OpenSSL 3.0 (`openssl`; its legacy provider for -legacy, RC2 and 2DES) and a Python
# with cryptography + asn1crypto (PYTHON, default: the project's .venv) for the few files openssl
# cannot make. Those are labelled "Python-made" in the README. Python only assembles or patches
# openssl-made pieces, except the PBES2 wrapper of iter-nested-100m.p12 and the PBMAC1 MAC of
# pbmac1.p12, which it computes with cryptography's primitives (not with certvault's code).
#
# The exact openssl commands, with T one of rsa2048 rsa4096 p256 p384 p521 ed25519:
#   keys:   openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2048.key.pem
#           openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p256.key.pem
#           openssl genpkey -algorithm ED25519 -out ed25519.key.pem
#   CA:     openssl req -config req.cnf -x509 -new -key ca.key.pem -days 36500 -subj "/CN=..." \
#             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
#   leaf:   openssl req -config req.cnf -x509 -new -key T.key.pem -CA ca.cert.pem -CAkey ca.key.pem \
#             -days 36500 -subj "/CN=Alice T/emailAddress=Alice.T@Example.org" \
#             -addext subjectAltName=email:alice.T@example.org,email:a.T@example.net ...
#   (a) modern:  openssl pkcs12 -export -in T.cert.pem -inkey T.key.pem -name "alice T" \
#                  -passout pass:$PW -out T.p12
#   (b) legacy:  openssl pkcs12 -export -legacy -in T.cert.pem -inkey T.key.pem -name "alice T" \
#                  -passout pass:$PW -out T-legacy.p12
#   (c) chain:   ... -certfile ca.cert.pem -caname "Test CA"
#   (d) non-ASCII, empty passwords, -nomac, -iter 1, -keypbe/-certpbe/-macalg variants, -nokeys,
#       -nocerts: see the commands below.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/p12"
PYTHON="${PYTHON:-$here/../../.venv/bin/python}"
PW="vector-pass-1234"
PW_NONASCII="pässwörd-Ω-12345"
TYPES=(rsa2048 rsa4096 p256 p384 p521 ed25519)

mkdir -p "$out"
cd "$out"
rm -f ./*.p12 ./*.pem  # README.md stays

# Without a config of our own, `req -x509` would add the system config's v3_ca extensions
# (CA:TRUE) to every leaf.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '[req]\ndistinguished_name = dn\n[dn]\n' > "$work/req.cnf"
req() { openssl req -config "$work/req.cnf" "$@"; }

# --- keys and certificates -----------------------------------------------------------------------
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ca.key.pem
req -x509 -new -key ca.key.pem -days 36500 -subj "/O=certvault tests/CN=certvault Test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" -out ca.cert.pem

openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2048.key.pem
openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out rsa4096.key.pem
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p256.key.pem
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out p384.key.pem
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out p521.key.pem
openssl genpkey -quiet -algorithm ED25519 -out ed25519.key.pem

for t in "${TYPES[@]}"; do
  req -x509 -new -key "$t.key.pem" -CA ca.cert.pem -CAkey ca.key.pem -days 36500 \
    -subj "/O=certvault tests/CN=Alice $t/emailAddress=Alice.$t@Example.org" \
    -addext "subjectAltName=email:alice.$t@example.org,email:a.$t@example.net" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=clientAuth,emailProtection" \
    -addext "authorityKeyIdentifier=keyid" \
    -out "$t.cert.pem"
done

# --- openssl-made PKCS#12 files ---------------------------------------------------------------
export_p12() { openssl pkcs12 -export "$@"; }

for t in "${TYPES[@]}"; do
  # (a) OpenSSL 3 default: PBES2 AES-256-CBC with PBKDF2-HMAC-SHA256, SHA-256 MAC, 2048 iterations.
  export_p12 -in "$t.cert.pem" -inkey "$t.key.pem" -name "alice $t" -passout "pass:$PW" -out "$t.p12"
  # (b) legacy: RC2-40 certificates, 3DES key, SHA-1 MAC.
  export_p12 -legacy -in "$t.cert.pem" -inkey "$t.key.pem" -name "alice $t" \
    -passout "pass:$PW" -out "$t-legacy.p12"
done

# (c) chains
export_p12 -in rsa2048.cert.pem -inkey rsa2048.key.pem -certfile ca.cert.pem -name "alice rsa2048" \
  -caname "Test CA" -passout "pass:$PW" -out rsa2048-chain.p12
export_p12 -legacy -in p256.cert.pem -inkey p256.key.pem -certfile ca.cert.pem \
  -passout "pass:$PW" -out p256-chain-legacy.p12

# (d) non-ASCII and empty passwords
export_p12 -in p256.cert.pem -inkey p256.key.pem -passout "pass:$PW_NONASCII" -out p256-nonascii.p12
export_p12 -legacy -in rsa2048.cert.pem -inkey rsa2048.key.pem -passout "pass:$PW_NONASCII" \
  -out rsa2048-nonascii-legacy.p12
export_p12 -in p256.cert.pem -inkey p256.key.pem -passout "pass:" -out p256-emptypass.p12
export_p12 -legacy -in p256.cert.pem -inkey p256.key.pem -passout "pass:" \
  -out p256-emptypass-legacy.p12

# (f) certificates only, key only
export_p12 -nokeys -in p256.cert.pem -certfile ca.cert.pem -passout "pass:$PW" -out certs-only.p12
export_p12 -nocerts -inkey p256.key.pem -passout "pass:$PW" -out key-only.p12

# (h) iteration and MAC variants
export_p12 -in p256.cert.pem -inkey p256.key.pem -iter 1 -passout "pass:$PW" -out p256-iter1.p12
export_p12 -in p256.cert.pem -inkey p256.key.pem -noiter -nomaciter -passout "pass:$PW" \
  -out p256-noiter.p12
export_p12 -in p256.cert.pem -inkey p256.key.pem -nomac -passout "pass:$PW" -out p256-nomac.p12
export_p12 -legacy -in p256.cert.pem -inkey p256.key.pem -nomac -passout "pass:$PW" \
  -out p256-nomac-legacy.p12

# Cipher and MAC variants
export_p12 -in p384.cert.pem -inkey p384.key.pem -keypbe AES-128-CBC -certpbe AES-192-CBC \
  -macalg sha512 -passout "pass:$PW" -out p384-aes128-aes192-sha512.p12
export_p12 -in rsa2048.cert.pem -inkey rsa2048.key.pem -keypbe DES-EDE3-CBC -certpbe DES-EDE3-CBC \
  -macalg sha384 -passout "pass:$PW" -out rsa2048-pbes2-3des-sha384.p12
# RC2 and two-key 3DES live in OpenSSL 3's legacy provider.
export_p12 -provider legacy -provider default -in p256.cert.pem -inkey p256.key.pem \
  -keypbe PBE-SHA1-RC2-128 -certpbe PBE-SHA1-RC2-128 \
  -macalg sha1 -passout "pass:$PW" -out p256-rc2-128.p12
export_p12 -provider legacy -provider default -in p256.cert.pem -inkey p256.key.pem \
  -keypbe PBE-SHA1-RC2-40 -certpbe PBE-SHA1-2DES \
  -macalg sha1 -passout "pass:$PW" -out p256-rc2-40-2des.p12
export_p12 -in ed25519.cert.pem -inkey ed25519.key.pem -keypbe NONE -certpbe NONE \
  -passout "pass:$PW" -out ed25519-noenc.p12

# Pieces for the Python-made files (not kept)
export_p12 -nomac -in rsa2048.cert.pem -inkey rsa2048.key.pem -name "alice rsa2048" \
  -passout "pass:$PW" -out "$work/rsa2048-nomac.p12"
export_p12 -nomac -in p384.cert.pem -inkey p384.key.pem -name "alice p384" \
  -passout "pass:$PW" -out "$work/p384-nomac.p12"
export_p12 -nomac -nocerts -inkey rsa2048.key.pem -passout "pass:$PW" -out "$work/rsa2048-keyonly.p12"
export_p12 -nomac -nokeys -in p256.cert.pem -passout "pass:$PW" -out "$work/p256-certonly.p12"
for prf in hmacWithSHA1:aes-128-cbc hmacWithSHA384:aes-192-cbc hmacWithSHA512:des-ede3-cbc; do
  openssl pkcs8 -topk8 -in p256.key.pem -outform DER -v2 "${prf#*:}" -v2prf "${prf%%:*}" \
    -iter 2048 -passout "pass:$PW" -out "$work/p256-${prf%%:*}.der"
done

# --- Python-made PKCS#12 files ------------------------------------------------------------------
"$PYTHON" - "$work" "$PW" <<'PYEOF'
"""Python-made vectors: assembled from openssl-made pieces, or patched. See p12/README.md."""

import hashlib
import hmac
import os
import sys

from asn1crypto import algos, cms, core, keys, pkcs12
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

work, pw = sys.argv[1], sys.argv[2]
HUGE = 100_000_000


def load(path):
    with open(path, "rb") as f:
        return pkcs12.Pfx.load(f.read())


def safe_contents(ci):
    return pkcs12.SafeContents.load(ci["content"].native)


def data_ci(contents):
    return cms.ContentInfo({"content_type": "data", "content": contents.dump(force=True)})


def pfx(content_infos, mac_data=None):
    auth = pkcs12.AuthenticatedSafe([cms.ContentInfo.load(ci.dump()) for ci in content_infos])
    value = {"version": "v3", "auth_safe": data_ci(auth)}
    if mac_data is not None:
        value["mac_data"] = pkcs12.MacData.load(mac_data.dump())
    return pkcs12.Pfx(value)


def write(name, p):
    data = p.dump(force=True)
    pkcs12.Pfx.load(data).native  # parses back completely
    with open(name, "wb") as f:
        f.write(data)


def shrouded_bag_index(contents):
    return next(i for i, b in enumerate(contents) if b["bag_id"].native == "pkcs8_shrouded_key_bag")


def pbes2_encrypted_data(plain):
    """EncryptedData with PBES2 (PBKDF2-HMAC-SHA256, 2048 rounds, AES-256-CBC)."""
    salt, iv = os.urandom(16), os.urandom(16)
    key = hashlib.pbkdf2_hmac("sha256", pw.encode(), salt, 2048, 32)
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(padder.update(plain) + padder.finalize()) + enc.finalize()
    alg = algos.EncryptionAlgorithm({
        "algorithm": "pbes2",
        "parameters": {
            "key_derivation_func": {"algorithm": "pbkdf2", "parameters": {
                "salt": core.OctetString(salt), "iteration_count": 2048,
                "prf": {"algorithm": "sha256", "parameters": core.Null()}}},
            "encryption_scheme": {"algorithm": "aes256_cbc", "parameters": iv},
        },
    })
    return cms.ContentInfo({"content_type": "encrypted_data", "content": {
        "version": "v0",
        "encrypted_content_info": {"content_type": "data", "content_encryption_algorithm": alg,
                                   "encrypted_content": ct}}})


# (e) two key+certificate pairs: two openssl -nomac exports concatenated, no MAC.
a, b = load(f"{work}/rsa2048-nomac.p12"), load(f"{work}/p384-nomac.p12")
write("two-pairs.p12", pfx(list(a.authenticated_safe) + list(b.authenticated_safe)))

# (f) key A (rsa2048) with certificate B (p256) only, no MAC.
k, c = load(f"{work}/rsa2048-keyonly.p12"), load(f"{work}/p256-certonly.p12")
write("mismatch.p12", pfx(list(k.authenticated_safe) + list(c.authenticated_safe)))

# Three encrypted PKCS#8 blobs of the p256 key made by `openssl pkcs8 -v2prf ...` as shrouded
# key bags next to the p256 certificate, no MAC.
bags = []
for prf in ("hmacWithSHA1", "hmacWithSHA384", "hmacWithSHA512"):
    with open(f"{work}/p256-{prf}.der", "rb") as f:
        epki = keys.EncryptedPrivateKeyInfo.load(f.read())
    bags.append(pkcs12.SafeBag({"bag_id": "pkcs8_shrouded_key_bag", "bag_value": epki}))
cert_cis = list(c.authenticated_safe)
write("p256-pbes2-prfs.p12", pfx([data_ci(pkcs12.SafeContents(bags))] + cert_cis))

# PBMAC1 (RFC 9579): the MAC of p256.p12 replaced by PBMAC1 with PBKDF2-HMAC-SHA256 (UTF-8
# password, 2048 rounds, 32-byte key) and HMAC-SHA256; macSalt/iterations unused per the RFC.
m = load("p256.p12")
auth = m["auth_safe"]["content"].native
salt = os.urandom(16)
mac_key = hashlib.pbkdf2_hmac("sha256", pw.encode(), salt, 2048, 32)
params = algos.Pbmac1Params({
    "key_derivation_func": {"algorithm": "pbkdf2", "parameters": {
        "salt": core.OctetString(salt), "iteration_count": 2048, "key_length": 32,
        "prf": {"algorithm": "sha256", "parameters": core.Null()}}},
    "message_auth_scheme": {"algorithm": "sha256", "parameters": core.Null()},
})
mac = pkcs12.MacData({
    "mac": {"digest_algorithm": {"algorithm": "1.2.840.113549.1.5.14", "parameters": params},
            "digest": hmac.new(mac_key, auth, "sha256").digest()},
    "mac_salt": b"NOT USED",
    "iterations": 1,
})
write("pbmac1.p12", pkcs12.Pfx({"version": "v3", "auth_safe": m["auth_safe"], "mac_data": mac}))

# (g) 100,000,000 declared iterations, patched into openssl-made files.
m = load("p256.p12")
old = m["mac_data"]
write("iter-mac-100m.p12", pkcs12.Pfx({"version": "v3", "auth_safe": m["auth_safe"], "mac_data": {
    "mac": old["mac"], "mac_salt": old["mac_salt"], "iterations": HUGE}}))

# The MAC is kept (now wrong): the counts must be refused before the MAC is even computed.
n = load("p256.p12")
cis = list(n.authenticated_safe)
enc_i = next(i for i, ci in enumerate(cis) if ci["content_type"].native == "encrypted_data")
enc = cms.ContentInfo.load(cis[enc_i].dump())
kdf = enc["content"]["encrypted_content_info"]["content_encryption_algorithm"]["parameters"][
    "key_derivation_func"]["parameters"]
kdf["iteration_count"] = HUGE
patched = list(cis)
patched[enc_i] = cms.ContentInfo.load(enc.dump(force=True))
write("iter-certs-100m.p12", pfx(patched, n["mac_data"]))

key_i = next(i for i, ci in enumerate(cis) if ci["content_type"].native == "data")
sc = safe_contents(cis[key_i])
j = shrouded_bag_index(sc)
sc[j]["bag_value"]["encryption_algorithm"]["parameters"]["key_derivation_func"]["parameters"][
    "iteration_count"] = HUGE
hostile_bags = pkcs12.SafeContents.load(sc.dump(force=True))
patched = list(cis)
patched[key_i] = data_ci(hostile_bags)
write("iter-key-100m.p12", pfx(patched, n["mac_data"]))

# The same hostile key bag, hidden inside an EncryptedData (2048 rounds) so that its count is only
# visible after decrypting; no MAC.
write("iter-nested-100m.p12", pfx([cis[enc_i], pbes2_encrypted_data(hostile_bags.dump())]))

lp = load("p256-legacy.p12")
lg = list(lp.authenticated_safe)
key_i = next(i for i, ci in enumerate(lg) if ci["content_type"].native == "data")
sc = safe_contents(lg[key_i])
j = shrouded_bag_index(sc)
sc[j]["bag_value"]["encryption_algorithm"]["parameters"]["iterations"] = HUGE
lg[key_i] = data_ci(pkcs12.SafeContents.load(sc.dump(force=True)))
write("iter-legacy-key-100m.p12", pfx(lg, lp["mac_data"]))

for name in ("mac", "certs", "key", "nested", "legacy-key"):
    with open(f"iter-{name}-100m.p12", "rb") as f:
        blob = f.read()
    # INTEGER 100,000,000 as DER; for iter-nested it is encrypted, so check the plaintext instead.
    assert name == "nested" or b"\x02\x04\x05\xf5\xe1\x00" in blob, name
assert b"\x02\x04\x05\xf5\xe1\x00" in hostile_bags.dump()
PYEOF

# --- checks: openssl reads what it should -------------------------------------------------------
for f in *.p12; do
  case "$f" in
    iter-*) continue ;;  # reading these would run a 100,000,000-round KDF
    *nonascii*) pw="$PW_NONASCII" ;;
    *emptypass*) pw="" ;;
    *) pw="$PW" ;;
  esac
  case "$f" in
    pbmac1.p12) macopt=(-nomacver) ;;  # OpenSSL 3.0 predates PBMAC1
    *) macopt=() ;;
  esac
  openssl pkcs12 -in "$f" -passin "pass:$pw" -noout -provider legacy -provider default \
    "${macopt[@]}" || { echo "openssl cannot read $f" >&2; exit 1; }
done
echo "vectors written to $out ($(du -sk "$out" | cut -f1) KB)"
