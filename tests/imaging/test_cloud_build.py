"""Cloud Build: the request checked offline field by field, and the whole flow with only the
client methods that would send a request replaced, each capturing what it was given and
answering as the service does."""

import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.cloud.devtools import cloudbuild_v1

from components.imaging.cloud_build import CloudBuildError, cloud_build_request
from components.imaging.names import (
    BuildImageInputError,
    artifact_registry_image,
    parse_staging_bucket,
)
from serving_image.server import artifact
from tests.imaging.builds import (
    BUILD_ID,
    DIGEST,
    LOCATION,
    LOG,
    LOG_URL,
    PROJECT,
    REPOSITORY,
    STAGING,
    STEP,
    FakeCloud,
    cloud_build_status,
    model_image_uri,
    pushed,
    run_cloud_build,
)


# ------------------------------------------------------- the Cloud Build request --
def _request(**overrides: Any) -> cloudbuild_v1.CreateBuildRequest:
    image = artifact_registry_image(
        "penguins-server:model-1", project=PROJECT, location=LOCATION, repository=REPOSITORY
    )
    arguments: dict[str, Any] = {
        "build_args": {"BASE_IMAGE": "docker.io/library/python:3.11-slim"},
        "labels": {"io.train-to-serve.model-source": "baked"},
    } | overrides
    return cloud_build_request(image, parse_staging_bucket(STAGING), "ctx/abc.tar.gz", **arguments)


def test_the_cloud_build_request_field_by_field() -> None:
    request = _request()
    uri = f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/penguins-server:model-1"
    assert request.parent == f"projects/{PROJECT}/locations/{LOCATION}"
    assert request.project_id == PROJECT
    build = request.build
    assert build.source.storage_source.bucket == "my-staging"
    assert build.source.storage_source.object_ == "ctx/abc.tar.gz"
    assert len(build.steps) == 1
    step = build.steps[0]
    assert step.id == "build-serving-image"
    assert step.name == "gcr.io/cloud-builders/docker"
    assert list(step.env) == ["DOCKER_BUILDKIT=1"]
    assert list(step.args) == [
        "build",
        "--progress=plain",
        "--tag",
        uri,
        "--build-arg",
        "BASE_IMAGE=docker.io/library/python:3.11-slim",
        "--label",
        "io.train-to-serve.model-source=baked",
        ".",
    ]
    assert step.entrypoint == "" and step.dir_ == ""
    assert list(build.images) == [uri]  # Cloud Build pushes it and records the digest
    assert build.logs_bucket == f"{STAGING}/train-to-serve/build-image/logs"
    assert build.options.logging == cloudbuild_v1.BuildOptions.LoggingMode.GCS_ONLY
    assert build.options.machine_type == cloudbuild_v1.BuildOptions.MachineType.UNSPECIFIED
    assert build.timeout.total_seconds() == 1800
    assert list(build.tags) == ["train-to-serve"]
    assert build.service_account == ""
    assert not build.substitutions and not build.artifacts and not build.secrets
    # What goes over the wire, in the REST API's JSON names.
    wire = json.loads(
        cloudbuild_v1.CreateBuildRequest.to_json(request, use_integers_for_enums=False)
    )["build"]
    assert wire["source"]["storageSource"]["object"] == "ctx/abc.tar.gz"
    assert (wire["timeout"], wire["options"]["logging"]) == ("1800s", "GCS_ONLY")


def test_the_cloud_build_request_options() -> None:
    build = _request(
        timeout_s=600,
        service_account="builder@my-project.iam.gserviceaccount.com",
        machine_type="E2_HIGHCPU_8",
    ).build
    assert build.timeout.total_seconds() == 600
    assert build.service_account == (
        f"projects/{PROJECT}/serviceAccounts/builder@my-project.iam.gserviceaccount.com"
    )
    assert build.options.machine_type == cloudbuild_v1.BuildOptions.MachineType.E2_HIGHCPU_8
    full = "projects/other/serviceAccounts/sa@other.iam.gserviceaccount.com"
    assert _request(service_account=full).build.service_account == full
    with pytest.raises(BuildImageInputError, match="unknown machine type 'BIG'"):
        _request(machine_type="BIG")


