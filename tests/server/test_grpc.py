"""The server's gRPC side, against real server processes and real grpcio clients.

Health follows the model: ``NOT_SERVING`` while it loads and after it failed, ``SERVING``
once it is ready, ``NOT_SERVING`` from SIGTERM on, ``Watch`` streaming each change. The Open
Inference Protocol's answers for the model's whole sample equal the HTTP route's and the
exported predictions; every client mistake is ``INVALID_ARGUMENT`` with its message; fuzzed
messages and raw bytes never make a server error; and the serving image answers gRPC beside
HTTP.

One server (penguins, two workers) serves the module; the load, failure and SIGTERM cases
start their own.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import random
import shutil
import signal
import string
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx
import joblib
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from components import vertex
from components.runners import Engine, Mount, ServerSpec, free_local_port
from components.runners import start_server as start_container
from serving_image.server import artifact
from serving_image.server.grpc_service import SERVER_NAME
from serving_image.server.predictions import json_difference
from serving_image.server.protos import grpc_predict_v2_pb2 as pb
from serving_image.server.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_image.server.tensors import (
    infer_request,
    predictions_from_response,
    request_from_instances,
)
from serving_image.server.validation import RequestError, Schema
from tests.server.infer_mistakes import MISTAKES, as_raw
from tests.support.servers import launch_server

if TYPE_CHECKING:
    from tests.support.servers import LaunchedServer

    StartServer = Callable[..., LaunchedServer]

Sample = tuple[list[Any], list[Any], list[dict[str, Any]]]
"""The model's sample instances, their expected predictions, the manifest's features."""

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INFERENCE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"
MODEL_NAME = "penguins"
"""``SERVING_MODEL_NAME`` of the module's server (not the default, to show it is honoured)."""
MAX_BODY_BYTES = 200_000
"""The module's server's ``SERVING_MAX_BODY_BYTES``: small, so that oversized messages are
cheap."""
CLIENT_ERRORS = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
"""What any message may get: an answer, or a refusal of the client's mistake."""
FUZZ_SEED = int(os.environ.get("GRPC_FUZZ_SEED", "20240611"))
"""Seeds the fuzzing; ``GRPC_FUZZ_SEED`` replays another run's (failures name theirs)."""
FUZZ_MESSAGES = 10_000
IN_FLIGHT = 64
"""Fuzzed calls in flight at once on the one channel."""
CONTAINER_GRPC_PORT = 8081


def with_grpc(**env: str) -> dict[str, str]:
    """Server settings with gRPC on a free port."""
    return {"SERVING_GRPC_PORT": str(free_local_port()), **env}


def grpc_target(server: LaunchedServer) -> str:
    return f"127.0.0.1:{server.env['SERVING_GRPC_PORT']}"


def connect(target: str, timeout: float = 60.0) -> grpc.Channel:
    """A channel to ``target``, once its port accepts."""
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=timeout)
    return channel


