"""The checked build's Cloud Build request, built by ``google-cloud-build``'s own types and read
back field by field: build, start, check, stop, verdict; push only after all of them."""

from datetime import timedelta
from pathlib import Path

import pytest
from google.cloud.devtools import cloudbuild_v1

from components import vertex
from components.checked_build import checked_build_request, report_location
from components.contract import CheckSettings
from components.contract.in_build import SERVER_NAME
from components.imaging.names import artifact_registry_image, parse_staging_bucket
from components.imaging.plan import prepare
from components.stand_ins.cloud_build import LocalBuildError, substitute

IMAGE = "europe-west4-docker.pkg.dev/my-project/models/penguins:model-1"
CHECKER = "europe-west4-docker.pkg.dev/my-project/train-to-serve/components@sha256:" + "cd" * 32
STAGING = parse_staging_bucket("gs://my-staging/runs/1")
CONTEXT = "runs/1/train-to-serve/build-image/contexts/" + "ef" * 32 + ".tar.gz"


def request_for(model_dir: Path, gpu: bool = False, **kwargs) -> cloudbuild_v1.CreateBuildRequest:
    image = artifact_registry_image(IMAGE, project="", location="", repository="", default_tag="")
    arguments = {
        "checker_image": CHECKER,
        "base_image": "python:3.11-slim",
        "port": 8080,
        "health_route": "/health",
        "predict_route": "/predict",
        "settings": CheckSettings(startup_deadline_s=90, grace_period_s=20, strict=True),
        "service_account": "builder@my-project.iam.gserviceaccount.com",
    } | kwargs
    plan = prepare(model_dir, bake_model=True, gpu=gpu)
    return checked_build_request(image, STAGING, CONTEXT, plan, gpu=gpu, **arguments)


@pytest.fixture(scope="module")
def request_(penguins_model_dir: Path) -> cloudbuild_v1.CreateBuildRequest:
    return request_for(penguins_model_dir, env={"SERVING_WORKERS": "2"})


def test_the_build_runs_in_the_images_region_as_the_named_account(request_) -> None:
    build = request_.build
    assert request_.parent == "projects/my-project/locations/europe-west4"
    assert request_.project_id == "my-project"
    assert build.service_account == (
        "projects/my-project/serviceAccounts/builder@my-project.iam.gserviceaccount.com"
    )
    assert build.logs_bucket == "gs://my-staging/runs/1/train-to-serve/build-image/logs"
    assert build.options.logging == cloudbuild_v1.BuildOptions.LoggingMode.GCS_ONLY
    assert build.timeout == timedelta(seconds=2400)
    assert build.source.storage_source.bucket == "my-staging"
    assert build.source.storage_source.object_ == CONTEXT


def test_steps_build_start_check_stop_verdict_each_waiting_for_the_one_before(request_) -> None:
    steps = request_.build.steps
    assert [s.id for s in steps] == [
        "build-serving-image",
        "start-serving-image",
        "contract-check",
        "stop-serving-image",
        "contract-verdict",
    ]
    assert [list(s.wait_for) for s in steps[1:]] == [[s.id] for s in steps[:-1]]
    assert [s.name for s in steps] == [
        "gcr.io/cloud-builders/docker",
        "gcr.io/cloud-builders/docker",
        CHECKER,
        "gcr.io/cloud-builders/docker",
        CHECKER,
    ]
    build_args = list(steps[0].args)
    assert build_args[:4] == ["build", "--progress=plain", "--tag", IMAGE]
    assert "FRAMEWORK=scikit-learn" in build_args and build_args[-1] == "."


def test_the_image_starts_as_vertex_starts_it_on_the_cloudbuild_network(request_) -> None:
    start = request_.build.steps[1]
    assert start.entrypoint == "bash" and start.args[0] == "-c"
    script = substitute(start.args[1], {})
    assert script.startswith("mkdir -p contract && date +%s.%N > contract/started && ")
    run = script.split(" && ", 2)[2].split()
    assert run[:7] == [
        "docker",
        "run",
        "--detach",
        "--network",
        "cloudbuild",
        "--name",
        SERVER_NAME,
    ]
    assert run[-1] == IMAGE and "--init" not in run
    env = [run[i + 1] for i, arg in enumerate(run) if arg == "--env"]
    assert env == [
        f"{name}={value}"
        for name, value in {
            "SERVING_WORKERS": "2",
            **vertex.vertex_environment(8080, "/health", "/predict", ""),
        }.items()
    ]  # the user's variables, then every AIP_* variable Vertex sets
    assert "AIP_STORAGE_URI=" in env  # empty: the model is baked in


