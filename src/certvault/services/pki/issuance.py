"""The certificate issuer seam: the built-in CA today (services/pki/ca.py), an external CA later.

Enrollment (web form, client CSR, agent) asks an issuer for a certificate over a public key and
never touches CA keys itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy.orm import Session

from certvault.crypto.keypolicy import check_public_key
from certvault.crypto.profiles import Profile
from certvault.db.models import Account


@dataclass(frozen=True)
class IssueRequest:
    public_key: CertificatePublicKeyTypes
    profile: Profile
    email: str
    common_name: str | None = None
    extra_emails: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # At the seam, whatever the issuer: no request over a key that no certificate may carry
        # exists, however it came (client CSR, generated key, agent request).
        check_public_key(self.public_key)


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)  # issuing CA up to the root
    ca_id: int | None = None  # the built-in CA that signed it, if any


class CertificateIssuer(Protocol):
    def issue(self, session: Session, account: Account, request: IssueRequest) -> Issued:
        """Sign a certificate inside the caller's transaction (a failure rolls it all back)."""
        ...
