"""One exception root for certvault.

Every error carries a stable ``code`` (for scripts and the API) and a message that is safe to show:
messages never contain passwords, passphrases, tokens, key bytes or submitted file contents.
"""

from __future__ import annotations


class CertvaultError(Exception):
    """Base of every error certvault raises on purpose."""

    code = "error"
    status = 400

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


class NotFound(CertvaultError):
    """The object does not exist or is not visible to you."""

    code = "not_found"
    status = 404


class Forbidden(CertvaultError):
    """You may see this object but not do this with it."""

    code = "forbidden"
    status = 403


class Conflict(CertvaultError):
    """The request conflicts with what is already stored."""

    code = "conflict"
    status = 409


class InvalidInput(CertvaultError):
    """The input is not acceptable."""

    code = "invalid_input"
    status = 422


class TooLarge(CertvaultError):
    """The input is larger than allowed."""

    code = "too_large"
    status = 413


class ConfigurationError(CertvaultError):
    """certvault is not set up correctly."""

    code = "configuration"
    status = 500


class DatabaseUnavailable(CertvaultError):
    """The database cannot be reached just now; nothing was done. Try again shortly."""

    code = "database_unavailable"
    status = 503
    retry_after = 5


class StorageFull(CertvaultError):
    """The database has no room left; nothing was stored. Try again once space is freed."""

    code = "storage_full"
    status = 507
    retry_after = 60


# --- crypto -------------------------------------------------------------------------------------


class CryptoError(CertvaultError):
    """A cryptographic operation failed."""

    code = "crypto_error"
    status = 422


class P12Error(CryptoError):
    """The PKCS#12 file could not be read."""

    code = "p12_invalid"


class P12Malformed(P12Error):
    """The file is not a readable PKCS#12 file."""

    code = "p12_malformed"


class P12WrongPassword(P12Error):
    """The password does not open this PKCS#12 file."""

    code = "p12_wrong_password"


class P12TooExpensive(P12Error):
    """The PKCS#12 file asks for more key-derivation work than allowed."""

    code = "p12_kdf_too_expensive"


class P12TooManyItems(P12Error):
    """The PKCS#12 file holds more items (bags and sections) than allowed."""

    code = "p12_too_many_items"


class P12TooLarge(P12Error, TooLarge):
    """The PKCS#12 file is larger than allowed."""

    code = "p12_too_large"
    status = 413


class P12NoKey(P12Error):
    """The PKCS#12 file holds no private key."""

    code = "p12_no_key"


class P12NoCertificate(P12Error):
    """The PKCS#12 file holds a private key without its certificate."""

    code = "p12_no_certificate"


class KeyMismatch(CryptoError):
    """The private key does not belong to the certificate."""

    code = "key_mismatch"


class UnsupportedKey(CryptoError):
    """This kind of key is not supported."""

    code = "unsupported_key"


class UnsupportedEncryption(CryptoError):
    """This encryption type is not supported."""

    code = "unsupported_encryption"


class SealBroken(CryptoError):
    """A sealed blob failed authentication: it was altered or belongs elsewhere."""

    code = "seal_broken"
    status = 500


class KeyInconsistent(CryptoError):
    """The private key is damaged: its values do not fit together or fail its certificate."""

    code = "key_inconsistent"


class P12KeyInconsistent(P12Error, KeyInconsistent):
    """A private key in the PKCS#12 file is damaged: its values do not fit together."""

    code = "p12_key_inconsistent"


class P12UnsupportedKey(P12Error, UnsupportedKey):
    """The PKCS#12 file holds a kind of private key certvault does not support."""

    code = "p12_unsupported_key"


class CertificateEmailInvalid(InvalidInput):
    """The certificate names an email address with control characters or white space."""

    code = "certificate_email_invalid"


class CsrInvalid(InvalidInput):
    """The certificate signing request is not acceptable."""

    code = "csr_invalid"


class CsrUnsupportedKey(CsrInvalid, UnsupportedKey):
    """The certificate signing request carries a kind of key certvault does not certify."""

    code = "csr_unsupported_key"


class KeyTypeNotAllowed(UnsupportedKey):
    """The certificate profile does not allow this kind of key."""

    code = "key_type_not_allowed"


class CaInvalid(InvalidInput):
    """The certificate authority cannot be used: not a CA, expired, or its key does not match."""

    code = "ca_invalid"


class CmcInvalid(InvalidInput):
    """The CMC message is not an acceptable AD CS enrollment request or response."""

    code = "cmc_invalid"


class ArchivedKeyUndecryptable(CryptoError):
    """The archived private key in the request could not be recovered."""

    code = "archived_key_invalid"
