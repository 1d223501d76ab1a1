"""Recipe "your model and your image -> our package, check and upload": package_model and
contract_check loaded from the YAML compile writes, in another DAG; run under kfp.local
against someone else's image (tests/contract/foreign_images: its own port and routes, lists
in, labels out)."""

import json
from pathlib import Path

import joblib
import pytest

import compile as cli
from components.imaging import build
from components.runners import Engine
from pipelines.examples.check_existing_image import build_pipeline
from tests.pipelines.examples import compiled
from tests.training.external_models import logistic_regression, penguins

FOREIGN_DIR = Path(__file__).resolve().parents[2] / "contract" / "foreign_images"


@pytest.fixture
def components_dir(tmp_path: Path) -> Path:
    """The components' YAML, as ``compile.py compile`` writes it."""
    out = tmp_path / "compiled"
    args = ["compile", "--output", str(out / "pipeline.yaml")]
    assert cli.main([*args, "--components-image", "registry.example/components:1"]) == 0
    return out / "components"


def test_the_yaml_components_are_reused_in_another_pipeline(
    components_dir: Path, tmp_path: Path
) -> None:
    spec = compiled(build_pipeline(components_dir), tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"package-model", "contract-check", "local-model-upload"}
    check = tasks["contract-check"]
    assert check["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "producerTask": "package-model",
        "outputArtifactKey": "packaged",
    }
    assert check["inputs"]["parameters"]["foreign_image"]["runtimeValue"]["constant"] is True
    upload_input = tasks["local-model-upload"]["inputs"]["artifacts"]["unmanaged_container_model"]
    assert upload_input["taskOutputArtifact"]["producerTask"] == "contract-check"
    executor = spec["deploymentSpec"]["executors"]["exec-contract-check"]["container"]
    assert executor["image"] == "registry.example/components:1"


@pytest.mark.container
def test_someone_elses_image_is_checked_and_uploaded_under_kfp_local(
    engine: Engine, serving_image_without_model: str, components_dir: Path, tmp_path: Path
) -> None:
    from kfp import local

    image = "localhost/contract-foreign-sklearn:test"
    build(engine, FOREIGN_DIR, image, {"BASE_IMAGE": serving_image_without_model}, ca_bundle=None)
    frame = penguins()
    joblib.dump(logistic_regression(frame), tmp_path / "model.joblib")
    frame.sample(60, random_state=3).to_csv(tmp_path / "sample.csv", index=False)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    registry = tmp_path / "registry"
    build_pipeline(components_dir)(
        registry_dir=str(registry),
        model_uri=str(tmp_path / "model.joblib"),
        sample_uri=str(tmp_path / "sample.csv"),
        image_uri=image,
        target="species",
        port=9000,
        health_route="/ping",
        predict_route="/v1/models/m:predict",
        instance_format="list",
    )
    [report] = (tmp_path / "root").glob("*/contract-check/report")
    assert "compared as labels only" in report.read_text()
    [version] = registry.glob("models/*/versions/*/model.json")
    uploaded = json.loads(version.read_text())
    assert uploaded["containerSpec"] == {
        "healthRoute": "/ping",
        "imageUri": image,
        "ports": [{"containerPort": 9000}],
        "predictRoute": "/v1/models/m:predict",
    }
    assert (Path(uploaded["artifactUri"]) / "model_manifest.json").is_file()
