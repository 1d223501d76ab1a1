"""Client mistakes in ``ModelInferRequest`` messages, for the tests; no tests here.

Each mistake breaks one thing in a valid request of ``tensors.request_from_instances`` (at
least three instances, numeric and categorical features), choosing its tensor by kind, so that
the same table serves the in-process tests of ``tensors`` (which pin each message) and the
gRPC server's (which check the status and message that come over the wire).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

from serving_image.server.protos import grpc_predict_v2_pb2 as pb

Mistake = Callable[[pb.ModelInferRequest], pb.ModelInferRequest]
"""A valid request made wrong in one way (changed in place, or a changed copy)."""


def tensor(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest.InferInputTensor:
    return next(t for t in request.inputs if t.name == name)


def numeric(request: pb.ModelInferRequest) -> str:
    """The first numeric feature's input (an ``FP64`` tensor)."""
    return next(t.name for t in request.inputs if t.datatype == "FP64")


def categorical(request: pb.ModelInferRequest) -> str:
    """The first categorical feature's input (a ``BYTES`` tensor)."""
    return next(t.name for t in request.inputs if t.datatype == "BYTES")


def rows(request: pb.ModelInferRequest) -> int:
    return request.inputs[0].shape[0]


def length_prefixed(texts: list[bytes]) -> bytes:
    """``BYTES`` raw contents: each element a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(text)) + text for text in texts)


def as_raw(request: pb.ModelInferRequest, **replaced: tuple[str, bytes]) -> pb.ModelInferRequest:
    """A copy with every input's values moved to ``raw_input_contents``; ``replaced``: an
    input's datatype and raw bytes instead."""
    raw = pb.ModelInferRequest()
    raw.CopyFrom(request)
    for t in raw.inputs:
        numbers = t.contents.fp64_contents
        packed = (
            length_prefixed(list(t.contents.bytes_contents))
            if t.datatype == "BYTES"
            else struct.pack(f"<{len(numbers)}d", *numbers)
        )
        t.datatype, packed = replaced.get(t.name, (t.datatype, packed))
        t.ClearField("contents")
        raw.raw_input_contents.append(packed)
    return raw


def _set(choose: Callable[[pb.ModelInferRequest], str], **fields: Any) -> Mistake:
    """The chosen tensor's ``datatype``, ``shape`` (a function of the row count) or
    ``contents`` (a function of the current contents) replaced."""

    def apply(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        t = tensor(request, choose(request))
        if "datatype" in fields:
            t.datatype = fields["datatype"]
        if "shape" in fields:
            shape = fields["shape"](rows(request))
            t.ClearField("shape")
            t.shape.extend(shape)
        if "contents" in fields:
            t.contents.CopyFrom(pb.InferTensorContents(**fields["contents"](t.contents)))
        return request

    return apply


def _one_replaced(values: Any, value: Any) -> list[Any]:
    """``values`` with its second element replaced by ``value``."""
    return [values[0], value, *values[2:]]


def _twice(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.inputs.append(request.inputs[0])
    return request


def _added(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    colour = request.inputs.add(name="colour", datatype="FP64", shape=[rows(request)])
    colour.contents.fp64_contents.extend([1.0] * rows(request))
    return request


def _dropped(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.inputs.remove(tensor(request, numeric(request)))
    return request


def _emptied(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    for t in request.inputs:
        t.ClearField("contents")
        t.shape[0] = 0
    return request


def _one_raw_entry(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.raw_input_contents.append(b"\0" * 8 * rows(request))
    return request


def _raw(choose: Callable[[pb.ModelInferRequest], str], datatype: str, data: bytes) -> Mistake:
    return lambda request: as_raw(request, **{choose(request): (datatype, data)})


def _contents_and_raw(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    raw = as_raw(request)
    name = numeric(request)
    tensor(raw, name).contents.CopyFrom(tensor(request, name).contents)
    return raw


def _parameter(name: str, **value: Any) -> Mistake:
    def apply(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        request.parameters[name].CopyFrom(pb.InferParameter(**value))
        return request

    return apply


MISTAKES: dict[str, Mistake] = {
    "input given twice": _twice,
    "unknown input": _added,
    "missing input": _dropped,
    "a numeric feature as BYTES": _set(numeric, datatype="BYTES"),
    "a categorical feature as FP64": _set(categorical, datatype="FP64"),
    "no datatype": _set(numeric, datatype=""),
    "shape of two columns": _set(numeric, shape=lambda n: [n, 2]),
    "scalar shape": _set(numeric, shape=lambda n: []),
    "negative shape": _set(numeric, shape=lambda n: [-1]),
    "inputs of different lengths": _set(
        numeric, shape=lambda n: [n - 1], contents=lambda c: {"fp64_contents": c.fp64_contents[1:]}
    ),
    "shape and contents disagree": _set(
        numeric, shape=lambda n: [n, 1], contents=lambda c: {"fp64_contents": c.fp64_contents[1:]}
    ),
    "no instances": _emptied,
    "raw contents for some inputs only": _one_raw_entry,
    "raw numbers cut short": _raw(numeric, "FP64", b"\0" * 23),
    "raw bytes ending inside a length prefix": _raw(categorical, "BYTES", b"\5\0\0\0Dream\2\0"),
    "raw bytes ending inside an element": _raw(categorical, "BYTES", b"\5\0\0\0Dream\11\0\0\0abc"),
    "contents and raw contents both": _contents_and_raw,
    "non-UTF-8 text": _set(
        categorical,
        contents=lambda c: {"bytes_contents": _one_replaced(c.bytes_contents, b"\xff\xfe")},
    ),
    "infinity": _set(
        numeric, contents=lambda c: {"fp64_contents": _one_replaced(c.fp64_contents, math.inf)}
    ),
    "number out of range": _set(
        numeric, contents=lambda c: {"fp64_contents": _one_replaced(c.fp64_contents, 1e31)}
    ),
    "unknown parameter": _parameter("colour", string_param="red"),
    "output parameter of the wrong kind": _parameter("output", int64_param=3),
    "unknown output form": _parameter("output", string_param="everything"),
}
