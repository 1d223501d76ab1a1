"""The checked build run here, step by step, by the local stand-in of Cloud Build: the very
build config sent to Cloud Build (``checked_build_request``), on real images.

* The serving image with a trained model: built, started on the build's network, checked by
  name, stopped, pushed; the verdict equals the local ``check_model_image``'s, rule by rule.
  Then with gRPC on (the same context, its build step a cache hit): the gRPC rules reach the
  container by name, and neither check is given ``SERVING_GRPC_PORT``: both add it.
* Broken fixture images: the verdict step fails with each one's rule, and nothing is pushed.
* The component's read-back path (``build_and_check``, Google Cloud replaced at its clients)
  reads these builds' real logs: an image and a container spec on a pass (with gRPC on, its
  ``grpcPorts``, gRPC probes and ``SERVING_GRPC_PORT``), none on a failure.

The checker image stands in for the components image: the serving image's Python with this
project's ``components`` and ``serving_image`` packages (all the check imports).
"""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud.devtools import cloudbuild_v1

from components import checked_build, vertex
from components.contract import GRPC_RULES, CheckSettings, ContractReport, check_model_image
from components.contract.in_build import SERVER_NAME, VERDICT_STEP, check_steps, read_report
from components.imaging import assemble_build_context, build, find_ca_bundle
from components.imaging.cloud_build import CLOUD_BUILD_STEP_ID, cloud_build_request
from components.imaging.context import CHECK_SAMPLE_DIR, add_check_sample
from components.imaging.names import artifact_registry_image, parse_staging_bucket
from components.imaging.plan import prepare
from components.runners import Engine
from components.stand_ins.cloud_build import LocalBuild, run_build
from tests.contract.broken_images.verdicts import (
    FIXTURES_DIR,
    HEALTH_ROUTE,
    PREDICT_ROUTE,
    VERDICTS,
    write_toy_sample,
)
from tests.support import REPO_ROOT

pytestmark = pytest.mark.container

REGISTRY = "europe-west4-docker.pkg.dev/my-project/models"
STAGING = parse_staging_bucket("gs://my-staging/runs/1")
SETTINGS = CheckSettings(grace_period_s=10, strict=True)
BROKEN = ("bare_list_request", "drops_rows", "refit_scaler_per_request", "missing_dependency")
GRPC_PORT = 8081
TIMINGS: dict[str, float] = {}


def registry_image(name: str) -> Any:
    return artifact_registry_image(
        f"{REGISTRY}/{name}:checked", project="", location="", repository="", default_tag=""
    )


@pytest.fixture(scope="module")
def checker_image(engine: Engine, serving_image_without_model: str, tmp_path_factory) -> str:
    context = tmp_path_factory.mktemp("checker")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("components", "serving_image"):
        shutil.copytree(REPO_ROOT / package, context / package, ignore=ignore)
    (context / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\n"
        "COPY components /opt/train-to-serve/components\n"
        "COPY serving_image /opt/train-to-serve/serving_image\n"
        "ENV PYTHONPATH=/opt/train-to-serve\n"
    )
    tag = "localhost/train-to-serve-checker:test"
    build(engine, context, tag, {"BASE_IMAGE": serving_image_without_model}, ca_bundle=None)
    return tag


