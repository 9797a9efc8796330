"""Bounds on the shape of BER/DER input, checked before a parser sees it.

asn1crypto converts and compares nested values by recursion, so a few thousand nested SEQUENCEs in
an upload end in RecursionError, which no caller expects. This walker reads only the headers,
without recursion, and refuses input that nests deeper than a limit, whose lengths run past the
data around them, or that is not exactly one value. It reads every header of a 1 MiB input in
well under a second.
"""

from __future__ import annotations

# asn1crypto parses lazily, so malformed input surfaces as any of these, wherever a field is read.
# RecursionError too, should anything deep slip past check_structure.
ASN1_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
)


class BerError(ValueError):
    """The input's structure is refused; the message names the fault, never the data."""


_MAX_TAG_BYTES = 4  # tag numbers up to 2**28: far beyond any registered one
_MAX_LENGTH_BYTES = 4  # lengths up to 4 GiB; anything longer is past the end anyway


def check_structure(data: bytes, *, max_depth: int) -> None:
    """Raise :class:`BerError` unless ``data`` is one BER value nested at most ``max_depth`` deep.

    Every length must fit inside the value around it; indefinite lengths are followed to their
    end-of-contents. Contents of primitive values (such as the DER inside an OCTET STRING) are
    not entered: check those on their own before parsing them.
    """
    # The value being walked: where it ends (an indefinite one: where the value around it
    # ends) and whether its length is indefinite. At first, the input itself.
    end, indefinite = len(data), False
    stack: list[tuple[int, bool]] = []  # the values around it
    pos = 0
    started = False
    while True:
        if pos == end:
            if indefinite:
                raise BerError("truncated")  # no end-of-contents
            if not stack:
                if not started:
                    raise BerError("truncated")
                return
            end, indefinite = stack.pop()
            continue
        if indefinite and data[pos] == 0 and pos + 1 < end and data[pos + 1] == 0:
            end, indefinite = stack.pop()  # end-of-contents
            pos += 2
            continue
        if not stack:
            if started:
                raise BerError("data after the end")
            started = True

        identifier = data[pos]
        pos += 1
        constructed = identifier & 0x20
        if identifier & 0x1F == 0x1F:  # tag number in the following base-128 bytes
            for count in range(_MAX_TAG_BYTES + 1):
                if count == _MAX_TAG_BYTES:
                    raise BerError("tag number too long")
                if pos >= end:
                    raise BerError("truncated")
                pos += 1
                if not data[pos - 1] & 0x80:
                    break
        if pos >= end:
            raise BerError("truncated")
        first = data[pos]
        pos += 1

        if first == 0x80:
            if not constructed:
                raise BerError("indefinite length on a primitive value")
            if len(stack) >= max_depth:
                raise BerError("nested too deeply")
            stack.append((end, indefinite))
            indefinite = True  # it ends at its end-of-contents, inside the same bound
            continue
        if first < 0x80:
            length = first
        else:
            size = first & 0x7F
            if size > _MAX_LENGTH_BYTES:
                raise BerError("length too long")
            if pos + size > end:
                raise BerError("truncated")
            length = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        if length > end - pos:
            raise BerError("length past the end")
        if not constructed:
            pos += length
            continue
        if len(stack) >= max_depth:
            raise BerError("nested too deeply")
        stack.append((end, indefinite))
        end, indefinite = pos + length, False
