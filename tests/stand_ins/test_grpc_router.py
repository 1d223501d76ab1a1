"""The local endpoint's gRPC port: a real router process in front of real model servers in
process mode (``python -m serving_image.server`` on the penguins model, deployed by
``stand_ins.deploy`` from versions whose containerSpec has ``grpcPorts``), shared by the module.

Each server names itself in its gRPC answers (``SERVING_MODEL_NAME``, from its version's
spec), so that a test tells which server answered apart from the metadata the router adds. No
container engine is needed; ``test_endpoints.py`` runs the same through a real container.
"""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

import compile as cli
from components import stand_ins, vertex
from components.runners import ProcessRunner, free_local_port
from components.stand_ins import endpoints as le
from components.stand_ins.endpoint_records import locked, write_record
from components.stand_ins.resources import now_rfc3339
from serving_image.server import artifact
from serving_image.server.predictions import json_difference
from serving_image.server.protos import grpc_predict_v2_pb2 as pb
from serving_image.server.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_image.server.tensors import request_from_instances
from tests.support.stand_ins import process_alive

GRPC_PORT = 8081
INFERENCE = "inference.GRPCInferenceService"
DEPLOYED_KEY = "x-vertex-ai-deployed-model-id"
ERROR_KEY = "x-local-router-error"
TIMINGS: dict[str, float] = {}


def spec(server_name: str, *, grpc_on: bool = True) -> dict[str, Any]:
    """A process-mode containerSpec whose server names itself ``server_name`` over gRPC; with
    ``grpcPorts`` and ``SERVING_GRPC_PORT`` (as the contract check emits them) when
    ``grpc_on``."""
    env = {"SERVING_WORKERS": "1", "SERVING_MODEL_NAME": server_name}
    if grpc_on:
        env[vertex.GRPC_PORT_VARIABLE] = str(GRPC_PORT)
    container = vertex.unmanaged_container_model_metadata(
        "process:serving_image@test",
        port=8080,
        health_route="/health",
        predict_route="/predict",
        env=env,
    )["containerSpec"]
    if grpc_on:
        container["grpcPorts"] = [{"containerPort": GRPC_PORT}]
    return container


@dataclass(frozen=True)
class Endpoint:
    """The module's endpoint: ``a`` and ``b`` serve gRPC, ``h`` HTTP only."""

    id: str
    directory: Path
    registry: Path
    a: str
    b: str
    h: str
    names: dict[str, str]
    """Deployed model id -> the name its server answers with."""

    def now(self) -> stand_ins.LocalEndpoint:
        return stand_ins.get_endpoint(self.id, self.directory)

    def split(self, split: dict[str, int]) -> None:
        stand_ins.set_traffic(self.id, split, endpoints_dir=self.directory)


@pytest.fixture(scope="module")
def runner() -> ProcessRunner:
    return ProcessRunner.create()


@pytest.fixture(scope="module")
def endpoint(
    penguins_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, runner: ProcessRunner
) -> Iterator[Endpoint]:
    """Three process-mode servers on one endpoint: a (gRPC), b (gRPC), h (HTTP only); the
    endpoint is undeployed after the module, and none of its processes may be left."""
    root = tmp_path_factory.mktemp("grpc-endpoint")
    registry, directory = root / "registry", root / "endpoints"
    names: dict[str, str] = {}
    ids = []
    started = time.monotonic()
    for name, grpc_on, share in (("a", True, 100), ("b", True, 10), ("h", False, 0)):
        version = stand_ins.upload_model(
            registry, f"penguins-{name}", penguins_model_dir, spec(name, grpc_on=grpc_on)
        )
        done = stand_ins.deploy(
            version.resource_name,
            registry,
            directory,
            display_name="grpc-test",
            traffic_percent=share,
            engine=runner,
        )
        names[done.deployed_model.id] = name
        ids.append(done.deployed_model.id)
    TIMINGS["3 process-mode deploys"] = time.monotonic() - started
    deployed = Endpoint(done.endpoint.endpoint_id, directory, registry, *ids, names=names)
    yield deployed
    router_pid = deployed.now().router_pid
    stand_ins.undeploy(deployed.id, endpoints_dir=directory)
    assert stand_ins.labelled_containers(runner, deployed.id) == []
    assert not process_alive(router_pid)


@pytest.fixture(scope="module")
def sample(penguins_model_dir: Path) -> tuple[list[Any], list[Any]]:
    return (
        artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE),
        artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE),
    )


@pytest.fixture(scope="module")
def infer_request(
    penguins_model_dir: Path, sample: tuple[list[Any], list[Any]]
) -> pb.ModelInferRequest:
    """The first sample instance as a ModelInferRequest."""
    features = artifact.read_manifest(penguins_model_dir)["features"]
    return request_from_instances(sample[0][:1], features)