@pytest.fixture(scope="module")
def model_dir(penguins_model_dir: Path, tmp_path_factory) -> Path:
    """The penguins model, readable by the image's non-root user when mounted."""
    copy = tmp_path_factory.mktemp("readable") / "model"
    shutil.copytree(penguins_model_dir, copy)
    for path in (copy.parent, copy, *copy.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return copy


def run_here(
    request: cloudbuild_v1.CreateBuildRequest, source: Path, engine: Engine, work: Path
) -> LocalBuild:
    started = time.monotonic()
    result = run_build(request.build, source, engine, work, ca_bundle=find_ca_bundle())
    TIMINGS[f"local build {request.build.images[0]}"] = time.monotonic() - started
    return result


def serving_request(
    name: str, checker_image: str, base_image: str, model_dir: Path, grpc_port: int | None = None
) -> cloudbuild_v1.CreateBuildRequest:
    """The checked build of the serving image with the penguins model, as sent to Cloud Build."""
    return checked_build.checked_build_request(
        registry_image(name),
        STAGING,
        "runs/1/context.tar.gz",
        prepare(model_dir, bake_model=True, gpu=False),
        checker_image=checker_image,
        base_image=base_image,
        port=8080,
        health_route="/health",
        predict_route="/predict",
        settings=SETTINGS,
        grpc_port=grpc_port,
    )


@pytest.fixture(scope="module")
def passing(
    engine: Engine, base_image: str, checker_image: str, model_dir: Path, tmp_path_factory
) -> tuple[cloudbuild_v1.CreateBuildRequest, LocalBuild, Path]:
    """The serving image with the penguins model, through the whole checked build."""
    source = tmp_path_factory.mktemp("serving") / "context"
    assemble_build_context(source, model_dir)
    add_check_sample(source, model_dir)
    request = serving_request("penguins", checker_image, base_image, model_dir)
    result = run_here(request, source, engine, tmp_path_factory.mktemp("passing-work"))
    return request, result, source


@pytest.fixture(scope="module")
def passing_grpc(
    passing, engine: Engine, base_image: str, checker_image: str, model_dir: Path, tmp_path_factory
) -> tuple[cloudbuild_v1.CreateBuildRequest, LocalBuild]:
    """The same context's checked build with gRPC on (its image build a cache hit); no env:
    the check gives the container ``SERVING_GRPC_PORT`` itself."""
    _, _, source = passing
    request = serving_request("penguins-grpc", checker_image, base_image, model_dir, GRPC_PORT)
    return request, run_here(request, source, engine, tmp_path_factory.mktemp("grpc-work"))


def broken_request(name: str, base_image: str, checker_image: str) -> Any:
    """The same build config for a broken fixture: its own Dockerfile's build argument."""
    image = registry_image(name.replace("_", "-"))
    steps = check_steps(
        image.uri,
        checker_image=checker_image,
        sample_dir=CHECK_SAMPLE_DIR,
        wait_for=CLOUD_BUILD_STEP_ID,
        health_route=HEALTH_ROUTE,
        predict_route=PREDICT_ROUTE,
        settings=SETTINGS,
    )
    return cloud_build_request(
        image,
        STAGING,
        "runs/1/context.tar.gz",
        build_args={"BASE_IMAGE": base_image, "FIXTURE": name},
        extra_steps=steps,
        artifacts=cloudbuild_v1.Artifacts(
            objects={"location": "gs://my-staging/contract", "paths": ["contract/report.md"]}
        ),
    )


@pytest.fixture(scope="module")
def broken(engine: Engine, base_image: str, checker_image: str, tmp_path_factory) -> dict:
    """Each broken fixture through the same checked build, side by side; name -> result."""

    def one(name: str) -> LocalBuild:
        source = tmp_path_factory.mktemp(name) / "context"
        shutil.copytree(FIXTURES_DIR, source, ignore=shutil.ignore_patterns("__pycache__"))
        write_toy_sample(source / CHECK_SAMPLE_DIR)
        request = broken_request(name, base_image, checker_image)
        return run_here(request, source, engine, tmp_path_factory.mktemp(f"{name}-work"))

    with ThreadPoolExecutor(len(BROKEN)) as pool:
        return dict(zip(BROKEN, pool.map(one, BROKEN), strict=True))


def test_the_serving_image_passes_and_is_pushed_with_the_report_kept(passing) -> None:
    request, result, _ = passing
    image = request.build.images[0]

    assert result.status == "SUCCESS", "\n".join(result.log[-60:])
    assert set(result.step_status.values()) == {"SUCCESS"}
    assert list(result.pushed) == [image] and result.pushed[image].startswith("sha256:")
    report = read_report(result.output(VERDICT_STEP))
    assert report.passed and not report.warnings, report.to_markdown()
    assert report.result("sigterm").detail.startswith("exited with status 0")
    assert "tts-serving on the cloudbuild network" in report.settings["where"]
    kept = result.artifacts_dir
    assert kept is not None and str(kept).endswith(
        "my-staging/runs/1/train-to-serve/build-image/contract/context"
    )
    assert (kept / "report.md").read_text() == report.to_markdown()
    assert (kept / "metrics.json").is_file()


def _verdicts(report: ContractReport) -> dict[str, str]:
    return {r.rule: r.verdict(report.strict) for r in report.rules}


def _local_check(request: Any, model_dir: Path, engine: Engine, **options: Any) -> Any:
    """The local contract check of the image the build pushed, with the build's settings."""
    report, _ = check_model_image(
        request.build.images[0],
        model_dir,
        health_route="/health",
        predict_route="/predict",
        settings=SETTINGS,
        engine=engine,
        **options,
    )
    return report


def test_its_verdict_equals_the_local_check_rule_by_rule(
    passing, engine: Engine, model_dir: Path
) -> None:
    request, result, _ = passing
    in_build = read_report(result.output(VERDICT_STEP))
    local = _local_check(request, model_dir, engine)

    assert _verdicts(in_build) == _verdicts(local)
    assert in_build.predictions == local.predictions
    same = ("passed", "rules_passed", "rules_failed", "rules_warned", "rules_skipped", "strict")
    assert {k: in_build.metrics()[k] for k in same} == {k: local.metrics()[k] for k in same}
    assert set(in_build.metrics()) == set(local.metrics())


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_image_fails_the_build_with_its_rule_and_nothing_is_pushed(
    name: str, broken: dict
) -> None:
    result = broken[name]
    verdict = VERDICTS[name]

    assert result.status == "FAILURE"
    assert result.step_status[VERDICT_STEP] == "FAILURE"
    assert result.pushed == {} and result.artifacts_dir is None
    report = read_report(result.output(VERDICT_STEP))
    assert {r.rule for r in report.violations} == verdict.failed, report.to_markdown()
    message = report.violations[0].message()
    for fragment in verdict.says:
        assert fragment in message, report.to_markdown()
    assert any(line.startswith(f"{report.target} breaks") for line in result.output(VERDICT_STEP))


def test_with_grpc_on_the_grpc_rules_reach_the_container_by_name_as_the_local_check_does(
    passing_grpc, engine: Engine, model_dir: Path
) -> None:
    request, result = passing_grpc
    assert result.status == "SUCCESS", "\n".join(result.log[-60:])
    in_build = read_report(result.output(VERDICT_STEP))
    grpc = [r for r in in_build.rules if r.rule in GRPC_RULES]
    assert [r.rule for r in grpc] == list(GRPC_RULES), in_build.to_markdown()
    assert all(r.passed and not r.skipped for r in grpc), in_build.to_markdown()
    assert in_build.settings["gRPC reached at"] == f"{SERVER_NAME}:{GRPC_PORT}"
    local = _local_check(request, model_dir, engine, grpc_port=GRPC_PORT)
    assert _verdicts(in_build) == _verdicts(local)


def _read_back(
    fake_cloud, request, result: LocalBuild, model_dir: Path, grpc_port: int | None = None
) -> checked_build.CheckedBuild:
    """``build_and_check`` with Google Cloud replaced, fed this local build's log."""
    image = request.build.images[0]
    pushed = [cloudbuild_v1.BuiltImage(name=i, digest=d) for i, d in result.pushed.items()]
    final = cloudbuild_v1.Build(
        id="local",
        status=result.status,
        steps=list(request.build.steps),
        results=cloudbuild_v1.Results(
            images=pushed, build_step_images=["", "", "sha256:" + "12" * 32]
        ),
    )
    fake_cloud([final], ["\n".join(result.log) + "\n"])
    return checked_build.build_and_check(
        model_dir,
        image,
        project="my-project",
        location="europe-west4",
        staging_bucket="gs://my-staging/runs/1",
        checker_image=request.build.steps[2].name,
        health_route="/health",
        predict_route="/predict",
        settings=SETTINGS,
        poll_seconds=0,
        credentials=AnonymousCredentials(),
        grpc_port=grpc_port,
    )


def test_the_component_reads_a_pass_back_as_a_pinned_image_and_a_container_spec(
    passing, fake_cloud, model_dir: Path
) -> None:
    request, result, _ = passing
    outcome = _read_back(fake_cloud, request, result, model_dir)

    digest = result.pushed[request.build.images[0]]
    assert outcome.report.passed and outcome.image is not None
    assert outcome.image.reference == f"{REGISTRY}/penguins@{digest}"
    spec = outcome.metadata["containerSpec"]
    assert spec["imageUri"] == outcome.image.reference
    assert "grpcPorts" not in spec and "env" not in spec  # HTTP only
    assert outcome.report.settings["checker image digest"] == "sha256:" + "12" * 32


def test_the_component_reads_a_grpc_pass_back_with_grpc_ports_probes_and_the_variable(
    passing_grpc, fake_cloud, model_dir: Path
) -> None:
    request, result = passing_grpc
    outcome = _read_back(fake_cloud, request, result, model_dir, grpc_port=GRPC_PORT)

    assert outcome.metadata is not None
    spec = outcome.metadata["containerSpec"]
    assert spec["grpcPorts"] == [{"containerPort": GRPC_PORT}]
    assert spec["healthProbe"] == vertex.grpc_health_probe(GRPC_PORT)
    assert spec["env"] == [{"name": vertex.GRPC_PORT_VARIABLE, "value": str(GRPC_PORT)}]


def test_the_component_reads_a_failure_back_with_no_image(
    broken, fake_cloud, base_image: str, checker_image: str, model_dir: Path
) -> None:
    result = broken["drops_rows"]
    request = broken_request("drops_rows", base_image, checker_image)
    outcome = _read_back(fake_cloud, request, result, model_dir)

    assert not outcome.report.passed
    assert outcome.image is None and outcome.metadata is None
    assert [r.rule for r in outcome.report.violations] == ["predict-response"]
