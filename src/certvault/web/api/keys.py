"""Keys in and out of the vault: upload a PKCS#12 for a person, download one certificate's key,
download every key of a person as a zip; either download also as one iOS configuration profile."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from certvault.errors import CertvaultError, InvalidInput
from certvault.services.vault import imports, person_keys, release
from certvault.services.vault.archive import EntryResult
from certvault.services.vault.profiles import ReleaseFormat
from certvault.web.api.schemas import (
    CONFLICT,
    ERRORS,
    RATE_LIMITED,
    TOO_LARGE,
    Id,
    ImportedEntry,
    ImportResult,
    ImportWarning,
    KeyDownload,
    KeyUpload,
)
from certvault.web.deps import PortsDep, TokenCaller
from certvault.web.limits import download_counter

router = APIRouter(tags=["keys"], responses=ERRORS)  # type: ignore[arg-type]

PASSPHRASE_HEADER = "X-Certvault-Passphrase"  # noqa: S105 - a header name
_WHITESPACE = re.compile(rb"\s+")


class InvalidBase64(InvalidInput):
    """The p12 field is not valid base64."""

    code = "invalid_base64"


class EntryRefused(CertvaultError):
    """Every entry of an upload was refused: the first refusal answers for the request."""

    def __init__(self, entry: EntryResult) -> None:
        super().__init__(entry.message)
        self.code = entry.code or "refused"
        self.status = entry.status or 422


def _decode_p12(value: str) -> bytes:
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", value.encode("ascii")), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise InvalidBase64("p12 is not valid base64.") from None


UPLOAD_DESCRIPTION = """Import the key(s) of a PKCS#12 file into the vault for this person.

Each certificate's email address must belong to the person. An unknown certificate is added; a
known one gets its key. The answer lists one entry per key, as the SCM `import-key` call does:
`message` is "Imported successfully", "Already exists" or the reason of a refusal, and `code` is
null for a stored entry or the refusal's error code.

