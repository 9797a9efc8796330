"""The common shape of a PKCS#12 file, read and written straight as DER: the fast path of
pfx.py, and the layout of the files writer.py writes.

What OpenSSL 3, cryptography and most tools write today (PBES2 with PBKDF2-HMAC and AES-CBC, a
MacData MAC, shrouded key bags and X.509 certificate bags with a friendly name and a local key
id) is read here with a few slices per value, about ten times faster than through asn1crypto's
classes. Anything else, however slightly different (BER lengths, legacy PBEs, PBMAC1, other bag
or attribute types, an absent default), gives None: the caller reads the file the general way,
which alone decides what to refuse. So this path never refuses, and what it reads is exactly
what the general path reads (tests compare the two on every vector and on mutated files).

Writing (the functions after :func:`pfx`) lays a file out as cryptography's encrypting writer
does (OpenSSL describes the two alike, but for a longer MAC salt), leaving the sealing to the
caller, whose KDFs let go of the GIL: built here, the DER costs tens of microseconds where
asn1crypto's classes took milliseconds of the GIL.
"""

from __future__ import annotations

from dataclasses import dataclass

from certvault.crypto.ber import ASN1_ERRORS
from certvault.crypto.pkcs12 import pfx as general
from certvault.crypto.pkcs12.pfx import Bag, Encrypted, Mac, Pbe

_Value = tuple[int, int, int]  # tag, where its contents start, where they end


class _Other(Exception):
    """Not the common shape: read the general way."""


def _oid(dotted: str) -> bytes:
    """The DER contents of an OBJECT IDENTIFIER."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([arcs[0] * 40 + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


_DATA = _oid("1.2.840.113549.1.7.1")
_ENCRYPTED_DATA = _oid("1.2.840.113549.1.7.6")
_SHROUDED_KEY_BAG = _oid("1.2.840.113549.1.12.10.1.2")
_CERT_BAG = _oid("1.2.840.113549.1.12.10.1.3")
_X509_CERTIFICATE = _oid("1.2.840.113549.1.9.22.1")
_FRIENDLY_NAME = _oid("1.2.840.113549.1.9.20")
_LOCAL_KEY_ID = _oid("1.2.840.113549.1.9.21")
_PBES2 = _oid("1.2.840.113549.1.5.13")
_PBKDF2 = _oid("1.2.840.113549.1.5.12")
_DIGESTS = {
    _oid("1.3.14.3.2.26"): "sha1",
    _oid("2.16.840.1.101.3.4.2.4"): "sha224",
    _oid("2.16.840.1.101.3.4.2.1"): "sha256",
    _oid("2.16.840.1.101.3.4.2.2"): "sha384",
    _oid("2.16.840.1.101.3.4.2.3"): "sha512",
}
_DIGEST_SIZES = {"sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64}
_HMAC_SHA256 = _oid("1.2.840.113549.2.9")
_HMACS = {
    _oid("1.2.840.113549.2.7"): "sha1",
    _oid("1.2.840.113549.2.8"): "sha224",
    _HMAC_SHA256: "sha256",
    _oid("1.2.840.113549.2.10"): "sha384",
    _oid("1.2.840.113549.2.11"): "sha512",
}
_AES_256_CBC = _oid("2.16.840.1.101.3.4.1.42")
_AES_CBC = {
    _oid("2.16.840.1.101.3.4.1.2"): 16,
    _oid("2.16.840.1.101.3.4.1.22"): 24,
    _AES_256_CBC: 32,
}
_PBE_SHA1_3DES = _oid("1.2.840.113549.1.12.1.3")
_DIGEST_OIDS = {name: oid for oid, name in _DIGESTS.items()}

_SEQUENCE, _SET, _INTEGER, _OCTETS, _OID, _NULL, _BMP = 0x30, 0x31, 0x02, 0x04, 0x06, 0x05, 0x1E
_EXPLICIT_0, _IMPLICIT_0 = 0xA0, 0x80


def _values(data: bytes, start: int, end: int) -> list[_Value]:
    """(tag, contents start, contents end) of each value between ``start`` and ``end``: DER
    only (one-byte tags, definite and shortest lengths), each inside the range."""
    found = []
    pos = start
    while pos < end:
        if pos + 2 > end:
            raise _Other
        tag, first = data[pos], data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise _Other
        pos += 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if not 1 <= count <= 4 or pos + count > end or data[pos] == 0:
                raise _Other
            length = int.from_bytes(data[pos : pos + count], "big")
            if length < 0x80 or (count > 1 and length < 1 << (8 * (count - 1))):
                raise _Other
            pos += count
        if pos + length > end:
            raise _Other
        found.append((tag, pos, pos + length))
        pos += length
    return found


def _one(data: bytes) -> _Value:
    values = _values(data, 0, len(data))
    if len(values) != 1:
        raise _Other
    return values[0]


def _children(data: bytes, value: _Value, *tags: int) -> list[_Value]:
    """The values inside ``value``, which must have exactly the tags given, in order."""
    found = _values(data, value[1], value[2])
    if [t for t, _, _ in found] != list(tags):
        raise _Other
    return found


def _bytes(data: bytes, value: _Value) -> bytes:
    return data[value[1] : value[2]]


def _count(data: bytes, value: _Value) -> int:
    """A positive INTEGER in its shortest form."""
    contents = _bytes(data, value)
    if not contents or contents[0] & 0x80 or (len(contents) > 1 and contents[0] == 0):
        raise _Other
    number = int.from_bytes(contents, "big")
    if number < 1:
        raise _Other
    return number


def _algorithm(data: bytes, value: _Value) -> tuple[bytes, _Value]:
    """An AlgorithmIdentifier with parameters: its OID and the parameters' value."""
    parts = _values(data, value[1], value[2])
    if value[0] != _SEQUENCE or len(parts) != 2 or parts[0][0] != _OID:
        raise _Other
    return _bytes(data, parts[0]), parts[1]


