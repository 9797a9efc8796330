# In a second terminal, at the top of the clone, while `make run` serves:
source .venv/bin/activate
export CERTVAULT_HOME=${CERTVAULT_HOME:-$PWD/var}   # the home `make run` made
BASE=http://127.0.0.1:${CERTVAULT_PORT:-8080}        # where `make run` serves (its port)
cd "$(mktemp -d)"   # a scratch folder: keys, passwords and shares stay out of the clone

# `make run` made the master key: split it into shares for custodians now (see "Keep the
# master key safe" below).
certvault kek export-shares --threshold 2 --shares 3 --out-dir ./shares

# An account, its first administrator (the password is printed once) and an API token.
certvault account create "Acme Corp" --slug acme --enable-key-vault
certvault admin create it-admin --account acme --email it@acme.example \
    --privilege key_vault_download --privilege persons_manage
TOKEN=$(certvault token create it-admin --account acme)

# A client certificate and its key in a .p12, as people have them today:
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=Alice" -addext "subjectAltName=email:alice@acme.example" \
    -keyout alice.key -out alice.crt
printf 'import-password-1\n' > p12.pass
openssl pkcs12 -export -inkey alice.key -in alice.crt -passout file:p12.pass -out alice.p12

# Escrow it: every file's result, with the id of its certificate.
certvault import --account acme alice.p12 --password-file p12.pass --json | tee import.json
ID=$(sed -n 's/.*"clientCertId": *\([0-9]*\).*/\1/p' import.json)

# Release it again (an operator release needs a reason; the account's administrators are told).
printf 'Tulip-Harbor-Quartz-1\n' > my.pass
certvault export "$ID" --account acme --out alice-recovered.p12 \
    --reason "laptop stolen, ticket 4711" --passphrase-file my.pass
openssl pkcs12 -info -in alice-recovered.p12 -noout -passin file:my.pass
certvault export "$ID" --account acme --out alice-legacy.p12 --reason "old iPhone" \
    --encryption TripleDES-SHA1 --passphrase-file my.pass   # legacy format for old devices
openssl pkcs12 -info -in alice-legacy.p12 -noout -passin file:my.pass -legacy

# The same through the REST API, with a passphrase certvault makes and sends once in a header.
curl -sf -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/certificates?key_vault=true"; echo
curl -sf -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"generate_passphrase": true, "reason": "ticket 4712"}' -D headers.txt \
    -o key.p12 "$BASE/api/v1/certificates/$ID/key"
grep -i '^x-certvault-passphrase:' headers.txt | cut -d' ' -f2 | tr -d '\r' > key.pass
openssl pkcs12 -in key.p12 -nocerts -nodes -passin file:key.pass | openssl pkey -pubout > key.pub
openssl x509 -in alice.crt -noout -pubkey | cmp - key.pub && echo "key.p12 holds Alice's key"

certvault audit verify      # OK: N chains, M events verified
certvault verify            # checks every sealed row, then every escrowed key in memory
echo "Console: $BASE/admin/ (account acme, login it-admin, the password printed above)"
echo "Files of this walk: $PWD"