def test_the_checker_runs_the_rules_by_container_name(request_) -> None:
    check, stop, verdict = request_.build.steps[2:]
    assert check.entrypoint == "python"
    assert list(check.args) == [
        "-m", "components.contract.in_build", "check",
        "--url", f"http://{SERVER_NAME}:8080",
        "--image", IMAGE,
        "--health-route", "/health",
        "--predict-route", "/predict",
        "--sample", "check-sample",
        "--startup-deadline", "90",
        "--grace-period", "20",
        "--strict",
    ]  # fmt: skip
    script = substitute(stop.args[1], {})
    assert f"docker kill --signal TERM {SERVER_NAME}" in script
    assert f"timeout 20 docker wait {SERVER_NAME}" in script
    assert f"docker logs {SERVER_NAME} > $out/container.log 2>&1" in script
    assert list(verdict.args) == [
        "-m", "components.contract.in_build", "verdict", "--grace-period", "20",
    ]  # fmt: skip


def test_every_dollar_is_escaped_for_cloud_builds_substitutions(request_) -> None:
    for step in request_.build.steps:
        for arg in step.args:
            substitute(arg, {})  # raises for a $NAME Cloud Build would substitute
    with pytest.raises(LocalBuildError, match=r"\$code is not a substitution"):
        substitute("echo $code", {})


def test_the_image_is_pushed_only_after_every_step_and_the_report_kept(request_) -> None:
    build = request_.build
    assert list(build.images) == [IMAGE]
    objects = build.artifacts.objects
    assert objects.location == report_location(STAGING, CONTEXT)
    assert objects.location == "gs://my-staging/runs/1/train-to-serve/build-image/contract/" + (
        "ef" * 32
    )
    assert list(objects.paths) == ["contract/report.md", "contract/metrics.json"]


def test_an_image_without_the_model_names_it_in_aip_storage_uri(penguins_model_dir: Path) -> None:
    request = request_for(penguins_model_dir, storage_uri="gs://models/penguins/1")
    script = substitute(request.build.steps[1].args[1], {})
    assert "--env AIP_STORAGE_URI=gs://models/penguins/1" in script


def test_the_gpu_variant_says_its_gpu_was_not_exercised(penguins_model_dir: Path) -> None:
    request = request_for(penguins_model_dir, gpu=True)
    assert list(request.build.steps[-1].args)[-1] == "--gpu"


def test_with_a_grpc_port_the_image_gets_serving_grpc_port_and_the_check_reaches_it(
    penguins_model_dir: Path,
) -> None:
    """gRPC on: the start step gives the container ``SERVING_GRPC_PORT`` (the check adds it,
    the caller need not), and the check step applies the gRPC rules by the container's name."""
    request = request_for(penguins_model_dir, env={"SERVING_WORKERS": "2"}, grpc_port=8081)
    start, check = request.build.steps[1:3]
    run = substitute(start.args[1], {}).split(" && ", 2)[2].split()
    env = [run[i + 1] for i, arg in enumerate(run) if arg == "--env"]
    assert env[:2] == ["SERVING_WORKERS=2", f"{vertex.GRPC_PORT_VARIABLE}=8081"]
    assert list(check.args)[-4:] == [
        "--grpc-address", f"{SERVER_NAME}:8081", "--grpc-port", "8081",
    ]  # fmt: skip


def test_a_serving_grpc_port_the_caller_sets_is_kept_as_given(penguins_model_dir: Path) -> None:
    request = request_for(
        penguins_model_dir, env={vertex.GRPC_PORT_VARIABLE: "9000"}, grpc_port=8081
    )
    script = substitute(request.build.steps[1].args[1], {})
    assert f"--env {vertex.GRPC_PORT_VARIABLE}=9000 " in script
    assert f"{vertex.GRPC_PORT_VARIABLE}=8081" not in script


def test_http_only_the_image_gets_no_serving_grpc_port(request_) -> None:
    script = substitute(request_.build.steps[1].args[1], {})
    assert vertex.GRPC_PORT_VARIABLE not in script
    assert "--grpc-port" not in list(request_.build.steps[2].args)
