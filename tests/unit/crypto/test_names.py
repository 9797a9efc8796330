"""Subjects as people read them, from the stored RFC 4514 form."""

from __future__ import annotations

from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certvault.crypto.names import name_of, subject_name


def _stored(*attributes: tuple[x509.ObjectIdentifier, str]) -> str:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]).rfc4514_string()


def test_common_name_and_email_attribute():
    stored = _stored(
        (NameOID.COMMON_NAME, "Bob Builder"), (NameOID.EMAIL_ADDRESS, "bob@example.org")
    )
    assert stored == "1.2.840.113549.1.9.1=bob@example.org,CN=Bob Builder"
    shown = subject_name(stored)
    assert shown.common_name == "Bob Builder" and shown.email == "bob@example.org"
    assert shown.label == "Bob Builder"
    assert shown.dn == "emailAddress=bob@example.org,CN=Bob Builder"


def test_label_falls_back_to_the_email_then_the_whole_name():
    only_email = _stored(
        (NameOID.EMAIL_ADDRESS, "bob@example.org"), (NameOID.ORGANIZATION_NAME, "Acme")
    )
    assert subject_name(only_email).label == "bob@example.org"
    no_person = _stored((NameOID.ORGANIZATION_NAME, "Acme"), (NameOID.COUNTRY_NAME, "DE"))
    assert subject_name(no_person).label == "C=DE,O=Acme"
    assert subject_name("").label == "(no subject)" and subject_name(None).dn == ""


def test_escaped_values_survive():
    stored = _stored((NameOID.COMMON_NAME, "Builder, Bob + Co"), (NameOID.SURNAME, "Builder"))
    shown = subject_name(stored)
    assert shown.common_name == "Builder, Bob + Co"
    assert shown.dn == "SN=Builder,CN=Builder\\, Bob \\+ Co"


def test_a_stored_subject_cut_short_is_shown_as_stored():
    cut = "CN=Bob\\"  # an escape with nothing after it
    assert subject_name(cut).dn == cut and subject_name(cut).label == cut


def test_a_name_object_reads_the_same_as_its_stored_form():
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.GIVEN_NAME, "Ada"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Ada L"),
        ]
    )
    assert name_of(name) == subject_name(name.rfc4514_string())


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=120))
def test_any_stored_text_gives_a_label_and_never_raises(stored):
    shown = subject_name(stored)
    assert isinstance(shown.label, str) and shown.label
