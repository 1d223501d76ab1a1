"""The contract check on real images, built and run with podman or docker.

* Every fixture under ``tests/contract/broken_images/`` is built once (in parallel) and checked
  as a container, the checks also in parallel; each must get the verdict and message in
  ``verdicts.py``, plus what only a container shows (sockets, exit status, logs).
* The project's own serving image (``serving_image/``, built as the build-image component
  builds it) serving a trained penguins model must pass every rule, and only then is a
  ``containerSpec`` produced for upload.
* ``compile.py check-contract`` and the ``contract_check`` component under ``kfp.local``.

Without a working engine these tests are skipped on a workstation and FAIL in CI
(``CI=true``). ``pytest -m container -s`` prints the reports' paths and the timings.
"""

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from components import vertex
from components.contract import CheckSettings, ContractReport, check_image, check_model_image
from components.contract_check import contract_check
from components.imaging import build, build_serving_image
from components.runners import Engine
from serving_image.server import artifact
from tests.contract.broken_images.verdicts import (
    FIXTURES_DIR,
    HEALTH_ROUTE,
    KINDS,
    PREDICT_ROUTE,
    VERDICTS,
)
from tests.support import compile_cli

pytestmark = pytest.mark.container

INSTANCES = artifact.read_jsonl(FIXTURES_DIR / "instances.jsonl")
EXPECTED = artifact.read_jsonl(FIXTURES_DIR / "expected.jsonl")
SERVING_TAG = "localhost/train-to-serve-contract:test"
PARALLEL = 4
TIMINGS: dict[str, float] = {}


def fixture_tag(name: str) -> str:
    return f"localhost/contract-fixture-{name.replace('_', '-')}:test"


@pytest.fixture(scope="module")
def fixture_images(engine: Engine, base_image: str) -> dict[str, str]:
    """Every fixture image, built once from the shared Dockerfile; name -> tag."""
    names = ["good_toy", *VERDICTS]

    def build_fixture(name: str) -> str:
        build(
            engine,
            FIXTURES_DIR,
            fixture_tag(name),
            {"BASE_IMAGE": base_image, "FIXTURE": name},
            dockerfile=FIXTURES_DIR / "Dockerfile",
            ca_bundle=None,
        )
        return fixture_tag(name)

    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        tags = dict(zip(names, pool.map(build_fixture, names), strict=True))
    TIMINGS[f"build {len(names)} fixture images"] = time.monotonic() - started
    return tags


@pytest.fixture(scope="module")
def broken_reports(engine: Engine, fixture_images: dict[str, str]) -> dict[str, Any]:
    """Each broken fixture image checked as a container (in parallel); name -> report."""

    def check(name: str) -> ContractReport:
        settings = CheckSettings(grace_period_s=10, **VERDICTS[name].settings)
        return check_image(
            fixture_images[name],
            instances=INSTANCES,
            expected=EXPECTED,
            kinds=KINDS,
            health_route=HEALTH_ROUTE,
            predict_route=PREDICT_ROUTE,
            settings=settings,
            engine=engine,
        )

    started = time.monotonic()
    with ThreadPoolExecutor(PARALLEL) as pool:
        reports = dict(zip(VERDICTS, pool.map(check, VERDICTS), strict=True))
    TIMINGS[f"check {len(VERDICTS)} broken images"] = time.monotonic() - started
    return reports


@pytest.mark.parametrize("name", list(VERDICTS))
def test_each_broken_image_gets_its_own_verdict_and_message(
    name: str, broken_reports: dict[str, ContractReport]
):
    verdict = VERDICTS[name]
    report = broken_reports[name]

    assert {r.rule for r in report.violations} == verdict.failed, report.to_markdown()
    assert {r.rule for r in report.warnings} == verdict.warned, report.to_markdown()
    message = (report.violations or report.warnings)[0].message()
    for fragment in (*verdict.says, *verdict.in_container):
        assert fragment in message, report.to_markdown()
    assert "Vertex AI would" in message
    assert report.logs, "the container's logs are kept"
    sigterm = report.result("sigterm")
    if "exited with status" in message:
        assert sigterm.skipped and "already exited" in sigterm.detail
    else:  # still running after the checks: SIGTERM must stop it
        assert sigterm.passed and not sigterm.skipped, sigterm.detail


