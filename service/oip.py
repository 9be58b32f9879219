"""Open Inference Protocol (KServe v2) tensors over HTTP, with Triton's binary tensor data extension.

A request body is a JSON object, optionally followed by the raw bytes of some input tensors, in the order of the
inputs that declare `binary_data_size`; `Inference-Header-Content-Length` gives the JSON part's length. Binary
tensors are little-endian, row-major; a BYTES element is a 4-byte little-endian length followed by its bytes.
Nothing in here knows about FastAPI or the model: bytes in, numpy arrays out, and back.
"""

import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

HEADER_LENGTH = "Inference-Header-Content-Length"

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}


class ProtocolError(ValueError):
    """A request that breaks the protocol or the model's contract; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# --- the JSON part of a request ----------------------------------------------------------------------

class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


# --- decoded request ---------------------------------------------------------------------------------

@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray  # of `shape`; BYTES elements are `bytes`
    binary: bool = False  # came from the binary section (BYTES from JSON were strings)


@dataclass
class Wanted:
    """One requested output: as binary data or JSON, and `classification` top-k where asked."""

    name: str
    binary: bool
    classification: int | None = None


@dataclass
class Request:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, Tensor]
    outputs: list[Wanted] | None  # None: every output
    binary_output: bool  # `binary_data_output`: the default for outputs not named in `outputs`


def parse_request(body: bytes, header_length: str | None) -> Request:
    """The request's JSON part and its input tensors; ProtocolError (400) for anything malformed."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= length <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} is {length} but the body has {len(body)} bytes")
        json_part, binary = body[:length], body[length:]
    try:
        request = InferenceRequest.model_validate_json(json_part)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise ProtocolError(f"invalid inference request: {problems}") from None
    inputs, offset = {}, 0
    for item in request.inputs:
        if item.name in inputs:
            raise ProtocolError(f"input {item.name!r} is given twice")
        tensor, offset = _input_tensor(item, binary, offset)
        inputs[item.name] = tensor
    if offset != len(binary):
        raise ProtocolError(f"the binary section has {len(binary)} bytes but the inputs declare {offset} "
                            "(binary_data_size)")
    binary_output = _flag(request.parameters, "binary_data_output", "request")
    outputs = None
    if request.outputs is not None:
        outputs = [Wanted(o.name, _flag(o.parameters, "binary_data", o.name, binary_output),
                          _classification(o)) for o in request.outputs]
        names = [o.name for o in outputs]
        if len(set(names)) != len(names):
            raise ProtocolError(f"an output is requested twice: {names}")
    return Request(request.id, request.parameters, inputs, outputs, binary_output)


def _input_tensor(item: RequestInput, binary: bytes, offset: int) -> tuple[Tensor, int]:
    dtype = DTYPES.get(item.datatype)
    if dtype is None:
        raise ProtocolError(f"input {item.name!r}: unknown or unsupported datatype {item.datatype!r}; "
                            f"expected one of {', '.join(DTYPES)}")
    if any(dim < 0 for dim in item.shape):
        raise ProtocolError(f"input {item.name!r}: shape {item.shape} has a negative dimension")
    if "shared_memory_region" in item.parameters:
        raise ProtocolError(f"input {item.name!r}: the shared-memory extension is not supported")
    count = math.prod(item.shape)
    size = item.parameters.get("binary_data_size")
    if size is None:
        if item.data is None:
            raise ProtocolError(f"input {item.name!r} has neither `data` nor `binary_data_size`")
        return Tensor(item.name, item.datatype, item.shape, _from_json(item, dtype, count)), offset
    if item.data is not None:
        raise ProtocolError(f"input {item.name!r} has both `data` and `binary_data_size`")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"input {item.name!r}: binary_data_size must be a non-negative integer, got {size!r}")
    if offset + size > len(binary):
        raise ProtocolError(f"input {item.name!r}: binary_data_size {size} runs past the end of the body "
                            f"({len(binary) - offset} bytes left)")
    raw = binary[offset:offset + size]
    if item.datatype == "BYTES":
        data = _split_bytes(raw, item.name)
        if len(data) != count:
            raise ProtocolError(f"input {item.name!r}: shape {item.shape} holds {count} elements but the binary "
                                f"data holds {len(data)}")
        array = np.empty(count, dtype=object)
        array[:] = data
    else:
        if size != count * dtype.itemsize:
            raise ProtocolError(f"input {item.name!r}: shape {item.shape} of {item.datatype} needs "
                                f"{count * dtype.itemsize} bytes, binary_data_size is {size}")
        array = np.frombuffer(raw, dtype=dtype)
    return Tensor(item.name, item.datatype, item.shape, array.reshape(item.shape), binary=True), offset + size


