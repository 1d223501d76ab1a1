"""Tensors and our requests, both ways, in-process: the Open Inference Protocol's messages
validate as the HTTP route's JSON does, answers turn back into the HTTP route's predictions,
and every client mistake is a 400 that names it."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest

from serving_image.server.predictions import format_classification, format_regression
from serving_image.server.protos import grpc_predict_v2_pb2 as pb
from serving_image.server.tensors import (
    infer_request,
    infer_response,
    predictions_from_response,
    request_from_instances,
)
from serving_image.server.validation import (
    PredictRequest,
    RequestError,
    Schema,
    parse_predict_request,
)
from tests.server.infer_mistakes import MISTAKES, as_raw, length_prefixed, tensor

FEATURES = [
    {"name": "island", "kind": "categorical"},
    {"name": "bill_mm", "kind": "numeric"},
    {"name": "note", "kind": "categorical", "required": False},
    {"name": "year", "kind": "numeric", "nullable": False},
]
"""Nullable and not, and an optional feature in the middle, where its absence shows."""
SCHEMA = Schema.from_manifest({"task": "classification", "features": FEATURES})
NAMES = SCHEMA.names
INSTANCES = [
    {"island": "Dream", "bill_mm": 41.5, "note": "ringed", "year": 2009},
    {"island": None, "bill_mm": None, "note": None, "year": 2007},
    {"island": "Øresund", "bill_mm": -3, "note": "", "year": 2008.5},
]
CLASSES = ["Adelie", "Chinstrap", "Gentoo"]
LABELS = ["Gentoo", "Adelie"]
PROBABILITIES = [[0.25, 0.25, 0.5], [0.9, 0.05, 0.05]]


def http_request(instances: list[Any], **parameters: Any) -> PredictRequest:
    """What the HTTP route makes of the same instances."""
    body = {"instances": instances, **({"parameters": parameters} if parameters else {})}
    return parse_predict_request(json.dumps(body).encode(), SCHEMA)


def valid_request() -> pb.ModelInferRequest:
    return request_from_instances(INSTANCES, FEATURES)


# --- request_from_instances and infer_request --------------------------------------------------


def test_instances_as_tensors_validate_into_the_http_routes_columns() -> None:
    request = valid_request()
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [
        (f["name"], "FP64" if f["kind"] == "numeric" else "BYTES", [len(INSTANCES)])
        for f in FEATURES
    ]
    bill = tensor(request, "bill_mm").contents.fp64_contents
    assert bill[0] == 41.5 and math.isnan(bill[1]), "None travels as NaN"
    assert tensor(request, "island").contents.bytes_contents[1] == b"", "None travels as b''"

    predict, wanted = infer_request(request, SCHEMA)
    # An empty string is missing in a BYTES tensor, as null is in JSON.
    http = http_request([{**i, "note": i["note"] or None} for i in INSTANCES])
    assert list(predict.columns) == NAMES
    assert predict.columns == http.columns and predict.count == http.count == len(INSTANCES)
    assert predict.instances == [], "a gRPC request keeps its tensors only as columns"
    assert (predict.output, wanted) == (SCHEMA.default_output, ())


def test_instances_as_lists_make_the_same_request_as_objects() -> None:
    as_lists = [[i[name] for name in NAMES] for i in INSTANCES]
    from_lists = request_from_instances(as_lists, FEATURES)
    assert from_lists.SerializeToString(deterministic=True) == valid_request().SerializeToString(
        deterministic=True
    )  # bytes, not messages: NaN equals no NaN


def test_the_output_parameter_model_name_and_requested_outputs_travel() -> None:
    request = request_from_instances(INSTANCES, FEATURES, model_name="penguins", output="label")
    request.outputs.add(name="label")
    predict, wanted = infer_request(request, SCHEMA)
    assert request.model_name == "penguins"
    assert predict.output == http_request(INSTANCES[:1], output="label").output == "label"
    assert wanted == ("label",)


def test_an_absent_optional_feature_is_missing_and_columns_keep_the_schema_order() -> None:
    request = valid_request()
    del request.inputs[NAMES.index("note")]
    predict, _ = infer_request(request, SCHEMA)
    assert list(predict.columns) == NAMES
    assert predict.columns["note"] == [None] * len(INSTANCES)
    assert predict.columns == http_request([{**i, "note": None} for i in INSTANCES]).columns


# --- raw_input_contents ------------------------------------------------------------------------

NUMBERS = {
    "FP64": ("d", "fp64_contents", [41.5, -0.125, 1e30]),
    "FP32": ("f", "fp32_contents", [41.5, -0.125, 2.0**90]),  # exact in float32
    "INT64": ("q", "int64_contents", [2009, -7, 2**62]),
    "INT32": ("i", "int_contents", [2009, -7, 2**31 - 1]),
}


@pytest.mark.parametrize("datatype", list(NUMBERS))
def test_raw_numbers_read_as_their_contents_twin(datatype: str) -> None:
    code, field, values = NUMBERS[datatype]
    with_contents = valid_request()
    bill = tensor(with_contents, "bill_mm")
    bill.datatype = datatype
    bill.contents.Clear()
    getattr(bill.contents, field).extend(values)
    raw = as_raw(valid_request(), bill_mm=(datatype, struct.pack(f"<3{code}", *values)))

    from_contents, _ = infer_request(with_contents, SCHEMA)
    from_raw, _ = infer_request(raw, SCHEMA)
    assert from_raw.columns == from_contents.columns
    assert from_raw.columns["bill_mm"] == values
    assert from_raw.columns["island"] == ["Dream", None, "Øresund"]


def test_raw_nan_is_missing_and_raw_bytes_are_length_prefixed_utf8() -> None:
    texts = length_prefixed([b"Dream", b"", "Øresund".encode()])
    request = as_raw(
        valid_request(),
        island=("BYTES", texts),
        bill_mm=("FP32", struct.pack("<3f", 1.5, math.nan, 2.5)),
        note=("BYTES", texts),
        year=("INT64", struct.pack("<3q", 2009, 2007, 2008)),
    )
    predict, _ = infer_request(request, SCHEMA)
    assert predict.columns == {
        "island": ["Dream", None, "Øresund"],
        "bill_mm": [1.5, None, 2.5],
        "note": ["Dream", None, "Øresund"],
        "year": [2009, 2007, 2008],
    }


# --- client mistakes ---------------------------------------------------------------------------


NUMERIC_TAKES = "the numeric feature takes FP64 or FP32 or INT64 or INT32"
ONE_VALUE_PER_INSTANCE = "use [N] or [N, 1], one value per instance"
OUTPUT_FORMS = (
    "parameter 'output' must be a string_param, one of ['both', 'label', 'probabilities']"
)
MESSAGES = {
    "input given twice": "input tensor 'island' is given twice",
    "unknown input": f"unknown input tensor(s) ['colour']; the model's inputs are {NAMES}",
    "missing input": f"missing input tensor(s) ['bill_mm']; one per feature: {NAMES}",
    "a numeric feature as BYTES": f"input tensor 'bill_mm' is BYTES; {NUMERIC_TAKES}",
    "a categorical feature as FP64": (
        "input tensor 'island' is FP64; the categorical feature takes BYTES"
    ),
    "no datatype": f"input tensor 'bill_mm' is without a datatype; {NUMERIC_TAKES}",
    "shape of two columns": f"input tensor 'bill_mm' has shape [3, 2]; {ONE_VALUE_PER_INSTANCE}",
    "scalar shape": f"input tensor 'bill_mm' has shape []; {ONE_VALUE_PER_INSTANCE}",
    "negative shape": f"input tensor 'bill_mm' has shape [-1]; {ONE_VALUE_PER_INSTANCE}",
    "inputs of different lengths": (
        "input tensor 'bill_mm' has 2 rows, the first input 3; every input holds one value per "
        "instance"
    ),
    "shape and contents disagree": (
        "input tensor 'bill_mm' has shape [3, 1] but holds 2 FP64 values; the shape and the "
        "contents must agree"
    ),
    "no instances": "the input tensors hold no instances; send at least one",
    "raw contents for some inputs only": (
        "raw_input_contents has 1 entries for 4 inputs; give one per input, in order"
    ),
    "raw numbers cut short": "raw contents of 'bill_mm' are 23 bytes, not a whole number of FP64",
    "raw bytes ending inside a length prefix": (
        "raw contents of 'island' end inside a length prefix"
    ),
    "raw bytes ending inside an element": "raw contents of 'island' end inside an element",
    "contents and raw contents both": (
        "input tensor 'bill_mm' has values in both contents and raw_input_contents; give them in "
        "one of the two"
    ),
    "non-UTF-8 text": "instances[1]: feature 'island' is not UTF-8 text",
    "infinity": (
        "instances[1]: feature 'bill_mm' is inf; numbers must lie between -1e+30 and 1e+30"
    ),
    "number out of range": (
        "instances[1]: feature 'bill_mm' is 1e+31; numbers must lie between -1e+30 and 1e+30"
    ),
    "unknown parameter": "unknown parameter(s) ['colour']; supported: ['output']",
    "output parameter of the wrong kind": f"{OUTPUT_FORMS}; got int64_param: 3",
    "unknown output form": f'{OUTPUT_FORMS}; got string_param: "everything"',
}
"""What each of ``infer_mistakes.MISTAKES`` is told about this schema."""


def test_every_mistake_has_its_message_here() -> None:
    assert list(MESSAGES) == list(MISTAKES)


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_client_mistake_is_a_400_that_names_it(mistake: str) -> None:
    with pytest.raises(RequestError) as refused:
        infer_request(MISTAKES[mistake](valid_request()), SCHEMA)
    assert (refused.value.status, refused.value.message) == (400, MESSAGES[mistake])


@pytest.mark.parametrize(
    "json_instances",
    [
        [{**INSTANCES[0], "bill_mm": v} for v in (1.0, 1e31, 2.0)],
        [{**INSTANCES[0], "year": v} for v in (2009, None, 2008)],
    ],
    ids=["number out of range", "missing value of a non-nullable feature"],
)
def test_a_fault_both_routes_can_make_gets_the_http_routes_words(
    json_instances: list[dict[str, Any]],
) -> None:
    with pytest.raises(RequestError) as grpc_refusal:
        infer_request(request_from_instances(json_instances, FEATURES), SCHEMA)
    with pytest.raises(RequestError) as http_refusal:
        http_request(json_instances)
    assert grpc_refusal.value.message == http_refusal.value.message
    assert grpc_refusal.value.instance == http_refusal.value.instance == 1


# --- infer_response and predictions_from_response ----------------------------------------------

CLASSIFIED = {
    output: format_classification(LABELS, PROBABILITIES, CLASSES, output)
    for output in ("both", "label", "probabilities")
}


@pytest.mark.parametrize(
    ("predictions", "task", "tensors"),
    [
        (CLASSIFIED["both"], "classification", [("label", "BYTES"), ("probabilities", "FP64")]),
        (CLASSIFIED["label"], "classification", [("label", "BYTES")]),
        (CLASSIFIED["probabilities"], "classification", [("probabilities", "FP64")]),
        (format_classification([2, 0], PROBABILITIES, [0, 1, 2]), "classification",
         [("label", "INT64"), ("probabilities", "FP64")]),
        ([0.5, 2.0], "classification", [("label", "FP64")]),
        (format_regression([12.5, -3]), "regression", [("value", "FP64")]),
    ],
    ids=["both", "label", "probabilities", "integer classes", "number classes", "regression"],
)  # fmt: skip
def test_answers_turn_back_into_the_http_routes_predictions(
    predictions: list[Any], task: str, tensors: list[tuple[str, str]]
) -> None:
    response = infer_response(predictions, task=task, model_name="penguins", request_id="r-7")
    assert (response.model_name, response.id) == ("penguins", "r-7")
    assert [(t.name, t.datatype) for t in response.outputs] == tensors
    for output in response.outputs:
        width = [len(CLASSES)] if output.name == "probabilities" else []
        assert list(output.shape) == [len(predictions), *width]
    assert predictions_from_response(response) == predictions


def test_the_probabilities_name_their_classes_in_a_parameter() -> None:
    response = infer_response(CLASSIFIED["probabilities"], task="classification", model_name="m")
    (probabilities,) = response.outputs
    assert json.loads(probabilities.parameters["classes"].string_param) == CLASSES
    assert list(probabilities.contents.fp64_contents) == [p for row in PROBABILITIES for p in row]


def test_requested_outputs_choose_and_order_the_answers_tensors() -> None:
    both = CLASSIFIED["both"]
    response = infer_response(
        both, task="classification", model_name="m", wanted=("probabilities", "label")
    )
    assert [t.name for t in response.outputs] == ["probabilities", "label"]
    assert predictions_from_response(response) == both
    only = infer_response(both, task="classification", model_name="m", wanted=("probabilities",))
    assert predictions_from_response(only) == CLASSIFIED["probabilities"]


def test_an_output_the_answer_has_not_is_a_400() -> None:
    with pytest.raises(RequestError) as refused:
        infer_response(
            CLASSIFIED["label"], task="classification", model_name="m", wanted=("probabilities",)
        )
    assert (refused.value.status, refused.value.message) == (
        400,
        "unknown output(s) ['probabilities']; this answer has ['label']",
    )


def _answer(*outputs: pb.ModelInferResponse.InferOutputTensor) -> pb.ModelInferResponse:
    return pb.ModelInferResponse(outputs=outputs)


def _output(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    return pb.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (_answer(), "the answer has no output tensors"),
        (
            _answer(_output("scores", "FP64", [1], fp64_contents=[1.0])),
            "outputs ['scores']: expected label, probabilities or value",
        ),
        (
            _answer(_output("label", "BOOL", [1], bool_contents=[True])),
            "output 'label' has datatype 'BOOL'",
        ),
        (
            _answer(_output("probabilities", "FP64", [1, 3], fp64_contents=[0.5, 0.5])),
            "output 'probabilities': shape [1, 3], 2 values and the 'classes' parameter None "
            "do not make [rows, classes]",
        ),
    ],
    ids=["no outputs", "unknown output", "unknown datatype", "probabilities without classes"],
)
def test_an_answer_of_another_form_is_refused_saying_why(
    response: pb.ModelInferResponse, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        predictions_from_response(response)
    assert str(refused.value) == message


def test_labels_and_probability_rows_must_agree() -> None:
    response = infer_response(CLASSIFIED["both"], task="classification", model_name="m")
    response.outputs[0].contents.bytes_contents.append(b"Adelie")
    with pytest.raises(ValueError) as refused:
        predictions_from_response(response)
    assert str(refused.value) == "3 labels but 2 probability rows"
