"""The contract check's gRPC rules against real gRPC servers: one in this process, and real
images built and run with podman or docker.

* A grpcio server in the test says SERVING before its model answers, and answers UNKNOWN to
  bad input without reflection: the rules fail health (SERVING before the model is loaded),
  warn about bad input and reflection, and pass the rest.
* Three fixture images (``grpc_images/``: the toy server with a gRPC port, on the serving
  image) each break one gRPC rule: no ModelInfer, a ModelInfer that returns a list, no health
  service. Each is built once and started once; each must fail its own rule, named, with its
  message, and pass every HTTP rule. The last one is checked through ``compile.py
  check-contract --grpc-port``.
* The project's serving image with ``SERVING_GRPC_PORT`` set, serving a trained penguins
  model, passes every rule strictly, the gRPC ones included, and only then gets a
  ``containerSpec`` with ``grpcPorts`` and gRPC probes that the aiplatform types accept.

Without a working engine the image tests are skipped on a workstation and FAIL in CI.
"""

import shutil
import time
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.cloud.aiplatform_v1.types import ModelContainerSpec
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2_grpc

from components import vertex
from components.contract import GRPC_RULES, CheckSettings, check_image, check_model_image
from components.contract.grpc_rules import GrpcRules, GrpcTarget
from components.contract.sample import Sample
from components.contract.settings import ServerWatch
from components.imaging import build
from components.runners import Engine
from serving_image.server import artifact
from serving_image.server.protos import grpc_predict_v2_pb2 as pb
from serving_image.server.protos import grpc_predict_v2_pb2_grpc as pb_grpc
from serving_image.server.tensors import infer_response
from tests.contract.broken_images.verdicts import (
    FIXTURES_DIR,
    HEALTH_ROUTE,
    KINDS,
    PREDICT_ROUTE,
    write_toy_sample,
)
from tests.support import compile_cli

CONTEXT = Path(__file__).resolve().parent
"""The fixtures' build context: ``grpc_images/`` and the toy server of ``broken_images/``."""
GRPC_PORT = 8081
GRPC_ENV = {vertex.GRPC_PORT_VARIABLE: str(GRPC_PORT)}
INSTANCES = artifact.read_jsonl(FIXTURES_DIR / "instances.jsonl")
EXPECTED = artifact.read_jsonl(FIXTURES_DIR / "expected.jsonl")
SKIPPED_AFTER_PREDICT = frozenset({"grpc-values", "grpc-bad-input"})


@dataclass(frozen=True)
class GrpcVerdict:
    """What the check must say about one gRPC fixture."""

    failed: str
    says: tuple[str, ...]
    """Fragments of the violation's message."""
    skipped: frozenset[str]
    """The gRPC rules the failure makes pointless."""


VERDICTS = {
    "no_model_infer": GrpcVerdict(
        "grpc-predict",
        ("Predict is not implemented: UNIMPLEMENTED 'Method not implemented!'",),
        SKIPPED_AFTER_PREDICT,
    ),
    "list_response": GrpcVerdict(
        "grpc-predict",
        (
            "the handler returned a list instead of ModelInferResponse",
            "answered INTERNAL 'Failed to serialize response!'",
        ),
        SKIPPED_AFTER_PREDICT,
    ),
}
NO_HEALTH = "no_health_service"
TOY_FEATURES = ({"name": "x1", "kind": "numeric"},)
TOY_INSTANCES = [{"x1": 3.0}, {"x1": 7.0}, {"x1": 6.0}]
LOADS_S = 0.6
"""How long the in-process server's model takes to answer after health says SERVING."""


class LoadsLate(pb_grpc.GRPCInferenceServiceServicer):
    """A toy model (label "high" above 5) that answers UNAVAILABLE until ``LOADS_S`` after it
    started, and fails with an exception (UNKNOWN) on any input it does not expect."""

    def __init__(self) -> None:
        self.ready_at = time.monotonic() + LOADS_S

    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        if time.monotonic() < self.ready_at:
            context.abort(grpc.StatusCode.UNAVAILABLE, "model still loading")
        (tensor,) = request.inputs  # a second input raises: UNKNOWN
        values = tensor.contents.fp64_contents
        if tensor.datatype != "FP64":
            raise TypeError(f"{tensor.datatype} tensor")  # grpcio answers UNKNOWN
        labels = ["high" if value > 5 else "low" for value in values]
        return infer_response(labels, task="classification", model_name="toy")


