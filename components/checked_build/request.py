"""The one Cloud Build that builds the serving image, checks it and pushes it only on a pass.

``checked_build_request`` is pure (tested offline, field by field): ``imaging``'s build
request with ``contract.in_build``'s four check steps after the build step, the report and
metrics kept as build artifacts, and the image in ``images``, which Cloud Build pushes only
when every step, the check's verdict among them, succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from components.contract import CheckSettings
from components.contract.in_build import OUT_DIR, check_steps
from components.imaging.cloud_build import CLOUD_BUILD_STEP_ID, cloud_build_request
from components.imaging.context import CHECK_SAMPLE_DIR
from components.imaging.names import ArtifactRegistryImage, StagingLocation
from components.imaging.plan import BuildPlan

if TYPE_CHECKING:
    from google.cloud.devtools import cloudbuild_v1

CHECKED_BUILD_TIMEOUT_S = 2400
"""The build's time limit: the image build (up to 30 min) plus the check."""


def report_location(staging: StagingLocation, context_object: str) -> str:
    """Where a passing build's report and metrics are kept: by the context they checked."""
    name = context_object.rsplit("/", 1)[-1].removesuffix(".tar.gz")
    return staging.uri("contract", name)


def checked_build_request(
    image: ArtifactRegistryImage,
    staging: StagingLocation,
    context_object: str,
    plan: BuildPlan,
    *,
    checker_image: str,
    base_image: str,
    port: int,
    health_route: str,
    predict_route: str,
    env: Mapping[str, str] | None = None,
    storage_uri: str = "",
    settings: CheckSettings | None = None,
    gpu: bool = False,
    timeout_s: int = CHECKED_BUILD_TIMEOUT_S,
    service_account: str = "",
    machine_type: str = "",
    grpc_port: int | None = None,
) -> cloudbuild_v1.CreateBuildRequest:
    """Build ``image`` from the staged context, check it as Vertex will run it, push on a pass.

    Args:
        image, staging, context_object: as for ``imaging.cloud_build_request``; the context
            holds the model's sample in ``check-sample/`` (``stage_context(check_sample=True)``).
        plan: what ``imaging.plan.prepare`` decided (framework, labels).
        checker_image: the image whose Python has this project (the components image, best
            named by digest): it runs the check and the verdict.
        base_image: ``BASE_IMAGE`` of the serving image.
        port, health_route, predict_route, env: the ``containerSpec`` upload will declare.
        storage_uri: ``AIP_STORAGE_URI`` for an image without the model (its ``gs://`` URI).
        settings: the check's numbers (startup deadline, grace period, strict).
        gpu: the GPU variant (started on the CPU: Cloud Build has no GPU).
        timeout_s, service_account, machine_type: the build's.
        grpc_port: ``containerSpec.grpcPorts[0]``: the check step checks gRPC there too (the
            container gets ``SERVING_GRPC_PORT``, see ``check_steps``); ``None`` or 0: none.
    """
    from google.cloud.devtools import cloudbuild_v1

    steps = check_steps(
        image.uri,
        checker_image=checker_image,
        sample_dir=CHECK_SAMPLE_DIR,
        wait_for=CLOUD_BUILD_STEP_ID,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=env,
        storage_uri=storage_uri,
        settings=settings,
        gpu=gpu,
        grpc_port=grpc_port,
    )
    artifacts = cloudbuild_v1.Artifacts(
        objects=cloudbuild_v1.Artifacts.ArtifactObjects(
            location=report_location(staging, context_object),
            paths=[f"{OUT_DIR}/report.md", f"{OUT_DIR}/metrics.json"],
        )
    )
    return cloud_build_request(
        image,
        staging,
        context_object,
        build_args={"BASE_IMAGE": base_image, "FRAMEWORK": plan.framework},
        labels=plan.labels,
        timeout_s=timeout_s,
        service_account=service_account,
        machine_type=machine_type,
        extra_steps=steps,
        artifacts=artifacts,
    )
