"""The structure of a PKCS#12 file, parsed but not yet run: sections, bags, PBE and MAC parameters.

Parsing prices nothing but the bag count; the reader admits each KDF before it runs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from asn1crypto import algos, parser
from asn1crypto import pkcs12 as asn1_pkcs12

from certvault.crypto.ber import ASN1_ERRORS, BerError, check_structure
from certvault.crypto.pkcs12.limits import Budget
from certvault.crypto.pkcs12.pbe import kdf_work
from certvault.crypto.text import safe_text
from certvault.errors import P12Malformed

# The blobs of the files in tests/vectors/p12 (PFX, SafeContents, keys, certificates) nest at
# most 10 deep; 32 leaves room for any real certificate, far below where recursion gives out.
MAX_DEPTH = 32

_HASHES = frozenset({"sha1", "sha224", "sha256", "sha384", "sha512"})
_PBMAC1_OID = "1.2.840.113549.1.5.14"
_MAX_NESTING = 4  # SafeContents bags inside SafeContents bags


@dataclass(frozen=True)
class Pbe:
    """A password-based encryption scheme, parsed but not yet run."""

    pkcs12: bool  # PKCS#12 PBE (BMPString password, RFC 7292 KDF); else PBES2/PBKDF2 (UTF-8)
    hash_name: str
    salt: bytes
    iterations: int
    cipher: str  # "aes", "3des", "rc2", "rc4"
    key_size: int
    rc2_bits: int = 0
    iv: bytes = b""  # PBES2 only; PKCS#12 PBE derives it

    # The PKCS#12 PBE ciphers (3DES, RC2) have 8-byte blocks: that is the IV it derives.
    PKCS12_IV_SIZE = 8

    @property
    def work(self) -> int:
        key = kdf_work(self.hash_name, self.iterations, self.key_size)
        # PKCS#12 PBE runs its KDF a second time for the IV (a stream cipher has none).
        needs_iv = self.pkcs12 and self.cipher != "rc4"
        iv = kdf_work(self.hash_name, self.iterations, self.PKCS12_IV_SIZE) if needs_iv else 0
        return key + iv


@dataclass(frozen=True)
class Mac:
    """The MacData (or RFC 9579 PBMAC1) of a file."""

    pbmac1: bool
    hmac_hash: str
    kdf_hash: str
    salt: bytes
    iterations: int
    key_size: int
    expected: bytes

    @property
    def work(self) -> int:
        return kdf_work(self.kdf_hash, self.iterations, self.key_size)


@dataclass(frozen=True)
class Bag:
    """A key or certificate bag; an encrypted key is not yet decrypted."""

    is_key: bool
    der: bytes  # PKCS#8 PrivateKeyInfo, encrypted PKCS#8 ciphertext, or certificate
    pbe: Pbe | None
    friendly_name: str | None  # as safe_text leaves it
    local_key_id: bytes | None


@dataclass(frozen=True)
class Encrypted:
    """An EncryptedData section, not yet decrypted."""

    pbe: Pbe
    ciphertext: bytes


def malformed(what: str) -> P12Malformed:
    return P12Malformed(f"The file is not a readable PKCS#12 file ({what}).")


def check_shape(der: bytes) -> None:
    """Refuse, before any parser recurses into it, a blob nested too deeply or badly delimited.

    Run on every blob that is parsed on its own: the PFX, the AuthenticatedSafe and each
    SafeContents inside OCTET STRINGs, decrypted content, keys and certificates.
    """
    try:
        check_structure(der, max_depth=MAX_DEPTH)
    except BerError as exc:
        raise malformed(f"ASN.1 {exc}") from None


def _count(value: Any, what: str) -> int:
    n = value.native
    if not isinstance(n, int) or n < 1:
        raise malformed(what)
    return n


def _hash_of(name: Any) -> str:
    if name not in _HASHES:
        raise malformed("unsupported hash")
    return str(name)


_PBES2_CIPHERS = {
    "aes128_cbc": ("aes", 16, 16),
    "aes192_cbc": ("aes", 24, 16),
    "aes256_cbc": ("aes", 32, 16),
    "tripledes_3key": ("3des", 24, 8),
}
_PKCS12_PBES = {  # cipher, key bytes, RC2 effective bits
    "pkcs12_sha1_tripledes_3key": ("3des", 24, 0),
    "pkcs12_sha1_tripledes_2key": ("3des", 16, 0),
    "pkcs12_sha1_rc2_128": ("rc2", 16, 128),
    "pkcs12_sha1_rc2_40": ("rc2", 5, 40),
    # RC4 is a stream cipher: no IV, no padding (GnuTLS still writes it when asked).
    "pkcs12_sha1_rc4_128": ("rc4", 16, 0),
    "pkcs12_sha1_rc4_40": ("rc4", 5, 0),
}


def _pkcs12_kdf_salt(value: Any) -> bytes:
    # With an empty salt and the empty password form, the PKCS#12 KDF has no input at all and
    # libcrypto (OpenSSL alike) cannot run it; no tool writes an empty salt.
    salt = bytes(value)
    if not salt:
        raise malformed("empty salt")
    return salt


def _parse_pbkdf2(kdf: Any) -> tuple[bytes, int, int | None, str]:
    """Salt, iterations, optional key length and PRF hash of a PBKDF2 AlgorithmIdentifier."""
    if kdf["algorithm"].native != "pbkdf2":
        raise malformed("unsupported key derivation")
    params = kdf["parameters"]
    if params["salt"].name != "specified":
        raise malformed("unsupported PBKDF2 salt")
    key_length = params["key_length"].native
    if key_length is not None and not isinstance(key_length, int):
        raise malformed("bad PBKDF2 key length")
    if params["prf"]["parameters"].dump() not in (b"", b"\x05\x00"):  # absent or NULL
        raise malformed("bad PBKDF2 PRF parameters")
    return (
        bytes(params["salt"].chosen),
        _count(params["iteration_count"], "bad iteration count"),
        key_length,
        _hash_of(params["prf"]["algorithm"].native),
    )


def _parse_pbe(alg: Any) -> Pbe:
    name = alg["algorithm"].native
    if name == "pbes2":
        params = alg["parameters"]
        salt, iterations, key_length, prf = _parse_pbkdf2(params["key_derivation_func"])
        scheme = params["encryption_scheme"]
        if scheme["algorithm"].native not in _PBES2_CIPHERS:
            raise malformed("unsupported cipher")
        cipher, key_size, iv_size = _PBES2_CIPHERS[scheme["algorithm"].native]
        iv = bytes(scheme["parameters"])
        if len(iv) != iv_size or key_length not in (None, key_size):
            raise malformed("bad cipher parameters")
        return Pbe(False, prf, salt, iterations, cipher, key_size, iv=iv)
    if name in _PKCS12_PBES:
        cipher, key_size, rc2_bits = _PKCS12_PBES[name]
        params = alg["parameters"]
        iterations = _count(params["iterations"], "bad iteration count")
        salt = _pkcs12_kdf_salt(params["salt"])
        return Pbe(True, "sha1", salt, iterations, cipher, key_size, rc2_bits)
    raise malformed("unsupported encryption")


def _parse_mac(mac_data: Any) -> Mac:
    alg = mac_data["mac"]["digest_algorithm"]
    expected = bytes(mac_data["mac"]["digest"])
    if alg["algorithm"].dotted == _PBMAC1_OID:
        # RFC 9579: PBKDF2 keys an HMAC; macSalt and iterations of MacData are not used.
        params = algos.Pbmac1Params.load(alg["parameters"].dump(), strict=True)
        salt, iterations, key_length, prf = _parse_pbkdf2(params["key_derivation_func"])
        # An unbounded key length would multiply the PBKDF2 work behind the iteration ceiling.
        if key_length is None or not 1 <= key_length <= 64:
            raise malformed("bad PBMAC1 key length")
        mac_hash = _hash_of(params["message_auth_scheme"]["algorithm"].native)
        return Mac(True, mac_hash, prf, salt, iterations, key_length, expected)
    mac_hash = _hash_of(alg["algorithm"].native)
    iterations = _count(mac_data["iterations"], "bad MAC iteration count")
    size = hashlib.new(mac_hash).digest_size
    salt = _pkcs12_kdf_salt(mac_data["mac_salt"])
    return Mac(False, mac_hash, mac_hash, salt, iterations, size, expected)


def _child_tags(contents: bytes) -> list[int]:
    """The first identifier byte of each value in ``contents``."""
    tags: list[int] = []
    while contents:
        tags.append(contents[0])
        contents = contents[parser.peek(contents) :]
    return tags


def _oid_complete(oid: Any) -> bool:
    # asn1crypto decodes an OID whose last byte still says "more follows" as a shorter OID.
    return bool(oid.contents) and oid.contents[-1] < 0x80


_ATTRIBUTE_TAGS = {"friendly_name": b"\x1e", "local_key_id": b"\x04"}  # BMPString, OCTET STRING


def _primitive_fits(value: bytes) -> bool:
    """Whether a universal primitive value has contents its type allows (others: True)."""
    tag = value[0]
    if tag & 0xE0:  # constructed, or not universal
        return True
    contents = parser.parse(value)[4]
    if tag == 0x05:  # NULL
        return not contents
    if tag == 0x01:  # BOOLEAN
        return len(contents) == 1
    if tag in (0x02, 0x0A):  # INTEGER, ENUMERATED
        return bool(contents)
    if tag in (0x06, 0x0D):  # OBJECT IDENTIFIER, RELATIVE-OID
        return bool(contents) and contents[-1] < 0x80
    return True


def _attributes(bag: Any) -> tuple[str | None, bytes | None]:
    # asn1crypto leaves an optional last field empty when its tag is wrong and ignores what was
    # there; OpenSSL refuses such a bag, and so does certvault.
    if _child_tags(bag.contents) not in ([0x06, 0xA0], [0x06, 0xA0, 0x31]):
        raise malformed("bad SafeBag")
    name: str | None = None
    local_key_id: bytes | None = None
    if bag["bag_attributes"].native is None:
        return None, None
    for attribute in bag["bag_attributes"]:
        if not _oid_complete(attribute["type"]):
            raise malformed("bad attribute type")
        kind, values = attribute["type"].native, attribute["values"]
        # asn1crypto reads a value of the wrong type as this one; OpenSSL refuses it.
        if kind in _ATTRIBUTE_TAGS and any(v.dump()[:1] != _ATTRIBUTE_TAGS[kind] for v in values):
            raise malformed("bad attribute value")
        # Values of other attributes are kept unparsed by asn1crypto; OpenSSL checks them.
        if not all(_primitive_fits(v.dump()) for v in values):
            raise malformed("bad attribute value")
        if kind == "friendly_name" and len(values) and name is None:
            name = friendly_name(values[0].native)
        elif kind == "local_key_id" and len(values) and local_key_id is None:
            local_key_id = bytes(values[0])
    return name, local_key_id


def friendly_name(text: str) -> str | None:
    """A bag's friendly name as certvault keeps it (None when it is not safe to show)."""
    return safe_text(text)


