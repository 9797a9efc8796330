#!/usr/bin/env bash
# Generates the interop vectors in tests/vectors/interop/: PKCS#12 files made by the tools people
# use (OpenSSL, Java keytool, NSS pk12util, GnuTLS certtool), each with its own key, so that an
# import test can tell exactly which key a file holds. The outputs are committed; the tests read
# them and never regenerate them. Re-running replaces every key, certificate and file (new
# random keys): commit the folder as a whole.
#
# Writes, beside the files:
#   manifest.tsv   one line per file: file, tool, variant, password id, keys (in file order),
#                  the exact command that made it (after the key and certificates below existed)
#   README.md      the same as a table, with the passwords
#   passwords/*.txt  the passwords, one line each (P: ASCII, N: non-ASCII, E: empty)
#   keys/*.key.pem   every key, unencrypted, for known-answer checks
#   ca/              the root and issuing CA (EC P-384) and their keys
#   certs/*.pem      the leaf certificates: issued by the issuing CA, SAN email interop@acme.example
#
# Tools: OpenSSL 3.0 (openssl), NSS (certutil, pk12util), Java (keytool), GnuTLS (certtool).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/interop"
EMAIL="interop@acme.example"
PW_P="interop-vector-pass-1234"
PW_N="Jörg-Überweg-pässwörd-Ωmega-2026"

