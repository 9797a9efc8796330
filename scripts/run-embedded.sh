#!/usr/bin/env bash
# `make run`: the embedded default (SQLite + file master key under CERTVAULT_HOME), an `example`
# account with Key Vault on, a first administrator with an API token, then the server.
# The administrator's password and the token are printed on the first run only: they are stored
# hashed and cannot be shown again.
set -euo pipefail
cv=${CERTVAULT_BIN:-.venv/bin/certvault}
port=${CERTVAULT_PORT:-8080}
base="http://127.0.0.1:${port}"
export COLUMNS=400 # rich must not wrap the lines read below

$cv init
first_run=""
if ! $cv account show example >/dev/null 2>&1; then
    first_run=1
    $cv account create Example --slug example --enable-key-vault
    created=$($cv admin create admin --account example --email admin@example.org \
        --privilege key_vault_download --privilege certificates_manage \
        --privilege persons_manage --privilege settings_manage)
    password=$(sed -n 's/^password (shown once): //p' <<<"$created")
    token=$($cv token create admin --account example 2>/dev/null)
fi

cat <<EOF

certvault on ${base}/
  console:            ${base}/admin/   (where ${base}/ leads)
  API:                ${base}/api/v1   (SCM-compatible: ${base}/api)
  API documentation:  ${base}/docs
  health:             ${base}/healthz  (readiness: ${base}/readyz)
  metrics:            ${base}/metrics  (loopback only)
EOF
if [[ -n $first_run ]]; then
    cat <<EOF

First administrator (shown this once; keep it now):
  account:   example
  login:     admin
  password:  ${password}
  API token: ${token}
  try:       curl -H "Authorization: Bearer ${token}" ${base}/api/v1/key-vault
EOF
fi
echo
exec $cv serve --host 127.0.0.1 --port "${port}"
