"""The build-image component: names, the Cloud Build request offline, real local builds.

Offline tests need no credentials and no network: the Cloud Build request is checked field by
field, and where a test runs the whole Cloud Build flow only the client methods that would
send a request (upload, create, get, log download) are replaced, each capturing what it was
given and answering as the service does.

The ``container`` tests build the real serving image with the real engine (skipped on a
workstation without one, FAIL in CI) and run the component through kfp.local. The images
share the layer cache with each other and with ``test_image.py``; only the model layer and
the labels differ.
"""

import hashlib
import io
import json
import logging
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1

from components import build_image as bi
from components import container_engine as ce
from serving_image.server import manifest as contract

PROJECT = "my-project"
LOCATION = "europe-west4"
REPOSITORY = "models"
STAGING = "gs://my-staging/pipelines/run-1"
BUILD_ID = "0d2e5c1a-6f4b-4c5e-9f2d-3b7a1e8c9d00"
LOG_URL = f"https://console.cloud.google.com/cloud-build/builds;region={LOCATION}/{BUILD_ID}"
DIGEST = "sha256:" + "ab" * 32
LOCAL_NAME = "localhost/train-to-serve-build-test"


# ------------------------------------------------------------ image naming --
def test_a_bare_name_goes_into_the_repository_in_the_pipeline_region() -> None:
    image = bi.artifact_registry_image(
        "penguins-server", project=PROJECT, location=LOCATION, repository=REPOSITORY
    )
    assert image.uri == f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/penguins-server:latest"
    assert image.pinned(DIGEST) == (
        f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/penguins-server@{DIGEST}"
    )


def test_a_full_artifact_registry_name_is_split_and_checked_against_the_settings() -> None:
    uri = f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/team/penguins-server:v2"
    image = bi.artifact_registry_image(uri, location=LOCATION, default_tag="unused")
    assert (image.location, image.project, image.repository) == (LOCATION, PROJECT, REPOSITORY)
    assert (image.name, image.tag, image.uri) == ("team/penguins-server", "v2", uri)


@pytest.mark.parametrize(
    ("image_name", "settings", "message"),
    [
        (
            f"us-central1-docker.pkg.dev/{PROJECT}/{REPOSITORY}/srv",
            {"location": LOCATION},
            "is in location 'us-central1' but location 'europe-west4' was given",
        ),
        (
            f"{LOCATION}-docker.pkg.dev/other-project/{REPOSITORY}/srv",
            {"project": PROJECT},
            "is in project 'other-project'",
        ),
        (f"us-docker.pkg.dev/{PROJECT}/{REPOSITORY}/srv", {}, "'us' is a multi-region"),
        ("srv", {"location": "europe"}, "'europe' is a multi-region"),
        (f"gcr.io/{PROJECT}/srv", {}, "not an Artifact Registry Docker image"),
        (f"{LOCATION}-docker.pkg.dev/{PROJECT}/srv", {}, "not an Artifact Registry"),
        ("Penguins", {}, "invalid image name 'Penguins'"),
        ("penguins--/x", {}, "invalid image name"),
        ("srv:-bad", {}, "invalid tag '-bad'"),
        ("srv:", {}, "invalid tag"),
        (f"srv@{DIGEST}", {}, "has a digest"),
        ("srv", {"repository": ""}, "['repository'] not given"),
        ("srv", {"project": "123456789"}, "invalid project id '123456789'"),
        ("srv", {"repository": "Models_1"}, "invalid repository 'Models_1'"),
    ],
)
def test_bad_image_names_and_settings_are_refused_with_the_reason(
    image_name: str, settings: dict[str, str], message: str
) -> None:
    given = {"project": PROJECT, "location": LOCATION, "repository": REPOSITORY} | settings
    if "." in image_name.split("/", 1)[0]:  # a full name: only the settings under test
        given = settings
    with pytest.raises(bi.BuildImageInputError) as caught:
        bi.artifact_registry_image(image_name, **given)
    assert message in str(caught.value)


