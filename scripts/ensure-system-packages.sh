#!/usr/bin/env bash
# Installs the Debian packages the tests drive (real tools, not stand-ins) when they are missing.
set -euo pipefail
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v psql >/dev/null || need+=(postgresql-client)
# The fault drills (tests/faults) start private PostgreSQL clusters with initdb/pg_ctl, and in
# their long form make a loop-mounted ext4 filesystem.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v runuser >/dev/null && command -v losetup >/dev/null || need+=(util-linux)
command -v certtool >/dev/null || need+=(gnutls-bin)
# Backup and restore of PostgreSQL drive pg_dump and pg_restore.
command -v pg_dump >/dev/null && command -v pg_restore >/dev/null || need+=(postgresql-client)
# The interop suite (tests/interop) opens files the way Firefox/Thunderbird (NSS) and Java do.
command -v pk12util >/dev/null && command -v certutil >/dev/null || need+=(libnss3-tools)
command -v keytool >/dev/null || need+=(openjdk-17-jre-headless)
# The browser tests drive Debian's Chromium (never a browser Playwright downloads); the page
# text needs a font that has every glyph.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
# The pkcs11 master-key provider is tested against a real SoftHSM2 token.
command -v softhsm2-util >/dev/null && [ -e /usr/lib/softhsm/libsofthsm2.so ] || need+=(softhsm2)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
