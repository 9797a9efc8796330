"""Key-archival requests built the way a Windows client builds them (MS-WCCE §3.1.1.4.3.6.1).

The client side, written apart from certvault's parser so that the parser is tested on data it
did not make: cryptography for the keys, ciphers and signatures, asn1crypto's CMS classes for
SignedData and EnvelopedData, and plain DER for the CMC structures, which asn1crypto lacks.

A Windows request is CMS SignedData (version 3, signer named by subjectKeyIdentifier, signed
attributes contentType and messageDigest) over a PKIData holding the key hash and a client-info
attribute inside one szOID_CMC_ADD_ATTRIBUTES control (body part 2) and the PKCS#10 as body
part 1; the EnvelopedData with the PRIVATEKEYBLOB rides as an unsigned attribute.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from asn1crypto import cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

PKI_DATA = "1.3.6.1.5.5.7.12.2"
SENDER_NONCE = "1.3.6.1.5.5.7.7.6"
TRANSACTION_ID = "1.3.6.1.5.5.7.7.5"
CMC_ADD_ATTRIBUTES = "1.3.6.1.4.1.311.10.10.1"
ARCHIVED_KEY = "1.3.6.1.4.1.311.21.13"
REQUEST_CLIENT_INFO = "1.3.6.1.4.1.311.21.20"
ENCRYPTED_KEY_HASH = "1.3.6.1.4.1.311.21.21"
REQUEST_PART = 1
# (asn1crypto name, key bytes, cipher) of the content encryption a client may choose.
CONTENT = {
    "aes256": ("aes256_cbc", 32, algorithms.AES),
    "aes128": ("aes128_cbc", 16, algorithms.AES),
    "3des": ("tripledes_3key", 24, TripleDES),
}
HASHES = {"sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512, "md5": hashes.MD5}


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    return tlv(0x31, b"".join(sorted(items)))


def oid(dotted: str) -> bytes:
    return asn1_core.ObjectIdentifier(dotted).dump()


def integer(value: int) -> bytes:
    return asn1_core.Integer(value).dump()


def octets(value: bytes) -> bytes:
    return asn1_core.OctetString(value).dump()


def der(item: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return item.public_bytes(serialization.Encoding.DER)


def digest(name: str, data: bytes) -> bytes:
    hasher = hashes.Hash(HASHES[name]())
    hasher.update(data)
    return hasher.finalize()


def key_identifier(public_key: rsa.RSAPublicKey) -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def build_csr(key: rsa.RSAPrivateKey, email: str) -> x509.CertificateSigningRequest:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, email.split("@")[0]),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, email),
        ]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .sign(key, hashes.SHA256())
    )


def openssl(*args: str | Path, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``openssl``; a failure fails the caller with openssl's own words."""
    proc = subprocess.run(
        ["openssl", *(str(a) for a in args)], input=data, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, f"openssl {args[0]} failed: {proc.stderr.decode()}"
    return proc


def openssl_blob(key: rsa.RSAPrivateKey) -> bytes:
    """``key`` as a PRIVATEKEYBLOB written by ``openssl rsa -outform MSBLOB``, not by certvault."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "key.blob"
        openssl("rsa", "-outform", "MSBLOB", "-out", out, data=pem)
        return out.read_bytes()


def envelope(
    plaintext: bytes,
    exchange_cert: x509.Certificate,
    *,
    content: str = "aes256",
    recipient: str = "issuer_serial",
    pad: bool = True,
    transported_key_size: int | None = None,
) -> bytes:
    """DER ContentInfo(EnvelopedData): ``plaintext`` encrypted to the exchange certificate with
    RSA PKCS#1 v1.5 key transport; ``pad=False`` leaves out the PKCS#7 padding (the plaintext
    must then fill whole blocks); ``transported_key_size`` sends a content key of another length
    than the cipher's to the recipient."""
    name, key_size, cipher = CONTENT[content]
    content_key = os.urandom(key_size)
    block = 8 if content == "3des" else 16
    iv = os.urandom(block)
    if pad:
        padder = symmetric_padding.PKCS7(block * 8).padder()
        plaintext = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(cipher(content_key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    public_key = exchange_cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    if recipient == "ski":
        rid = {"subject_key_identifier": key_identifier(public_key)}
    else:
        rid = {
            "issuer_and_serial_number": {
                "issuer": asn1_x509.Name.load(exchange_cert.issuer.public_bytes()),
                "serial_number": exchange_cert.serial_number,
            }
        }
    transport = {
        "version": "v2" if recipient == "ski" else "v0",
        "rid": rid,
        "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15"},
        "encrypted_key": public_key.encrypt(
            content_key if transported_key_size is None else os.urandom(transported_key_size),
            padding.PKCS1v15(),
        ),
    }
    enveloped = cms.EnvelopedData(
        {
            "version": "v2" if recipient == "ski" else "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=transport)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {
                    "algorithm": name,
                    "parameters": asn1_core.OctetString(iv),
                },
                "encrypted_content": ciphertext,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def build_archival_request(
    key: rsa.RSAPrivateKey,
    exchange_cert: x509.Certificate,
    *,
    content: str = "aes256",
    hash_alg: str | None = "sha1",
    digest_alg: str = "sha256",
    subject_email: str = "alice@example.org",
    archived: bool = True,
    blob: bytes | None = None,
    enveloped: bytes | None = None,
    recipient: str = "issuer_serial",
    hash_placement: str = "add_attributes",
    key_hash: bytes | None = None,
    requests: int = 1,
    signer_key: rsa.RSAPrivateKey | None = None,
    nonce: bytes | None = None,
    transaction_id: int | None = None,
    tamper: Callable[[bytes], bytes] | None = None,
    extra: str | None = None,
) -> bytes:
    """DER CMC Full PKI Request archiving ``key``.

    ``blob`` replaces the PRIVATEKEYBLOB (default: openssl's of ``key``), ``enveloped`` the
    whole EnvelopedData; ``hash_alg`` hashes the envelope (None: no hash) unless ``key_hash``
    gives the value; ``requests`` PKCS#10s (0, 1 or 2); ``signer_key`` signs instead of ``key``;
    ``tamper`` changes the PKIData after it is signed; ``extra`` adds a CRMF request
    (``"crmf"``) or a nested CMC message (``"nested"``) beside the PKCS#10.
    """
    if enveloped is None and archived:
        plaintext = openssl_blob(key) if blob is None else blob
        enveloped = envelope(plaintext, exchange_cert, content=content, recipient=recipient)
    if key_hash is None and hash_alg is not None and enveloped is not None:
        key_hash = digest(hash_alg, enveloped)
    csr = build_csr(key, subject_email)
    pki_data = _pki_data(csr, key_hash, hash_placement, requests, nonce, transaction_id, extra)
    signing = signer_key or key
    signer = _signer_info(signing, pki_data, digest_alg, enveloped if archived else None)
    econtent = tamper(pki_data) if tamper else pki_data
    signed = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [{"algorithm": digest_alg}],
            "encap_content_info": {"content_type": PKI_DATA, "content": econtent},
            "signer_infos": [signer],
        }
    )
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


