"""The contract check of an image we did not build (``foreign_image``), with the skew guard.

``foreign_images/server.py`` is someone else's scikit-learn server: port 9000, ``/ping`` and
``/v1/models/m:predict``, instances as lists, labels only in its answers. Checked as foreign
with the caller's port, routes and ``instance_format="list"`` it passes, its labels compared
with the labels of ``expected_predictions.jsonl``; a skewed variant (one feature zeroed) fails
``predict-values`` with the differing instance shown; errors on edge instances warn
(``edge-errors``). The server runs as a process here (fast) and as an image (``container``).
Our own image is still checked strictly, as exported: ``test_broken_images.py``.
"""

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from components.contract import CheckSettings, ContractReport, check_model_image, check_server
from components.contract.sample import (
    LABEL,
    PROBABILITY_LIST,
    PROBABILITY_OBJECT,
    Comparison,
    model_sample,
    plain_expectation,
)
from components.contract_check import contract_check
from components.imaging import build
from components.runners import Engine, free_local_port
from serving_image.server import artifact
from tests.contract.conftest import FixtureServer, launch
from tests.support import compile_cli

FOREIGN_DIR = Path(__file__).resolve().parent / "foreign_images"
PORT = 9000
ROUTES = {"health_route": "/ping", "predict_route": "/v1/models/m:predict"}
TIMINGS: dict[str, float] = {}
EXPORTED = {"label": "Adelie", "probabilities": {"Adelie": 0.9, "Chinstrap": 0.07, "Gentoo": 0.03}}


@pytest.mark.parametrize(
    ("answer", "shape", "expectation"),
    [
        ("Adelie", LABEL, "Adelie"),
        ([0.9, 0.07, 0.03], PROBABILITY_LIST, [0.9, 0.07, 0.03]),
        (EXPORTED["probabilities"], PROBABILITY_OBJECT, EXPORTED["probabilities"]),
        (EXPORTED, "as exported", EXPORTED),
    ],
)
def test_a_plain_answer_is_compared_with_the_same_part_of_the_expectation(
    answer: Any, shape: str, expectation: Any
):
    assert plain_expectation(EXPORTED, answer) == (shape, expectation)
    assert plain_expectation(12.5, 12.5) == ("as exported", 12.5)  # regression: a number


def test_a_plain_answer_that_disagrees_still_differs_within_the_tolerance():
    comparison = Comparison("batch")
    answers = ["Gentoo", [0.9 + 1e-9, 0.07, 0.03], [0.5, 0.4, 0.1]]
    comparison.record(
        [EXPORTED] * 3, [0, 1, 2], answers, "", None, rel_tol=1e-6, abs_tol=1e-9, plain=True
    )

    assert comparison.differences == {
        0: 'predictions[0]: expected "Adelie", got "Gentoo"',
        2: "predictions[2][0]: expected 0.9, got 0.5",
    }
    assert comparison.compared_as == {LABEL: 1, PROBABILITY_LIST: 2}


def test_instances_as_lists_are_each_exported_instance_once_in_feature_order(
    penguins_model_dir: Path,
):
    objects = artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)
    manifest = artifact.read_manifest(penguins_model_dir)
    names = [feature["name"] for feature in manifest["features"]]

    instances, expected, kinds = model_sample(penguins_model_dir, "list")

    assert instances == [[row.get(name) for name in names] for row in objects]
    assert kinds == manifest["sample_kinds"]  # no second "as list" form
    assert expected == artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE)
    assert model_sample(penguins_model_dir) == artifact.read_sample(penguins_model_dir)


def test_instances_as_lists_need_the_manifests_feature_order(tmp_path: Path):
    artifact.write_jsonl(tmp_path / artifact.INSTANCES_FILE, [{"x": 1}])
    artifact.write_jsonl(tmp_path / artifact.EXPECTED_FILE, [1])

    with pytest.raises(ValueError, match="need the manifest's feature order"):
        model_sample(tmp_path, "list")
    with pytest.raises(ValueError, match="instance_format must be one of"):
        model_sample(tmp_path, "columns")


