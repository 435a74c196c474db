"""Protobuf wire-format primitives: varints, field tags and length-delimited fields.

The request-log record (``core.request_log``) and the gRPC Predict response
(``serving.wire``) are concatenated from these where the request path needs
speed; the bytes parse to the message the protobuf library would build.
"""
from typing import Dict

_SMALL = [bytes((i,)) for i in range(128)]


def varint(value: int) -> bytes:
    """An unsigned varint (negative int32/int64 values as their 64-bit two's complement)."""
    if 0 <= value < 128:
        return _SMALL[value]
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


_TAGS: Dict[int, bytes] = {}


def length_delimited(number: int, payload: bytes) -> bytes:
    head = _TAGS.get(number)
    if head is None:
        head = _TAGS[number] = tag(number, 2)
    return head + varint(len(payload)) + payload