@pytest.fixture
def channel(endpoint: Endpoint) -> Iterator[grpc.Channel]:
    """A channel to the endpoint's gRPC port."""
    with grpc.insecure_channel(endpoint.now().grpc_target) as opened:
        yield opened


def answered_by(call: grpc.Call) -> str:
    """The deployed model the router says answered."""
    return str(dict(call.initial_metadata())[DEPLOYED_KEY])


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, str]:
    """A failed call's status, details and the router's case."""
    return error.code(), error.details(), dict(error.trailing_metadata() or ()).get(ERROR_KEY)


# --- the record and the list -----------------------------------------------------------------


def test_models_with_grpc_ports_are_recorded_with_their_published_port_and_listed(
    endpoint: Endpoint, capsys: pytest.CaptureFixture[str]
) -> None:
    now = endpoint.now()
    a, b, h = (now.find_deployed_model(i) for i in (endpoint.a, endpoint.b, endpoint.h))
    targets = {a.grpc_target, b.grpc_target, now.grpc_target}
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", t) for t in targets) and len(targets) == 3
    assert h.grpc_target == ""
    assert a.container().grpc_binding.target == a.grpc_target  # the server's own state file
    for deployed in (a, b):  # the model server itself answers there
        with grpc.insecure_channel(deployed.grpc_target) as direct:
            check = health_pb2_grpc.HealthStub(direct).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING

    assert cli.main(["endpoints", "list", "--endpoints-dir", str(endpoint.directory)]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["endpoint"], row["grpc"]) == (endpoint.id, now.grpc_target)
    listed = {d["id"]: d["grpc"] for d in row["deployed_models"]}
    assert listed == {a.id: a.grpc_target, b.id: b.grpc_target, h.id: None}


# --- the split -------------------------------------------------------------------------------