def test_the_component_declares_the_foreign_image_inputs():
    inputs = contract_check.component_spec.inputs
    assert inputs["instance_format"].default == "object"
    assert inputs["foreign_image"].default is False
    assert "pre-built scikit-learn container takes" in inputs["instance_format"].description
    assert "warning (``edge-errors``)" in inputs["foreign_image"].description


# --- someone else's server as a process ------------------------------------------------------


@pytest.fixture
def start_foreign(
    tmp_path: Path, penguins_model_dir: Path
) -> Iterator[Callable[..., FixtureServer]]:
    """Start ``foreign_images/server.py`` on the penguins model, on a free port, with the
    variant's variables; all are killed after the test."""
    servers: list[FixtureServer] = []

    def start(**variant: str) -> FixtureServer:
        port = free_local_port()
        env = {
            "PATH": os.environ["PATH"],
            "AIP_STORAGE_URI": str(penguins_model_dir),
            "FIXTURE_PORT": str(port),
            **variant,
        }
        log_path = tmp_path / f"foreign-{len(servers)}.log"
        servers.append(launch(FOREIGN_DIR / "server.py", env, log_path, port))
        return servers[-1]

    yield start
    for server in servers:
        server.process.kill()
        server.process.wait(10)


def check_foreign(
    server: FixtureServer, model_dir: Path, *, foreign: bool = True
) -> ContractReport:
    instances, expected, kinds = model_sample(model_dir, "list")
    return check_server(
        server.url,
        instances=instances,
        expected=expected,
        kinds=kinds,
        settings=CheckSettings(foreign_image=foreign),
        observer=server,
        started=server.started,
        **ROUTES,
    )


HYGIENE_5XX = {"bad-json", "no-instances", "wrong-feature"}


def test_someone_elses_server_passes_with_its_labels_compared(
    start_foreign: Callable[..., FixtureServer], penguins_model_dir: Path
):
    report = check_foreign(start_foreign(), penguins_model_dir)
    markdown = report.to_markdown()

    assert report.passed, markdown
    assert {r.rule for r in report.warnings} == HYGIENE_5XX, markdown  # its 500s on bad input
    values = report.result("predict-values").detail
    rows = len(artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE))
    assert values.startswith(f"all {rows} predictions equal the expected ones")
    assert f"compared as labels only ({3 * rows})" in values
    assert "(not checked, the image is not ours: the exported answer shape" in values
    assert report.result("edge-errors").detail == "all 19 edge instances got a prediction"
    assert "| edge-errors | hygiene | PASS |" in markdown
    assert "| instances sent as | `lists of values (in the manifest's feature order)` |" in markdown
    assert "| foreign image (not built by train-to-serve) | `yes: a plain answer" in markdown
    assert "| health route | `/ping` |" in markdown


def test_the_same_server_checked_as_ours_fails_on_the_answer_shape(
    start_foreign: Callable[..., FixtureServer], penguins_model_dir: Path
):
    """Not foreign: the answer must be the exported prediction itself, as before."""
    report = check_foreign(start_foreign(), penguins_model_dir, foreign=False)

    assert [r.rule for r in report.violations] == ["predict-values"]
    assert 'predictions[0]: expected {"label": "Adelie"' in report.violations[0].detail
    with pytest.raises(KeyError):
        report.result("edge-errors")  # a rule for foreign images only


def test_a_skewed_foreign_server_fails_predict_values_naming_the_instance(
    start_foreign: Callable[..., FixtureServer], penguins_model_dir: Path
):
    report = check_foreign(start_foreign(SKEW_ZEROED="bill_length_mm"), penguins_model_dir)

    assert [r.rule for r in report.violations] == ["predict-values"], report.to_markdown()
    message = report.violations[0].message()
    expected = artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE)
    assert "[predict-values] the served predictions differ from the exported expectations; " in (
        message
    )
    assert "compared as labels only" in message
    assert f'first: instance 2 (evaluation): predictions[2]: expected "{expected[2]["label"]}"' in (
        message
    )
    assert "request sent: POST /v1/models/m:predict with body" in message
    assert """came back: 200 OK, body '{"predictions": [""" in message
    assert "Vertex AI would serve these values without any error" in message


