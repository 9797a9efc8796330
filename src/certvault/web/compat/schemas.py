"""Bodies of the SCM-compatible API, in the commercial API's camelCase names.

Requests are lenient the way existing scripts need: unknown fields are ignored, every optional
field may be sent as null, and numbers may come as strings. Text with control characters is
refused, as everywhere (web/control_characters.py).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from certvault.crypto.pkcs12.writer import EncryptionType
from certvault.errors import InvalidInput
from certvault.services.directory.persons import VALIDATION_TYPES
from certvault.services.kernel.paging import MAX_LIMIT
from certvault.web.control_characters import MULTI_LINE, CheckedBody
from certvault.web.patterns import BASE64, EmailText, Passphrase, SchemaOnly

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
Responses = dict[int | str, dict[str, Any]]  # OpenAPI responses of an operation

PersonId = Annotated[int, Path(alias="personId", ge=1, le=MAX_ID)]
CertId = Annotated[int, Path(alias="certId", ge=1, le=MAX_ID)]
EmailPath = Annotated[str, Path(max_length=320)]
Size = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size (SCM paging)")]
Position = Annotated[int, Query(ge=0, le=MAX_ID, description="Offset of the first item")]


F = TypeVar("F", bound=Callable[..., Any])


def on_versions(router: APIRouter, method: str, path: str, **options: Any) -> Callable[[F], F]:
    """Register one route function under `/v1` and `/v2` alike: ``{v}`` in ``path`` stands for
    the version (SCM scripts use either; the shapes are the same)."""

    def register(route: F) -> F:
        for version in ("v1", "v2"):
            router.api_route(path.replace("{v}", version), methods=[method], **options)(route)
        return route

    return register


class ScmModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ScmRequest(ScmModel, CheckedBody):
    """Base of every request body: text with control characters is refused."""


class ScmError(BaseModel):
    code: int = Field(description="Minus the HTTP status")
    description: str


SCM_ERRORS: Responses = {
    400: {"model": ScmError, "description": "The request could not be parsed"},
    401: {"model": ScmError, "description": "Missing or invalid credentials"},
    403: {"model": ScmError, "description": "Visible, but not allowed"},
    404: {"model": ScmError, "description": "Not found (or not visible)"},
    422: {"model": ScmError, "description": "Invalid input"},
    429: {
        "model": ScmError,
        "description": "Too many attempts; try again after Retry-After seconds",
        "headers": {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        },
    },
}
CONFLICT: Responses = {409: {"model": ScmError, "description": "Conflicts with what is stored"}}
TOO_LARGE: Responses = {413: {"model": ScmError, "description": "The request body is too large"}}


# --- Key Vault ----------------------------------------------------------------------------------


class CustomField(ScmRequest):
    name: str | None = None
    value: str | None = None


class ImportKeyRequest(ScmRequest):
    """`PKCS12Request`: a base64 PKCS#12 file for one person."""

    p12: Annotated[str, MULTI_LINE, SchemaOnly(pattern=BASE64)] = Field(
        min_length=1, description="The PKCS#12 file, base64 (line breaks allowed)"
    )
    password: str | None = Field(
        default=None, max_length=1024, description="The file's password; null or absent: none"
    )
    custom_fields: list[CustomField] | None = Field(
        default=None, max_length=50, description="Accepted and ignored (certvault has none)"
    )


def decode_p12(value: str) -> bytes:
    """The file behind a base64 ``p12`` field; line breaks and spaces are allowed."""
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("p12 is not valid base64.") from None
    if not data:
        raise InvalidInput("p12 is empty.")
    return data


class ImportEntry(ScmModel):
    alias: str
    client_cert_id: int | None
    md5: str
    sha1: str
    message: str = Field(description='"Imported successfully", "Already exists" or an error text')


class ImportKeyResponse(ScmModel):
    """`ImportResponseV2`."""

    entries: list[ImportEntry]


class KeystoreRequest(ScmRequest):
    """`P12DownloadRequest`."""

    passphrase: Passphrase = Field(
        description="Protects the PKCS#12 file, used exactly as given; the account's minimum "
        "length applies and it must be hard to guess"
    )
    encryption_type: Annotated[str, SchemaOnly(enum=[e.value for e in EncryptionType])] | None = (
        Field(
            default=None,
            description="`AES256-SHA256` (the default) or `TripleDES-SHA1` (old devices only)",
            examples=["AES256-SHA256", "TripleDES-SHA1"],
        )
    )
    reason: Annotated[str | None, MULTI_LINE] = Field(
        default=None,
        max_length=500,
        description="certvault extension: the release reason, for accounts that require one",
    )


class RevokeRequest(ScmRequest):
    reason: Annotated[str | None, MULTI_LINE] = Field(
        default=None,
        max_length=512,
        description="Free text. An RFC 5280 reason name (e.g. `keyCompromise`) is recorded as "
        "that reason; any other text as `unspecified`, and the text is kept in the audit log",
    )


# --- client certificates ------------------------------------------------------------------------


class CertificateDetails(ScmModel):
    issuer: str
    subject: str
    subject_alt_names: str = Field(description="`rfc822Name=<address>`, comma-separated")
    md5_hash: str
    sha1_hash: str


class ScmCertificate(ScmModel):
    id: int
    state: str = Field(description="issued, expired or revoked")
    certificate_details: CertificateDetails
    order_number: int = Field(description="The same as id")
    serial_number: str = Field(description="Hexadecimal, upper case")
    backend_cert_id: str = Field(description="The id, as a string")
    expires: str = Field(description="The expiry date, YYYY-MM-DD (UTC)")
    comments: str


# --- persons and organizations ------------------------------------------------------------------


class PersonRequest(ScmRequest):
    """A person's fields; null or absent leaves a field as it is."""

    email: EmailText | None = Field(default=None, max_length=320)
    first_name: str | None = Field(default=None, max_length=200)
    middle_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    common_name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=64)
    secondary_emails: list[Annotated[EmailText, Field(max_length=320)]] | None = Field(
        default=None, max_length=20
    )
    validation_type: Annotated[str, SchemaOnly(enum=list(VALIDATION_TYPES))] | None = Field(
        default=None, description="STANDARD or HIGH"
    )
    eppn: str | None = Field(default=None, max_length=320)
    upn: str | None = Field(default=None, max_length=320)
    organization_id: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="Absent or null: the default organization"
    )


class PersonCreateRequest(PersonRequest):
    email: EmailText = Field(max_length=320)


class ScmPerson(ScmModel):
    person_id: int
    id: int = Field(description="The same as personId")
    first_name: str
    middle_name: str
    last_name: str
    email: str
    organization_id: int
    validation_type: str
    phone: str
    secondary_emails: list[str]
    common_name: str
    eppn: str
    upn: str


class PersonIdResponse(ScmModel):
    person_id: int


class ScmOrganization(ScmModel):
    id: int
    name: str
    departments: list[ScmOrganization] = Field(
        default_factory=list, description="Always empty: certvault has no departments"
    )
