"""Reading PKCS#12 files in worker processes, for bulk imports.

Reading a file is mostly Python work that holds the GIL, so threads cannot spread it over the
cores; processes can. A worker reads the file with the one reader there is (:func:`read_pkcs12`,
every check included) and hands back what it found as DER (:class:`Portable`, which pickles);
the importing process loads that DER again without repeating the checks, which the worker made.

A file the worker refuses comes back as None: the importing process reads that file itself, so
that the refusal it reports is the reader's own exception. Refusals are rare in a bulk import,
and every read stays within the file's KDF budget (limits.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certvault.crypto import keys as keylib
from certvault.crypto.pkcs12.limits import P12Limits
from certvault.crypto.pkcs12.reader import P12Contents, P12Entry, read_pkcs12
from certvault.errors import CertvaultError


@dataclass(frozen=True)
class Portable:
    """What a file held, as DER: each key as PKCS#8 with its certificate and friendly name."""

    entries: list[tuple[bytes, bytes, str | None]]
    extra_certificates: list[bytes]
    warnings: list[str]
    legacy_password_encoding: bool


def read_portable(data: bytes, password: str, limits: P12Limits) -> Portable | None:
    """In a worker process: read the file; None when the reader refuses it."""
    try:
        contents = read_pkcs12(data, password, limits)
    except CertvaultError:
        return None
    return Portable(
        entries=[
            (
                keylib.to_pkcs8_der(entry.key),
                entry.certificate.public_bytes(Encoding.DER),
                entry.friendly_name,
            )
            for entry in contents.entries
        ],
        extra_certificates=[c.public_bytes(Encoding.DER) for c in contents.extra_certificates],
        warnings=list(contents.warnings),
        legacy_password_encoding=contents.legacy_password_encoding,
    )


def read_portables(files: list[tuple[bytes, str]], limits: P12Limits) -> list[Portable | None]:
    """In a worker process: :func:`read_portable` for each (data, password), in order. Files go
    to a worker in chunks: one task per file would leave the workers waiting on the importing
    process, which is busy writing."""
    return [read_portable(data, password, limits) for data, password in files]


def contents_of(portable: Portable) -> P12Contents:
    """In the importing process: the reader's result again. The keys are loaded without the
    checks the worker's reader made (numbers, pairwise signature, certificate match): they come
    from that reader, through a pipe only this process and its workers hold."""
    return P12Contents(
        entries=[
            P12Entry(
                keylib.load_pkcs8_der(key, validate=False),
                x509.load_der_x509_certificate(cert),
                name,
            )
            for key, cert, name in portable.entries
        ],
        extra_certificates=[x509.load_der_x509_certificate(c) for c in portable.extra_certificates],
        warnings=list(portable.warnings),
        legacy_password_encoding=portable.legacy_password_encoding,
    )