def test_local_names_go_under_localhost_unless_they_name_a_registry() -> None:
    assert bi.local_image_name("srv", "t1") == "localhost/srv:t1"
    assert bi.local_image_name("team/srv:v1", "t1") == "localhost/team/srv:v1"
    assert bi.local_image_name("registry.example:5000/srv", "t1") == "registry.example:5000/srv:t1"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("my-bucket/staging", "must be a gs:// URI"),
        ("/gcs/my-bucket/staging", "(use gs://my-bucket/staging)"),
        ("s3://my-bucket", "must be a gs:// URI"),
        ("gs://My_Bucket/x", "invalid bucket name 'My_Bucket'"),
        ("gs://", "invalid bucket name ''"),
    ],
)
def test_a_staging_bucket_must_be_a_gs_uri(uri: str, message: str) -> None:
    with pytest.raises(bi.BuildImageInputError) as caught:
        bi.parse_staging_bucket(uri)
    assert message in str(caught.value)


def test_staging_object_names_are_under_the_prefix_and_named_by_content() -> None:
    staging = bi.parse_staging_bucket(STAGING + "/")
    assert (staging.bucket, staging.prefix) == ("my-staging", "pipelines/run-1")
    assert staging.context_object("f" * 64) == (
        "pipelines/run-1/train-to-serve/build-image/contexts/" + "f" * 64 + ".tar.gz"
    )
    assert staging.logs_uri == "gs://my-staging/pipelines/run-1/train-to-serve/build-image/logs"
    assert staging.log_object("b1") == "pipelines/run-1/train-to-serve/build-image/logs/log-b1.txt"
    assert bi.parse_staging_bucket("gs://my-staging").context_object("0") == (
        "train-to-serve/build-image/contexts/0.tar.gz"
    )


# ---------------------------------------------------------- library versions --
def _manifest_with(**libraries: str) -> dict[str, Any]:
    return {"model_sha256": "0" * 64, "libraries": libraries}


