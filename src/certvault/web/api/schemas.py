"""Response and request bodies of the own API."""

from __future__ import annotations

import typing
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from certvault.services.kernel.paging import MAX_ID, MAX_LIMIT
from certvault.web.control_characters import MULTI_LINE, CheckedBody
from certvault.web.patterns import BASE64, EmailText, Passphrase, SchemaOnly


class Error(BaseModel):
    code: str
    description: str


ERRORS = {
    401: {"model": Error, "description": "Missing or invalid token"},
    403: {"model": Error, "description": "Visible, but not allowed"},
    404: {"model": Error, "description": "Not found (or not visible)"},
    422: {"model": Error, "description": "Invalid input"},
}


class OrganizationOut(BaseModel):
    id: int
    name: str
    is_default: bool


class KeyVaultStatus(BaseModel):
    account: str
    name: str
    key_vault_enabled: bool
    reason_required: bool
    min_passphrase_length: int
    require_trusted_issuer: bool


# --- responses that only some operations give ---------------------------------------------------

Responses = dict[int | str, dict[str, Any]]

CONFLICT: Responses = {409: {"model": Error, "description": "Conflicts with what is stored"}}
TOO_LARGE: Responses = {413: {"model": Error, "description": "The request body is too large"}}
RATE_LIMITED: Responses = {
    429: {
        "model": Error,
        "description": "Too many key downloads; try again after Retry-After seconds",
        "headers": {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}
        },
    }
}


# --- query parameters of every list: keyset paging ---------------------------------------------

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page")]
# Ids are bounded so that no value can overflow the database's integer column.
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
IdFilter = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Cursor = Annotated[
    str | None, Query(max_length=100, description="`next_cursor` of the previous page")
]


# --- request bodies of the own API: unknown fields, nulls, wrong types and control characters --
# --- are refused ------------------------------------------------------------------------------


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def optional(**constraints: Any) -> Any:
    """A field that may be left out but not sent as null (null would be ambiguous in a PATCH)."""
    return Field(default=None, json_schema_extra=_no_default, **constraints)


