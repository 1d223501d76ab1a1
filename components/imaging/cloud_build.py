"""Building the serving image on Cloud Build, where a pipeline task has no Docker daemon.

The context is packed (``.tar.gz``), uploaded to the staging bucket, built by Cloud Build in the
pipeline's region and pushed to Artifact Registry in that region; the build log is tailed from
the staging bucket as it is written. ``cloud_build_request`` is the pure request construction
(tested offline, field by field); ``build_with_cloud_build`` sends it and follows the build.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.imaging.context import add_check_sample, assemble_build_context, pack_context
from components.imaging.local import REGISTRY_BASE_IMAGE
from components.imaging.names import (
    ArtifactRegistryImage,
    BuildImageInputError,
    StagingLocation,
    artifact_registry_image,
    parse_staging_bucket,
)
from components.imaging.plan import BuildPlan, BuiltImage, default_tag, prepare
from components.vertex import CLOUD_BUILD_DOCKER

if TYPE_CHECKING:  # imported where used: google-cloud-build takes ~1 s to import
    from google.cloud.devtools import cloudbuild_v1

logger = logging.getLogger(__name__)

CLOUD_BUILD_STEP_ID = "build-serving-image"
CLOUD_BUILD_TAG = "train-to-serve"
"""Build tag (not a Docker tag) that finds our builds: ``gcloud builds list --filter tags=...``."""
CLOUD_BUILD_TIMEOUT_S = 1800
FAILED_STATUSES = ("FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED")
TERMINAL_STATUSES = ("SUCCESS", *FAILED_STATUSES)
LOG_LINES_PER_STEP = 40

_LOG_STEP_RE = re.compile(r'^Step #(?P<index>\d+)(?: - "[^"]*")?: ?(?P<text>.*)$')


class CloudBuildError(RuntimeError):
    """A Cloud Build build did not succeed; the message holds the failing step's output."""


def cloud_build_request(
    image: ArtifactRegistryImage,
    staging: StagingLocation,
    context_object: str,
    *,
    build_args: Mapping[str, str],
    labels: Mapping[str, str] | None = None,
    timeout_s: int = CLOUD_BUILD_TIMEOUT_S,
    service_account: str = "",
    machine_type: str = "",
    extra_steps: Sequence[cloudbuild_v1.BuildStep] = (),
    artifacts: cloudbuild_v1.Artifacts | None = None,
) -> cloudbuild_v1.CreateBuildRequest:
    """The ``CreateBuildRequest`` that builds and pushes the serving image (pure, offline).

    One step runs ``docker build`` (BuildKit, for the Dockerfile's ``RUN --mount``) on the
    uploaded context with ``--build-arg`` for each of ``build_args`` and ``--label`` for each
    label; ``images`` makes Cloud Build push the image after the step and record its digest in
    ``results.images`` (a separate push step would push twice). The build runs in the
    image's region (``parent``); its log is written to the staging bucket (``GCS_ONLY``), where
    ``build_with_cloud_build`` tails it and the pipeline's service account can read it.

    Args:
        image: the Artifact Registry image to push (its region is the build's).
        staging: the staging location (the log goes to ``staging.logs_uri``).
        context_object: object name of the packed context in ``staging.bucket``.
        build_args: ``--build-arg`` values, ``BASE_IMAGE`` among them.
        labels: ``--label`` values.
        timeout_s: the build's time limit.
        service_account: email or ``projects/-/serviceAccounts/EMAIL`` to run the build as;
            empty: the project's default Cloud Build service account.
        machine_type: a ``BuildOptions.MachineType`` name (e.g. ``E2_HIGHCPU_8``); empty: the
            default worker.
        extra_steps: steps after the build step (a contract check of the built image, say);
            the image is pushed only if every step succeeds.
        artifacts: files from the workspace to copy to Cloud Storage after a success.
    """
    from google.cloud.devtools import cloudbuild_v1

    args = ["build", "--progress=plain", "--tag", image.uri]
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    args.append(".")
    options = cloudbuild_v1.BuildOptions(logging=cloudbuild_v1.BuildOptions.LoggingMode.GCS_ONLY)
    if machine_type:
        names = [m.name for m in cloudbuild_v1.BuildOptions.MachineType if m.value]
        if machine_type not in names:
            raise BuildImageInputError(f"unknown machine type {machine_type!r}; one of {names}")
        options.machine_type = cloudbuild_v1.BuildOptions.MachineType[machine_type]
    if service_account and "/" not in service_account:
        service_account = f"projects/{image.project}/serviceAccounts/{service_account}"
    build = cloudbuild_v1.Build(
        source=cloudbuild_v1.Source(
            storage_source=cloudbuild_v1.StorageSource(
                bucket=staging.bucket, object_=context_object
            )
        ),
        steps=[
            cloudbuild_v1.BuildStep(
                id=CLOUD_BUILD_STEP_ID,
                name=CLOUD_BUILD_DOCKER,
                args=args,
                env=["DOCKER_BUILDKIT=1"],
            ),
            *extra_steps,
        ],
        images=[image.uri],
        artifacts=artifacts,
        logs_bucket=staging.logs_uri,
        options=options,
        timeout=timedelta(seconds=timeout_s),
        tags=[CLOUD_BUILD_TAG],
        service_account=service_account,
    )
    return cloudbuild_v1.CreateBuildRequest(
        parent=f"projects/{image.project}/locations/{image.location}",
        project_id=image.project,
        build=build,
    )