def _pbes2(data: bytes, value: _Value) -> Pbe:
    """PBES2 with PBKDF2 (specified salt, a count, an HMAC PRF with NULL parameters) and AES-CBC."""
    oid, params = _algorithm(data, value)
    if oid != _PBES2 or params[0] != _SEQUENCE:
        raise _Other
    kdf, scheme = _children(data, params, _SEQUENCE, _SEQUENCE)
    kdf_oid, kdf_params = _algorithm(data, kdf)
    if kdf_oid != _PBKDF2 or kdf_params[0] != _SEQUENCE:
        raise _Other
    salt, iterations, prf = _children(data, kdf_params, _OCTETS, _INTEGER, _SEQUENCE)
    prf_oid, prf_params = _children(data, prf, _OID, _NULL)
    if prf_params[1] != prf_params[2] or _bytes(data, prf_oid) not in _HMACS:
        raise _Other
    cipher_oid, iv = _algorithm(data, scheme)
    key_size = _AES_CBC.get(cipher_oid)
    if key_size is None or iv[0] != _OCTETS or iv[2] - iv[1] != 16 or salt[1] == salt[2]:
        raise _Other
    hash_name = _HMACS[_bytes(data, prf_oid)]
    count = _count(data, iterations)
    return Pbe(False, hash_name, _bytes(data, salt), count, "aes", key_size, iv=_bytes(data, iv))


def _attributes(data: bytes, bag: list[_Value]) -> tuple[str | None, bytes | None]:
    """At most one friendly name (BMPString) and one local key id, each with one value."""
    if len(bag) == 2:
        return None, None
    name: str | None = None
    local_key_id: bytes | None = None
    seen: set[bytes] = set()
    for attribute in _values(data, bag[2][1], bag[2][2]):
        if attribute[0] != _SEQUENCE:
            raise _Other
        oid, values = _children(data, attribute, _OID, _SET)
        kind = _bytes(data, oid)
        inside = _values(data, values[1], values[2])
        if len(inside) != 1 or kind in seen:
            raise _Other
        seen.add(kind)
        tag, start, end = inside[0]
        if kind == _FRIENDLY_NAME and tag == _BMP and (end - start) % 2 == 0:
            try:
                text = data[start:end].decode("utf-16-be")
            except UnicodeDecodeError:
                raise _Other from None
            name = general.friendly_name(text)
        elif kind == _LOCAL_KEY_ID and tag == _OCTETS:
            local_key_id = data[start:end]
        else:
            raise _Other
    return name, local_key_id


