"""Recipe "our train -> your deployment": compiled for both backends, and run under kfp.local,
its Kubernetes manifest then started as written: the container serves the model's expected
predictions."""

from pathlib import Path

import httpx
import pytest
import yaml

from components.runners import Engine, ServerSpec, start_server
from pipelines.examples.your_deployment import build_pipeline
from serving_image.server import artifact
from tests.pipelines.examples import COMPONENTS_IMAGE, compiled

IMAGE = "localhost/train-to-serve-recipe-deployment"


@pytest.mark.parametrize("backend", ["vertex", "local"])
def test_compiles(backend: str, tmp_path: Path) -> None:
    spec = compiled(build_pipeline(backend, COMPONENTS_IMAGE), tmp_path)
    tasks = spec["root"]["dag"]["tasks"]
    checker = "contract-check" if backend == "local" else "build-and-check"
    assert tasks["your-deployment"]["dependentTasks"] == [checker]
    assert tasks["your-deployment"]["inputs"]["artifacts"]["checked"]["taskOutputArtifact"] == {
        "producerTask": checker,
        "outputArtifactKey": "unmanaged_container_model",
    }
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {COMPONENTS_IMAGE}


def test_bad_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend 'gke'; use one of"):
        build_pipeline("gke")


@pytest.mark.container
def test_runs_under_kfp_local_and_the_manifest_serves(
    engine: Engine, base_image: str, tmp_path: Path
) -> None:
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    build_pipeline("local")(image_name=IMAGE, name="penguins")

    [manifest_file] = tmp_path.glob("*/your-deployment/manifest")
    deployment, service = yaml.safe_load_all(manifest_file.read_text())
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith(IMAGE)
    env = {e["name"]: e["value"] for e in container["env"]}
    port = container["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["targetPort"] == port
    assert env["AIP_HTTP_PORT"] == str(port)
    assert env["AIP_STORAGE_URI"] == ""  # the model is baked into the image

    [model_dir] = tmp_path.glob("*/train/model")
    instances = artifact.read_jsonl(model_dir / artifact.INSTANCES_FILE)
    expected = artifact.read_jsonl(model_dir / artifact.EXPECTED_FILE)
    with start_server(engine, ServerSpec(image=container["image"], port=port, env=env)) as server:
        server.wait_until_serving(container["readinessProbe"]["httpGet"]["path"], timeout=90)
        answer = httpx.post(
            server.url + env["AIP_PREDICT_ROUTE"], json={"instances": instances}, timeout=30
        )
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert [p["label"] for p in predictions] == [e["label"] for e in expected]