class _LogTail:
    """Reads a Cloud Build log object as it grows; keeps each step's last lines, and every
    line of the steps in ``full_steps`` (indexes)."""

    def __init__(
        self, blob: Any, keep: int = LOG_LINES_PER_STEP, full_steps: Collection[int] = ()
    ) -> None:
        self.blob = blob
        self.offset = 0
        self.partial = b""
        self.by_step: dict[int, deque[str]] = defaultdict(lambda: deque(maxlen=keep))
        self.full_steps = set(full_steps)
        self.full: dict[int, list[str]] = defaultdict(list)

    def read(self, final: bool = False) -> list[str]:
        """The complete lines written since the last call (all of them when ``final``)."""
        from google.api_core import exceptions

        try:
            chunk = self.blob.download_as_bytes(start=self.offset, checksum=None)
        except (exceptions.NotFound, exceptions.RequestRangeNotSatisfiable):
            chunk = b""  # not written yet, or nothing new
        self.offset += len(chunk)
        data = self.partial + chunk
        lines = data.split(b"\n")
        self.partial = b"" if final else lines.pop()
        text = [line.decode("utf-8", "replace").rstrip("\r") for line in lines if line]
        for line in text:
            match = _LOG_STEP_RE.match(line)
            if match:
                self.by_step[int(match["index"])].append(match["text"])
                if int(match["index"]) in self.full_steps:
                    self.full[int(match["index"])].append(match["text"])
        return text


def _failure_message(build: cloudbuild_v1.Build, log: _LogTail) -> str:
    """Why a build failed: status, failing step, that step's last output lines, log URL."""
    status = type(build).Status(build.status).name
    lines = [f"Cloud Build {build.id} ended {status}: {build.status_detail or 'no detail'}"]
    if build.failure_info and build.failure_info.detail:
        lines.append(f"failure: {build.failure_info.detail}")
    failed = [
        (index, step)
        for index, step in enumerate(build.steps)
        if type(build).Status(step.status).name in FAILED_STATUSES
    ]
    for index, step in failed[:1]:
        lines.append(
            f"failing step #{index} ({step.id or step.name}): {step.name} {' '.join(step.args)}"
            + (f" (exit {step.exit_code})" if step.exit_code else "")
        )
        output = log.by_step.get(index)
        if output:
            lines.append("--- last lines of its output ---")
            lines.extend(output)
    if not failed and status != "SUCCESS":
        lines.append("no step failed: the push of the image or the build itself failed")
    lines.append(f"full log: {build.log_url or log.blob.name}")
    return "\n".join(lines)