def inference(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def health_of(channel: grpc.Channel) -> dict[str, int]:
    """``Check``'s answer for the server and for the inference service."""
    stub = health_pb2_grpc.HealthStub(channel)
    return {
        service: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        for service in ("", INFERENCE)
    }


def serving_within(channel: grpc.Channel, timeout: float) -> None:
    """Watch health until ``SERVING``: each worker reports its own model, a moment after it
    loaded, and this channel's worker may still be loading when another answers HTTP."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=timeout
    )
    for reply in watch:
        if reply.status == SERVING:
            watch.cancel()
            return
    raise AssertionError("the health stream ended before it said SERVING")


def refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status and details of a call that must fail."""
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code(), refused.value.details()


def http_predictions(
    post: Callable[[dict[str, Any]], httpx.Response], instances: list[Any], output: str
) -> list[Any]:
    """The HTTP route's predictions for ``instances``: one request per run of one form
    (objects, lists), as the route takes them."""
    predictions: list[Any] = []
    for _, run in itertools.groupby(instances, key=type):
        response = post({"instances": list(run), "parameters": {"output": output}})
        assert response.status_code == 200, response.text
        predictions += response.json()["predictions"]
    return predictions


def in_form(prediction: dict[str, Any], output: str) -> Any:
    """An exported (``both``) prediction in the form ``output`` asks for."""
    return prediction if output == "both" else prediction[output]


def server_errors(server: LaunchedServer) -> list[dict[str, Any]]:
    return [e for e in server.logs() if e["severity"] in ("ERROR", "CRITICAL")]


@pytest.fixture(scope="module")
def sample(penguins_model_dir: Path) -> Sample:
    instances, expected, _ = artifact.read_sample(penguins_model_dir)
    return instances, expected, artifact.read_manifest(penguins_model_dir)["features"]


@pytest.fixture(scope="module")
def server(penguins_model_dir: Path) -> Iterator[LaunchedServer]:
    """The penguins model behind two workers, gRPC on."""
    launched = launch_server(
        penguins_model_dir,
        with_grpc(
            SERVING_WORKERS="2",
            SERVING_MODEL_NAME=MODEL_NAME,
            SERVING_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        ),
    )
    try:
        launched.wait_ready()
        yield launched
    finally:
        launched.kill()


@pytest.fixture(scope="module")
def channel(server: LaunchedServer) -> Iterator[grpc.Channel]:
    with connect(grpc_target(server)) as channel:
        serving_within(channel, timeout=30)
        yield channel


# --- health as the model loads, fails and the server drains -----------------------------------


class _Call:
    """Unpickles as ``function(*args)``."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


def gated_copy(model_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``model_dir`` whose model loads only once something is written to the FIFO
    it returns: a load exactly as slow as the test wants. Its model file unpickles as
    ``(Path.read_text(gate), model)[1]``; the manifest names its new sha256."""
    copy = tmp_path / "gated_model"
    shutil.copytree(model_dir, copy)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    model_file = copy / artifact.MODEL_FILE
    model = joblib.load(model_file)
    joblib.dump(_Call(operator.getitem, (_Call(Path.read_text, gate), model), 1), model_file)
    manifest = artifact.read_manifest(copy)
    manifest["model_sha256"] = artifact.sha256_file(model_file)
    (copy / artifact.MANIFEST_FILE).write_text(json.dumps(manifest))
    return copy, gate


def test_health_is_not_serving_while_the_model_loads_and_watch_streams_serving(
    start_server: StartServer, penguins_model_dir: Path, tmp_path: Path, sample: Sample
) -> None:
    instances, expected, features = sample
    model_dir, gate = gated_copy(penguins_model_dir, tmp_path)
    server = start_server(
        model_dir,
        # scikit-learn's path: the gate is in model.joblib, which the compiled graph never reads
        with_grpc(SERVING_WORKERS="1", SERVING_LOAD_WAIT_S="0", SERVING_PREDICTOR="scikit-learn"),
    )
    one = request_from_instances(instances[:1], features)
    with connect(grpc_target(server)) as channel:
        stub = inference(channel)
        assert health_of(channel) == {"": NOT_SERVING, INFERENCE: NOT_SERVING}
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert not stub.ModelReady(pb.ModelReadyRequest(), timeout=10).ready
        assert refusal(lambda: stub.ModelInfer(one, timeout=10)) == (
            grpc.StatusCode.UNAVAILABLE,
            "model is still loading after 0 s (SERVING_LOAD_WAIT_S); retry shortly",
        )
        assert server.health().status_code == 503

        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=INFERENCE), timeout=60
        )
        assert next(watch).status == NOT_SERVING
        threading.Thread(target=gate.write_text, args=("open",), daemon=True).start()
        assert next(watch).status == SERVING
        watch.cancel()

        assert health_of(channel) == {"": SERVING, INFERENCE: SERVING}
        assert stub.ModelReady(pb.ModelReadyRequest(), timeout=10).ready
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        answer = predictions_from_response(stub.ModelInfer(one, timeout=10))
        assert json_difference(expected[:1], answer) is None