def test_grpc_calls_take_the_split_among_the_grpc_models_each_protocol_on_its_own(
    endpoint: Endpoint,
    channel: grpc.Channel,
    infer_request: pb.ModelInferRequest,
    sample: tuple[list[Any], list[Any]],
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    instance, expected = sample[0][:1], sample[1][:1]

    def via_grpc(infer: bool) -> str:
        """ModelInfer, or the cheaper ModelMetadata: the model the router says answered,
        checked against the name the server itself answers with."""
        if infer:
            answer, call = stub.ModelInfer.with_call(infer_request, timeout=30)
            name = answer.model_name
        else:
            described, call = stub.ModelMetadata.with_call(pb.ModelMetadataRequest(), timeout=30)
            name = described.name
        assert name == endpoint.names[answered_by(call)]  # the metadata tells the truth
        return answered_by(call)

    def exchange(grpc_calls: int, http_every: int) -> tuple[Counter[str], Counter[str]]:
        """``grpc_calls`` gRPC calls (one ModelInfer in 10: a model call takes ~6 ms) with an
        HTTP predict after every ``http_every``: who answered each."""
        by_grpc: Counter[str] = Counter()
        by_http: Counter[str] = Counter()
        for number in range(1, grpc_calls + 1):
            by_grpc[via_grpc(infer=number % 10 == 0)] += 1
            if number % http_every == 0:
                response = stand_ins.predict(
                    endpoint.id, instance, endpoints_dir=endpoint.directory
                )
                assert json_difference(expected, response["predictions"]) is None
                by_http[response["deployedModelId"]] += 1
        return by_grpc, by_http

    endpoint.split({endpoint.a: 90, endpoint.b: 10, endpoint.h: 0})
    started = time.monotonic()
    by_grpc, by_http = exchange(1000, 10)
    TIMINGS["1000 gRPC calls + 100 HTTP predicts through the router"] = time.monotonic() - started
    assert abs(by_grpc[endpoint.a] - 900) <= 30 and abs(by_grpc[endpoint.b] - 100) <= 30
    assert by_grpc == {endpoint.a: 900, endpoint.b: 100}  # smooth weighted round-robin: exact
    assert by_http == {endpoint.a: 90, endpoint.b: 10}  # interleaved, HTTP keeps its own split

    # A share held by a model without gRPC: gRPC splits the rest in proportion, HTTP takes all.
    endpoint.split({endpoint.a: 45, endpoint.b: 5, endpoint.h: 50})
    by_grpc, by_http = exchange(200, 2)
    assert by_grpc == {endpoint.a: 180, endpoint.b: 20}
    assert by_http == {endpoint.a: 45, endpoint.b: 5, endpoint.h: 50}

    _, call = stub.ModelInfer.with_call(infer_request, timeout=30)
    metadata = dict(call.initial_metadata())
    deployed = endpoint.now().find_deployed_model(metadata[DEPLOYED_KEY])
    assert metadata["x-vertex-ai-endpoint-id"] == endpoint.id
    assert metadata["x-vertex-ai-model"] == deployed.model_name
    assert metadata["x-vertex-ai-model-version-id"] == deployed.version_id


def test_a_call_naming_a_deployed_model_reaches_it_even_at_0_percent(
    endpoint: Endpoint, channel: grpc.Channel, infer_request: pb.ModelInferRequest
) -> None:
    endpoint.split({endpoint.a: 100, endpoint.b: 0, endpoint.h: 0})
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    for _ in range(3):
        answer, call = stub.ModelInfer.with_call(
            infer_request, metadata=((DEPLOYED_KEY, endpoint.b),), timeout=30
        )
        assert (answered_by(call), answer.model_name) == (endpoint.b, "b")

    with pytest.raises(grpc.RpcError) as unknown:
        stub.ModelInfer(infer_request, metadata=((DEPLOYED_KEY, "123"),), timeout=30)
    known = f"{endpoint.a}, {endpoint.b}, {endpoint.h}"
    assert refusal(unknown.value) == (
        grpc.StatusCode.NOT_FOUND,
        f"endpoint {endpoint.id} has no deployed model 123 (deployed: {known})",
        "unknown-deployed-model",
    )
    with pytest.raises(grpc.RpcError) as http_only:
        stub.ModelInfer(infer_request, metadata=((DEPLOYED_KEY, endpoint.h),), timeout=30)
    code, details, case = refusal(http_only.value)
    assert (code, case) == (grpc.StatusCode.UNAVAILABLE, "no-grpc")
    assert f"deployed model {endpoint.h} serves no gRPC" in details and "grpcPorts" in details
    with pytest.raises(grpc.RpcError) as elsewhere:
        stub.ModelInfer(infer_request, metadata=(("x-vertex-ai-endpoint-id", "42"),), timeout=30)
    code, details, case = refusal(elsewhere.value)
    assert (code, case) == (grpc.StatusCode.NOT_FOUND, "unknown-endpoint")
    assert details.startswith(f"this router serves endpoint {endpoint.id}, not 42")


# --- any method passes through ---------------------------------------------------------------


def test_health_watch_reflection_and_unknown_methods_pass_through_to_a_model(
    endpoint: Endpoint, channel: grpc.Channel
) -> None:
    endpoint.split({endpoint.a: 50, endpoint.b: 50, endpoint.h: 0})
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", INFERENCE):
        answer, call = health.Check.with_call(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert answered_by(call) in (endpoint.a, endpoint.b)
    with pytest.raises(grpc.RpcError) as unknown_service:  # the model's own answer
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown_service.value.code() == grpc.StatusCode.NOT_FOUND
    assert dict(unknown_service.value.initial_metadata())[DEPLOYED_KEY] in (endpoint.a, endpoint.b)

    watch = health.Watch(health_pb2.HealthCheckRequest(service=INFERENCE), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # a server stream
    watch.cancel()

    # Reflection is one bidirectional stream of several requests and answers.
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    methods = pool.FindServiceByName(INFERENCE).methods_by_name
    assert {"ModelInfer", "ModelMetadata", "ServerReady"} <= set(methods)
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert {INFERENCE, "grpc.health.v1.Health"} <= set(services)

    with pytest.raises(grpc.RpcError) as unimplemented:
        channel.unary_unary(f"/{INFERENCE}/NoSuchMethod")(b"", timeout=30)
    assert unimplemented.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_no_model_with_traffic_serving_grpc_is_unavailable_with_what_to_do(
    endpoint: Endpoint,
    channel: grpc.Channel,
    infer_request: pb.ModelInferRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint.split({endpoint.a: 0, endpoint.b: 0, endpoint.h: 100})
    with pytest.raises(grpc.RpcError) as none:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer_request, timeout=30)
    code, details, case = refusal(none.value)
    assert (code, case) == (grpc.StatusCode.UNAVAILABLE, "no-grpc")
    assert details.startswith(
        f"endpoint {endpoint.id} has no deployed model with traffic that serves gRPC (deployed: "
        f"{endpoint.a} (gRPC), {endpoint.b} (gRPC), {endpoint.h} (no gRPC); split "
    )
    assert "deploy a version whose containerSpec has grpcPorts" in details

    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps([{"island": "Biscoe"}]))
    predict = ["endpoints", "predict", endpoint.id, "--instances", str(instances)]
    where = ["--endpoints-dir", str(endpoint.directory)]
    assert cli.main([*predict, "--grpc", *where]) == 1
    assert "has no deployed model with traffic that serves gRPC" in capsys.readouterr().err

    # A router from before routers served gRPC: its record has no gRPC port.
    with locked(endpoint.directory):
        before = endpoint.now()
        write_record(endpoint.directory, replace(before, grpc_port=0))
    try:
        assert cli.main([*predict, "--grpc", *where]) == 1
        assert f"endpoint {endpoint.id} has no gRPC port" in capsys.readouterr().err
    finally:
        with locked(endpoint.directory):
            write_record(endpoint.directory, before)


# --- a model that fails ----------------------------------------------------------------------


def test_a_model_killed_under_grpc_load_fails_no_call(
    endpoint: Endpoint, runner: ProcessRunner, penguins_model_dir: Path, infer_request: Any
) -> None:
    version = stand_ins.upload_model(endpoint.registry, "penguins-c", penguins_model_dir, spec("c"))
    c = stand_ins.deploy(
        version.resource_name,
        endpoint.registry,
        endpoint.directory,
        endpoint_id=endpoint.id,
        traffic_percent=0,
        engine=runner,
    ).deployed_model
    endpoint.split({endpoint.a: 50, endpoint.b: 0, endpoint.h: 0, c.id: 50})
    names = {endpoint.a: "a", c.id: "c"}
    answers: list[tuple[float, str, str]] = []
    failures: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load() -> None:
        with grpc.insecure_channel(endpoint.now().grpc_target) as own:
            stub = pb_grpc.GRPCInferenceServiceStub(own)
            while not stop.is_set():
                try:
                    answer, call = stub.ModelInfer.with_call(infer_request, timeout=30)
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                    continue
                with lock:
                    answers.append((time.monotonic(), answered_by(call), answer.model_name))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        while len(answers) < 200:
            time.sleep(0.01)
        os.killpg(c.container().pid, signal.SIGKILL)  # the server and its worker, at once
        killed = time.monotonic()
        while len(answers) < 800 and not failures:
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        stand_ins.undeploy_model(endpoint.id, c.id, endpoints_dir=endpoint.directory)

    assert failures == []
    assert all(names[deployed] == server for _, deployed, server in answers)
    assert {a[1] for a in answers if a[0] < killed} == {endpoint.a, c.id}
    assert {a[1] for a in answers if a[0] > killed + 0.1} == {endpoint.a}
    log = (endpoint.directory / f"{endpoint.id}.router.log").read_text()
    assert f"sent again to deployed model {endpoint.a}" in log


# --- endpoints predict --grpc ----------------------------------------------------------------


def test_cli_predict_over_grpc_answers_as_over_http(
    endpoint: Endpoint,
    penguins_model_dir: Path,
    sample: tuple[list[Any], list[Any]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    endpoint.split({endpoint.a: 100, endpoint.b: 0, endpoint.h: 0})
    instances, expected = sample
    (tmp_path / "instances.jsonl").write_text(
        (penguins_model_dir / artifact.INSTANCES_FILE).read_text()
    )
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"instances": instances[:3], "parameters": {"output": "label"}}))
    where = ["--endpoints-dir", str(endpoint.directory)]
    answers = []
    for request in (tmp_path / "instances.jsonl", labels):
        predict = ["endpoints", "predict", endpoint.id, "--instances", str(request), *where]
        assert cli.main(predict) == 0
        over_http = json.loads(capsys.readouterr().out)
        started = time.monotonic()
        assert cli.main([*predict, "--grpc"]) == 0
        TIMINGS[f"endpoints predict --grpc ({request.name})"] = time.monotonic() - started
        over_grpc = json.loads(capsys.readouterr().out)
        assert over_grpc == over_http
        assert over_grpc["deployedModelId"] == endpoint.a
        answers.append(over_grpc["predictions"])
    assert json_difference(expected, answers[0]) is None
    assert answers[1] == [row["label"] for row in expected[:3]]

    bad = ["--parameters", '{"output": "label", "top": 2}', "--grpc"]
    assert cli.main([*predict, *bad]) == 2
    assert "over gRPC the only parameter is 'output'" in capsys.readouterr().err


# --- the router process ----------------------------------------------------------------------


def test_the_router_exits_naming_a_grpc_port_another_process_holds(tmp_path: Path) -> None:
    write_record(tmp_path, stand_ins.LocalEndpoint("1234", "taken", now_rfc3339()))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        arguments = ["--record", str(tmp_path / "1234.json"), "--port", str(free_local_port())]
        result = subprocess.run(
            [sys.executable, "-m", le.ROUTER_MODULE, *arguments, "--grpc-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3
    assert f"cannot serve: [Errno {errno.EADDRINUSE}] gRPC on 127.0.0.1:{port}: " in result.stderr
    assert "Unclosed" not in result.stderr  # nothing was opened before the port failed