mkdir -p "$out"
cd "$out"
rm -rf ./*.p12 keys certs ca passwords manifest.tsv README.md
mkdir -p keys certs ca passwords
printf '%s\n' "$PW_P" > passwords/P.txt
printf '%s\n' "$PW_N" > passwords/N.txt
printf '\n' > passwords/E.txt

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '[req]\ndistinguished_name = dn\n[dn]\n' > "$work/req.cnf"
req() { openssl req -config "$work/req.cnf" "$@"; }
# certtool reads the password from a template in batch mode (never from argv).
for id in P N; do printf 'password = "%s"\n' "$(head -n1 "passwords/$id.txt")" > "$work/certtool-$id.tmpl"; done

manifest=()
quoted() { local q; q="$(printf '%q ' "$@")"; echo "${q% }"; }
record() {  # file tool variant password keys command...
  local file="$1" tool="$2" variant="$3" pw="$4" keys="$5"; shift 5
  manifest+=("$file	$tool	$variant	$pw	$keys	$*")
}

# --- CA, keys, certificates ----------------------------------------------------------------------
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ca/root.key.pem
req -x509 -new -key ca/root.key.pem -days 36500 -subj "/O=certvault interop/CN=Interop Root CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" -out ca/root.pem
openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out ca/issuing.key.pem
req -new -key ca/issuing.key.pem -subj "/O=certvault interop/CN=Interop Issuing CA" \
  -out "$work/issuing.csr"
openssl x509 -req -in "$work/issuing.csr" -CA ca/root.pem -CAkey ca/root.key.pem -days 36500 \
  -set_serial 2 -extfile <(printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n') \
  -out ca/issuing.pem 2>/dev/null
cat ca/issuing.pem ca/root.pem > ca/chain.pem

genkey() {  # name type
  case "$2" in
    rsa2048) openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "keys/$1.key.pem" ;;
    p256) openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "keys/$1.key.pem" ;;
    p384) openssl genpkey -quiet -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "keys/$1.key.pem" ;;
    ed25519) openssl genpkey -algorithm ED25519 -out "keys/$1.key.pem" ;;
  esac
  req -new -key "keys/$1.key.pem" -subj "/O=certvault interop/CN=Interop $1" -out "$work/$1.csr"
  openssl x509 -req -in "$work/$1.csr" -CA ca/issuing.pem -CAkey ca/issuing.key.pem -days 36500 \
    -set_serial "0x$(openssl rand -hex 12)" -extfile <(printf 'subjectAltName=email:%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=emailProtection,clientAuth\nauthorityKeyIdentifier=keyid\n' "$EMAIL") \
    -out "certs/$1.pem" 2>/dev/null
}

# An openssl export of key N with the issuing CA, used as the input of keytool and pk12util.
source_p12() {  # name output password-id
  openssl pkcs12 -export -in "certs/$1.pem" -inkey "keys/$1.key.pem" -certfile ca/issuing.pem \
    -name "interop $1" -passout "file:passwords/$3.txt" -out "$2"
}

# --- OpenSSL ---------------------------------------------------------------------------------
openssl_p12() {  # file variant password-id key extra-args...
  local file="$1" variant="$2" pw="$3" key="$4"; shift 4
  local cmd=(openssl pkcs12 -export -in "certs/$key.pem" -inkey "keys/$key.key.pem" "$@"
             -passout "file:passwords/$pw.txt" -out "$file")
  "${cmd[@]}"
  record "$file" openssl "$variant" "$pw" "$key" "$(quoted "${cmd[@]}")"
}
genkey openssl-default rsa2048
openssl_p12 openssl-default.p12 "default" P openssl-default -certfile ca/issuing.pem -name "interop openssl-default"
genkey openssl-legacy p256
openssl_p12 openssl-legacy.p12 "-legacy" P openssl-legacy -legacy -certfile ca/issuing.pem
genkey openssl-descert p256
openssl_p12 openssl-descert.p12 "-descert" P openssl-descert -descert -certfile ca/issuing.pem
genkey openssl-nomac p384
openssl_p12 openssl-nomac.p12 "-nomac" P openssl-nomac -nomac -certfile ca/issuing.pem
genkey openssl-keypbe-none ed25519
openssl_p12 openssl-keypbe-none.p12 "-keypbe NONE -certpbe NONE" P openssl-keypbe-none -keypbe NONE -certpbe NONE -certfile ca/issuing.pem
genkey openssl-chain rsa2048
openssl_p12 openssl-chain.p12 "issuing and root CA in the chain" P openssl-chain -certfile ca/chain.pem -caname "Interop Issuing CA" -caname "Interop Root CA"
genkey openssl-friendly-nonascii p256
openssl_p12 openssl-friendly-nonascii.p12 "non-ASCII friendly name" P openssl-friendly-nonascii -certfile ca/issuing.pem -name "Jörg Müller – Ωmega"
genkey openssl-nonascii-password p256
openssl_p12 openssl-nonascii-password.p12 "non-ASCII password" N openssl-nonascii-password -certfile ca/issuing.pem
genkey openssl-empty-password p256
openssl_p12 openssl-empty-password.p12 "empty password" E openssl-empty-password -certfile ca/issuing.pem
genkey openssl-ed25519 ed25519
openssl_p12 openssl-ed25519.p12 "default" P openssl-ed25519 -certfile ca/issuing.pem

# --- Java keytool (PKCS12 stores written by keytool from openssl-made sources) -------------------
KT=(keytool -J-XX:TieredStopAtLevel=1 -J-XX:+UseSerialGC)
keytool_import() {  # source destination alias [extra java options...]
  local src="$1" dest="$2" alias="$3"; shift 3
  local cmd=("${KT[@]}" "$@" -importkeystore -noprompt -srckeystore "$src" -srcstoretype PKCS12
             -srcstorepass:file passwords/P.txt -srcalias "interop $alias" -destalias "$alias"
             -destkeystore "$dest" -deststoretype PKCS12 -deststorepass:file passwords/P.txt)
  "${cmd[@]}" >/dev/null 2>&1
  quoted "${cmd[@]}" | sed "s#$work/##g"
}
genkey keytool-one rsa2048
source_p12 keytool-one "$work/keytool-one.src.p12" P
record keytool-one.p12 keytool "one entry" P keytool-one \
  "$(keytool_import "$work/keytool-one.src.p12" keytool-one.p12 keytool-one)"
genkey keytool-two-a p256
genkey keytool-two-b ed25519
source_p12 keytool-two-a "$work/keytool-two-a.src.p12" P
source_p12 keytool-two-b "$work/keytool-two-b.src.p12" P
a="$(keytool_import "$work/keytool-two-a.src.p12" keytool-two.p12 keytool-two-a)"
b="$(keytool_import "$work/keytool-two-b.src.p12" keytool-two.p12 keytool-two-b)"
record keytool-two.p12 keytool "two entries" P keytool-two-a,keytool-two-b "$a; $b"
genkey keytool-legacy p384
source_p12 keytool-legacy "$work/keytool-legacy.src.p12" P
record keytool-legacy.p12 keytool "-Dkeystore.pkcs12.legacy (RC2-40, 3DES, SHA-1)" P keytool-legacy \
  "$(keytool_import "$work/keytool-legacy.src.p12" keytool-legacy.p12 keytool-legacy -J-Dkeystore.pkcs12.legacy)"

# --- NSS pk12util (exported from a fresh NSS database, as Firefox and Thunderbird keep keys) ------
nss_p12() {  # file variant password-id key pk12util-export-args...
  local file="$1" variant="$2" pw="$3" key="$4"; shift 4
  local db="$work/nss-$key"
  mkdir -p "$db"
  certutil -N -d "sql:$db" --empty-password
  source_p12 "$key" "$work/$key.src.p12" "$pw"
  pk12util -i "$work/$key.src.p12" -d "sql:$db" -w "passwords/$pw.txt" >/dev/null
  local cmd=(pk12util -o "$file" -n "interop $key" -d "sql:NSSDB" "$@" -w "passwords/$pw.txt")
  "${cmd[@]/sql:NSSDB/sql:$db}" >/dev/null
  record "$file" pk12util "$variant" "$pw" "$key" \
    "certutil -N -d sql:NSSDB --empty-password; pk12util -i SOURCE.p12 -d sql:NSSDB -w passwords/$pw.txt; $(quoted "${cmd[@]}")"
}
genkey pk12util-default rsa2048
nss_p12 pk12util-default.p12 "default" P pk12util-default
genkey pk12util-aes p256
nss_p12 pk12util-aes.p12 "-c AES-256-CBC -C AES-128-CBC -M SHA-512" P pk12util-aes -c AES-256-CBC -C AES-128-CBC -M SHA-512
genkey pk12util-3des-nocertenc p384
nss_p12 pk12util-3des-nocertenc.p12 "-c DES-EDE3-CBC -C NONE" P pk12util-3des-nocertenc -c DES-EDE3-CBC -C NONE
genkey pk12util-nonascii p256
nss_p12 pk12util-nonascii.p12 "non-ASCII password" N pk12util-nonascii

# --- GnuTLS certtool (every cipher `certtool --help` lists for --pkcs-cipher) --------------------
certtool_p12() {  # file variant password-id key certtool-args...
  local file="$1" variant="$2" pw="$3" key="$4"; shift 4
  local cmd=(certtool --to-p12 --load-privkey "keys/$key.key.pem" --load-certificate "certs/$key.pem"
             --load-ca-certificate ca/issuing.pem --p12-name "interop $key" "$@" --outder --outfile "$file")
  "${cmd[@]/TEMPLATE/$work/certtool-$pw.tmpl}" >/dev/null 2>&1
  record "$file" certtool "$variant" "$pw" "$key" "$(quoted "${cmd[@]/TEMPLATE/certtool-$pw.tmpl}")"
}
for cipher in 3des 3des-pkcs12 aes-128 aes-192 aes-256 rc2-40 arcfour; do
  case "$cipher" in aes-128) type=rsa2048 ;; aes-256) type=ed25519 ;; 3des) type=p384 ;; *) type=p256 ;; esac
  genkey "certtool-$cipher" "$type"
  certtool_p12 "certtool-$cipher.p12" "--pkcs-cipher $cipher" P "certtool-$cipher" --pkcs-cipher "$cipher" --template TEMPLATE
done
genkey certtool-nonascii p256
certtool_p12 certtool-nonascii.p12 "non-ASCII password" N certtool-nonascii --template TEMPLATE
genkey certtool-empty-password p256
certtool_p12 certtool-empty-password.p12 "--empty-password" E certtool-empty-password --empty-password
genkey certtool-null-password p256
certtool_p12 certtool-null-password.p12 "--null-password" E certtool-null-password --null-password

# --- manifest and README -----------------------------------------------------------------------
printf '%s\n' "${manifest[@]}" | LC_ALL=C sort > manifest.tsv
{
  echo "# Interop vectors: PKCS#12 files made by other tools"
  echo
  echo "Made by \`../make_interop_vectors.sh\` with $(openssl version | cut -d' ' -f1-2), NSS"
  echo "$(dpkg-query -W -f='${Version}' libnss3 2>/dev/null || echo '?') (pk12util), $(java -version 2>&1 | head -n1 | tr -d '"') (keytool) and"
  echo "GnuTLS $(certtool --version | head -n1 | awk '{print $NF}') (certtool). Inputs for tests/interop/test_import.py, which never"
  echo "regenerates them. Re-running makes new keys for everything; commit the folder as a whole."
  echo
  echo "Passwords (\`passwords/*.txt\`, one line): **P** = \`$PW_P\`, **N** = \`$PW_N\`"
  echo "(non-ASCII, NFC), **E** = empty. Every file holds its own key(s) (\`keys/<key>.key.pem\`, unencrypted,"
  echo "for known-answer checks) with a certificate issued by \`ca/issuing.pem\` for \`$EMAIL\`."
  echo "keytool and pk12util files are written by those tools from an openssl export of the key and"
  echo "its certificate (\`SOURCE.p12\` below; \`NSSDB\` is a fresh NSS database)."
  echo
  echo "| file | tool | variant | password | key(s) | command |"
  echo "|---|---|---|---|---|---|"
  while IFS=$'\t' read -r file tool variant pw keys cmd; do
    echo "| \`$file\` | $tool | $variant | $pw | ${keys//,/, } | \`${cmd//|/\\|}\` |"
  done < manifest.tsv
} > README.md
echo "wrote $(wc -l < manifest.tsv) files to $out"