class StrictBody(CheckedBody):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_number(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON does not tell 2 from 2.0, and neither does JSON Schema's "integer": both are
        # accepted where a number is an integer. 2.5, "2" and true stay refused.
        field = cls.model_fields.get(info.field_name or "")
        if (
            field is not None
            and int in (field.annotation, *typing.get_args(field.annotation))
            and type(value) is float
            and value.is_integer()
            and abs(value) <= MAX_ID
        ):
            return int(value)
        return value


class PersonIn(StrictBody):
    """Fields of a person; every field may be left out of a PATCH."""

    email: EmailText = optional(max_length=320)
    first_name: str = optional(max_length=200)
    middle_name: str = optional(max_length=200)
    last_name: str = optional(max_length=200)
    common_name: str = optional(max_length=200)
    phone: str = optional(max_length=64)
    secondary_emails: list[EmailText] = optional(max_length=20)
    validation_type: Literal["STANDARD", "HIGH"] = optional()
    eppn: str = optional(max_length=320)
    upn: str = optional(max_length=320)
    organization_id: int = optional(ge=1, le=MAX_ID)


class PersonCreate(PersonIn):
    email: EmailText = Field(max_length=320)


class PersonUpdate(PersonIn):
    active: bool = optional(
        description="Whether the person may recover their own keys at the Private Key Recovery "
        "Form (administrators can release them either way)"
    )


class PersonOut(BaseModel):
    id: int
    email: str
    first_name: str
    middle_name: str
    last_name: str
    common_name: str
    phone: str
    secondary_emails: list[str]
    validation_type: str
    eppn: str
    upn: str
    organization_id: int
    active: bool = Field(description="May recover their own keys at the Private Key Recovery Form")
    created_at: datetime


class PersonPage(BaseModel):
    items: list[PersonOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


class CertificateOut(BaseModel):
    id: int
    person_id: int | None
    organization_id: int
    subject: str = Field(
        description="RFC 4514, with attribute names such as emailAddress instead of dotted numbers"
    )
    display_name: str = Field(
        description="The subject's common name, else its email address, else the whole subject"
    )
    issuer: str = Field(description="RFC 4514, as subject")
    serial: str = Field(description="Hexadecimal, lower case")
    sha256: str = Field(description="Of the certificate's DER, hexadecimal")
    sha1: str
    md5: str
    emails: list[str]
    not_before: datetime
    not_after: datetime
    status: Literal["issued", "expired", "revoked"]
    key_in_vault: bool
    source: str
    trusted_issuer: bool


class CertificatePage(BaseModel):
    items: list[CertificateOut]
    next_cursor: str | None


class Count(BaseModel):
    count: int


class KeyUpload(StrictBody):
    p12: Annotated[str, MULTI_LINE, SchemaOnly(pattern=BASE64)] = Field(
        min_length=1, description="The PKCS#12 file, base64 (line breaks allowed)"
    )
    password: str = Field(description="The PKCS#12 file's password (may be empty)")


class ImportedEntry(BaseModel):
    alias: str
    clientCertId: int | None  # the name in the SCM import-key response
    md5: str
    sha1: str
    message: str = Field(description='"Imported successfully", "Already exists" or an error')
    code: str | None = Field(description="The error code of a refused entry; null when stored")


class ImportWarning(BaseModel):
    code: str = Field(description="Stable: chain_certificates_skipped, legacy_password_encoding")
    message: str


class ImportResult(BaseModel):
    entries: list[ImportedEntry]
    warnings: list[ImportWarning] = Field(
        default_factory=list, description="What the file needed that a clean file would not"
    )


class KeyDownload(StrictBody):
    """Exactly one of `passphrase` and `generate_passphrase: true`."""

    # The rule in the schema too, so that clients and schema-driven tests know it.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["passphrase"],
                    "properties": {
                        "passphrase": {"type": "string"},
                        "generate_passphrase": {"const": False},
                    },
                },
                {
                    "required": ["generate_passphrase"],
                    "properties": {
                        "passphrase": {"type": "null"},
                        "generate_passphrase": {"const": True},
                    },
                },
            ]
        }
    )

    passphrase: Passphrase | None = Field(
        default=None,
        description="Protects the PKCS#12 file, used exactly as given (no Unicode "
        "normalisation); the account's minimum length applies and it must be hard to guess "
        "(422 `weak_passphrase` says why not)",
    )
    generate_passphrase: bool = Field(
        default=False,
        description="certvault chooses a passphrase (120 bits) and returns it once, in the "
        "X-Certvault-Passphrase response header",
    )
    encryption_type: Literal["AES256-SHA256", "TripleDES-SHA1"] = Field(
        default="AES256-SHA256",
        description="TripleDES-SHA1 only for old devices. With `format` mobileconfig it may be "
        "left out or be TripleDES-SHA1 (422 `profile_encryption_fixed` otherwise)",
    )
    format: Literal["p12", "mobileconfig"] = Field(
        default="p12",
        description="`mobileconfig`: one iOS configuration profile "
        "(`application/x-apple-aspen-config`) holding the key(s) as TripleDES-SHA1 PKCS#12 "
        "payloads without their passphrase (the device asks for it), with the account's "
        "Exchange account, signed when the account signs profiles (409 "
        "`signing_identity_expired` or `signing_identity_missing` when it cannot)",
    )
    reason: Annotated[str | None, MULTI_LINE] = Field(
        default=None,
        max_length=500,
        description="Recorded and sent to the owner; an account can make it mandatory",
    )

    @model_validator(mode="after")
    def _one_passphrase(self) -> KeyDownload:
        if (self.passphrase is None) == (not self.generate_passphrase):
            raise PydanticCustomError(
                "passphrase_choice",
                "give a passphrase or set generate_passphrase to true, not both",
            )
        return self


class AuditEventOut(BaseModel):
    id: int
    seq: int = Field(description="Position in the account's audit chain")
    occurred_at: datetime
    actor: str
    action: str
    outcome: str
    target_type: str
    target_id: str
    ip: str
    details: dict[str, Any]


class AuditEventPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None