def stage_context(
    model_dir: str | Path,
    bake_model: bool,
    staging: StagingLocation,
    bucket: Any,
    *,
    check_sample: bool = False,
    pins: Mapping[str, str] | None = None,
) -> str:
    """Pack the build context (with the model when ``bake_model``, with its sample as
    ``check-sample/`` when ``check_sample``, the requirements with ``pins``) and upload it to
    ``{staging}/train-to-serve/build-image/contexts/<sha256>.tar.gz`` (skipped when that
    object exists: same name, same bytes); return the object name."""
    from google.api_core import exceptions

    with tempfile.TemporaryDirectory(prefix="tts-cloud-build-") as scratch:
        context = assemble_build_context(
            Path(scratch) / "context", model_dir if bake_model else None, pins=pins
        )
        if check_sample:
            add_check_sample(context, model_dir)
        packed = Path(scratch) / "context.tar.gz"
        context_object = staging.context_object(pack_context(context, packed))
        try:
            bucket.blob(context_object).upload_from_filename(str(packed), if_generation_match=0)
            logger.info(
                "uploaded the build context (%.1f MB) to gs://%s/%s",
                packed.stat().st_size / 1e6,
                staging.bucket,
                context_object,
            )
        except exceptions.PreconditionFailed:
            logger.info("build context already at gs://%s/%s", staging.bucket, context_object)
    return context_object


@dataclass
class FinishedBuild:
    """A build that ended, whatever its status, with what its log said."""

    build: cloudbuild_v1.Build
    log: _LogTail

    @property
    def status(self) -> str:
        return type(self.build).Status(self.build.status).name

    def failure(self) -> str:
        """Why it failed: status, failing step, that step's last output lines, log URL."""
        return _failure_message(self.build, self.log)

    def digest(self, image_uri: str) -> str:
        """The digest Cloud Build recorded for the pushed ``image_uri`` (``""`` if none)."""
        digests = [i.digest for i in self.build.results.images if i.name == image_uri]
        return next((digest for digest in digests if digest), "")


def follow_build(
    request: cloudbuild_v1.CreateBuildRequest,
    bucket: Any,
    staging: StagingLocation,
    *,
    credentials: Any = None,
    poll_seconds: float = 5.0,
    on_line: Callable[[str], None] | None = None,
    full_output_steps: Collection[int] = (),
) -> FinishedBuild:
    """Create the build and follow it to its end: status changes are logged with the log
    URL, the log's new lines (``Step #0 - "build-serving-image": STEP 3/9 ...``) passed to
    ``on_line`` as Cloud Build writes them to the staging bucket; every line of the steps in
    ``full_output_steps`` (indexes) is kept."""
    from google.cloud.devtools import cloudbuild_v1

    emit = on_line or (lambda line: logger.info("%s", line))
    started = time.monotonic()
    client = cloudbuild_v1.CloudBuildClient(credentials=credentials)
    operation = client.create_build(request=request)
    build = operation.metadata.build
    name = f"{request.parent}/builds/{build.id}"
    logger.info("Cloud Build %s started; log: %s", build.id, build.log_url)
    log = _LogTail(bucket.blob(staging.log_object(build.id)), full_steps=full_output_steps)
    status = ""
    while True:
        build = client.get_build(
            request=cloudbuild_v1.GetBuildRequest(
                name=name, project_id=request.project_id, id=build.id
            )
        )
        now = cloudbuild_v1.Build.Status(build.status).name
        done = now in TERMINAL_STATUSES
        for line in log.read(final=done):
            emit(line)
        if now != status:
            status = now
            logger.info("Cloud Build %s: %s (%.0f s)", build.id, status, time.monotonic() - started)
        if done:
            return FinishedBuild(build, log)
        time.sleep(poll_seconds)


@dataclass(frozen=True)
class CloudBuildTarget:
    """What a Cloud Build of a model's image works with: the plan (framework, labels), the
    Artifact Registry image, the staging location and its bucket."""

    plan: BuildPlan
    image: ArtifactRegistryImage
    staging: StagingLocation
    bucket: Any

    @classmethod
    def of(
        cls,
        model_dir: str | Path,
        image_name: str,
        *,
        project: str,
        location: str,
        repository: str,
        staging_bucket: str,
        bake_model: bool,
        gpu: bool,
        credentials: Any = None,
    ) -> CloudBuildTarget:
        """Check the model and the names (``BuildImageInputError`` before any request)."""
        from google.cloud import storage

        plan = prepare(model_dir, bake_model, gpu)
        image = artifact_registry_image(
            image_name,
            project=project,
            location=location,
            repository=repository,
            default_tag=default_tag(plan.manifest, bake_model, gpu),
        )
        staging = parse_staging_bucket(staging_bucket)
        client = storage.Client(project=image.project, credentials=credentials)
        return cls(plan, image, staging, client.bucket(staging.bucket))