def _from_json(item: RequestInput, dtype: np.dtype, count: int) -> np.ndarray:
    values = _flatten(item.data)
    if len(values) != count:
        raise ProtocolError(f"input {item.name!r}: shape {item.shape} holds {count} elements but `data` has "
                            f"{len(values)}")
    if item.datatype == "BYTES":
        if not all(isinstance(value, str) for value in values):
            raise ProtocolError(f"input {item.name!r}: BYTES elements in JSON must be strings")
        array = np.empty(count, dtype=object)
        array[:] = [value.encode() for value in values]
        return array.reshape(item.shape)
    if not all(isinstance(value, (bool, int, float)) for value in values):
        raise ProtocolError(f"input {item.name!r}: {item.datatype} elements must be numbers")
    try:
        with np.errstate(over="raise", invalid="raise"):
            return np.array(values, dtype=dtype).reshape(item.shape)
    except (OverflowError, ValueError, FloatingPointError, TypeError) as error:
        raise ProtocolError(f"input {item.name!r}: values do not fit {item.datatype} ({error})") from None


def _flatten(data: Any) -> list:
    """`data` may be flat or nested as the shape (the protocol allows both), row-major either way."""
    if not isinstance(data, list):
        return [data]
    flat: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES data is truncated inside an element's length prefix")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"input {name!r}: a BYTES element declares {length} bytes, only "
                                f"{len(raw) - offset} are left")
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def _flag(parameters: dict, key: str, owner: str, default: bool = False) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"{owner}: parameter {key!r} must be true or false, got {value!r}")
    return value


def _classification(output: RequestOutput) -> int | None:
    count = output.parameters.get("classification")
    if count is None:
        return None
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ProtocolError(f"output {output.name!r}: classification must be a positive integer, got {count!r}")
    return count


# --- responses ---------------------------------------------------------------------------------------

def classify(probabilities: np.ndarray, count: int, labels: list[str]) -> np.ndarray:
    """The classification extension: the top `count` (at most the number of labels) per row as
    "value:index:label", BYTES [N, count]."""
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :count]
    rows = [[f"{np.float32(row[i])!s}:{i}:{labels[i]}".encode() for i in indices]
            for row, indices in zip(probabilities, top)]
    array = np.empty((len(rows), count), dtype=object)
    for i, row in enumerate(rows):  # row by row: no rows (no face found) is a [0, count] tensor
        array[i] = row
    return array


def bytes_tensor(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = [value.encode() for value in values]
    return array


def encode_response(model_name: str, model_version: str, request_id: str | None,
                    outputs: list[tuple[str, str, np.ndarray, bool]],
                    parameters: dict[str, Any] | None = None) -> tuple[bytes, int | None]:
    """(body, JSON length) for outputs given as (name, datatype, array, binary); the length is None when the
    whole body is JSON (no output asked for binary data)."""
    described, sections = [], []
    for name, datatype, array, binary in outputs:
        output: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _to_binary(datatype, array)
            output["parameters"] = {"binary_data_size": len(raw)}
            sections.append(raw)
        else:
            output["data"] = ([value.decode() for value in array.reshape(-1)] if datatype == "BYTES"
                              else array.reshape(-1).tolist())
        described.append(output)
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": described}
    if request_id is not None:
        header["id"] = request_id
    if parameters:
        header["parameters"] = parameters
    text = json.dumps(header, separators=(",", ":")).encode()
    if not sections:
        return text, None
    return text + b"".join(sections), len(text)


def _to_binary(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(value)) + value for value in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """A body as the client compressed it (tritonclient's request_compression_algorithm), inflated up to `limit`."""
    encoding = encoding.strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"unsupported Content-Encoding {encoding!r}: send gzip, deflate or none", status=415)
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise ProtocolError(f"the {encoding} body cannot be inflated ({error})") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"the inflated request body exceeds the limit of {limit} bytes", status=413)
    return inflated