def _safe_contents(data: bytes) -> list[Bag]:
    bags: list[Bag] = []
    top = _one(data)
    if top[0] != _SEQUENCE:
        raise _Other
    for bag in _values(data, top[1], top[2]):
        if bag[0] != _SEQUENCE:
            raise _Other
        parts = _values(data, bag[1], bag[2])
        tags = [t for t, _, _ in parts]
        if tags not in ([_OID, _EXPLICIT_0], [_OID, _EXPLICIT_0, _SET]):
            raise _Other
        kind = _bytes(data, parts[0])
        [inner] = _children(data, parts[1], _SEQUENCE)
        if kind == _SHROUDED_KEY_BAG:
            algorithm, encrypted = _children(data, inner, _SEQUENCE, _OCTETS)
            pbe = _pbes2(data, algorithm)
            bags.append(Bag(True, _bytes(data, encrypted), pbe, *_attributes(data, parts)))
        elif kind == _CERT_BAG:
            cert_id, value = _children(data, inner, _OID, _EXPLICIT_0)
            if _bytes(data, cert_id) != _X509_CERTIFICATE:
                raise _Other
            [cert] = _children(data, value, _OCTETS)
            der = _bytes(data, cert)
            # asn1crypto reads the certificate's outer SEQUENCE as it loads the bag.
            if _one(der)[0] != _SEQUENCE:
                raise _Other
            bags.append(Bag(False, der, None, *_attributes(data, parts)))
        else:
            raise _Other
    return bags


def safe_contents(data: bytes) -> list[Bag] | None:
    """The bags of a SafeContents in the common shape, else None."""
    try:
        return _safe_contents(data)
    except (_Other, *ASN1_ERRORS):
        return None


def _mac(data: bytes, value: _Value) -> Mac:
    digest_info, salt, iterations = _children(data, value, _SEQUENCE, _OCTETS, _INTEGER)
    algorithm, expected = _children(data, digest_info, _SEQUENCE, _OCTETS)
    parts = _values(data, algorithm[1], algorithm[2])
    if [t for t, _, _ in parts] not in ([_OID], [_OID, _NULL]) or any(
        p[1] != p[2] for p in parts[1:]
    ):
        raise _Other
    hash_name = _DIGESTS.get(_bytes(data, parts[0]))
    if hash_name is None or salt[1] == salt[2]:
        raise _Other
    size = _DIGEST_SIZES[hash_name]
    count = _count(data, iterations)
    return Mac(False, hash_name, hash_name, _bytes(data, salt), count, size, _bytes(data, expected))