def _pki_data(
    csr: x509.CertificateSigningRequest,
    key_hash: bytes | None,
    hash_placement: str,
    requests: int,
    nonce: bytes | None,
    transaction_id: int | None,
    extra: str | None,
) -> bytes:
    controls = []
    if key_hash is not None:
        hash_attribute = seq(oid(ENCRYPTED_KEY_HASH), set_of(octets(key_hash)))
        if hash_placement in ("add_attributes", "both"):
            client_info = seq(
                integer(9),
                tlv(0x0C, b"WS01.example.org"),
                tlv(0x0C, b"EXAMPLE\\alice"),
                tlv(0x0C, b"certreq.exe"),
            )
            info_attribute = seq(oid(REQUEST_CLIENT_INFO), set_of(client_info))
            added = seq(
                integer(0),
                seq(integer(REQUEST_PART)),
                set_of(hash_attribute, info_attribute),
            )
            controls.append(seq(integer(2), oid(CMC_ADD_ATTRIBUTES), set_of(added)))
        if hash_placement in ("tagged", "both"):
            controls.append(seq(integer(5), oid(ENCRYPTED_KEY_HASH), set_of(octets(key_hash))))
    if nonce is not None:
        controls.append(seq(integer(3), oid(SENDER_NONCE), set_of(octets(nonce))))
    if transaction_id is not None:
        controls.append(seq(integer(4), oid(TRANSACTION_ID), set_of(integer(transaction_id))))
    # TaggedRequest tcr: [0] IMPLICIT TaggedCertificationRequest { bodyPartID, PKCS#10 }.
    tagged = [tlv(0xA0, integer(REQUEST_PART + n) + der(csr)) for n in range(requests)]
    nested = []
    if extra == "crmf":  # crm [1] IMPLICIT CertReqMsg, its content not looked into
        tagged.append(tlv(0xA1, seq(integer(7), seq())))
    elif extra == "nested":  # TaggedContentInfo { bodyPartID, ContentInfo }
        content_info = seq(oid("1.2.840.113549.1.7.1"), tlv(0xA0, octets(b"nested")))
        nested.append(seq(integer(7), content_info))
    return seq(seq(*controls), seq(*tagged), seq(*nested), seq())


def _signer_info(
    key: rsa.RSAPrivateKey, econtent: bytes, digest_alg: str, enveloped: bytes | None
) -> dict:
    attributes = cms.CMSAttributes(
        [
            {"type": "content_type", "values": [PKI_DATA]},
            {"type": "message_digest", "values": [digest(digest_alg, econtent)]},
        ]
    )
    signature = key.sign(attributes.dump(), padding.PKCS1v15(), HASHES[digest_alg]())
    signer = {
        "version": "v3",
        "sid": {"subject_key_identifier": key_identifier(key.public_key())},
        "digest_algorithm": {"algorithm": digest_alg},
        "signed_attrs": attributes,
        "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
        "signature": signature,
    }
    if enveloped is not None:
        value = asn1_core.Any.load(enveloped)
        signer["unsigned_attrs"] = [{"type": ARCHIVED_KEY, "values": [value]}]
    return signer


def exchange_certificate(key: rsa.RSAPrivateKey, name: str = "certvault Test CA-Xchg"):
    """A CA exchange certificate for ``key``, as AD CS issues one (EKU szOID_KP_CA_EXCHANGE)."""
    import datetime

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=36500))
        .add_extension(
            x509.KeyUsage(False, False, True, False, False, False, False, False, False), True
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.4.1.311.21.5")]), False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def flipped(data: bytes, offset: int, change: int = 1) -> bytes:
    """``data`` with the byte at ``offset`` XORed with ``change``."""
    return data[:offset] + bytes([data[offset] ^ change]) + data[offset + 1 :]
