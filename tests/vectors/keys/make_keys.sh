#!/usr/bin/env bash
# The pool of pre-generated private keys the tests use instead of generating RSA keys each time
# (RSA-4096 generation takes seconds). Made once with:
set -euo pipefail
cd "$(dirname "$0")"
for n in 1 2 3 4; do openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa2048-$n.pem; done
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072 -out rsa3072.pem
# Public exponent 3: a key no certificate may carry (S/MIME BR 6.1.6), for the key-policy tests.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -pkeyopt rsa_keygen_pubexp:3 -out rsa2048-e3.pem
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:4096 -out rsa4096.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec256.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ec384.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-521 -out ec521.pem
openssl genpkey -algorithm ED25519 -out ed25519.pem