def test_a_model_that_failed_to_load_is_not_serving_and_inference_unavailable(
    start_server: StartServer, tmp_path: Path, sample: Sample
) -> None:
    instances, _, features = sample
    server = start_server(tmp_path / "no-model", with_grpc(SERVING_WORKERS="1"))
    failure = server.wait_for_log(lambda e: e["severity"] == "ERROR")
    with connect(grpc_target(server)) as channel:
        stub = inference(channel)
        assert health_of(channel) == {"": NOT_SERVING, INFERENCE: NOT_SERVING}
        assert not stub.ModelReady(pb.ModelReadyRequest(), timeout=10).ready
        unavailable = (grpc.StatusCode.UNAVAILABLE, f"model failed to load: {failure['error']}")
        request = request_from_instances(instances[:1], features)
        assert refusal(lambda: stub.ModelInfer(request, timeout=10)) == unavailable
        metadata = pb.ModelMetadataRequest()
        assert refusal(lambda: stub.ModelMetadata(metadata, timeout=10)) == unavailable
    assert "does not exist" in failure["error"]


def test_sigterm_turns_health_not_serving_finishes_the_in_flight_call_and_exits_0(
    start_server: StartServer, scripted_model_dir: Path
) -> None:
    drain_s = 2
    server = start_server(
        scripted_model_dir,
        with_grpc(SERVING_WORKERS="1", SERVING_DRAIN_S=str(drain_s), SERVING_GRACE_PERIOD_S="10"),
    )
    server.wait_ready()
    features = artifact.read_manifest(scripted_model_dir)["features"]

    def doubled(x: float, delay_s: float) -> pb.ModelInferRequest:
        """The scripted model answers ``2 * x`` after ``delay_s`` seconds."""
        return request_from_instances([{"x": x, "delay_s": delay_s}], features)

    with connect(grpc_target(server)) as channel:
        health, stub = health_pb2_grpc.HealthStub(channel), inference(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=30) for _ in range(2)]
        assert [next(watch).status for watch in watches] == [SERVING, SERVING]
        watches[0].cancel()  # one watcher leaving must not silence the others
        in_flight = stub.ModelInfer.future(doubled(3, 1.5), timeout=30)
        time.sleep(0.5)  # the call is being predicted now
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        assert next(watches[1]).status == NOT_SERVING
        assert predictions_from_response(in_flight.result()) == [6.0]
        # The drain: health says NOT_SERVING, and calls are still answered.
        assert health_of(channel) == {"": NOT_SERVING, INFERENCE: NOT_SERVING}
        assert predictions_from_response(stub.ModelInfer(doubled(2, 0), timeout=10)) == [4.0]
        assert list(watches[1]) == [], "the Watch stream ends, cleanly, at shutdown"
    assert server.process.wait(15) == 0
    # The drain (from SIGTERM on) and a margin, below the 10 s an open Watch used to hold the
    # worker for (the drain, then the rest of the grace period).
    assert time.monotonic() - signalled < drain_s + 5
    assert server_errors(server) == []


# --- the Open Inference Protocol on a served model ---------------------------------------------


def test_health_serves_both_services_and_knows_no_others(channel: grpc.Channel) -> None:
    assert health_of(channel) == {"": SERVING, INFERENCE: SERVING}
    stub = health_pb2_grpc.HealthStub(channel)
    other = health_pb2.HealthCheckRequest(service="other.Service")
    code, details = refusal(lambda: stub.Check(other, timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND and "'other.Service'" in details
    watch = stub.Watch(other, timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    watch.cancel()


@pytest.mark.parametrize("output", ["both", "label", "probabilities"])
def test_model_infer_on_the_whole_sample_answers_as_http_and_as_exported(
    server: LaunchedServer, channel: grpc.Channel, sample: Sample, output: str
) -> None:
    instances, expected, features = sample
    request = request_from_instances(instances, features, model_name=MODEL_NAME, output=output)
    request.id = f"sample-{output}"
    response = inference(channel).ModelInfer(request, timeout=30)
    assert (response.model_name, response.id) == (MODEL_NAME, request.id)
    answers = predictions_from_response(response)
    assert json_difference(http_predictions(server.predict, instances, output), answers) is None
    assert json_difference([in_form(e, output) for e in expected], answers) is None


def test_raw_contents_answer_as_contents_do(channel: grpc.Channel, sample: Sample) -> None:
    instances, expected, features = sample
    request = request_from_instances(instances, features)
    answer = predictions_from_response(inference(channel).ModelInfer(as_raw(request), timeout=30))
    assert json_difference(expected, answer) is None


def test_metadata_readiness_and_liveness(channel: grpc.Channel, sample: Sample) -> None:
    _, _, features = sample
    stub = inference(channel)
    for name in ("", MODEL_NAME):  # an empty name names the one model too
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10)
        assert (metadata.name, metadata.platform) == (MODEL_NAME, "sklearn_sklearn")
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
            (f["name"], "FP64" if f["kind"] == "numeric" else "BYTES", [-1]) for f in features
        ]
        assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
            ("label", "BYTES", [-1]),
            ("probabilities", "FP64", [-1, -1]),
        ]
        assert stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=10).ready
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name == SERVER_NAME