def test_the_model_library_versions_must_equal_the_image_pins(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pins\nscikit-learn==1.9.1  # same as training\nnumpy==2.4.6\n")
    ok = _manifest_with(**{"scikit-learn": "1.9.1", "numpy": "2.4.6", "joblib": "1.0"})
    assert bi.check_library_versions(ok, requirements) == {
        "scikit-learn": "1.9.1",
        "numpy": "2.4.6",
    }
    old = _manifest_with(**{"scikit-learn": "1.5.2", "numpy": "2.4.6", "pandas": "2.2.3"})
    with pytest.raises(bi.BuildImageInputError) as caught:
        bi.check_library_versions(old, requirements)
    message = str(caught.value)
    assert "scikit-learn 1.5.2 (image: 1.9.1)" in message
    assert "pandas 2.2.3 (image: unpinned)" in message
    assert "numpy" not in message.split(";")[0]


def test_the_project_trains_with_the_versions_the_serving_image_pins(
    penguins_model_dir: Path,
) -> None:
    manifest = contract.read_manifest(penguins_model_dir)
    requirements = ce.serving_image_dir() / "requirements.txt"
    versions = bi.check_library_versions(manifest, requirements)
    assert set(versions) == set(bi.PINNED_LIBRARIES)
    labels = bi.image_labels(manifest, True, versions)
    assert labels["io.train-to-serve.model-sha256"] == manifest["model_sha256"]
    assert "io.train-to-serve.model-sha256" not in bi.image_labels(manifest, False, versions)


# ---------------------------------------------------------------- packing --
def _context(tmp_path: Path, model_dir: Path | None) -> Path:
    return ce.assemble_build_context(tmp_path / "context", model_dir)


def _members(packed: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(packed, "r:gz") as tar:
        return {member.name: member for member in tar.getmembers()}


def test_the_packed_context_holds_the_serving_sources_and_the_model(
    tmp_path: Path, penguins_model_dir: Path
) -> None:
    context = _context(tmp_path, penguins_model_dir)
    digest = bi.pack_context(context, tmp_path / "a.tar.gz")
    members = _members(tmp_path / "a.tar.gz")
    files = {name for name, info in members.items() if info.isfile()}
    assert {"Dockerfile", "requirements.txt", "server/__init__.py", "server/manifest.py"} <= files
    assert {f"model/{contract.MODEL_FILE}", f"model/{contract.MANIFEST_FILE}"} <= files
    assert not any("__pycache__" in name or name.startswith("/") for name in members)
    assert {(m.uid, m.gid, m.uname, m.mtime) for m in members.values()} == {(0, 0, "", 0)}
    with tarfile.open(tmp_path / "a.tar.gz", "r:gz") as tar:
        extracted = tar.extractfile(f"model/{contract.MODEL_FILE}")
        assert extracted is not None
        assert extracted.read() == (penguins_model_dir / contract.MODEL_FILE).read_bytes()
    # Reproducible: another context with the same files packs to the same bytes.
    again = _context(tmp_path / "again", penguins_model_dir)
    assert bi.pack_context(again, tmp_path / "b.tar.gz") == digest
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_without_baking_the_context_has_no_model(tmp_path: Path) -> None:
    bi.pack_context(_context(tmp_path, None), tmp_path / "c.tar.gz")
    assert not any(name.startswith("model") for name in _members(tmp_path / "c.tar.gz"))


# ------------------------------------------------------- the Cloud Build request --
def _request(**overrides: Any) -> cloudbuild_v1.CreateBuildRequest:
    image = bi.artifact_registry_image(
        "penguins-server:model-1", project=PROJECT, location=LOCATION, repository=REPOSITORY
    )
    arguments: dict[str, Any] = {
        "build_args": {"BASE_IMAGE": "docker.io/library/python:3.11-slim"},
        "labels": {"io.train-to-serve.model-source": "baked"},
    } | overrides
    return bi.cloud_build_request(
        image, bi.parse_staging_bucket(STAGING), "ctx/abc.tar.gz", **arguments
    )


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
    with pytest.raises(bi.BuildImageInputError, match="unknown machine type 'BIG'"):
        _request(machine_type="BIG")


# ------------------------------------------- the Cloud Build flow, network replaced --
class FakeCloud:
    """Stands in for Cloud Storage and Cloud Build at the methods that send requests."""

    def __init__(self, statuses: list[cloudbuild_v1.Build], log_growth: list[str]):
        self.statuses = statuses
        self.log_growth = log_growth  # the log object's content at each get_build
        self.polls = 0
        self.uploads: list[dict[str, Any]] = []
        self.created: list[cloudbuild_v1.CreateBuildRequest] = []
        self.fetched: list[cloudbuild_v1.GetBuildRequest] = []
        self.existing: set[str] = set()

    def upload_from_filename(self, blob: storage.Blob, filename: str, **kwargs: Any) -> None:
        if kwargs.get("if_generation_match") == 0 and blob.name in self.existing:
            raise exceptions.PreconditionFailed("exists")
        self.existing.add(blob.name)
        self.uploads.append(
            {"bucket": blob.bucket.name, "name": blob.name, "data": Path(filename).read_bytes()}
        )

    def download_as_bytes(self, blob: storage.Blob, start: int = 0, **_: Any) -> bytes:
        content = self.log_growth[min(self.polls, len(self.log_growth)) - 1].encode()
        if self.polls == 0 or not content:
            raise exceptions.NotFound("no log yet")
        if start >= len(content):
            raise exceptions.RequestRangeNotSatisfiable("nothing new")
        return content[start:]

    def create_build(self, client: Any, request: cloudbuild_v1.CreateBuildRequest) -> Any:
        self.created.append(request)
        created = cloudbuild_v1.Build(id=BUILD_ID, log_url=LOG_URL, status="QUEUED")
        return SimpleNamespace(metadata=cloudbuild_v1.BuildOperationMetadata(build=created))

    def get_build(self, client: Any, request: cloudbuild_v1.GetBuildRequest) -> Any:
        self.fetched.append(request)
        self.polls += 1
        return self.statuses[min(self.polls, len(self.statuses)) - 1]


@pytest.fixture
def fake_cloud(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeCloud]:
    def install(statuses: list[cloudbuild_v1.Build], log_growth: list[str]) -> FakeCloud:
        fake = FakeCloud(statuses, log_growth)
        replaced = [
            (storage.Blob, "upload_from_filename"),
            (storage.Blob, "download_as_bytes"),
            (cloudbuild_v1.CloudBuildClient, "create_build"),
            (cloudbuild_v1.CloudBuildClient, "get_build"),
        ]
        for cls, name in replaced:  # each call reaches the fake with the instance it was on
            method = getattr(fake, name)
            monkeypatch.setattr(cls, name, lambda obj, *a, _m=method, **k: _m(obj, *a, **k))
        return fake

    return install


def _build(status: str, **fields: Any) -> cloudbuild_v1.Build:
    return cloudbuild_v1.Build(id=BUILD_ID, log_url=LOG_URL, status=status, **fields)


STEP = 'Step #0 - "build-serving-image": '
LOG = [
    "starting build\n",
    f"starting build\nFETCHSOURCE\n{STEP}#1 [internal] load build definition\n{STEP}#5 [ser",
    f"starting build\nFETCHSOURCE\n{STEP}#1 [internal] load build definition\n"
    f"{STEP}#5 [server 2/9] RUN groupadd --system server\n{STEP}#9 exporting to image\nPUSH\n"
    "DONE\n",
]


def _run_cloud_build(model_dir: Path, lines: list[str], **overrides: Any) -> bi.BuiltImage:
    arguments: dict[str, Any] = {
        "project": PROJECT,
        "location": LOCATION,
        "repository": REPOSITORY,
        "staging_bucket": STAGING,
        "poll_seconds": 0,
        "credentials": AnonymousCredentials(),
        "on_line": lines.append,
    } | overrides
    image_name = arguments.pop("image_name", "penguins-server")
    return bi.build_with_cloud_build(model_dir, image_name, **arguments)


def test_cloud_build_uploads_builds_streams_the_log_and_returns_the_digest(
    fake_cloud: Callable[..., FakeCloud],
    penguins_model_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manifest = contract.read_manifest(penguins_model_dir)
    uri = (
        f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/penguins-server:"
        f"model-{manifest['model_sha256'][:12]}"
    )
    done = _build(
        "SUCCESS",
        results=cloudbuild_v1.Results(images=[cloudbuild_v1.BuiltImage(name=uri, digest=DIGEST)]),
    )
    fake = fake_cloud([_build("QUEUED"), _build("WORKING"), done], LOG)
    lines: list[str] = []
    with caplog.at_level(logging.INFO, logger="components.build_image"):
        built = _run_cloud_build(penguins_model_dir, lines)

    assert built.reference == uri.rsplit(":", 1)[0] + "@" + DIGEST
    assert (built.digest, built.builder, built.tagged) == (DIGEST, "cloud-build", uri)
    # The upload: the packed context, named by its sha256, is what the build reads.
    (upload,) = fake.uploads
    (request,) = fake.created
    source = request.build.source.storage_source
    assert (upload["bucket"], upload["name"]) == (source.bucket, source.object_)
    assert Path(upload["name"]).name == hashlib.sha256(upload["data"]).hexdigest() + ".tar.gz"
    with tarfile.open(fileobj=io.BytesIO(upload["data"]), mode="r:gz") as packed:
        assert f"model/{contract.MODEL_FILE}" in packed.getnames()
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
    results = cloudbuild_v1.Results(images=[cloudbuild_v1.BuiltImage(name=name, digest=DIGEST)])
    fake = fake_cloud([_build("SUCCESS", results=results)], [""])
    for _ in range(2):
        assert _run_cloud_build(penguins_model_dir, [], image_name=name).digest == DIGEST
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
    failed = _build(
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
    fake_cloud([_build("WORKING"), failed], [log])
    lines: list[str] = []
    with pytest.raises(bi.CloudBuildError) as caught:
        _run_cloud_build(penguins_model_dir, lines)
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
    with pytest.raises(bi.BuildImageInputError) as caught:
        _run_cloud_build(penguins_model_dir, [], **overrides)
    assert message in str(caught.value)
    assert not fake.uploads and not fake.created


# ------------------------------------------------------------------ dispatch --
@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make engine detection find nothing (as in a Vertex AI component pod)."""
    monkeypatch.setenv(ce.ENGINE_ENV, "/nonexistent/container-engine")


def test_auto_without_an_engine_or_cloud_settings_says_what_to_give(
    no_engine: None, penguins_model_dir: Path
) -> None:
    with pytest.raises(bi.BuildImageInputError) as caught:
        bi.build_model_image(penguins_model_dir, project=PROJECT)
    message = str(caught.value)
    assert "no local container engine" in message
    assert "/nonexistent/container-engine: not found" in message
    assert "['location', 'staging_bucket']" in message


def test_auto_without_an_engine_builds_with_cloud_build(
    no_engine: None,
    fake_cloud: Callable[..., FakeCloud],
    penguins_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = contract.read_manifest(penguins_model_dir)
    uri = (
        f"{LOCATION}-docker.pkg.dev/{PROJECT}/{REPOSITORY}/srv:model-"
        f"{manifest['model_sha256'][:12]}"
    )
    results = cloudbuild_v1.Results(images=[cloudbuild_v1.BuiltImage(name=uri, digest=DIGEST)])
    fake = fake_cloud([_build("SUCCESS", results=results)], [""])
    monkeypatch.setattr(storage, "Client", _anonymous(storage.Client))
    monkeypatch.setattr(
        cloudbuild_v1, "CloudBuildClient", _anonymous(cloudbuild_v1.CloudBuildClient)
    )
    built = bi.build_model_image(
        penguins_model_dir,
        "srv",
        project=PROJECT,
        location=LOCATION,
        repository=REPOSITORY,
        staging_bucket=STAGING,
    )
    assert built.reference.endswith("@" + DIGEST) and built.builder == "cloud-build"
    assert len(fake.created) == 1


def _anonymous(cls: type) -> Callable[..., Any]:
    """The client class with anonymous credentials (no ADC lookup on this machine)."""

    def make(*args: Any, **kwargs: Any) -> Any:
        kwargs["credentials"] = AnonymousCredentials()
        return cls(*args, **kwargs)

    return make


def test_an_unknown_builder_is_refused(penguins_model_dir: Path) -> None:
    with pytest.raises(bi.BuildImageInputError, match="unknown builder 'kaniko'"):
        bi.build_model_image(penguins_model_dir, builder="kaniko")


def test_the_component_interface(tmp_path: Path) -> None:
    from kfp import compiler

    compiler.Compiler().compile(bi.build_image, str(tmp_path / "c.yaml"))
    spec = yaml.safe_load((tmp_path / "c.yaml").read_text())
    inputs = spec["root"]["inputDefinitions"]
    assert inputs["artifacts"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    parameters = inputs["parameters"]
    assert parameters["bake_model"]["defaultValue"] is True
    assert parameters["builder"]["defaultValue"] == "auto"
    outputs = spec["root"]["outputDefinitions"]["parameters"]
    assert set(outputs) == {"image_uri", "digest"}
    assert bi.build_image.component_spec.description.startswith(
        "Build the serving container image for a trained model."
    )


def test_a_model_trained_with_other_library_versions_is_refused_before_building(
    tmp_path: Path, penguins_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = shutil.copytree(penguins_model_dir, tmp_path / "model")
    manifest = contract.read_manifest(model)
    manifest["libraries"]["scikit-learn"] = "1.5.2"
    (model / contract.MANIFEST_FILE).write_text(json.dumps(manifest))
    monkeypatch.setenv(ce.ENGINE_ENV, "/nonexistent/container-engine")  # never reached
    with pytest.raises(bi.BuildImageInputError, match=r"scikit-learn 1\.5\.2 \(image: "):
        bi.build_local(model, LOCAL_NAME)


# ------------------------------------------------------- with the real engine --
@pytest.fixture(scope="module")
def readable_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from components.train import train_and_export

    model = tmp_path_factory.mktemp("build-image") / "model"
    train_and_export("penguins", model)
    return model


def _build_replacing(engine: ce.Engine, model: Path, bake_model: bool, **kw: Any) -> bi.BuiltImage:
    """``build_local``, then drop the image the same tag held before (so that reruns leave
    no dangling images; the layers both share stay, and with them the cache)."""
    manifest = contract.read_manifest(model)
    tag = bi.local_image_name(LOCAL_NAME, bi.default_tag(manifest, bake_model))
    previous = engine.image_id(tag)
    built = bi.build_local(model, LOCAL_NAME, engine=engine, bake_model=bake_model, **kw)
    if previous and previous != built.image_id:
        engine.remove_image(previous)
    print(f"\nbuilt {built.reference} in {built.seconds:.1f} s")
    return built


@pytest.fixture(scope="module")
def baked(engine: ce.Engine, readable_model: Path) -> bi.BuiltImage:
    """The serving image with the penguins model baked in, built once for the module."""
    return _build_replacing(engine, readable_model, bake_model=True)


@pytest.mark.container
def test_a_local_build_returns_a_reference_that_resolves(
    engine: ce.Engine, baked: bi.BuiltImage, readable_model: Path
) -> None:
    manifest = contract.read_manifest(readable_model)
    assert baked.tagged == f"{LOCAL_NAME}:model-{manifest['model_sha256'][:12]}"
    assert baked.builder == engine.name
    if engine.name == "podman":  # docker records a digest only when it pushes
        assert baked.digest.startswith("sha256:")
        assert baked.reference == f"{LOCAL_NAME}@{baked.digest}"
    record = engine.image_inspect(baked.reference)
    assert f"sha256:{record['Id'].removeprefix('sha256:')}" == baked.image_id
    labels = record["Config"]["Labels"]
    assert labels["io.train-to-serve.model-source"] == "baked"
    assert labels["io.train-to-serve.model-sha256"] == manifest["model_sha256"]
    libraries = manifest["libraries"]
    assert labels["io.train-to-serve.libraries"] == " ".join(
        f"{name}=={libraries[name]}" for name in bi.PINNED_LIBRARIES
    )
    baked_manifest = engine.command(
        "run", "--rm", baked.reference, "cat", f"/model/{contract.MANIFEST_FILE}"
    ).stdout
    assert json.loads(baked_manifest) == manifest


@pytest.mark.container
def test_a_local_build_without_the_model_loads_it_from_aip_storage_uri(
    engine: ce.Engine, baked: bi.BuiltImage, readable_model: Path
) -> None:
    built = _build_replacing(engine, readable_model, bake_model=False)
    assert built.tagged == f"{LOCAL_NAME}:latest"
    labels = engine.image_inspect(built.reference)["Config"]["Labels"]
    assert labels["io.train-to-serve.model-source"] == "AIP_STORAGE_URI"
    assert "io.train-to-serve.model-sha256" not in labels
    listing = engine.command("run", "--rm", built.reference, "ls", "-A", "/model").stdout
    assert listing.strip() == ""


@pytest.fixture(scope="module")
def base_without_groupadd(
    engine: ce.Engine, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The usual base image minus ``groupadd``: the serving image's user-creating RUN fails."""
    context = tmp_path_factory.mktemp("broken-base")
    (context / "Dockerfile").write_text(f"FROM {base_image}\nRUN rm /usr/sbin/groupadd\n")
    tag = f"{LOCAL_NAME}:base-without-groupadd"
    engine.build(context, tag, ca_bundle=False)
    return tag


@pytest.mark.container
def test_a_failing_build_shows_the_failing_step_and_its_output(
    engine: ce.Engine, readable_model: Path, base_without_groupadd: str
) -> None:
    lines: list[str] = []
    with pytest.raises(ce.BuildError) as caught:
        bi.build_local(
            readable_model,
            LOCAL_NAME + ":broken",
            engine=engine,
            base_image=base_without_groupadd,
            on_line=lines.append,
        )
    message = str(caught.value)
    assert "RUN groupadd --system" in caught.value.step
    assert f"at step: {caught.value.step}" in message
    assert "groupadd: not found" in message  # the step's own output
    assert any("groupadd: not found" in line for line in lines)  # and it was streamed
    assert not engine.image_exists(LOCAL_NAME + ":broken")


@pytest.mark.container
def test_the_component_builds_under_kfp_local(
    engine: ce.Engine,
    baked: bi.BuiltImage,
    readable_model: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from kfp import dsl, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))

    @dsl.pipeline
    def build_only(model_uri: str) -> str:
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        built = bi.build_image(model=model.output, image_name=LOCAL_NAME, builder="local")
        return built.outputs["image_uri"]

    run = build_only(model_uri=str(readable_model))
    assert run.output == baked.reference  # same model, same sources: the same image
    log = capfd.readouterr().out
    assert "STEP 1/" in log or "#1 [" in log  # the engine's step lines reach the task's log
    assert f"built {baked.reference}" in log


def test_the_gpu_variant_is_tensorflow_with_cuda_and_scikit_learn_stays_on_cpu() -> None:
    assert bi.image_framework("tensorflow", gpu=True) == "tensorflow-gpu"
    assert bi.image_framework("tensorflow", gpu=False) == "tensorflow"
    assert bi.image_framework("scikit-learn", gpu=True) == "scikit-learn"
    gpu_files = [p.name for p in bi.requirements_files("tensorflow-gpu")]
    assert gpu_files == ["requirements.txt", "requirements-tensorflow-gpu.txt"]
    pins = bi.read_pinned_requirements(bi.requirements_files("tensorflow-gpu")[1])
    cpu_pins = bi.read_pinned_requirements(bi.requirements_files("tensorflow")[1])
    assert pins["tensorflow"] == cpu_pins["tensorflow"] and pins["keras"] == cpu_pins["keras"]
    manifest = {"model_sha256": "ab" * 32}
    assert bi.default_tag(manifest, bake_model=True, gpu=True) == "model-abababababab-gpu"
    assert bi.default_tag(manifest, bake_model=False) == "latest"