def test_errors_on_edge_instances_warn_naming_the_kind(
    start_foreign: Callable[..., FixtureServer], penguins_model_dir: Path
):
    report = check_foreign(start_foreign(NO_MISSING="1"), penguins_model_dir)
    edge = report.result("edge-errors")

    assert report.passed, report.to_markdown()
    assert {r.rule for r in report.warnings} == HYGIENE_5XX | {"edge-errors"}
    assert report.result("predict-values").passed  # every evaluation row matched
    assert edge.detail.startswith(
        "each instance alone: 7 of 19 edge instances answered with an error (missing:"
    )
    assert "missing:sex: 500" in edge.detail and "min:year" not in edge.detail
    assert "; in batches: 19 of 19; in another order: 19 of 19: the model has" in edge.detail
    assert edge.request.startswith("POST /v1/models/m:predict with body")
    assert "pass the image's error on to every client that sends such an instance" in (
        edge.vertex_consequence
    )
    assert "| missing:sex | 0/1 (error) | 0/1 (error) | 0/1 (error) |" in report.to_markdown()


# --- someone else's server as an image ---------------------------------------------------------


@pytest.fixture(scope="module")
def foreign_image(engine: Engine, serving_image_without_model: str) -> str:
    """The foreign server's image, on the serving image (python, scikit-learn, pandas)."""
    tag = "localhost/contract-foreign-sklearn:test"
    started = time.monotonic()
    build(engine, FOREIGN_DIR, tag, {"BASE_IMAGE": serving_image_without_model}, ca_bundle=None)
    TIMINGS["build the foreign image"] = time.monotonic() - started
    return tag


@pytest.fixture(scope="module")
def readable_model(penguins_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The penguins model directory, readable by the image's unprivileged user."""
    model = tmp_path_factory.mktemp("foreign") / "model"
    shutil.copytree(penguins_model_dir, model)
    for path in (model, *model.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return model


@pytest.mark.container
def test_the_foreign_image_passes_with_the_callers_port_routes_and_lists(
    engine: Engine, foreign_image: str, readable_model: Path
):
    started = time.monotonic()
    report, metadata = check_model_image(
        foreign_image,
        readable_model,
        port=PORT,
        settings=CheckSettings(foreign_image=True, grace_period_s=10),
        engine=engine,
        instance_format="list",
        **ROUTES,
    )
    TIMINGS["check the foreign image"] = time.monotonic() - started
    markdown = report.to_markdown()

    assert report.passed, markdown
    assert "compared as labels only" in report.result("predict-values").detail
    assert "| declared port | `9000` |" in markdown
    assert metadata is not None
    spec = metadata["containerSpec"]
    assert spec["ports"] == [{"containerPort": PORT}]
    assert (spec["healthRoute"], spec["predictRoute"]) == ("/ping", "/v1/models/m:predict")
    assert "listening on 0.0.0.0:9000" in (report.logs or "")


@pytest.mark.container
def test_check_contract_cli_fails_the_skewed_foreign_image(
    foreign_image: str, readable_model: Path, tmp_path: Path
):
    report_path = tmp_path / "skewed.md"
    result = compile_cli(
        "check-contract", "--image", foreign_image, "--model-dir", str(readable_model),
        "--port", str(PORT), "--health-route", ROUTES["health_route"],
        "--predict-route", ROUTES["predict_route"], "--instance-format", "list",
        "--foreign-image", "--env", "SKEW_ZEROED=bill_length_mm", "--grace-period", "10",
        "--report", str(report_path),
    )  # fmt: skip

    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith(f"FAIL: {foreign_image} breaks")
    assert "\n[predict-values] the served predictions differ" in result.stdout
    assert "compared as labels only" in result.stdout
    assert "first: instance 2 (evaluation): predictions[2]: expected" in result.stdout
    assert "Vertex AI would serve these values" in result.stdout
    markdown = report_path.read_text()
    assert "| predict-values | contract | FAIL |" in markdown
    assert "| declared port | `9000` |" in markdown
