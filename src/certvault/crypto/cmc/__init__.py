"""AD CS key archival: the CMC requests Windows clients send and the responses they expect.

Bytes in, bytes out, nothing of HTTP or storage. :func:`parse_request` checks a request's shape
and signatures, :func:`check_key_hash` binds its archived key to the signature,
:func:`decrypt_archived_key` recovers the key with the CA exchange key, and
:func:`build_response` / :func:`build_failure` answer it.
"""

from certvault.crypto.cmc.archive import check_key_hash, decrypt_archived_key
from certvault.crypto.cmc.keyblob import private_key_blob, rsa_key_from_private_key_blob
from certvault.crypto.cmc.request import CmcRequest, parse_request
from certvault.crypto.cmc.response import (
    CERTSRV_E_ARCHIVED_KEY_REQUIRED,
    CERTSRV_E_ARCHIVED_KEY_UNEXPECTED,
    CmcResponse,
    ResponseSigner,
    build_failure,
    build_response,
    parse_response,
)
from certvault.errors import ArchivedKeyUndecryptable, CmcInvalid

__all__ = [
    "CERTSRV_E_ARCHIVED_KEY_REQUIRED",
    "CERTSRV_E_ARCHIVED_KEY_UNEXPECTED",
    "ArchivedKeyUndecryptable",
    "CmcInvalid",
    "CmcRequest",
    "CmcResponse",
    "ResponseSigner",
    "build_failure",
    "build_response",
    "check_key_hash",
    "decrypt_archived_key",
    "parse_request",
    "parse_response",
    "private_key_blob",
    "rsa_key_from_private_key_blob",
]
