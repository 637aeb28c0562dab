"""An .onnx file's skeleton: the model with its initializers' raw bytes left on disk, read at the wire level.

Validating an upload needs the graph (nodes, inputs, outputs, opsets, attributes), not the weights. The main
graph's initializers hold almost all of a model's bytes, as `raw_data`; this reader walks the protobuf wire format
of `ModelProto.graph.initializer` with seeks, and for each initializer whose `raw_data` has exactly the length its
`dims` and `data_type` need, writes it into the skeleton with `dims = [0]` and empty `raw_data` (still a present
value field, so the checker finds what it needs). Every other field is copied byte for byte, so onnx.checker
judges the skeleton exactly as it would the model; an initializer whose data length is wrong is copied whole, so
the checker names it. The skeleton of a 1 GiB model is a few kilobytes, read in well under a second.
"""

from __future__ import annotations

import io
import math
from typing import BinaryIO

from compression.errors import InvalidModelError

MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_RAW_DATA = 1, 2, 9
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
PROTOBUF_LIMIT = 2**31 - 1  # protobuf cannot parse a message this large: onnx and onnxruntime refuse the file

BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128}
BITS |= {16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8}  # bfloat16, float8s, int4s, float4


class _Malformed(Exception):
    pass


def _varint(data: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = data.read(1)
        if not byte:
            raise _Malformed("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise _Malformed("varint longer than 10 bytes")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _read(data: BinaryIO, n: int) -> bytes:
    chunk = data.read(n)
    if len(chunk) != n:
        raise _Malformed("truncated field")
    return chunk


def _field(data: BinaryIO, end: int) -> tuple[int, int, bytes, int]:
    """The next field before `end`: (number, wire type, its tag bytes, payload length for LENGTH else 0)."""
    start = data.tell()
    key = _varint(data)
    tag = _tag_bytes(data, start)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise _Malformed("field number 0")
    length = _varint(data) if wire == LENGTH else 0
    if data.tell() + length > end:
        raise _Malformed("a field runs past the end of its message")
    return number, wire, tag, length


def _tag_bytes(data: BinaryIO, start: int) -> bytes:
    here = data.tell()
    data.seek(start)
    tag = data.read(here - start)
    return tag


def _copy_value(data: BinaryIO, wire: int, length: int) -> bytes:
    """The field's value bytes as on the wire (after the tag; a LENGTH field's length prefix included)."""
    if wire == VARINT:
        start = data.tell()
        _varint(data)
        end = data.tell()
        data.seek(start)
        return data.read(end - start)
    if wire == FIXED64:
        return _read(data, 8)
    if wire == FIXED32:
        return _read(data, 4)
    if wire == LENGTH:
        return _encode_varint(length) + _read(data, length)
    raise _Malformed(f"unsupported wire type {wire}")


def _packed_or_single_varints(data: BinaryIO, wire: int, length: int) -> list[int]:
    if wire == VARINT:
        return [_varint(data)]
    end = data.tell() + length
    values = []
    while data.tell() < end:
        values.append(_varint(data))
    return values


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _tensor(data: BinaryIO, end: int) -> bytes:
    """One initializer: its skeleton, or (data length not what dims x type need) the tensor copied whole."""
    start = data.tell()
    kept = bytearray()
    dims: list[int] = []
    data_type = 0
    raw_length: int | None = None
    while data.tell() < end:
        number, wire, tag, length = _field(data, end)
        if number == TENSOR_RAW_DATA and wire == LENGTH:
            raw_length = length
            data.seek(length, io.SEEK_CUR)
        elif number == TENSOR_DIMS and wire in (VARINT, LENGTH):
            dims += [_signed(v) for v in _packed_or_single_varints(data, wire, length)]
        elif number == TENSOR_DATA_TYPE and wire == VARINT:
            data_type = _varint(data)
            kept += tag + _encode_varint(data_type)
        else:
            kept += tag + _copy_value(data, wire, length)
    bits = BITS.get(data_type)
    if raw_length is None or bits is None or any(d < 0 for d in dims):
        return _whole(data, start, end)
    if raw_length != math.ceil(math.prod(dims) * bits / 8):
        return _whole(data, start, end)
    kept += _encode_varint(TENSOR_DIMS << 3 | VARINT) + b"\x00"  # dims = [0]
    kept += _encode_varint(TENSOR_RAW_DATA << 3 | LENGTH) + b"\x00"  # raw_data = b"" (present)
    return bytes(kept)


def _whole(data: BinaryIO, start: int, end: int) -> bytes:
    data.seek(start)
    return _read(data, end - start)


def _graph(data: BinaryIO, end: int) -> bytes:
    out = bytearray()
    while data.tell() < end:
        number, wire, tag, length = _field(data, end)
        if number == GRAPH_INITIALIZER and wire == LENGTH:
            tensor = _tensor(data, data.tell() + length)
            out += tag + _encode_varint(len(tensor)) + tensor
        else:
            out += tag + _copy_value(data, wire, length)
    return bytes(out)


def read_skeleton(data: BinaryIO, size: int) -> bytes:
    """The serialized skeleton of the ModelProto in `data` (`size` bytes long)."""
    if size > PROTOBUF_LIMIT:
        raise InvalidModelError(
            f"the file is {size} bytes: a single .onnx file holds at most {PROTOBUF_LIMIT} bytes (protobuf's limit)"
        )
    out = bytearray()
    try:
        while data.tell() < size:
            number, wire, tag, length = _field(data, size)
            if number == MODEL_GRAPH and wire == LENGTH:
                graph = _graph(data, data.tell() + length)
                out += tag + _encode_varint(len(graph)) + graph
            else:
                out += tag + _copy_value(data, wire, length)
    except _Malformed as exc:
        raise InvalidModelError(f"not a valid ONNX model: could not parse the file ({exc})") from None
    return bytes(out)
