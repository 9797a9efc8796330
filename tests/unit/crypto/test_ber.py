"""The BER/DER shape check: depth, lengths and indefinite lengths, without recursion."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certvault.crypto.ber import BerError, check_structure
from tests.unit.crypto.conftest import VECTOR_DIR
from tests.unit.crypto.pkcs12.assembly import nested, tlv


@pytest.mark.parametrize("indefinite", [False, True])
def test_depth_up_to_the_limit_is_accepted(indefinite):
    # nested(n) is n SEQUENCEs around a NULL: n constructed levels.
    check_structure(nested(32, indefinite=indefinite), max_depth=32)
    with pytest.raises(BerError, match="nested too deeply"):
        check_structure(nested(33, indefinite=indefinite), max_depth=32)


@pytest.mark.parametrize("indefinite", [False, True])
def test_very_deep_nesting_is_refused_without_recursion(indefinite):
    # Far deeper than the interpreter's stack: a recursive walker could not get through.
    data = nested(3 * sys.getrecursionlimit(), indefinite=indefinite)
    with pytest.raises(BerError, match="nested too deeply"):
        check_structure(data, max_depth=64)


def test_real_files_are_accepted():
    for path in VECTOR_DIR.glob("*.p12"):
        check_structure(path.read_bytes(), max_depth=32)


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\x80\x02\x01\x05\x00\x00",  # BER: an indefinite SEQUENCE holding an INTEGER
        b"\x24\x80\x04\x01\x41\x04\x01\x42\x00\x00",  # a constructed OCTET STRING in chunks
        b"\x30\x80\x30\x80\x00\x00\x30\x00\x00\x00",  # nested indefinite, then an empty SEQUENCE
        b"\x30\x00",
        b"\x05\x00",
        b"\x5f\x81\x00\x00",  # a high tag number (256, application class)
        tlv(0x04, bytes(300)),  # a two-byte length
    ],
)
def test_well_formed_values_are_accepted(data):
    check_structure(data, max_depth=8)


@pytest.mark.parametrize(
    ("data", "fault"),
    [
        (b"", "truncated"),
        (b"\x30", "truncated"),
        (b"\x30\x03\x02\x01", "length past the end"),
        (b"\x30\x84\xff\xff\xff\xff\x00", "length past the end"),  # claims 4 GiB: no allocation
        (b"\x04\x85\x01\x00\x00\x00\x00\x00", "length too long"),
        (b"\x04\xff", "length too long"),
        (b"\x04\x80\x00\x00", "indefinite length on a primitive value"),
        (b"\x30\x80\x02\x01\x05", "truncated"),  # no end-of-contents
        (b"\x30\x00\x30\x00", "data after the end"),
        (b"\x30\x02\x02\x01\x05", "length past the end"),  # the INTEGER overruns its SEQUENCE
        (b"\x1f\x81\x81\x81\x81\x01\x00", "tag number too long"),
        # An indefinite value must end inside its parent, not borrow bytes from after it.
        (b"\x30\x03\x30\x80\x00\x00", "truncated"),
    ],
)
def test_malformed_values_are_refused(data, fault):
    with pytest.raises(BerError, match=fault):
        check_structure(data, max_depth=8)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_an_answer_or_a_ber_error(data):
    try:
        check_structure(data, max_depth=4)
    except BerError:
        pass