**When every entry is refused** (the usual case: a file with one key that does not match, or a
certificate of another person), the request answers with the first refusal's status and error
body instead of 200, so that a script checking the status alone cannot mistake it for success.
When at least one entry was stored, the answer is 200 and the refused entries carry their codes.
`warnings` lists what the file needed that a clean file would not, by stable code:
`chain_certificates_skipped` (every key had its certificate; further encrypted sections were left
unread, as reading them would cost more key-derivation work than allowed) and
`legacy_password_encoding` (the password only opened in OpenSSL 1.0's encoding of non-ASCII
passwords).
A file that cannot be read at all (wrong password, not a PKCS#12, too costly to open) answers
422 (413 when too large); `p12` that is not base64 answers 422 `invalid_base64`. Bodies up to
1 MiB."""

_P12_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The PKCS#12 file `<id>.p12`, encrypted with the passphrase; with "
        "`format` mobileconfig the iOS configuration profile `<id>.mobileconfig`",
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in (ReleaseFormat.P12.media_type, ReleaseFormat.MOBILECONFIG.media_type)
        },
        "headers": {
            PASSPHRASE_HEADER: {
                "description": "The generated passphrase, only with generate_passphrase=true; "
                "shown once, never stored",
                "schema": {"type": "string"},
            },
            "Content-Disposition": {"schema": {"type": "string"}},
        },
    },
    **RATE_LIMITED,
    **CONFLICT,  # a profile the account cannot sign
}
_ZIP_RESPONSE: dict[int | str, dict[str, Any]] = {
    **_P12_RESPONSE,
    200: {
        **_P12_RESPONSE[200],
        "description": "A zip of PKCS#12 files `<certificate id>-<serial>.p12`, one per "
        "certificate with a key in the vault, all under the one passphrase; with `format` "
        "mobileconfig one iOS configuration profile `person-<id>-keys.mobileconfig` holding them",
        "content": {
            media_type: {"schema": {"type": "string", "format": "binary"}}
            for media_type in ("application/zip", ReleaseFormat.MOBILECONFIG.media_type)
        },
    },
}
_RELEASE_NOTES = """

Exactly one of `passphrase` and `generate_passphrase: true`; a generated passphrase comes back once
in the `X-Certvault-Passphrase` header. The release is audited and the owner is told by mail. It
needs the privilege key_vault_download and the token scope `keys:download`.

Rate limits per administrator, per token and per client address (`CERTVAULT_DOWNLOADS_PER_HOUR_*`)
are checked before anything is released, once the request is authorized: **a request that could
release a key counts as one download**, also a zip of several keys; one refused for its token
scope, privilege or an unknown certificate counts nothing. Over a limit: 429 with `Retry-After`."""


@router.post(
    "/persons/{person_id}/keys",
    response_model=ImportResult,
    description=UPLOAD_DESCRIPTION,
    responses=TOO_LARGE,
)
def upload_keys(
    person_id: Id, body: KeyUpload, caller: TokenCaller, ports: PortsDep
) -> ImportResult:
    data = _decode_p12(body.p12)
    result = imports.import_p12_file(
        ports, caller.actor, caller.account_slug, data, body.password, person_id=person_id
    )
    entries = result.entries
    if entries and not any(e.ok for e in entries):
        raise EntryRefused(next(e for e in entries if not e.ok))
    return ImportResult(
        entries=[
            ImportedEntry(
                alias=e.alias,
                clientCertId=e.client_cert_id,
                md5=e.md5,
                sha1=e.sha1,
                message=e.message,
                code=e.code,
            )
            for e in entries
        ],
        warnings=[ImportWarning(code=code, message=text) for code, text in result.warning_messages],
    )


def _attachment(data: bytes, media_type: str, filename: str, passphrase: str | None) -> Response:
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if passphrase is not None:
        headers[PASSPHRASE_HEADER] = passphrase
    return Response(data, media_type=media_type, headers=headers)


@router.post(
    "/certificates/{certificate_id}/key",
    response_class=Response,
    summary="Download a certificate's key as PKCS#12 or iOS configuration profile",
    description="The key of one certificate as a PKCS#12 attachment `<id>.p12`, or with "
    "`format: mobileconfig` as an iOS configuration profile `<id>.mobileconfig`." + _RELEASE_NOTES,
    responses=_P12_RESPONSE,
)
def download_key(
    certificate_id: Id,
    body: KeyDownload,
    request: Request,
    caller: TokenCaller,
    ports: PortsDep,
) -> Response:
    def work(session: Session) -> release.ReleaseBatch:
        caller.adopt(session)
        return release.release_keys(
            ports,
            caller.actor,
            caller.account_slug,
            [certificate_id],
            passphrase=body.passphrase,
            encryption=_encryption(body),
            reason=body.reason,
            channel="api",
            admit=download_counter(request, caller),
            format=body.format,
            session=session,
        )

    # The quota, the release, its audit event and notice in one transaction (DESIGN.md §10). The
    # token was checked before, by one statement of its own (Database.lookup): authentication
    # comes before FastAPI validates the path and body, so it cannot wait for this transaction;
    # the account it read is adopted, not read again.
    batch = ports.db.run_request(work)
    [item] = batch.releases
    return _attachment(item.data, item.format.media_type, item.filename, batch.generated_passphrase)


@router.post(
    "/persons/{person_id}/keys/download",
    response_class=Response,
    summary="Download every key of a person as a zip",
    description="Every key of the person in the vault, current and old (old mail needs old "
    "keys), as a zip of PKCS#12 files under one passphrase (or with `format: mobileconfig` one "
    "iOS configuration profile holding them); one release event per key. An "
    "organization administrator gets the certificates of their organizations. A person without "
    "keys in the vault answers 404 `no_escrowed_key`." + _RELEASE_NOTES,
    responses=_ZIP_RESPONSE,
)
def download_person_keys(
    person_id: Id,
    body: KeyDownload,
    request: Request,
    caller: TokenCaller,
    ports: PortsDep,
) -> Response:
    def work(session: Session) -> release.ReleaseBatch:
        caller.adopt(session)
        return person_keys.release_person_keys(
            ports,
            caller.actor,
            caller.account_slug,
            person_id,
            passphrase=body.passphrase,
            encryption=_encryption(body),
            reason=body.reason,
            channel="api",
            admit=download_counter(request, caller),
            format=body.format,
            session=session,
        )

    batch = ports.db.run_request(work)
    if batch.releases[0].format is ReleaseFormat.MOBILECONFIG:
        [item] = batch.releases
        return _attachment(
            item.data, item.format.media_type, item.filename, batch.generated_passphrase
        )
    data, filename = person_keys_zip(person_id, batch)
    return _attachment(data, "application/zip", filename, batch.generated_passphrase)


def _encryption(body: KeyDownload) -> str | None:
    """The encryption asked for; None when left out, so that a profile takes its own."""
    return body.encryption_type if "encryption_type" in body.model_fields_set else None


def person_keys_zip(person_id: int, batch: release.ReleaseBatch) -> tuple[bytes, str]:
    """Every key of a person's download as one zip, and the zip's file name (the API and the
    console hand out the same file)."""
    return person_keys.zip_of(batch), f"person-{person_id}-keys.zip"
