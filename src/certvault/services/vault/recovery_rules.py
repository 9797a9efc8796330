"""Who may recover a key on their own (the Private Key Recovery Form), checked when the form
offers a certificate and again by the release itself, from the certificate's DER and sealed rows
only: never from an address a person record holds today (DESIGN invariant 8)."""

from __future__ import annotations

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.crypto.ca import chains_to
from certvault.db.models import Account, Certificate, CertificateAuthority, Person, TrustedIssuer
from certvault.errors import InvalidInput

KEY_COMPROMISE = "keyCompromise"


def anchors(session: Session, account: Account) -> list[x509.Certificate]:
    """What a certificate must chain to: the account's trusted issuers and its own CAs."""
    found = [
        x509.load_der_x509_certificate(der)
        for der in session.scalars(
            select(TrustedIssuer.der).where(TrustedIssuer.account_id == account.id)
        )
    ]
    found += [
        x509.load_der_x509_certificate(der)
        for der in session.scalars(
            select(CertificateAuthority.certificate_der).where(
                CertificateAuthority.account_id == account.id
            )
        )
    ]
    return found


def addresses_in(cert: Certificate) -> list[str]:
    """The addresses the certificate's DER names, derived again (the stored list is a copy)."""
    try:
        return keylib.certificate_emails(x509.load_der_x509_certificate(cert.der))
    except (ValueError, InvalidInput):
        return []


def refusal(
    cert: Certificate,
    owner: Person | None,
    address: str,
    trust: list[x509.Certificate],
) -> str | None:
    """Why ``cert``'s key may not be recovered by whoever proved they hold ``address``, as a
    stable code for the audit log; None when it may."""
    if address not in addresses_in(cert):
        return "address_not_in_certificate"
    if not cert.key_in_vault:
        return "no_escrowed_key"
    if owner is None or not owner.active:
        return "person_inactive"
    if cert.status == "revoked" and cert.revocation_reason == KEY_COMPROMISE:
        return "key_compromised"
    chain = x509.load_pem_x509_certificates(cert.chain_pem.encode()) if cert.chain_pem else []
    if not trust or not chains_to(x509.load_der_x509_certificate(cert.der), chain, trust):
        return "untrusted_chain"
    return None
