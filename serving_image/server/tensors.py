"""The Open Inference Protocol's tensors as our requests and answers, both ways.

A ``ModelInferRequest`` carries one input tensor per feature, named as the manifest names it,
of shape ``[N]`` (or ``[N, 1]``): ``FP64``, ``FP32``, ``INT64`` or ``INT32`` for a numeric
feature, ``BYTES`` (UTF-8) for a categorical one, in ``contents`` or ``raw_input_contents``
(as Triton's clients send; not both). A missing value is ``NaN`` in a number tensor and an
empty string in a ``BYTES`` tensor, where the feature is nullable (JSON's ``null`` on the HTTP
route). The columns then pass the HTTP route's own checks (``validation.check_column``), so
both routes refuse the same values with the same words. The request parameter ``output``
chooses the answer's form as ``parameters.output`` does over HTTP.

The answer's outputs: ``label`` (``BYTES`` for string classes, ``INT64`` or ``FP64`` for
numbers) and ``probabilities`` (``FP64``, ``[N, classes]``, the class names as JSON in its
``classes`` parameter) for a classifier, ``value`` (``FP64``, ``[N]``) for a regressor.
``predictions_from_response`` turns such an answer back into the HTTP route's JSON
predictions: the contract check and the clients compare those.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from .protos import grpc_predict_v2_pb2 as pb
from .validation import PredictRequest, RequestError, Schema, check_column

NUMERIC_DATATYPES = {"FP64": "d", "FP32": "f", "INT64": "q", "INT32": "i"}
"""Number tensors a numeric feature takes, with their ``struct`` codes (raw contents are
little-endian)."""
_CONTENTS_FIELD = {
    "FP64": "fp64_contents",
    "FP32": "fp32_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "BYTES": "bytes_contents",
}
LABEL, PROBABILITIES, VALUE = "label", "probabilities", "value"
CLASSES_PARAMETER = "classes"
OUTPUT_PARAMETER = "output"


def infer_request(
    request: pb.ModelInferRequest, schema: Schema
) -> tuple[PredictRequest, tuple[str, ...]]:
    """The validated request, and the outputs asked for (empty: all); ``RequestError``
    (400) naming the fault, in the HTTP route's words where the fault is the same."""
    output = _output(request.parameters, schema)
    by_name: dict[str, pb.ModelInferRequest.InferInputTensor] = {}
    for tensor in request.inputs:
        if tensor.name in by_name:
            raise RequestError(400, f"input tensor {tensor.name!r} is given twice")
        by_name[tensor.name] = tensor
    names = schema.names
    unknown = [name for name in by_name if name not in names]
    if unknown:
        raise RequestError(
            400, f"unknown input tensor(s) {unknown}; the model's inputs are {names}"
        )
    missing = [f.name for f in schema.features if f.required and f.name not in by_name]
    if missing:
        raise RequestError(400, f"missing input tensor(s) {missing}; one per feature: {names}")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(
            400,
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in order",
        )
    raw_by_name = dict(zip((t.name for t in request.inputs), raw, strict=False))
    columns: dict[str, list[Any]] = {}
    count: int | None = None
    for feature in schema.features:
        tensor = by_name.get(feature.name)
        if tensor is None:
            continue
        rows = _rows(tensor)
        if count is None:
            count = rows
        elif rows != count:
            raise RequestError(
                400,
                f"input tensor {tensor.name!r} has {rows} rows, the first input {count}; "
                "every input holds one value per instance",
            )
        values = _values(tensor, raw_by_name.get(tensor.name), feature.numeric, rows)
        columns[feature.name] = _missing_as_none(feature.name, values, feature.numeric)
    if not count:
        raise RequestError(400, "the input tensors hold no instances; send at least one")
    # In the schema's order, as the HTTP route has them: the model's frame takes its columns
    # in this order (scikit-learn refuses others), and an absent optional feature is missing.
    columns = {name: columns.get(name, [None] * count) for name in names}
    for feature in schema.features:
        check_column(feature, columns[feature.name])
    wanted = tuple(tensor.name for tensor in request.outputs)
    return PredictRequest(columns, count, output), wanted


def _output(parameters: Any, schema: Schema) -> str:
    unknown = sorted(set(parameters) - {OUTPUT_PARAMETER})
    if unknown:
        raise RequestError(
            400, f"unknown parameter(s) {unknown}; supported: [{OUTPUT_PARAMETER!r}]"
        )
    if OUTPUT_PARAMETER not in parameters:
        return schema.default_output
    parameter = parameters[OUTPUT_PARAMETER]
    output = parameter.string_param
    if parameter.WhichOneof("parameter_choice") != "string_param" or output not in schema.outputs:
        raise RequestError(
            400,
            f"parameter {OUTPUT_PARAMETER!r} must be a string_param, one of "
            f"{list(schema.outputs)}; got {str(parameter).strip() or 'an empty parameter'}",
        )
    return output