def _collect_bags(contents: Any, budget: Budget, out: list[Bag], depth: int = 0) -> None:
    """Append the key and certificate bags of a SafeContents to ``out``; skip others."""
    for bag in contents:
        budget.count_bag()
        if not _oid_complete(bag["bag_id"]):  # else read as another, unknown bag type
            raise malformed("bad bag type")
        kind = bag["bag_id"].native
        value = bag["bag_value"]
        if kind == "safe_contents":
            if depth >= _MAX_NESTING:
                raise malformed("nested too deeply")
            _collect_bags(value, budget, out, depth + 1)
        elif kind == "key_bag":
            out.append(Bag(True, value.untag().dump(), None, *_attributes(bag)))
        elif kind == "pkcs8_shrouded_key_bag":
            pbe = _parse_pbe(value["encryption_algorithm"])
            out.append(Bag(True, bytes(value["encrypted_data"]), pbe, *_attributes(bag)))
        elif kind == "cert_bag" and value["cert_id"].native == "x509":
            out.append(Bag(False, bytes(value["cert_value"]), None, *_attributes(bag)))
        # CRL, secret and SDSI-certificate bags carry nothing certvault keeps.


def parse_safe_contents(der: bytes, budget: Budget) -> list[Bag]:
    check_shape(der)
    bags: list[Bag] = []
    try:
        _collect_bags(asn1_pkcs12.SafeContents.load(der, strict=True), budget, bags)
    except ASN1_ERRORS as exc:
        raise malformed("bad SafeContents") from exc
    return bags