def test_another_models_name_is_not_found(channel: grpc.Channel, sample: Sample) -> None:
    instances, _, features = sample
    stub = inference(channel)
    not_found = (
        grpc.StatusCode.NOT_FOUND,
        "no model 'model': this server serves 'penguins' (SERVING_MODEL_NAME; an empty name "
        "also names it)",
    )
    infer = request_from_instances(instances[:1], features, model_name="model")
    assert refusal(lambda: stub.ModelInfer(infer, timeout=10)) == not_found
    ready = pb.ModelReadyRequest(name="model")
    assert refusal(lambda: stub.ModelReady(ready, timeout=10)) == not_found
    metadata = pb.ModelMetadataRequest(name="model")
    assert refusal(lambda: stub.ModelMetadata(metadata, timeout=10)) == not_found


def test_reflection_describes_every_service_well_enough_to_call_it(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    assert set(database.get_services()) == {INFERENCE, HEALTH, REFLECTION}
    pool = DescriptorPool(database)
    service = pool.FindServiceByName(INFERENCE)
    assert service.FindMethodByName("ModelInfer").input_type.full_name == (
        "inference.ModelInferRequest"
    )
    assert {m.name for m in pool.FindServiceByName(HEALTH).methods} == {"Check", "Watch"}
    # A client with nothing but the reflected descriptors, as grpcurl is.
    method = service.FindMethodByName("ServerLive")
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{INFERENCE}/ServerLive",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    assert call(request_class(), timeout=10).live


# --- client mistakes ---------------------------------------------------------------------------


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_client_mistake_is_invalid_argument_with_its_message(
    channel: grpc.Channel, sample: Sample, penguins_model_dir: Path, mistake: str
) -> None:
    instances, _, features = sample
    schema = Schema.from_manifest(artifact.read_manifest(penguins_model_dir))
    request = MISTAKES[mistake](request_from_instances(instances[:3], features))
    with pytest.raises(RequestError) as in_process:
        infer_request(request, schema)
    assert refusal(lambda: inference(channel).ModelInfer(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        in_process.value.message,
    )


def test_a_fault_both_routes_can_make_gets_the_http_routes_words(
    server: LaunchedServer, channel: grpc.Channel, sample: Sample
) -> None:
    instances, _, features = sample
    number = next(f["name"] for f in features if f["kind"] == "numeric")
    bodies = [
        {"instances": [instances[0], {**instances[1], number: 1e31}]},
        {"instances": [{**instances[0], number: -1e31}]},
        {"instances": instances[:2], "parameters": {"colour": "red"}},
    ]
    for body in bodies:
        request = request_from_instances(body["instances"], features)
        for key, value in body.get("parameters", {}).items():
            request.parameters[key].string_param = value
        http = server.predict(body)
        assert http.status_code == 400, http.text
        assert refusal(lambda r=request: inference(channel).ModelInfer(r, timeout=10)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            http.json()["error"],
        )


def test_an_output_the_answer_has_not_is_invalid_argument(
    channel: grpc.Channel, sample: Sample
) -> None:
    instances, _, features = sample
    request = request_from_instances(instances[:2], features, output="label")
    request.outputs.add(name="probabilities")
    assert refusal(lambda: inference(channel).ModelInfer(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output(s) ['probabilities']; this answer has ['label']",
    )


def test_a_message_over_the_size_limit_is_resource_exhausted(
    channel: grpc.Channel, sample: Sample
) -> None:
    instances, expected, features = sample
    request = request_from_instances(instances[:1], features)
    request.id = "x" * (MAX_BODY_BYTES - request.ByteSize() - 100)  # just under: answered
    answer = inference(channel).ModelInfer(request, timeout=10)
    assert json_difference(expected[:1], predictions_from_response(answer)) is None
    request.id = "x" * MAX_BODY_BYTES
    code, details = refusal(lambda: inference(channel).ModelInfer(request, timeout=10))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {MAX_BODY_BYTES})" in details, details


# --- fuzzing -----------------------------------------------------------------------------------

WILD_NUMBERS = (
    math.nan, math.inf, -math.inf, 1e31, -1e31, 1e30, -1e30, 0.0, -0.0, 5e-324,
    1.7976931348623157e308, 2.0**53 + 1,
)  # fmt: skip
WILD_TEXTS = (
    b"", b"\xff", b"\xc3\x28", b"\xed\xa0\x80", "Øresund".encode(), b"\x00", b"Dream",
    b"dream", b" Biscoe", b"x" * 2000,
)  # fmt: skip
DATATYPES = (
    "FP64", "FP32", "INT64", "INT32", "BYTES", "BOOL", "UINT8", "UINT64", "FP16", "", "fp64",
    "FP64 ",
)  # fmt: skip
FIELDS = {
    "FP64": "fp64_contents",
    "FP32": "fp32_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "BYTES": "bytes_contents",
    "BOOL": "bool_contents",
    "UINT64": "uint64_contents",
}


class Fuzzer:
    """Random ``ModelInferRequest`` messages from a seeded generator: each starts as a valid
    request for a few sample instances, maybe made wrong as a known mistake is, then gets up
    to three random faults."""

    def __init__(self, rng: random.Random, instances: list[Any], features: list[Any]) -> None:
        self.rng = rng
        self.instances = [i for i in instances if isinstance(i, dict)]
        self.features = features
        self.faults: list[Callable[[pb.ModelInferRequest], pb.ModelInferRequest]] = [
            self.number,
            self.text,
            self.datatype,
            self.shape,
            self.length,
            self.inputs,
            self.raw,
            self.parameter,
            self.output,
        ]
        self.mistakes = list(MISTAKES.values())

    def request(self) -> pb.ModelInferRequest:
        rng = self.rng
        other_model = rng.random() < 0.1
        request = request_from_instances(
            rng.sample(self.instances, rng.randint(1, 5)),
            self.features,
            model_name=rng.choice(("model", self.word()) if other_model else ("", MODEL_NAME)),
            output=rng.choice((None, "both", "label", "probabilities")),
        )
        request.id = rng.choice(("", self.word()))
        if rng.random() < 0.25:  # the mistakes start from a valid request
            request = rng.choice(self.mistakes)(request)
        # At least one fault: the few that keep a request valid (a wild but valid number or
        # text, a requested output it has) still reach the model, each call ~7 ms.
        for _ in range(rng.choice((1, 2, 2, 3))):
            request = rng.choice(self.faults)(request)
        return request

    def word(self) -> str:
        letters = string.ascii_letters + "Ø_- ."
        return "".join(self.rng.choice(letters) for _ in range(self.rng.randint(0, 12)))

    def tensor(self, request: pb.ModelInferRequest) -> Any:
        return self.rng.choice(request.inputs) if request.inputs else request.inputs.add()

    def number(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        values = self.tensor(request).contents.fp64_contents
        if values:
            values[self.rng.randrange(len(values))] = self.rng.choice(WILD_NUMBERS)
        return request

    def text(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        values = self.tensor(request).contents.bytes_contents
        if values:
            wild = self.rng.choice((*WILD_TEXTS, self.rng.randbytes(self.rng.randint(1, 8))))
            values[self.rng.randrange(len(values))] = wild
        return request

    def datatype(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        """Another datatype; half the time with the values moved to its contents field."""
        t = self.tensor(request)
        t.datatype = self.rng.choice(DATATYPES)
        field = FIELDS.get(t.datatype)
        if field and self.rng.random() < 0.5:
            numbers = list(t.contents.fp64_contents)
            values: list[Any] = numbers or [len(v) for v in t.contents.bytes_contents]
            if field == "bytes_contents":
                values = [str(v).encode() for v in values]
            elif field in ("int64_contents", "int_contents", "uint64_contents", "bool_contents"):
                values = [int(v) if math.isfinite(v) and 0 <= v < 2**31 else 0 for v in values]
            t.contents.Clear()
            getattr(t.contents, field).extend(values)
        return request

    def shape(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        t = self.tensor(request)
        n = t.shape[0] if t.shape else 1
        shapes = ([], [n], [n, 1], [n, 2], [n + 1], [n - 1], [-1], [0], [n, 1, 1], [2**62], [-n])
        t.ClearField("shape")
        t.shape.extend(self.rng.choice(shapes))
        return request

    def length(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        contents = self.tensor(request).contents
        values = contents.fp64_contents or contents.bytes_contents
        if values and self.rng.random() < 0.5:
            del values[-1]
        elif values:
            values.append(values[0])
        return request

    def inputs(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        """An input dropped, repeated, renamed (maybe to another feature's name) or added."""
        rng, t = self.rng, self.tensor(request)
        change = rng.randrange(4)
        if change == 0:
            request.inputs.remove(t)
        elif change == 1:
            request.inputs.append(t)
        elif change == 2:
            t.name = rng.choice([f["name"] for f in self.features] + [self.word()])
        else:
            request.inputs.add(name=self.word(), datatype=rng.choice(DATATYPES), shape=[1])
        return request

    def raw(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        """Raw contents, one of them maybe replaced by random or cut bytes."""
        raw = as_raw(request)
        if raw.raw_input_contents and self.rng.random() < 0.7:
            index = self.rng.randrange(len(raw.raw_input_contents))
            entry = raw.raw_input_contents[index]
            raw.raw_input_contents[index] = self.rng.choice(
                (self.rng.randbytes(self.rng.randint(0, 40)), entry[: len(entry) // 2], entry[1:])
            )
        return raw

    def parameter(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        rng = self.rng
        parameter = request.parameters[rng.choice(("output", "output", "colour", "", self.word()))]
        kind = rng.randrange(3)
        if kind == 0:
            parameter.bool_param = rng.random() < 0.5
        elif kind == 1:
            parameter.int64_param = rng.randint(-(2**63), 2**63 - 1)
        else:
            parameter.string_param = rng.choice(("both", "label", "probabilities", self.word()))
        return request

    def output(self, request: pb.ModelInferRequest) -> pb.ModelInferRequest:
        names = ("label", "probabilities", "value", "", self.word())
        request.outputs.add(name=self.rng.choice(names))
        return request


def rows_of(request: pb.ModelInferRequest) -> int:
    return request.inputs[0].shape[0]


def test_fuzzed_messages_get_an_answer_or_a_client_error_and_never_a_server_error(
    server: LaunchedServer, channel: grpc.Channel, sample: Sample
) -> None:
    instances, _, features = sample
    fuzzer = Fuzzer(random.Random(FUZZ_SEED), instances, features)
    requests = [fuzzer.request() for _ in range(FUZZ_MESSAGES)]
    workers = server.worker_pids()
    stub = inference(channel)
    codes: Counter[str] = Counter()
    for start in range(0, len(requests), IN_FLIGHT):
        batch = requests[start : start + IN_FLIGHT]
        calls = [stub.ModelInfer.future(request, timeout=60) for request in batch]
        for request, call in zip(batch, calls, strict=True):
            code = call.code()
            codes[code.name] += 1
            assert code in CLIENT_ERRORS, (FUZZ_SEED, request, code, call.details())
            if code == grpc.StatusCode.OK:
                assert len(predictions_from_response(call.result())) == rows_of(request)
            else:
                assert call.details(), (request, code)
    assert sum(codes.values()) == FUZZ_MESSAGES
    # The generator reaches all three outcomes often, or it tests little.
    assert min(codes.values()) > FUZZ_MESSAGES // 50 and len(codes) == 3, codes
    assert server_errors(server) == []
    assert server.worker_pids() == workers, "a worker died or was replaced"
    assert health_of(channel) == {"": SERVING, INFERENCE: SERVING}


def test_random_bytes_as_a_message_get_a_client_error_and_never_a_server_error(
    server: LaunchedServer, channel: grpc.Channel
) -> None:
    rng = random.Random(FUZZ_SEED)
    bodies = [rng.randbytes(rng.randint(0, 300)) for _ in range(2000)]
    bodies += [
        b"\x0b" * 1000,  # group starts nested deeper than a parser goes
        b"\x2a\xff\xff\xff\xff\x0f",  # an input whose length runs past the message
        b"\x0a\x02\xff\xfe",  # a model name that is not UTF-8
        struct.pack("<d", math.nan),
    ]
    methods = [f"/{INFERENCE}/ModelInfer", f"/{INFERENCE}/ModelMetadata", f"/{HEALTH}/Check"]
    calls = [channel.unary_unary(method) for method in methods]  # bytes in, bytes out
    codes: Counter[str] = Counter()
    for start in range(0, len(bodies), IN_FLIGHT):
        batch = bodies[start : start + IN_FLIGHT]
        futures = [rng.choice(calls).future(body, timeout=30) for body in batch]
        for body, future in zip(batch, futures, strict=True):
            codes[future.code().name] += 1
            assert future.code() in CLIENT_ERRORS, (body, future.code(), future.details())
    assert codes["INVALID_ARGUMENT"] > len(bodies) // 2, codes
    assert server_errors(server) == []


# --- the serving image -------------------------------------------------------------------------


@pytest.mark.container
def test_the_serving_image_answers_grpc_as_it_answers_http(
    engine: Engine,
    serving_image_without_model: str,
    penguins_model_dir: Path,
    tmp_path: Path,
    sample: Sample,
) -> None:
    instances, expected, features = sample
    model_dir = tmp_path / "model"  # readable by the image's non-root user (pytest's are 0700)
    shutil.copytree(penguins_model_dir, model_dir)
    for path in (tmp_path, model_dir, *model_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    env = {
        **vertex.vertex_environment(
            vertex.DEFAULT_PORT,
            vertex.DEFAULT_HEALTH_ROUTE,
            vertex.DEFAULT_PREDICT_ROUTE,
            vertex.MODEL_MOUNT,
        ),
        "SERVING_GRPC_PORT": str(CONTAINER_GRPC_PORT),
    }
    spec = ServerSpec(
        serving_image_without_model,
        grpc_port=CONTAINER_GRPC_PORT,
        env=env,
        mounts=(Mount(model_dir, vertex.MODEL_MOUNT),),
    )
    with start_container(engine, spec) as container:
        container.wait_until_serving(vertex.DEFAULT_HEALTH_ROUTE, timeout=120)
        with connect(container.grpc_target) as channel:
            serving_within(channel, timeout=60)
            assert health_of(channel) == {"": SERVING, INFERENCE: SERVING}
            response = inference(channel).ModelInfer(
                request_from_instances(instances, features), timeout=30
            )
        answers = predictions_from_response(response)

        def post(body: dict[str, Any]) -> httpx.Response:
            url = container.url + vertex.DEFAULT_PREDICT_ROUTE
            return httpx.post(url, json=body, timeout=30)

        assert json_difference(http_predictions(post, instances, "both"), answers) is None
        assert json_difference(expected, answers) is None
        stopped = container.stop()
        assert (stopped.exit_code, stopped.killed) == (0, False), container.last_logs()
