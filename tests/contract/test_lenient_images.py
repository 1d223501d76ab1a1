"""Images that Vertex AI serves without trouble must pass the contract check, with warnings.

* A server built with Vertex's own Custom Prediction Routines (``google-cloud-aiplatform
  [prediction]``, ``SklearnPredictor``), laid out as ``LocalModel.build_cpr_model`` lays it
  out, serving a real scikit-learn model: it answers 500 to bad input and takes a body of any
  size.
* A gunicorn server on its own declared port (5005) and health route (``/healthz``): 500 on
  bad input, no body limit.

Both pass: their failures are hygiene rules, reported as warnings with the same messages; a
strict check (``strict``, ``check-contract --strict``) fails them with the hygiene rules named.
Both images are built here (pip reaches PyPI for CPR; no registry).
"""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from components.contract import CheckSettings, ContractReport, check_image
from components.imaging import build
from components.runners import Engine
from serving_image.server import artifact
from tests.contract.broken_images.verdicts import FIXTURES_DIR, KINDS
from tests.support import compile_cli

pytestmark = pytest.mark.container

CONTRACT_TESTS = Path(__file__).resolve().parent
LENIENT_DIR = CONTRACT_TESTS / "lenient_images"
TIMINGS: dict[str, float] = {}


@dataclass(frozen=True)
class Lenient:
    """How to check one lenient image, and the hygiene rules it must be warned about."""

    port: int
    health_route: str
    predict_route: str
    warned: frozenset[str]


HYGIENE_5XX = frozenset({"bad-json", "no-instances", "wrong-feature"})
LENIENT = {
    # CPR's serializer refuses a body that is not JSON with a 400 itself.
    "cpr_sklearn": Lenient(8080, "/health", "/predict", frozenset(HYGIENE_5XX - {"bad-json"})),
    "gunicorn_custom_port": Lenient(5005, "/healthz", "/predict", HYGIENE_5XX),
}


@pytest.fixture(scope="module")
def lenient_images(engine: Engine, base_image: str, serving_image_without_model: str) -> dict:
    """Both images, built side by side; name -> tag."""
    versions = {
        "AIPLATFORM_VERSION": metadata.version("google-cloud-aiplatform"),
        "SKLEARN_VERSION": metadata.version("scikit-learn"),
        "NUMPY_VERSION": metadata.version("numpy"),
        "JOBLIB_VERSION": metadata.version("joblib"),
    }
    builds = {
        "cpr_sklearn": (LENIENT_DIR / "cpr_sklearn", {"BASE_IMAGE": base_image, **versions}),
        "gunicorn_custom_port": (CONTRACT_TESTS, {"BASE_IMAGE": serving_image_without_model}),
    }

    def build_one(name: str) -> str:
        context, args = builds[name]
        tag = f"localhost/contract-lenient-{name.replace('_', '-')}:test"
        build(engine, context, tag, args, dockerfile=LENIENT_DIR / name / "Dockerfile")
        return tag

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        tags = dict(zip(builds, pool.map(build_one, builds), strict=True))
    TIMINGS["build the lenient images"] = time.monotonic() - started
    return tags


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list]:
    """A scikit-learn model as CPR's SklearnPredictor loads it (``model.joblib``), its
    instances (lists of four numbers, what ``np.asarray`` takes) and their predictions."""
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    directory = tmp_path_factory.mktemp("iris")
    joblib.dump(model, directory / "model.joblib")
    (directory / "model.joblib").chmod(0o644)
    sample = features[::10]
    return directory, sample.tolist(), model.predict(sample).tolist()


