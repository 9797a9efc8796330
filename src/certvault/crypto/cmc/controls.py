"""CMC controls (TaggedAttributes), read and written the way AD CS uses them.

Windows nests its own attributes (the key hash, the issued certificate's hash) in one
szOID_CMC_ADD_ATTRIBUTES control; other clients put an attribute in a control of its own. Reading
flattens both into one table, so that each attribute type is counted once wherever it stands.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, TypeVar

from asn1crypto import core

from certvault.crypto.cmc import asn1
from certvault.crypto.cmc.signed import invalid

T = TypeVar("T")
_MAX_HASH_BYTES = 64  # SHA-512


def collect(sequence: asn1.ControlSequence) -> dict[str, list[asn1.SetOfAny]]:
    """The values of every control and every attribute added by CMC_ADD_ATTRIBUTES, by type."""
    found: dict[str, list[asn1.SetOfAny]] = defaultdict(list)
    for control in sequence:
        body_part(control["body_part_id"])
        kind = control["attr_type"].dotted
        if kind != asn1.CMC_ADD_ATTRIBUTES:
            found[kind].append(control["attr_values"])
            continue
        for value in control["attr_values"]:
            added = asn1.CmcAddAttributes.load(value.dump(), strict=True)
            for attribute in added["attributes"]:
                found[attribute["type"].dotted].append(attribute["values"])
    return found


def body_part(value: core.Integer) -> int:
    number = value.native
    if not isinstance(number, int) or not 0 <= number <= asn1.MAX_BODY_PART_ID:
        raise invalid("body part id out of range")
    return number


def at_most_one(found: list[T], what: str) -> T | None:
    if len(found) > 1:
        raise invalid(f"more than one {what}")
    return found[0] if found else None


def key_hash(values: asn1.SetOfAny) -> bytes:
    """The one OCTET STRING of a hash attribute, of a length some hash has."""
    value = octets(values)
    if not 0 < len(value) <= _MAX_HASH_BYTES:
        raise invalid("hash of a wrong length")
    return value


def octets(values: asn1.SetOfAny) -> bytes:
    return bytes(single(values, core.OctetString))


def integer(values: asn1.SetOfAny) -> int:
    return int(single(values, core.Integer))


def single(values: asn1.SetOfAny, kind: type[core.Asn1Value]) -> Any:
    """The native value of the attribute's only value, which must be a ``kind``."""
    if len(values) != 1:
        raise invalid("an attribute without exactly one value")
    return kind.load(values[0].dump(), strict=True).native


def tagged(body_part_id: int, kind: str, value: core.Asn1Value) -> asn1.TaggedAttribute:
    return asn1.TaggedAttribute(
        {"body_part_id": body_part_id, "attr_type": kind, "attr_values": [value]}
    )


def add_attributes(
    body_part_id: int, request_part: int, attributes: Sequence[tuple[str, bytes]]
) -> asn1.TaggedAttribute:
    """One CMC_ADD_ATTRIBUTES control holding OCTET STRING attributes for ``request_part``."""
    value = asn1.CmcAddAttributes(
        {
            "pki_data_reference": 0,
            "cert_references": [request_part],
            "attributes": [
                {"type": kind, "values": [core.OctetString(data)]} for kind, data in attributes
            ],
        }
    )
    return tagged(body_part_id, asn1.CMC_ADD_ATTRIBUTES, value)