@pytest.fixture
def serving_too_early() -> Iterator[GrpcTarget]:
    """``LoadsLate`` with grpc.health.v1 SERVING from the start and no reflection."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(LoadsLate(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield GrpcTarget(f"127.0.0.1:{port}", port, TOY_FEATURES)
    server.stop(0)


def test_serving_before_the_model_answers_fails_health_and_unknown_on_bad_input_warns(
    serving_too_early: GrpcTarget,
):
    expected = ["low", "high", "high"]
    rules = GrpcRules(
        serving_too_early,
        Sample.of(TOY_INSTANCES, expected),
        CheckSettings(poll_interval_s=0.05),
        ServerWatch(None),
        time.monotonic(),
    )

    results = {r.rule: r for r in [*rules.start(), *rules.finish()]}

    assert set(results) == set(GRPC_RULES)
    verdicts = {rule: result.verdict() for rule, result in results.items()}
    assert verdicts == {
        "grpc-health": "FAIL",
        "grpc-predict": "PASS",
        "grpc-values": "PASS",
        "grpc-bad-input": "WARN",
        "grpc-reflection": "WARN",
        "grpc-stays-up": "PASS",
    }
    early = results["grpc-health"].message()
    assert "ModelInfer right after answered UNAVAILABLE 'model still loading'" in early
    assert "the health service says SERVING before the model is loaded" in early
    assert "came back: UNAVAILABLE 'model still loading'" in early
    assert "Vertex AI would route traffic as soon as Check answers SERVING" in early
    assert results["grpc-predict"].detail == "answered OK: 3 predictions for 3 instances"
    bad = results["grpc-bad-input"].message()
    assert "answered UNKNOWN" in bad and "to input 'x1' as BYTES, the wrong type" in bad
    assert "to an unknown input 'no_such_input', not INVALID_ARGUMENT" in bad
    assert "Vertex AI would pass the status on to the caller" in bad
    assert results["grpc-reflection"].detail.startswith(
        "no server reflection: ServerReflectionInfo answered UNIMPLEMENTED"
    )


def fixture_tag(name: str) -> str:
    return f"localhost/contract-grpc-fixture-{name.replace('_', '-')}:test"


@pytest.fixture(scope="module")
def grpc_images(engine: Engine, serving_image_without_model: str) -> dict[str, str]:
    """Every gRPC fixture image, built once on the serving image; name -> tag."""
    names = [*VERDICTS, NO_HEALTH]

    def build_fixture(name: str) -> str:
        build(
            engine,
            CONTEXT,
            fixture_tag(name),
            {"SERVING_IMAGE": serving_image_without_model, "FIXTURE": name},
            dockerfile=CONTEXT / "grpc_images" / "Dockerfile",
            ca_bundle=None,
        )
        return fixture_tag(name)

    with ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(build_fixture, names), strict=True))


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy sample as a model directory: its manifest names and types the tensors."""
    return write_toy_sample(tmp_path_factory.mktemp("grpc-toy") / "model")


@pytest.fixture(scope="module")
def grpc_reports(engine: Engine, grpc_images: dict[str, str], toy_model: Path) -> dict:
    """Each fixture of ``VERDICTS`` checked once as a container, in parallel; name -> report."""

    def check(name: str):
        return check_image(
            grpc_images[name],
            model_dir=toy_model,
            instances=INSTANCES,
            expected=EXPECTED,
            kinds=KINDS,
            health_route=HEALTH_ROUTE,
            predict_route=PREDICT_ROUTE,
            env=GRPC_ENV,
            settings=CheckSettings(grace_period_s=10),
            engine=engine,
            grpc_port=GRPC_PORT,
        )

    with ThreadPoolExecutor(len(VERDICTS)) as pool:
        return dict(zip(VERDICTS, pool.map(check, VERDICTS), strict=True))


@pytest.mark.container
@pytest.mark.parametrize("name", list(VERDICTS))
def test_each_broken_grpc_server_fails_its_own_rule_and_no_other(name: str, grpc_reports: dict):
    verdict = VERDICTS[name]
    report = grpc_reports[name]
    markdown = report.to_markdown()

    assert [r.rule for r in report.violations] == [verdict.failed], markdown
    assert not report.warnings, markdown  # HTTP, reflection and SIGTERM all pass
    grpc = [r for r in report.rules if r.rule in GRPC_RULES]
    assert [r.rule for r in grpc] == list(GRPC_RULES)  # listed beside the HTTP rules
    assert {r.rule for r in grpc if r.skipped} == verdict.skipped
    message = report.violations[0].message()
    for fragment in verdict.says:
        assert fragment in message, message
    assert "request sent: inference.GRPCInferenceService/ModelInfer on 127.0.0.1:" in message
    assert "Vertex AI would pass the error on to every gRPC caller" in message
    assert f"| {verdict.failed} | contract | FAIL |" in markdown
    assert "| predict-values | contract | PASS |" in markdown