def test_cloud_build_uploads_builds_streams_the_log_and_returns_the_digest(
    fake_cloud: Callable[..., FakeCloud],
    penguins_model_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manifest = artifact.read_manifest(penguins_model_dir)
    uri = model_image_uri(penguins_model_dir, "penguins-server")
    queued, working = cloud_build_status("QUEUED"), cloud_build_status("WORKING")
    fake = fake_cloud([queued, working, pushed(uri)], LOG)
    lines: list[str] = []
    with caplog.at_level(logging.INFO, logger="components.imaging"):
        built = run_cloud_build(penguins_model_dir, lines)

    assert built.reference == uri.rsplit(":", 1)[0] + "@" + DIGEST
    assert (built.digest, built.builder, built.tagged) == (DIGEST, "cloud-build", uri)
    # The upload: the packed context, named by its sha256, is what the build reads.
    (upload,) = fake.uploads
    (request,) = fake.created
    source = request.build.source.storage_source
    assert (upload["bucket"], upload["name"]) == (source.bucket, source.object_)
    assert Path(upload["name"]).name == hashlib.sha256(upload["data"]).hexdigest() + ".tar.gz"
    with tarfile.open(fileobj=io.BytesIO(upload["data"]), mode="r:gz") as packed:
        assert f"model/{artifact.MODEL_FILE}" in packed.getnames()
    # The request: the image, its labels (what model, which library versions).
    args = list(request.build.steps[0].args)
    assert args[args.index("--tag") + 1] == uri
    assert f"io.train-to-serve.model-sha256={manifest['model_sha256']}" in args
    assert "BASE_IMAGE=docker.io/library/python:3.11-slim" in args
    assert list(request.build.images) == [uri]
    # Polled by the regional name.
    assert {r.name for r in fake.fetched} == {
        f"projects/{PROJECT}/locations/{LOCATION}/builds/{BUILD_ID}"
    }
    # Progress: every log line once, in order, the partial line only when complete.
    assert lines == LOG[-1].splitlines()
    assert any(LOG_URL in record.getMessage() for record in caplog.records)
    statuses = [r.args[1] for r in caplog.records if r.msg == "Cloud Build %s: %s (%.0f s)"]
    assert statuses == ["QUEUED", "WORKING", "SUCCESS"]


def test_an_unchanged_context_is_not_uploaded_twice(
    fake_cloud: Callable[..., FakeCloud], penguins_model_dir: Path
) -> None:
    name = f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/penguins-server:v1"
    fake = fake_cloud([pushed(name)], [""])
    for _ in range(2):
        assert run_cloud_build(penguins_model_dir, [], image_name=name).digest == DIGEST
    assert len(fake.uploads) == 1
    assert fake.created[0].build.source == fake.created[1].build.source


def test_a_failed_cloud_build_shows_the_failing_step_output_and_the_log_url(
    fake_cloud: Callable[..., FakeCloud], penguins_model_dir: Path
) -> None:
    log = (
        f"FETCHSOURCE\n{STEP}#7 [server 4/9] RUN python -m pip install -r requirements.txt\n"
        f"{STEP}#7 ERROR: No matching distribution found for scikit-learn==9.9\n"
        f"{STEP}ERROR: process did not complete successfully: exit code: 1\n"
        'ERROR: build step 0 "gcr.io/cloud-builders/docker" failed: exit status 1\n'
    )
    failed = cloud_build_status(
        "FAILURE",
        status_detail="Build step failure: build step 0 failed",
        failure_info=cloudbuild_v1.Build.FailureInfo(detail="step exited with non-zero status"),
        steps=[
            cloudbuild_v1.BuildStep(
                id="build-serving-image",
                name="gcr.io/cloud-builders/docker",
                args=["build", "."],
                status="FAILURE",
                exit_code=1,
            )
        ],
    )
    fake_cloud([cloud_build_status("WORKING"), failed], [log])
    lines: list[str] = []
    with pytest.raises(CloudBuildError) as caught:
        run_cloud_build(penguins_model_dir, lines)
    message = str(caught.value)
    assert f"Cloud Build {BUILD_ID} ended FAILURE: Build step failure" in message
    assert "failure: step exited with non-zero status" in message
    assert "failing step #0 (build-serving-image): gcr.io/cloud-builders/docker build ." in message
    assert "(exit 1)" in message
    assert "No matching distribution found for scikit-learn==9.9" in message
    assert message.rstrip().endswith(f"full log: {LOG_URL}")
    assert lines == log.splitlines()  # streamed as well


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"staging_bucket": "my-staging"}, "must be a gs:// URI"),
        ({"repository": ""}, "['repository'] not given"),
        (
            {
                "image_name": f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/srv",
                "location": "us-central1",
            },
            "is in location 'europe-west4' but location 'us-central1' was given",
        ),
    ],
)
def test_cloud_build_checks_its_inputs_before_any_request(
    fake_cloud: Callable[..., FakeCloud],
    penguins_model_dir: Path,
    overrides: dict[str, str],
    message: str,
) -> None:
    fake = fake_cloud([], [])
    with pytest.raises(BuildImageInputError) as caught:
        run_cloud_build(penguins_model_dir, [], **overrides)
    assert message in str(caught.value)
    assert not fake.uploads and not fake.created
