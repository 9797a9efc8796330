#!/usr/bin/env bash
# `make run`: the embedded default (SQLite + file master key under CERTVAULT_HOME), an `example`
# account with Key Vault on, a first administrator (password shown on the first run only), then
# the server.
set -euo pipefail
cv=.venv/bin/certvault
$cv init
if ! $cv account show example >/dev/null 2>&1; then
    $cv account create Example --slug example --enable-key-vault
    $cv admin create admin --account example --email admin@example.org \
        --privilege key_vault_download --privilege certificates_manage \
        --privilege persons_manage --privilege settings_manage
fi
echo "certvault listening on http://127.0.0.1:${CERTVAULT_PORT}/ (health: /healthz, readiness: /readyz)"
exec $cv serve --host 127.0.0.1 --port "${CERTVAULT_PORT}"