def _pfx(data: bytes) -> tuple[bytes, Mac | None, list[list[Bag] | Encrypted]]:
    top = _one(data)
    if top[0] != _SEQUENCE:
        raise _Other
    parts = _values(data, top[1], top[2])
    if [t for t, _, _ in parts] != [_INTEGER, _SEQUENCE, _SEQUENCE][: len(parts)] or len(parts) < 2:
        raise _Other
    if _bytes(data, parts[0]) != b"\x03":
        raise _Other
    content_type, content = _children(data, parts[1], _OID, _EXPLICIT_0)
    [octets] = _children(data, content, _OCTETS)
    if _bytes(data, content_type) != _DATA:
        raise _Other
    auth_octets = _bytes(data, octets)
    mac = _mac(data, parts[2]) if len(parts) == 3 else None
    sections: list[list[Bag] | Encrypted] = []
    outer = _one(auth_octets)
    if outer[0] != _SEQUENCE:
        raise _Other
    for info in _values(auth_octets, outer[1], outer[2]):
        if info[0] != _SEQUENCE:
            raise _Other
        kind, wrapped = _children(auth_octets, info, _OID, _EXPLICIT_0)
        if _bytes(auth_octets, kind) == _DATA:
            [inner] = _children(auth_octets, wrapped, _OCTETS)
            sections.append(_safe_contents(_bytes(auth_octets, inner)))
        elif _bytes(auth_octets, kind) == _ENCRYPTED_DATA:
            [enc_data] = _children(auth_octets, wrapped, _SEQUENCE)
            version, enc_info = _children(auth_octets, enc_data, _INTEGER, _SEQUENCE)
            if _bytes(auth_octets, version) != b"\x00":
                raise _Other
            inner_type, algorithm, ciphertext = _children(
                auth_octets, enc_info, _OID, _SEQUENCE, _IMPLICIT_0
            )
            if _bytes(auth_octets, inner_type) != _DATA or ciphertext[1] == ciphertext[2]:
                raise _Other
            pbe = _pbes2(auth_octets, algorithm)
            sections.append(Encrypted(pbe, _bytes(auth_octets, ciphertext)))
        else:
            raise _Other
    return auth_octets, mac, sections


def pfx(data: bytes) -> tuple[bytes, Mac | None, list[list[Bag] | Encrypted]] | None:
    """The authenticated octets, MAC and sections of a PFX in the common shape, else None."""
    try:
        return _pfx(data)
    except (_Other, *ASN1_ERRORS):
        return None


# Writing.


def _tlv(tag: int, *contents: bytes) -> bytes:
    """One DER value: its tag, its shortest definite length, and its contents."""
    body = b"".join(contents)
    size = len(body)
    if size < 0x80:
        return bytes((tag, size)) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + body


