"""The archived key of a CMC request: its hash checked, then the key itself decrypted.

The envelope is an unauthenticated attribute, so only the signed key hash ties it to the request;
and it is RSA PKCS#1 v1.5 around CBC content, which authenticates nothing. Whoever can tell one
decryption failure from another gets a padding oracle on the CA exchange key: every failure below
therefore ends in the same exception with the same message, raised from one place.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as symmetric_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from certvault.crypto.ber import ASN1_ERRORS
from certvault.crypto.cmc.keyblob import rsa_key_from_private_key_blob
from certvault.crypto.cmc.request import CmcRequest
from certvault.crypto.cmc.signed import digest_of, invalid, names_certificate
from certvault.errors import ArchivedKeyUndecryptable

# Content encryption MS-WCCE clients use: (cipher, key bytes, block bytes).
_CONTENT_CIPHERS = {
    "2.16.840.1.101.3.4.1.42": ("aes", 32, 16),  # id-aes256-CBC
    "1.2.840.113549.3.7": ("3des", 24, 8),  # des-ede3-cbc
}

Recipient = tuple[x509.Certificate, rsa.RSAPrivateKey]


def check_key_hash(request: CmcRequest) -> None:
    """Refuse a request whose signed key hash does not cover its archived key.

    MS-WCCE §3.2.2.6.2.1.2.2 allows the hash in SHA-1 or in the request's own digest algorithm;
    nothing else is computed, so any other hash fails. A request with neither key nor hash has
    nothing to check; one without the other is refused (:class:`CmcInvalid`).
    """
    key, sent = request.encrypted_key, request.encrypted_key_hash
    if key is None and sent is None:
        return
    if key is None or sent is None:
        raise invalid("an archived key and its hash must come together")
    sha1 = digest_of("sha1", key)
    own = digest_of(request.digest_algorithm, key)
    # Both compared in constant time, and both always: which one matched is nobody's business.
    if not (hmac.compare_digest(sent, sha1) | hmac.compare_digest(sent, own)):
        raise invalid("the key hash does not match the archived key")


def decrypt_archived_key(request: CmcRequest, recipients: Sequence[Recipient]) -> rsa.RSAPrivateKey:
    """The archived key, decrypted with one of ``recipients`` (exchange certificate and key,
    current and previous), once it is consistent and is the key of the request's PKCS#10.

    Every failure raises :class:`ArchivedKeyUndecryptable` with its one message.
    """
    try:
        return _decrypt(request, recipients)
    except (ArchivedKeyUndecryptable, UnsupportedAlgorithm, *ASN1_ERRORS):
        pass  # raised below, outside the handler, so that no reason rides along as its context
    raise ArchivedKeyUndecryptable()


def _decrypt(request: CmcRequest, recipients: Sequence[Recipient]) -> rsa.RSAPrivateKey:
    if request.encrypted_key is None:
        raise ValueError("no archived key")
    info = cms.ContentInfo.load(request.encrypted_key, strict=True)
    if info["content_type"].native != "enveloped_data":
        raise ValueError("not EnvelopedData")
    enveloped = info["content"]
    transport, exchange_key = _recipient(enveloped["recipient_infos"], recipients)
    content = enveloped["encrypted_content_info"]
    if content["content_type"].native != "data":
        raise ValueError("content type")
    algorithm = content["content_encryption_algorithm"]
    cipher, key_size, block_size = _CONTENT_CIPHERS[algorithm["algorithm"].dotted]
    iv = bytes(algorithm.encryption_iv)
    ciphertext = bytes(content["encrypted_content"].native)
    if len(iv) != block_size or not ciphertext or len(ciphertext) % block_size:
        raise ValueError("content lengths")
    content_key = _unwrap(transport, exchange_key, key_size)
    key = rsa_key_from_private_key_blob(_cbc_decrypt(cipher, content_key, iv, ciphertext))
    if key.public_key().public_numbers() != _request_numbers(request):
        raise ValueError("not the key of the request")
    return key


def _recipient(
    infos: cms.RecipientInfos, recipients: Sequence[Recipient]
) -> tuple[cms.KeyTransRecipientInfo, rsa.RSAPrivateKey]:
    """The key-transport RecipientInfo addressed to one of our exchange certificates."""
    for info in infos:
        if info.name != "ktri":
            continue
        for certificate, key in recipients:
            if names_certificate(info.chosen["rid"], certificate):
                return info.chosen, key
    raise ValueError("no recipient")


def _unwrap(transport: cms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey, size: int) -> bytes:
    """The content key; on any fault a random one of the right size (RFC 3218 §2.3.2).

    cryptography 50 bundles OpenSSL 3.2 or later, whose PKCS#1 v1.5 decryption does implicit
    rejection: a ciphertext with bad padding decrypts to a synthetic message derived from it and
    the key, not to an error, so the padding check leaves no trace here. The length check below
    covers the synthetic message and anything older OpenSSL versions would still raise.
    """
    if transport["key_encryption_algorithm"]["algorithm"].native != "rsaes_pkcs1v15":
        raise ValueError("key transport")
    try:
        content_key = key.decrypt(bytes(transport["encrypted_key"].native), padding.PKCS1v15())
    except ValueError:
        content_key = b""
    if len(content_key) != size:
        content_key = os.urandom(size)
    return content_key


def _cbc_decrypt(cipher: str, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """CBC decryption and PKCS#7 unpadding; ValueError on bad padding."""
    algorithm = algorithms.AES(key) if cipher == "aes" else TripleDES(key)
    decryptor = Cipher(algorithm, modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = symmetric_padding.PKCS7(len(iv) * 8).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _request_numbers(request: CmcRequest) -> rsa.RSAPublicNumbers:
    public_key = request.csr.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ValueError("not an RSA request")
    return public_key.public_numbers()
