"""Submit the checked build, follow it, and read its verdict back from the build log."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import vertex
from components.checked_build.request import CHECKED_BUILD_TIMEOUT_S, checked_build_request
from components.contract import CheckSettings, ContractReport
from components.contract.image import check_upload_routes, upload_metadata
from components.contract.in_build import STEP_IDS, VERDICT_STEP, read_report
from components.imaging.cloud_build import (
    CloudBuildError,
    CloudBuildTarget,
    FinishedBuild,
    follow_build,
    pushed_image,
    stage_context,
)
from components.imaging.local import REGISTRY_BASE_IMAGE
from components.imaging.plan import BuiltImage

logger = logging.getLogger(__name__)


@dataclass
class CheckedBuild:
    """A checked build's outcome: the report, and on a pass the pushed image and the
    ``UnmanagedContainerModel`` metadata for upload."""

    report: ContractReport
    image: BuiltImage | None
    """The pushed image (pinned by the digest that was checked); ``None`` on a violation."""
    metadata: dict[str, Any] | None
    """``containerSpec`` for ``ModelUploadOp``; ``None`` on a violation."""
    build_id: str


def checker_digest(finished: FinishedBuild) -> str:
    """The digest of the image that ran the check, as Cloud Build recorded it."""
    digests = list(finished.build.results.build_step_images)
    index = [step.id for step in finished.build.steps].index(STEP_IDS[1])
    return digests[index] if index < len(digests) else ""


def build_and_check(
    model_dir: str | Path,
    image_name: str,
    *,
    project: str,
    location: str,
    staging_bucket: str,
    checker_image: str,
    repository: str = "",
    bake_model: bool = True,
    gpu: bool = False,
    storage_uri: str = "",
    base_image: str = REGISTRY_BASE_IMAGE,
    port: int = vertex.DEFAULT_PORT,
    health_route: str = "/health",
    predict_route: str = "/predict",
    env: Mapping[str, str] | None = None,
    settings: CheckSettings | None = None,
    large_model_bytes: int = vertex.LARGE_MODEL_BYTES,
    timeout_s: int = CHECKED_BUILD_TIMEOUT_S,
    service_account: str = "",
    machine_type: str = "",
    poll_seconds: float = 5.0,
    credentials: Any = None,
    on_line: Callable[[str], None] | None = None,
    grpc_port: int | None = None,
) -> CheckedBuild:
    """Build the serving image on Cloud Build, contract-check it there, push it on a pass.

    Args:
        model_dir: the train component's model directory.
        image_name, project, location, repository, staging_bucket, bake_model, gpu,
            base_image, service_account, machine_type: as for ``build_with_cloud_build``.
        checker_image: the components image (by digest, ideally): it runs the check.
        storage_uri: the model's ``gs://`` URI, for an image without the model
            (``bake_model=False``); the build's service account must read it.
        port, health_route, predict_route, env: the ``containerSpec`` upload will declare.
        settings: the check's numbers (startup deadline, grace period, strict).
        large_model_bytes: model size from which the spec gets a ``startupProbe``.
        timeout_s: the build's time limit.
        poll_seconds, credentials, on_line: as for ``follow_build``.
        grpc_port: ``containerSpec.grpcPorts[0]``: checked over gRPC too (the container gets
            ``SERVING_GRPC_PORT`` unless ``env`` sets it), and on a pass the spec declares it
            with gRPC probes; ``None`` or 0: HTTP only.

    Returns:
        The outcome; on a violation ``image`` and ``metadata`` are ``None`` and nothing was
        pushed.

    Raises:
        BuildImageInputError: bad names or model, before any request.
        ValueError: default Vertex routes (they are unknown before deploy), or
            ``bake_model=False`` without ``storage_uri``.
        CloudBuildError: the build failed before the check's verdict (the image did not
            build, say); the message has the failing step's output.
    """
    check_upload_routes(health_route, predict_route)
    if not bake_model and not storage_uri.startswith("gs://"):
        raise ValueError(
            "an image without the model loads it from AIP_STORAGE_URI: give storage_uri, the "
            f"model's gs:// URI (got {storage_uri!r})"
        )
    settings = settings or CheckSettings()
    if "@sha256:" not in checker_image:
        logger.warning(
            "the checker image %s is named by tag: the report records the digest that ran",
            checker_image,
        )
    started = time.monotonic()
    target = CloudBuildTarget.of(
        model_dir,
        image_name,
        project=project,
        location=location,
        repository=repository,
        staging_bucket=staging_bucket,
        bake_model=bake_model,
        gpu=gpu,
        credentials=credentials,
    )
    image, staging, bucket = target.image, target.staging, target.bucket
    context_object = stage_context(
        model_dir, bake_model, staging, bucket, check_sample=True, pins=target.plan.pins
    )
    request = checked_build_request(
        image,
        staging,
        context_object,
        target.plan,
        checker_image=checker_image,
        base_image=base_image,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=env,
        storage_uri="" if bake_model else storage_uri,
        settings=settings,
        gpu=gpu,
        timeout_s=timeout_s,
        service_account=service_account,
        machine_type=machine_type,
        grpc_port=grpc_port,
    )
    verdict_index = [step.id for step in request.build.steps].index(VERDICT_STEP)
    finished = follow_build(
        request,
        bucket,
        staging,
        credentials=credentials,
        poll_seconds=poll_seconds,
        on_line=on_line,
        full_output_steps={verdict_index},
    )
    return read_checked_build(
        finished,
        verdict_index,
        image=image,
        model_dir=Path(model_dir),
        started=started,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=env,
        settings=settings,
        large_model_bytes=large_model_bytes,
        grpc_port=grpc_port,
    )


def read_checked_build(
    finished: FinishedBuild,
    verdict_index: int,
    *,
    image: Any,
    model_dir: Path,
    started: float,
    port: int,
    health_route: str,
    predict_route: str,
    env: Mapping[str, str] | None,
    settings: CheckSettings,
    large_model_bytes: int,
    grpc_port: int | None = None,
) -> CheckedBuild:
    """The outcome of a finished checked build, from its status and the verdict's log lines;
    on a pass the metadata is ``upload_metadata``'s, the local check's (``grpc_port`` as
    there).

    Raises:
        CloudBuildError: the build ended before the verdict step printed its report.
    """
    try:
        report = read_report(finished.log.full.get(verdict_index, []))
    except ValueError:
        raise CloudBuildError(finished.failure()) from None
    report.settings["Cloud Build"] = finished.build.id
    digest = checker_digest(finished)
    if digest:
        report.settings["checker image digest"] = digest
    if not report.passed:
        return CheckedBuild(report, None, None, finished.build.id)
    built = pushed_image(finished, image, started)
    report.target = built.reference
    metadata = upload_metadata(
        built.reference,
        model_dir,
        report,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=env,
        startup_deadline_s=settings.startup_deadline_s,
        large_model_bytes=large_model_bytes,
        grpc_port=grpc_port,
    )
    return CheckedBuild(report, built, metadata, finished.build.id)
