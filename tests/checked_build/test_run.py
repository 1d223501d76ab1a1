"""The checked build with gRPC on, Google Cloud replaced at its clients (``fake_cloud``): the
request it sends checks the gRPC port, and a passing verdict read back from the build log
becomes the ``containerSpec`` upload reads, with ``grpcPorts``, gRPC probes and
``SERVING_GRPC_PORT``, as the aiplatform types parse it."""

import json
from collections.abc import Callable
from pathlib import Path

from google.auth.credentials import AnonymousCredentials
from google.cloud.aiplatform_v1.types import ModelContainerSpec
from google.cloud.devtools import cloudbuild_v1
from google.protobuf import json_format

from components import vertex
from components.checked_build import build_and_check
from components.contract import RULES, ContractReport, RuleResult
from components.contract.in_build import REPORT_PREFIX, SERVER_NAME, STEP_IDS, VERDICT_STEP
from components.imaging.cloud_build import CLOUD_BUILD_STEP_ID
from components.stand_ins.cloud_build import substitute
from tests.support.cloud import FakeCloud

IMAGE = "europe-west4-docker.pkg.dev/my-project/models/penguins:checked"
DIGEST = "sha256:" + "ab" * 32
GRPC_PORT = 8081


def passing_build_log() -> str:
    """The log of a checked build whose verdict step printed a passing report."""
    report = ContractReport(IMAGE, {}, [RuleResult(rule, True, "ok") for rule in RULES])
    index = [CLOUD_BUILD_STEP_ID, *STEP_IDS].index(VERDICT_STEP)
    line = REPORT_PREFIX + json.dumps(report.to_dict())
    return f'Step #{index} - "{VERDICT_STEP}": {line}\n'


def test_grpc_on_is_checked_in_the_build_and_declared_in_the_container_spec(
    fake_cloud: Callable[..., FakeCloud], penguins_model_dir: Path
) -> None:
    finished = cloudbuild_v1.Build(
        id="b1",
        status="SUCCESS",
        steps=[cloudbuild_v1.BuildStep(id=i) for i in (CLOUD_BUILD_STEP_ID, *STEP_IDS)],
        results=cloudbuild_v1.Results(images=[cloudbuild_v1.BuiltImage(name=IMAGE, digest=DIGEST)]),
    )
    fake = fake_cloud([finished], [passing_build_log()])

    outcome = build_and_check(
        penguins_model_dir,
        IMAGE,
        project="my-project",
        location="europe-west4",
        staging_bucket="gs://my-staging/runs/1",
        checker_image="checker@sha256:" + "cd" * 32,
        large_model_bytes=1,  # treated as large: the spec gets a startupProbe too
        poll_seconds=0,
        credentials=AnonymousCredentials(),
        grpc_port=GRPC_PORT,
    )

    (request,) = fake.created
    start, check = request.build.steps[1:3]
    assert f"--env {vertex.GRPC_PORT_VARIABLE}={GRPC_PORT} " in substitute(start.args[1], {})
    assert f"{SERVER_NAME}:{GRPC_PORT}" in list(check.args)
    assert outcome.report.passed and outcome.image is not None and outcome.metadata is not None
    spec = outcome.metadata["containerSpec"]
    assert spec["imageUri"] == f"europe-west4-docker.pkg.dev/my-project/models/penguins@{DIGEST}"
    assert spec["grpcPorts"] == [{"containerPort": GRPC_PORT}]
    assert spec["env"] == [{"name": vertex.GRPC_PORT_VARIABLE, "value": str(GRPC_PORT)}]
    assert spec["healthProbe"] == vertex.grpc_health_probe(GRPC_PORT)
    parsed = json_format.ParseDict(spec, ModelContainerSpec.pb(ModelContainerSpec()))
    assert [port.container_port for port in parsed.ports] == [vertex.DEFAULT_PORT]
    assert parsed.startup_probe.grpc.port == parsed.health_probe.grpc.port == GRPC_PORT