def _rows(tensor: pb.ModelInferRequest.InferInputTensor) -> int:
    shape = list(tensor.shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 0:
        raise RequestError(
            400,
            f"input tensor {tensor.name!r} has shape {shape}; use [N] or [N, 1], one value "
            "per instance",
        )
    return shape[0]


def _values(
    tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None, numeric: bool, rows: int
) -> list[Any]:
    datatype = tensor.datatype
    accepted = list(NUMERIC_DATATYPES) if numeric else ["BYTES"]
    if datatype not in accepted:
        kind = "numeric" if numeric else "categorical"
        raise RequestError(
            400,
            f"input tensor {tensor.name!r} is {datatype or 'without a datatype'}; the "
            f"{kind} feature takes {' or '.join(accepted)}",
        )
    if raw is not None:
        if tensor.contents.ListFields():  # the protocol: contents unset when raw carries the data
            raise RequestError(
                400,
                f"input tensor {tensor.name!r} has values in both contents and "
                "raw_input_contents; give them in one of the two",
            )
        values = _from_raw(tensor.name, datatype, raw)
    else:
        values = list(getattr(tensor.contents, _CONTENTS_FIELD[datatype]))
    if len(values) != rows:
        raise RequestError(
            400,
            f"input tensor {tensor.name!r} has shape {list(tensor.shape)} but holds "
            f"{len(values)} {datatype} values; the shape and the contents must agree",
        )
    return values


def _from_raw(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":  # each element: a 4-byte little-endian length, then its bytes
        values, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise RequestError(400, f"raw contents of {name!r} end inside a length prefix")
            (size,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + size > len(raw):
                raise RequestError(400, f"raw contents of {name!r} end inside an element")
            values.append(raw[at : at + size])
            at += size
        return values
    code = NUMERIC_DATATYPES[datatype]
    width = struct.calcsize(code)
    if len(raw) % width:
        raise RequestError(
            400, f"raw contents of {name!r} are {len(raw)} bytes, not a whole number of {datatype}"
        )
    return list(struct.unpack(f"<{len(raw) // width}{code}", raw))


def _missing_as_none(name: str, values: list[Any], numeric: bool) -> list[Any]:
    if numeric:  # NaN is the one value unequal to itself (integer tensors have none)
        return [None if v != v else v for v in values]
    try:
        return [value.decode() if value else None for value in values]
    except UnicodeDecodeError:  # rare: find the instance to name
        for index, value in enumerate(values):
            try:
                value.decode()
            except UnicodeDecodeError:
                raise RequestError(
                    400, f"instances[{index}]: feature {name!r} is not UTF-8 text", index
                ) from None
        raise


def infer_response(
    predictions: Sequence[Any],
    *,
    task: str,
    model_name: str,
    request_id: str = "",
    wanted: Sequence[str] = (),
) -> pb.ModelInferResponse:
    """The answer to ``infer_request``'s request: a ``task`` model's predictions as output
    tensors (only those ``wanted``, when it names some); ``RequestError`` for an output the
    answer has not."""
    rows = list(predictions)
    if task == "regression":
        outputs = [_tensor(VALUE, "FP64", [len(rows)], [float(value) for value in rows])]
    else:
        outputs = _classification_tensors(rows)
    if wanted:
        have = {tensor.name: tensor for tensor in outputs}
        unknown = [name for name in wanted if name not in have]
        if unknown:
            raise RequestError(400, f"unknown output(s) {unknown}; this answer has {list(have)}")
        outputs = [have[name] for name in wanted]
    return pb.ModelInferResponse(model_name=model_name, id=request_id, outputs=outputs)


def _classification_tensors(
    predictions: list[Any],
) -> list[pb.ModelInferResponse.InferOutputTensor]:
    """``label`` and ``probabilities`` (output ``both``), or the one the request chose."""
    first = predictions[0]
    if isinstance(first, dict) and set(first) == {LABEL, PROBABILITIES}:
        labels = [p[LABEL] for p in predictions]
        return [_labels(labels), _probabilities([p[PROBABILITIES] for p in predictions])]
    if isinstance(first, dict):
        return [_probabilities(predictions)]
    return [_labels(predictions)]


def label_datatype(labels: Sequence[Any]) -> str:
    """The ``label`` tensor's datatype for these labels (or a classifier's classes)."""
    if all(isinstance(label, str) for label in labels):
        return "BYTES"
    if all(isinstance(label, int) and not isinstance(label, bool) for label in labels):
        return "INT64"
    return "FP64"


def _labels(labels: list[Any]) -> pb.ModelInferResponse.InferOutputTensor:
    datatype = label_datatype(labels)
    if datatype == "BYTES":
        return _tensor(LABEL, datatype, [len(labels)], [label.encode() for label in labels])
    if datatype == "INT64":
        return _tensor(LABEL, datatype, [len(labels)], labels)
    return _tensor(LABEL, datatype, [len(labels)], [float(label) for label in labels])


def _probabilities(rows: list[dict[str, float]]) -> pb.ModelInferResponse.InferOutputTensor:
    classes = list(rows[0])
    flat = [row[name] for row in rows for name in classes]
    tensor = _tensor(PROBABILITIES, "FP64", [len(rows), len(classes)], flat)
    tensor.parameters[CLASSES_PARAMETER].string_param = json.dumps(classes)
    return tensor


def _tensor(
    name: str, datatype: str, shape: list[int], values: Sequence[Any]
) -> pb.ModelInferResponse.InferOutputTensor:
    tensor = pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, _CONTENTS_FIELD[datatype]).extend(values)
    return tensor


def predictions_from_response(response: pb.ModelInferResponse) -> list[Any]:
    """The HTTP route's JSON predictions from an ``infer_response`` answer.

    Raises:
        ValueError: the answer is not of that form (the message says what is not).
    """
    outputs = {tensor.name: tensor for tensor in response.outputs}
    if not outputs:
        raise ValueError("the answer has no output tensors")
    if VALUE in outputs:
        return list(_contents(outputs[VALUE]))
    labels = _decoded_labels(outputs[LABEL]) if LABEL in outputs else None
    probabilities = _probability_rows(outputs[PROBABILITIES]) if PROBABILITIES in outputs else None
    if labels is not None and probabilities is not None:
        if len(labels) != len(probabilities):
            raise ValueError(f"{len(labels)} labels but {len(probabilities)} probability rows")
        return [
            {LABEL: label, PROBABILITIES: row}
            for label, row in zip(labels, probabilities, strict=True)
        ]
    if labels is not None:
        return labels
    if probabilities is not None:
        return probabilities
    raise ValueError(f"outputs {sorted(outputs)}: expected {LABEL}, {PROBABILITIES} or {VALUE}")


def _contents(tensor: pb.ModelInferResponse.InferOutputTensor) -> Sequence[Any]:
    field = _CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise ValueError(f"output {tensor.name!r} has datatype {tensor.datatype!r}")
    return getattr(tensor.contents, field)


def _decoded_labels(tensor: pb.ModelInferResponse.InferOutputTensor) -> list[Any]:
    values = _contents(tensor)
    return [v.decode() for v in values] if tensor.datatype == "BYTES" else list(values)


def _probability_rows(tensor: pb.ModelInferResponse.InferOutputTensor) -> list[dict[str, float]]:
    classes = json.loads(tensor.parameters[CLASSES_PARAMETER].string_param or "null")
    shape, flat = list(tensor.shape), list(_contents(tensor))
    if (
        not isinstance(classes, list)
        or len(shape) != 2
        or shape[1] != len(classes)
        or len(flat) != shape[0] * shape[1]
    ):
        raise ValueError(
            f"output {tensor.name!r}: shape {shape}, {len(flat)} values and the "
            f"{CLASSES_PARAMETER!r} parameter {classes!r} do not make [rows, classes]"
        )
    width = len(classes)
    rows = range(0, len(flat), width)
    return [dict(zip(classes, flat[i : i + width], strict=True)) for i in rows]


def request_from_instances(
    instances: Sequence[Any],
    features: Sequence[Mapping[str, Any]],
    *,
    model_name: str = "",
    output: str | None = None,
) -> pb.ModelInferRequest:
    """The ``ModelInferRequest`` a client sends for HTTP-route ``instances`` (objects keyed by
    feature name, or arrays in feature order), given the manifest's ``features``: ``FP64``
    tensors for numeric features (``None`` as NaN), ``BYTES`` for the others (``None`` as
    an empty string)."""
    tensors = []
    for position, feature in enumerate(features):
        name = feature["name"]
        values = [row.get(name) if isinstance(row, Mapping) else row[position] for row in instances]
        if feature["kind"] == "numeric":
            datatype = "FP64"
            contents = pb.InferTensorContents(
                fp64_contents=[math.nan if v is None else float(v) for v in values]
            )
        else:
            datatype = "BYTES"
            contents = pb.InferTensorContents(
                bytes_contents=[b"" if v is None else str(v).encode() for v in values]
            )
        tensors.append(
            pb.ModelInferRequest.InferInputTensor(
                name=name, datatype=datatype, shape=[len(values)], contents=contents
            )
        )
    request = pb.ModelInferRequest(model_name=model_name, inputs=tensors)
    if output is not None:
        request.parameters[OUTPUT_PARAMETER].string_param = output
    return request
