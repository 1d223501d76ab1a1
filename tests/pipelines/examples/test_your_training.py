"""Recipe "your training step -> our package, build, check, upload": compiled for both
backends, and run under kfp.local with models trained outside our code: the package, the
image with the model's own library, the contract check against the expected predictions and
the upload to the local registry."""

import json
from pathlib import Path

import pytest

from pipelines.examples.your_training import build_pipeline
from tests.pipelines.examples import COMPONENTS_IMAGE, compiled

IMAGE = "localhost/train-to-serve-recipe-training"


@pytest.mark.parametrize("backend", ["vertex", "local"])
def test_compiles(backend: str, tmp_path: Path) -> None:
    spec = compiled(build_pipeline(backend, COMPONENTS_IMAGE), tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    artifacts = tasks["package-model"]["inputs"]["artifacts"]
    assert artifacts["model"]["taskOutputArtifact"] == {
        "producerTask": "your-training",
        "outputArtifactKey": "model",
    }
    assert artifacts["sample"]["taskOutputArtifact"]["outputArtifactKey"] == "sample"
    checker = "contract-check" if backend == "local" else "build-and-check"
    upload = "local-model-upload" if backend == "local" else "model-upload"
    assert tasks[checker]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "producerTask": "package-model",
        "outputArtifactKey": "packaged",
    }
    assert tasks[upload]["dependentTasks"] == [checker]


@pytest.mark.container
@pytest.mark.parametrize("estimator", ["xgboost", "lightgbm", "scikit-learn"])
def test_runs_under_kfp_local(
    estimator: str, engine: object, base_image: str, tmp_path: Path
) -> None:
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    registry = tmp_path / "registry"
    build_pipeline("local")(registry_dir=str(registry), estimator=estimator, image_name=IMAGE)

    [packaged] = (tmp_path / "root").glob("*/package-model/packaged")
    manifest = json.loads((packaged / "model_manifest.json").read_text())
    library = {"xgboost": "xgboost", "lightgbm": "lightgbm"}.get(estimator)
    if library:
        assert library in manifest["libraries"]
        assert manifest["compiled"]["status"] == "not_compiled"
    [report] = (tmp_path / "root").glob("*/contract-check/report")
    [values] = [line for line in report.read_text().splitlines() if "| predict-values |" in line]
    assert "| PASS | all " in values and "predictions equal the expected ones" in values
    [version] = registry.glob("models/*/versions/*/model/model_manifest.json")
    assert json.loads(version.read_text())["model_sha256"] == manifest["model_sha256"]