def _integer(number: int) -> bytes:
    """A non-negative INTEGER."""
    return _tlv(_INTEGER, number.to_bytes(number.bit_length() // 8 + 1, "big"))


@dataclass(frozen=True)
class PlainBag:
    """A bag before it is sealed: a key (the DER of its PrivateKeyInfo) or a certificate (the DER
    of its CertBag), and the whole DER of its attributes (a SET), or nothing."""

    is_key: bool
    value: bytes
    attributes: bytes


def key_bag(private_key_info: bytes, attributes: bytes) -> PlainBag:
    return PlainBag(True, private_key_info, attributes)


def certificate_bag(certificate: bytes, attributes: bytes = b"") -> PlainBag:
    """An X.509 certificate's bag (``certificate``: its DER)."""
    value = _tlv(
        _SEQUENCE, _tlv(_OID, _X509_CERTIFICATE), _tlv(_EXPLICIT_0, _tlv(_OCTETS, certificate))
    )
    return PlainBag(False, value, attributes)


def bag_attributes(friendly_name: str | None, local_key_id: bytes) -> bytes:
    """The attributes that pair a key's bag with its certificate's: a friendly name (a
    BMPString, UTF-16 as OpenSSL and cryptography write it) if any, and the local key id."""
    attributes = [
        _tlv(_SEQUENCE, _tlv(_OID, _LOCAL_KEY_ID), _tlv(_SET, _tlv(_OCTETS, local_key_id)))
    ]
    if friendly_name is not None:
        name = _tlv(_BMP, friendly_name.encode("utf-16-be"))
        attributes.append(_tlv(_SEQUENCE, _tlv(_OID, _FRIENDLY_NAME), _tlv(_SET, name)))
    return _tlv(_SET, *sorted(attributes))  # DER orders a SET OF by its members' encodings


def pbes2_aes256(salt: bytes, iterations: int, iv: bytes) -> bytes:
    """The AlgorithmIdentifier of PBES2 with PBKDF2-HMAC-SHA256 (its NULL parameters written)
    and AES-256-CBC, as OpenSSL 3 and cryptography write it."""
    kdf = _tlv(
        _SEQUENCE,
        _tlv(_OID, _PBKDF2),
        _tlv(
            _SEQUENCE,
            _tlv(_OCTETS, salt),
            _integer(iterations),
            _tlv(_SEQUENCE, _tlv(_OID, _HMAC_SHA256), _tlv(_NULL)),
        ),
    )
    scheme = _tlv(_SEQUENCE, _tlv(_OID, _AES_256_CBC), _tlv(_OCTETS, iv))
    return _tlv(_SEQUENCE, _tlv(_OID, _PBES2), _tlv(_SEQUENCE, kdf, scheme))


def pbe_sha1_3des(salt: bytes, iterations: int) -> bytes:
    """The AlgorithmIdentifier of pbeWithSHAAnd3-KeyTripleDES-CBC."""
    parameters = _tlv(_SEQUENCE, _tlv(_OCTETS, salt), _integer(iterations))
    return _tlv(_SEQUENCE, _tlv(_OID, _PBE_SHA1_3DES), parameters)


def shrouded_key_bag(key: PlainBag, algorithm: bytes, ciphertext: bytes) -> bytes:
    """A pkcs8ShroudedKeyBag of ``key``'s PrivateKeyInfo, sealed (``algorithm`` and the
    ``ciphertext``), with the key's attributes."""
    encrypted = _tlv(_SEQUENCE, algorithm, _tlv(_OCTETS, ciphertext))
    return _tlv(
        _SEQUENCE, _tlv(_OID, _SHROUDED_KEY_BAG), _tlv(_EXPLICIT_0, encrypted), key.attributes
    )


def safe_contents_of(certificates: list[PlainBag]) -> bytes:
    """The SafeContents of certificates' bags."""
    return _tlv(
        _SEQUENCE,
        *(
            _tlv(_SEQUENCE, _tlv(_OID, _CERT_BAG), _tlv(_EXPLICIT_0, b.value), b.attributes)
            for b in certificates
        ),
    )


def encrypted_section(algorithm: bytes, ciphertext: bytes) -> bytes:
    """A ContentInfo of EncryptedData: a SafeContents sealed (``algorithm``, ``ciphertext``)."""
    info = _tlv(_SEQUENCE, _tlv(_OID, _DATA), algorithm, _tlv(_IMPLICIT_0, ciphertext))
    return _tlv(
        _SEQUENCE,
        _tlv(_OID, _ENCRYPTED_DATA),
        _tlv(_EXPLICIT_0, _tlv(_SEQUENCE, _integer(0), info)),
    )


def data_section(bags: list[bytes]) -> bytes:
    """A ContentInfo of data: a SafeContents of the bags' DER."""
    return _tlv(
        _SEQUENCE,
        _tlv(_OID, _DATA),
        _tlv(_EXPLICIT_0, _tlv(_OCTETS, _tlv(_SEQUENCE, *bags))),
    )


def authenticated_safe(sections: list[bytes]) -> bytes:
    """The AuthenticatedSafe of the sections: the octets the MAC covers."""
    return _tlv(_SEQUENCE, *sections)


def pfx_with_mac(auth: bytes, hash_name: str, digest: bytes, salt: bytes, iterations: int) -> bytes:
    """The PFX of ``auth`` (an AuthenticatedSafe) with a MacData: HMAC ``digest`` under the
    hash named ``hash_name`` (sha1 or sha256, its NULL parameters written), ``salt`` and
    ``iterations`` of the PKCS#12 KDF."""
    algorithm = _tlv(_SEQUENCE, _tlv(_OID, _DIGEST_OIDS[hash_name]), _tlv(_NULL))
    mac = _tlv(
        _SEQUENCE,
        _tlv(_SEQUENCE, algorithm, _tlv(_OCTETS, digest)),
        _tlv(_OCTETS, salt),
        _integer(iterations) if iterations != 1 else b"",  # DER leaves out the DEFAULT 1
    )
    content = _tlv(_SEQUENCE, _tlv(_OID, _DATA), _tlv(_EXPLICIT_0, _tlv(_OCTETS, auth)))
    return _tlv(_SEQUENCE, _integer(3), content, mac)