def check_lenient(
    name: str, strict: bool, images: dict[str, str], iris: tuple[Path, list, list]
) -> ContractReport:
    lenient = LENIENT[name]
    if name == "cpr_sklearn":
        model_dir, instances, expected = iris
        sample: dict[str, Any] = {"instances": instances, "expected": expected}
    else:
        model_dir = None
        sample = {
            "instances": artifact.read_jsonl(FIXTURES_DIR / "instances.jsonl"),
            "expected": artifact.read_jsonl(FIXTURES_DIR / "expected.jsonl"),
            "kinds": KINDS,
        }
    return check_image(
        images[name],
        model_dir=model_dir,
        port=lenient.port,
        health_route=lenient.health_route,
        predict_route=lenient.predict_route,
        settings=CheckSettings(grace_period_s=10, strict=strict),
        **sample,
    )


@pytest.fixture(scope="module")
def lenient_reports(lenient_images: dict[str, str], iris_model: tuple) -> dict:
    """(name, strict) -> report, for both images and both levels, checked side by side."""
    keys = [(name, strict) for name in LENIENT for strict in (False, True)]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        reports = pool.map(lambda key: check_lenient(*key, lenient_images, iris_model), keys)
        result = dict(zip(keys, reports, strict=True))
    TIMINGS["check the lenient images twice"] = time.monotonic() - started
    return result


@pytest.mark.parametrize("name", list(LENIENT))
def test_an_image_vertex_serves_passes_with_warnings(name: str, lenient_reports: dict):
    report = lenient_reports[name, False]

    assert report.passed, report.to_markdown()
    assert {r.rule for r in report.warnings} == LENIENT[name].warned, report.to_markdown()
    assert report.result("predict-values").passed
    assert report.result("sigterm").passed
    oversize = report.result("oversize")
    assert oversize.passed and oversize.detail.startswith("answered 200 (it takes bodies over")
    assert report.verdict().startswith("PASS: ")
    assert "(warnings: " in report.verdict()
    warning = report.warnings[0].message()
    assert "answered 500 to a malformed request, not a 4xx" in warning
    assert "request sent: POST /predict" in warning and "Vertex AI would" in warning


@pytest.mark.parametrize("name", list(LENIENT))
def test_a_strict_check_fails_it_naming_the_hygiene_rules(name: str, lenient_reports: dict):
    report = lenient_reports[name, True]

    assert not report.passed and not report.contract_violations
    assert {r.rule for r in report.violations} == LENIENT[name].warned
    assert report.verdict().startswith("FAIL (strict): ")


def test_the_cpr_server_refuses_nothing_of_its_own_sample(lenient_reports: dict):
    """Lists are its only form: every request shape is compared, none refused."""
    report = lenient_reports["cpr_sklearn", False]
    values = report.result("predict-values")

    assert values.detail.startswith("all 15 predictions equal the expected ones")
    assert "refused" not in values.detail
    assert "google/cloud/aiplatform/prediction/sklearn/predictor.py" in (report.logs or "")


def test_check_contract_cli_warns_and_strict_fails(lenient_images: dict[str, str]):
    lenient = LENIENT["gunicorn_custom_port"]
    args = [
        "--image", lenient_images["gunicorn_custom_port"],
        "--port", str(lenient.port),
        "--health-route", lenient.health_route,
        "--predict-route", lenient.predict_route,
        "--instances", str(FIXTURES_DIR / "instances.jsonl"),
        "--expected", str(FIXTURES_DIR / "expected.jsonl"),
        "--grace-period", "10",
    ]  # fmt: skip

    lenient_run = compile_cli("check-contract", *args)
    strict_run = compile_cli("check-contract", *args, "--strict")

    assert lenient_run.returncode == 0, lenient_run.stdout + lenient_run.stderr
    assert "(warnings: bad-json, no-instances, wrong-feature)" in lenient_run.stdout
    assert "\nwarning: [no-instances] answered 500" in lenient_run.stdout
    assert strict_run.returncode == 1, strict_run.stdout + strict_run.stderr
    assert strict_run.stdout.startswith("FAIL (strict): ")
    assert "fails hygiene rules (bad-json, no-instances, wrong-feature)" in strict_run.stdout
    assert "\n[wrong-feature] answered 500" in strict_run.stdout