def test_a_missing_dependency_shows_the_containers_last_log_lines(
    broken_reports: dict[str, ContractReport],
):
    report = broken_reports["missing_dependency"]
    message = report.violations[0].message()
    assert "Last log lines:\nTraceback (most recent call last):" in message
    assert message.count("ModuleNotFoundError: No module named 'catboost'") == 1
    assert "## Container logs" in report.to_markdown()


def test_the_toy_server_image_passes_with_vertex_default_routes(
    engine: Engine, fixture_images: dict[str, str]
):
    """No routes given: Vertex's defaults, which the server must take from AIP_*."""
    report = check_image(
        fixture_images["good_toy"], instances=INSTANCES, expected=EXPECTED, engine=engine
    )

    assert report.passed, report.to_markdown()
    assert report.result("sigterm").detail.startswith("exited with status 0")
    assert report.stop_s is not None and report.stop_s < 5
    assert f'"GET {vertex.DEFAULT_HEALTH_ROUTE} HTTP/1.1" 200' in (report.logs or "")


@pytest.fixture(scope="module")
def penguins_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained model directory the image's non-root user can read when mounted."""
    from components.training import train_and_export

    model = tmp_path_factory.mktemp("contract-model") / "model"
    train_and_export("penguins", model)
    for path in (model, *model.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


@pytest.fixture(scope="module")
def serving_image(engine: Engine) -> str:
    """The project's serving image without a model (it loads AIP_STORAGE_URI)."""
    result = build_serving_image(engine, SERVING_TAG)
    TIMINGS["build serving image"] = result.seconds
    return result.image_id


def test_the_serving_image_passes_and_only_then_gets_a_container_spec(
    engine: Engine, serving_image: str, penguins_model: Path, tmp_path: Path
):
    started = time.monotonic()
    report, metadata = check_model_image(
        SERVING_TAG,
        penguins_model,
        health_route="/health",
        predict_route="/predict",
        env={"SERVING_WORKERS": "2"},
        settings=CheckSettings(strict=True),  # our own image: hygiene rules too
        large_model_bytes=1,  # treat it as large: the spec gets a startupProbe
        engine=engine,
    )
    TIMINGS["check serving image (penguins)"] = time.monotonic() - started

    (tmp_path / "report.md").write_text(report.to_markdown())
    print(f"\npassing report: {tmp_path / 'report.md'}")
    assert report.passed and not report.warnings, report.to_markdown()
    sample, _, _ = artifact.read_sample(penguins_model)  # the edge instances also as lists
    values = report.result("predict-values").detail
    assert values.startswith(f"all {len(sample)} predictions equal the expected ones, sent in ")
    assert "refused" not in values  # objects and lists alike
    markdown = report.to_markdown()
    rows = artifact.read_manifest(penguins_model)["sample_kinds"].count("evaluation")
    assert f"| evaluation | {rows}/{rows} | {rows}/{rows} | {rows}/{rows} |" in markdown
    assert "| missing:sex as list | 1/1 | 1/1 | 1/1 |" in markdown
    assert report.result("oversize").detail.startswith("answered 413")
    assert metadata == {
        "containerSpec": {
            "imageUri": SERVING_TAG,
            "ports": [{"containerPort": 8080}],
            "predictRoute": "/predict",
            "healthRoute": "/health",
            "env": [{"name": "SERVING_WORKERS", "value": "2"}],
            "startupProbe": vertex.startup_probe("/health", 8080, 120.0),
        },
        "predictSchemata": {},
    }
    assert report.settings["startupProbe"] == "added"
    assert '"model loaded' in (report.logs or "")


def test_check_contract_cli_passes_a_good_image_with_exit_status_0(
    fixture_images: dict[str, str], tmp_path: Path
):
    model = tmp_path / "toy"
    model.mkdir()
    shutil.copy(FIXTURES_DIR / "instances.jsonl", model / artifact.INSTANCES_FILE)
    shutil.copy(FIXTURES_DIR / "expected.jsonl", model / artifact.EXPECTED_FILE)

    result = compile_cli(
        "check-contract", "--image", fixture_images["good_toy"], "--model-dir", str(model)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"PASS: {fixture_images['good_toy']} honours")


def test_check_contract_cli_fails_a_broken_image_with_reasons_and_a_report(
    fixture_images: dict[str, str], tmp_path: Path
):
    report_path = tmp_path / "failing-report.md"
    result = compile_cli("check-contract",
        "--image", fixture_images["no_health_route"],
        "--health-route", "/health",
        "--predict-route", "/predict",
        "--instances", str(FIXTURES_DIR / "instances.jsonl"),
        "--startup-deadline", "1",
        "--report", str(report_path),
    )  # fmt: skip

    print(f"\nfailing report: {report_path}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"FAIL: {fixture_images['no_health_route']} breaks")
    assert "[health] health route /health returned 404" in result.stdout
    assert "Vertex AI would mark the replica unhealthy" in result.stdout
    markdown = report_path.read_text()
    assert "| health | contract | FAIL |" in markdown
    assert "| predict-values | contract | SKIP |" in markdown
    assert "## Container logs" in markdown


def test_check_contract_cli_reports_an_image_that_does_not_exist(tmp_path: Path):
    result = compile_cli(
        "check-contract",
        "--image",
        "localhost/no-such-image:never",
        "--instances",
        str(FIXTURES_DIR / "instances.jsonl"),
    )
    assert result.returncode == 2
    assert "the check could not run" in result.stderr


@pytest.fixture
def toy_model_dir(tmp_path: Path) -> Path:
    """A model directory holding only what the check reads: the toy sample and expectations."""
    model = tmp_path / "toy-model"
    model.mkdir()
    shutil.copy(FIXTURES_DIR / "instances.jsonl", model / artifact.INSTANCES_FILE)
    shutil.copy(FIXTURES_DIR / "expected.jsonl", model / artifact.EXPECTED_FILE)
    return model


def _run_component(image: str, model_dir: Path, root: Path) -> Any:
    """Run ``contract_check`` in kfp.local on an imported model directory."""
    from kfp import dsl, local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=True,
    )

    @dsl.pipeline(name="contract-check-test")
    def check_pipeline() -> dsl.Artifact:
        model = dsl.importer(artifact_uri=str(model_dir), artifact_class=dsl.Model)
        task = contract_check(
            image_uri=image, model=model.output, startup_deadline_s=30.0, grace_period_s=10.0
        )
        return task.outputs["unmanaged_container_model"]

    return check_pipeline().output


KFP_BASE_IMAGE_WARNING = "ignore:You may be attemping to run a task:RuntimeWarning"


@pytest.mark.filterwarnings(KFP_BASE_IMAGE_WARNING)
def test_the_component_emits_the_unmanaged_container_model_on_a_pass(
    fixture_images: dict[str, str], toy_model_dir: Path, tmp_path: Path
):
    artifact = _run_component(fixture_images["good_toy"], toy_model_dir, tmp_path / "root")

    assert artifact.uri == str(toy_model_dir)
    spec = artifact.metadata["containerSpec"]
    assert spec["imageUri"] == fixture_images["good_toy"]
    assert spec["ports"] == [{"containerPort": 8080}]  # kfp.local may give 8080.0
    assert (spec["predictRoute"], spec["healthRoute"]) == ("/predict", "/health")
    assert "startupProbe" not in spec  # a small model that starts at once
    (report,) = (tmp_path / "root").rglob("report")
    assert report.read_text().startswith("# Vertex AI container contract check\n\n**PASS:")
    (metrics,) = (tmp_path / "root").rglob("executor_output.json")
    assert '"passed": 1.0' in json.dumps(json.loads(metrics.read_text()))


@pytest.mark.filterwarnings(KFP_BASE_IMAGE_WARNING)
def test_the_component_fails_the_run_and_emits_no_model_on_a_violation(
    fixture_images: dict[str, str], toy_model_dir: Path, tmp_path: Path
):
    with pytest.raises(RuntimeError):
        _run_component(fixture_images["refit_scaler_per_request"], toy_model_dir, tmp_path / "r")

    (report,) = (tmp_path / "r").rglob("report")
    markdown = report.read_text()
    assert "**FAIL:" in markdown and "(predict-values)" in markdown
    assert not list((tmp_path / "r").rglob("executor_output.json"))