def parse_pfx(data: bytes, budget: Budget) -> tuple[bytes, Mac | None, list[list[Bag] | Encrypted]]:
    """The authenticated octets, the MAC, and the sections in file order (plain ones parsed)."""
    check_shape(data)
    try:
        pfx = asn1_pkcs12.Pfx.load(data, strict=True)
        if pfx["version"].native != "v3":
            raise malformed("unsupported version")
        auth_safe = pfx["auth_safe"]
        if auth_safe["content_type"].native != "data":
            raise malformed("public-key integrity mode not supported")
        auth_octets = bytes(auth_safe["content"])
        mac = None if pfx["mac_data"].native is None else _parse_mac(pfx["mac_data"])
        sections: list[list[Bag] | Encrypted] = []
        check_shape(auth_octets)
        for info in asn1_pkcs12.AuthenticatedSafe.load(auth_octets, strict=True):
            kind = info["content_type"].native
            if kind == "data":
                sections.append(parse_safe_contents(bytes(info["content"]), budget))
            elif kind == "encrypted_data":
                budget.count_bag()
                # asn1crypto lets a wrong tag pass as a missing field here; OpenSSL does not.
                content = info["content"]
                if (
                    _child_tags(content.contents)[:2] != [0x02, 0x30]
                    or not content["version"].contents
                ):
                    raise malformed("bad EncryptedData")
                enc = content["encrypted_content_info"]
                content_type = enc["content_type"]
                if content_type.native != "data" or not _oid_complete(content_type):
                    raise malformed("EncryptedData does not hold data")
                if enc["encrypted_content"].native is None:
                    raise malformed("empty EncryptedData")
                pbe = _parse_pbe(enc["content_encryption_algorithm"])
                sections.append(Encrypted(pbe, bytes(enc["encrypted_content"])))
            elif kind == "enveloped_data":
                raise malformed("public-key privacy mode not supported")
            else:
                raise malformed("unsupported content type")
    except ASN1_ERRORS as exc:
        raise malformed("bad ASN.1") from exc
    return auth_octets, mac, sections
