"""Why an agent's archival request is refused, and how a Windows client is told: a stable code
for the agent, and the HRESULT (winerror.h) it hands to the client, as AD CS would answer."""

from __future__ import annotations

from certvault.crypto.cmc import CERTSRV_E_ARCHIVED_KEY_REQUIRED, CERTSRV_E_ARCHIVED_KEY_UNEXPECTED
from certvault.errors import (
    ArchivedKeyUndecryptable,
    CertvaultError,
    CmcInvalid,
    InvalidInput,
    NotFound,
)
from certvault.services.vault.archive import KeyVaultDisabled

# HRESULTs a refusal is answered with (winerror.h), for the agent to hand to the Windows client.
E_FAIL = 0x80004005
NTE_BAD_DATA = 0x80090005
CERTSRV_E_KEY_ARCHIVAL_NOT_CONFIGURED = 0x8009400A
CERTSRV_E_BAD_REQUEST_KEY_ARCHIVAL = 0x8009400C
CERTSRV_E_UNSUPPORTED_CERT_TYPE = 0x80094800
CERTSRV_E_KEY_LENGTH = 0x80094811


class UnknownTemplate(NotFound):
    """This agent has no map for that certificate template."""

    code = "unknown_template"


class ArchivedKeyRequired(InvalidInput):
    """The certificate template requires key archival; the request carries no key."""

    code = "archived_key_required"


class ArchivedKeyUnexpected(InvalidInput):
    """The certificate template does not archive keys; the request carries one."""

    code = "archived_key_unexpected"


class RequesterMismatch(InvalidInput):
    """The request names another email address than the requester's."""

    code = "requester_mismatch"


class NoRequesterEmail(InvalidInput):
    """Neither the requester nor the request names an email address to certify."""

    code = "requester_email_required"


_KEY_POLICY = frozenset(
    {
        "key_policy_violation",
        "rsa_modulus_not_allowed",
        "rsa_exponent_not_allowed",
        "ec_curve_not_allowed",
        "key_algorithm_not_allowed",
        "csr_unsupported_key",
        "key_type_not_allowed",
        "unsupported_key",
    }
)
_WINDOWS_STATUS = {
    CmcInvalid.code: NTE_BAD_DATA,
    ArchivedKeyUndecryptable.code: CERTSRV_E_BAD_REQUEST_KEY_ARCHIVAL,
    ArchivedKeyRequired.code: CERTSRV_E_ARCHIVED_KEY_REQUIRED,
    ArchivedKeyUnexpected.code: CERTSRV_E_ARCHIVED_KEY_UNEXPECTED,
    UnknownTemplate.code: CERTSRV_E_UNSUPPORTED_CERT_TYPE,
    KeyVaultDisabled.code: CERTSRV_E_KEY_ARCHIVAL_NOT_CONFIGURED,
}


def windows_status(code: str) -> int:
    """The HRESULT a refusal with ``code`` is answered with."""
    if code in _KEY_POLICY:
        return CERTSRV_E_KEY_LENGTH
    return _WINDOWS_STATUS.get(code, E_FAIL)


class AgentRequestRefused(CertvaultError):
    """A refused archival request: the cause's code, status and message, with the HRESULT and
    the CMC failure response for the Windows client."""

    def __init__(self, cause: CertvaultError, status: int, cmc_response: bytes | None) -> None:
        super().__init__(cause.message)
        self.code = cause.code
        self.status = cause.status
        self.windows_status = status
        self.cmc_response = cmc_response
        self.retry_after = getattr(cause, "retry_after", None)
