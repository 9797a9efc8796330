"""Names people read: a certificate subject as its common name and email address, and the whole
distinguished name with attribute names where RFC 4514 would print dotted numbers.

certvault stores subjects as ``Name.rfc4514_string()`` writes them, where an email address
attribute reads ``1.2.840.113549.1.9.1=bob@example.org``. Pages and API display fields show what
follows from that stored string instead; the stored form stays as it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

# Attribute names OpenSSL prints for the attributes RFC 4514 leaves without a keyword.
_KEYWORDS = {
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.TITLE: "title",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
}


@dataclass(frozen=True)
class SubjectName:
    common_name: str | None
    email: str | None  # the subject's emailAddress attribute, if it has one
    dn: str  # the whole name, readable; "" for an empty subject

    @property
    def label(self) -> str:
        """What a list shows: the common name, else the email address, else the whole name."""
        return self.common_name or self.email or self.dn or "(no subject)"


def _first(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    for attribute in name.get_attributes_for_oid(oid):
        if isinstance(attribute.value, str) and attribute.value.strip():
            return attribute.value
    return None


def name_of(name: x509.Name) -> SubjectName:
    return SubjectName(
        _first(name, NameOID.COMMON_NAME),
        _first(name, NameOID.EMAIL_ADDRESS),
        name.rfc4514_string(_KEYWORDS),
    )


@functools.lru_cache(maxsize=4096)
def subject_name(stored: str | None) -> SubjectName:
    """The readable forms of a stored RFC 4514 subject.

    A stored subject that does not parse (one cut short to fit its column) is shown as it is.
    """
    if not stored:
        return SubjectName(None, None, "")
    try:
        name = x509.Name.from_rfc4514_string(stored)
    except ValueError:
        return SubjectName(None, None, stored)
    return name_of(name)