@pytest.mark.container
def test_check_contract_cli_fails_a_server_without_grpc_health(
    grpc_images: dict[str, str], toy_model: Path, tmp_path: Path
):
    report_path = tmp_path / "report.md"
    result = compile_cli("check-contract",
        "--image", grpc_images[NO_HEALTH],
        "--model-dir", str(toy_model),
        "--health-route", HEALTH_ROUTE,
        "--predict-route", PREDICT_ROUTE,
        "--env", f"{vertex.GRPC_PORT_VARIABLE}={GRPC_PORT}",
        "--grpc-port", str(GRPC_PORT),
        "--grace-period", "10",
        "--report", str(report_path),
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"FAIL: {grpc_images[NO_HEALTH]} breaks the Vertex AI")
    assert "(grpc-health)" in result.stdout.splitlines()[0]
    assert (
        '[grpc-health] no grpc.health.v1 service: Vertex\'s gRPC probe would fail (Check on "" '
        "answered UNIMPLEMENTED 'Method not found!')"
    ) in result.stdout
    assert "Vertex AI would send its startup, health and liveness checks to" in result.stdout
    markdown = report_path.read_text()
    assert "| health | contract | PASS |" in markdown
    assert "| grpc-health | contract | FAIL |" in markdown
    assert "| grpc-reflection | hygiene | PASS |" in markdown  # the port answers: checked
    assert '| grpc-predict | contract | SKIP | not run: Check on "" never answered SERVING |' in (
        markdown
    )


def test_check_contract_cli_wants_the_model_directory_for_grpc(tmp_path: Path):
    result = compile_cli("check-contract",
        "--image", "localhost/any:test",
        "--instances", str(FIXTURES_DIR / "instances.jsonl"),
        "--grpc-port", str(GRPC_PORT),
    )  # fmt: skip

    assert result.returncode == 2
    assert "--grpc-port needs --model-dir" in result.stderr


@pytest.fixture(scope="module")
def readable_model(penguins_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained penguins model, readable by the image's non-root user when mounted."""
    model = tmp_path_factory.mktemp("grpc-model") / "model"
    shutil.copytree(penguins_model_dir, model)
    for path in (model.parent, model, *model.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


@pytest.mark.container
def test_the_serving_image_with_grpc_passes_every_rule_and_its_spec_declares_grpc(
    engine: Engine, serving_image_without_model: str, readable_model: Path
):
    report, metadata = check_model_image(
        serving_image_without_model,
        readable_model,
        health_route="/health",
        predict_route="/predict",
        env=GRPC_ENV,
        settings=CheckSettings(strict=True),
        large_model_bytes=1,  # treat it as large: the spec gets a startupProbe
        engine=engine,
        grpc_port=GRPC_PORT,
    )

    markdown = report.to_markdown()
    assert report.passed and not report.warnings, markdown
    grpc = {r.rule: r for r in report.rules if r.rule in GRPC_RULES}
    assert [r.verdict(strict=True) for r in grpc.values()] == ["PASS"] * len(GRPC_RULES)
    assert grpc["grpc-health"].detail.startswith('Check on "" answered SERVING ')
    sample, _, _ = artifact.read_sample(readable_model)
    assert grpc["grpc-values"].detail.startswith(
        f"all {len(sample)} predictions equal the expected ones, sent in batches, each instance "
        "alone, in another order"
    )
    bad = grpc["grpc-bad-input"].detail
    assert "input 'island' as FP64, the wrong type: \"input tensor 'island' is FP64" in bad
    assert "an unknown input 'no_such_input': \"unknown input tensor(s) ['no_such_input']" in bad
    assert "'inference.GRPCInferenceService'" in grpc["grpc-reflection"].detail
    rows = [line.split(" | ")[0] for line in markdown.splitlines() if line.startswith("| ")]
    assert rows.index("| stays-up") < rows.index("| grpc-health") < rows.index("| sigterm")
    assert report.settings["gRPC port (containerSpec.grpcPorts)"] == GRPC_PORT
    assert report.metrics()["grpc_predict_p50_ms"] > 0

    assert metadata is not None
    spec = metadata["containerSpec"]
    assert spec["grpcPorts"] == [{"containerPort": GRPC_PORT}]
    assert spec["env"] == [{"name": vertex.GRPC_PORT_VARIABLE, "value": str(GRPC_PORT)}]
    probe = {"grpc": {"port": GRPC_PORT, "service": ""}, "periodSeconds": 10, "timeoutSeconds": 10}
    assert spec["healthProbe"] == {**probe, "failureThreshold": vertex.HEALTH_FAILURES}
    assert spec["startupProbe"] == {**probe, "failureThreshold": 12}  # 120 s, every 10 s
    parsed = json_format.ParseDict(spec, ModelContainerSpec.pb(ModelContainerSpec()))
    assert parsed.grpc_ports[0].container_port == GRPC_PORT
    assert parsed.health_probe.WhichOneof("probe_type") == "grpc"
    assert parsed.startup_probe.grpc.port == GRPC_PORT
