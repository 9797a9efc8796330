"""What every part of the built-in CA needs of a CA row: its certificate, its signing key (a
service key, opened only to sign, never released) and where it publishes its CRL."""

from __future__ import annotations

from cryptography import x509
from sqlalchemy.orm import Session

from certvault.crypto import keys as keylib
from certvault.db.models import CertificateAuthority, ServiceKey
from certvault.errors import CertvaultError
from certvault.services.kernel import keyring
from certvault.services.kernel.ports import Ports

CA_KEY_PURPOSE = "ca-signing"


class NoIssuingCa(CertvaultError):
    """This account has no issuing CA."""

    code = "no_issuing_ca"
    status = 409


def crl_url(ports: Ports, account_slug: str, ca_name: str) -> str:
    return ports.settings.public_url_for(f"/crl/{account_slug}/{ca_name}.crl")


def ca_certificate(row: CertificateAuthority) -> x509.Certificate:
    return x509.load_der_x509_certificate(row.certificate_der)


def signing_key(session: Session, ports: Ports, row: CertificateAuthority) -> keylib.PrivateKey:
    if row.service_key_id is None:
        raise NoIssuingCa(f"The CA {row.name} has no key in certvault (an offline CA).")
    return keyring.open_signing_key(ports, session.get_one(ServiceKey, row.service_key_id))