def build_with_cloud_build(
    model_dir: str | Path,
    image_name: str,
    *,
    project: str,
    location: str,
    staging_bucket: str,
    repository: str = "",
    bake_model: bool = True,
    gpu: bool = False,
    base_image: str = REGISTRY_BASE_IMAGE,
    timeout_s: int = CLOUD_BUILD_TIMEOUT_S,
    service_account: str = "",
    machine_type: str = "",
    poll_seconds: float = 5.0,
    credentials: Any = None,
    on_line: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Build the serving image with Cloud Build and push it to Artifact Registry.

    Stages the build context (``stage_context``), creates the build
    (``cloud_build_request``) in ``location`` and follows it (``follow_build``).

    Args:
        model_dir: the model directory (for a baked image it is copied into the context).
        image_name: ``name[:tag]`` in ``repository``, or a full
            ``{location}-docker.pkg.dev/{project}/{repository}/name[:tag]``.
        project: the Google Cloud project id (builds and pushes there).
        location: the pipeline's region; the build runs there and the repository must be
            there.
        staging_bucket: ``gs://bucket[/prefix]`` for the context and the build log.
        repository: the Artifact Registry Docker repository (if ``image_name`` is bare).
        bake_model: copy the model in (default) or build the ``AIP_STORAGE_URI`` runtime image.
        base_image: ``BASE_IMAGE`` for the Dockerfile (Cloud Build workers reach Docker Hub).
        timeout_s: Cloud Build's time limit for the build.
        service_account: the identity to build as; empty: Cloud Build's default.
        machine_type: ``BuildOptions.MachineType`` name, empty for the default worker.
        poll_seconds: how often to check the build and its log.
        credentials: google-auth credentials for both clients; default: ADC.
        on_line: called with each line of the build log; default: log at INFO.

    Returns:
        The pushed image; its ``reference`` is
        ``{location}-docker.pkg.dev/{project}/{repository}/{name}@sha256:...``.

    Raises:
        BuildImageInputError: bad image name, region, bucket or model (before any request).
        CloudBuildError: the build did not succeed; the message has the failing step's
            output and the log URL.
    """
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
    context_object = stage_context(model_dir, bake_model, staging, bucket, pins=target.plan.pins)
    request = cloud_build_request(
        image,
        staging,
        context_object,
        build_args={"BASE_IMAGE": base_image, "FRAMEWORK": target.plan.framework},
        labels=target.plan.labels,
        timeout_s=timeout_s,
        service_account=service_account,
        machine_type=machine_type,
    )
    finished = follow_build(
        request,
        bucket,
        staging,
        credentials=credentials,
        poll_seconds=poll_seconds,
        on_line=on_line,
    )
    return pushed_image(finished, image, started)


def pushed_image(
    finished: FinishedBuild, image: ArtifactRegistryImage, started: float
) -> BuiltImage:
    """The image a successful build pushed, pinned by its digest.

    Raises:
        CloudBuildError: the build failed, or recorded no digest for the image.
    """
    if finished.status != "SUCCESS":
        raise CloudBuildError(finished.failure())
    digest = finished.digest(image.uri)
    if not digest:
        raise CloudBuildError(
            f"Cloud Build {finished.build.id} succeeded but recorded no digest for "
            f"{image.uri}; results: {list(finished.build.results.images)}; "
            f"log: {finished.build.log_url}"
        )
    reference = image.pinned(digest)
    logger.info("pushed %s", reference)
    return BuiltImage(
        reference=reference,
        digest=digest,
        builder="cloud-build",
        seconds=time.monotonic() - started,
        tagged=image.uri,
    )
