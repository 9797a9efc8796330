"""The tools people open PKCS#12 files with, driven as they are used: OpenSSL 3, NSS (Firefox,
Thunderbird), Java keytool, GnuTLS certtool and pyca. Each opener returns what the tool found in
the file (keys and certificates, read back from the tool's own output or store) or raises
ToolRefused with the tool's last words. Passwords reach the tools through files, never argv."""

from __future__ import annotations

import base64
import re
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asn1crypto import keys as asn1_keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

TOOLS = ("openssl", "pk12util", "certutil", "keytool", "java", "certtool")
# JVM start-up dominates keytool's cost; these flags halve it and change nothing it does.
KEYTOOL = ["keytool", "-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC"]
STORE_PASSWORD = "interop-store-pass-1234"  # noqa: S105 - for the stores the tools write
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.S)


class ToolRefused(Exception):
    """The tool could not open the file: its first error line, and everything it said."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output or message


@dataclass
class Opened:
    keys: list[Any]
    certs: list[x509.Certificate]
    key_ids: list[bytes] = field(default_factory=list)  # a tool that shows only the key's id


def run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise ToolRefused(first_error(done), done.stderr + done.stdout)
    return done


def first_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|fail|incorrect|invalid", line, re.I)]
    return f"exit {done.returncode}: {(errors or lines or [''])[0]}"


def password_file(folder: Path, name: str, password: str) -> Path:
    """A one-line password file, as the tools read them (the first line, as bytes)."""
    path = folder / name
    path.write_bytes(password.encode("utf-8") + b"\n")
    path.chmod(0o600)
    return path


def key_identity(key: Any) -> tuple[Any, ...]:
    """What makes two private keys the same key, whatever encoding each tool wrote."""
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.private_numbers()  # the primes: tools may store another (equivalent) d
        return ("rsa", n.public_numbers.n, frozenset((n.p, n.q)))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ("ec", key.curve.name, key.private_numbers().private_value)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ("ed25519", key.private_bytes_raw())
    raise TypeError(type(key).__name__)


def _pem_parts(text: str) -> tuple[list[Any], list[x509.Certificate]]:
    keys, certs = [], []
    for match in _PEM_BLOCK.finditer(text):
        block = match.group(0).encode()
        if match.group(1) == "CERTIFICATE":
            certs.append(x509.load_pem_x509_certificate(block))
        elif match.group(1) != "ENCRYPTED PRIVATE KEY":
            keys.append(serialization.load_pem_private_key(block, None))
    return keys, certs


# --- the tools -------------------------------------------------------------------------------


def openssl(p12: Path, pw: Path, work: Path, *, legacy: bool = False) -> Opened:
    args = ["openssl", "pkcs12", "-in", str(p12), "-nodes", "-passin", f"file:{pw}"]
    done = run(*args, *(["-legacy"] if legacy else []))
    return Opened(*_pem_parts(done.stdout))


def openssl_legacy(p12: Path, pw: Path, work: Path) -> Opened:
    return openssl(p12, pw, work, legacy=True)


def nss(p12: Path, pw: Path, work: Path) -> Opened:
    """Import into a fresh NSS database, as Firefox and Thunderbird do, then list what NSS
    holds: the key's id (NSS names a key by the SHA-1 of its public value) and the
    certificates."""
    db = f"sql:{work / 'nssdb'}"
    (work / "nssdb").mkdir()
    run("certutil", "-N", "-d", db, "--empty-password")
    run("pk12util", "-i", str(p12), "-d", db, "-w", str(pw))
    key_ids = re.findall(
        r"^<\s*\d+>\s+\S+\s+([0-9a-f]{40})\s", run("certutil", "-K", "-d", db).stdout, re.M
    )
    listed = run("certutil", "-L", "-d", db).stdout.splitlines()
    # The nickname column is 61 characters wide, the trust flags follow.
    nicknames = [line[:61].strip() for line in listed[4:] if line.strip()]
    certs = [
        x509.load_pem_x509_certificate(
            run("certutil", "-L", "-a", "-n", name, "-d", db).stdout.encode()
        )
        for name in nicknames
    ]
    return Opened([], certs, key_ids=[bytes.fromhex(i) for i in key_ids])


def nss_key_id(key: Any) -> bytes:
    """The id NSS gives a key: SHA-1 of the RSA modulus or of the EC point."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        n = public.public_numbers().n
        value = n.to_bytes((n.bit_length() + 7) // 8, "big")
    elif isinstance(public, ec.EllipticCurvePublicKey):
        value = public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    else:
        value = public.public_bytes_raw()
    digest = hashes.Hash(hashes.SHA1())  # noqa: S303 - NSS's key id, not a security check
    digest.update(value)
    return digest.finalize()


def keytool_list(p12: Path, pw: Path, work: Path) -> Opened:
    """keytool -list: the entry must be a private key entry with its certificate chain."""
    done = run(*KEYTOOL, "-list", "-rfc", "-keystore", str(p12), "-storetype", "PKCS12",
               "-storepass:file", str(pw))  # fmt: skip
    if "Entry type: PrivateKeyEntry" not in done.stdout:
        raise ToolRefused("keytool -list shows no private key entry")
    _, certs = _pem_parts(done.stdout)
    return Opened([], certs)  # -list shows the chain; the key itself stays in the store


def keytool_import(p12: Path, pw: Path, work: Path) -> Opened:
    """keytool -importkeystore into a new PKCS12 store, read back."""
    dest, dest_pw = work / "dest.p12", password_file(work, "dest.pw", STORE_PASSWORD)
    run(*KEYTOOL, "-importkeystore", "-noprompt", "-srckeystore", str(p12),
        "-srcstoretype", "PKCS12", "-srcstorepass:file", str(pw), "-destkeystore", str(dest),
        "-deststoretype", "PKCS12", "-deststorepass:file", str(dest_pw))  # fmt: skip
    return pyca(dest, dest_pw, work)


def certtool(p12: Path, pw: Path, work: Path) -> Opened:
    """certtool --p12-info, then the key it shows decrypted with certtool -k --pkcs8."""
    password = pw.read_bytes().decode("utf-8").removesuffix("\n")
    if '"' in password or "\\" in password:
        raise ValueError("this password needs escaping in a certtool template")
    template = work / "certtool.tmpl"
    template.write_bytes(f'password = "{password}"\n'.encode())
    template.chmod(0o600)
    info = run("certtool", "--p12-info", "--inder", "--infile", str(p12), "--template",
               str(template), "--no-text")  # fmt: skip
    keys, certs = _pem_parts(info.stdout)
    encrypted = [m.group(0) for m in _PEM_BLOCK.finditer(info.stdout)
                 if m.group(1) == "ENCRYPTED PRIVATE KEY"]  # fmt: skip
    for number, blob in enumerate(encrypted):
        p8 = work / f"key{number}.p8"
        p8.write_text(blob)
        plain = run("certtool", "-k", "--pkcs8", "--infile", str(p8), "--template",
                    str(template), "--no-text")  # fmt: skip
        keys.append(_certtool_key(plain.stdout, certs))
    return Opened(keys, certs)


def _certtool_key(text: str, certs: list[x509.Certificate]) -> Any:
    """The key certtool printed. An EC key comes as SEC1 without its curve (the PKCS#8 wrapper
    named it): the curve is the one of the certificate whose public point it carries."""
    [match] = _PEM_BLOCK.finditer(text)
    if match.group(1) != "EC PRIVATE KEY":
        return serialization.load_pem_private_key(match.group(0).encode(), None)
    sec1 = asn1_keys.ECPrivateKey.load(base64.b64decode("".join(match.group(0).splitlines()[1:-1])))
    point = sec1["public_key"].native
    for cert in certs:
        public = cert.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey) and point == public.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        ):
            return ec.derive_private_key(sec1["private_key"].native, public.curve)
    raise ToolRefused("certtool printed an EC key of no certificate in the file")


def pyca(p12: Path, pw: Path, work: Path) -> Opened:
    password = pw.read_bytes().removesuffix(b"\n")
    with warnings.catch_warnings():
        # NSS writes BER; pyca warns that it may refuse BER some day, and reads it today.
        warnings.filterwarnings("ignore", "PKCS#12 bundle could not be parsed as DER")
        try:
            loaded = pkcs12.load_pkcs12(p12.read_bytes(), password)
        except ValueError as exc:
            raise ToolRefused(str(exc)) from None
    if loaded.key is None or loaded.cert is None:
        raise ToolRefused("no key and certificate in the file")
    certs = [loaded.cert.certificate, *(c.certificate for c in loaded.additional_certs)]
    return Opened([loaded.key], certs)


Opener = Callable[[Path, Path, Path], Opened]
