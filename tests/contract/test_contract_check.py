"""The contract_check component: what it declares, and where no container engine works."""

import json
from pathlib import Path

import pytest

from components.contract_check import contract_check
from components.runners import PROCESS_MODE_NOTE


def test_the_component_declares_the_artifacts_upload_needs():
    spec = contract_check.component_spec
    outputs = {name: output.type for name, output in spec.outputs.items()}
    assert outputs == {
        "report": "system.Markdown@0.0.1",
        "metrics": "system.Metrics@0.0.1",
        "unmanaged_container_model": "google.UnmanagedContainerModel@0.0.1",
    }
    assert spec.inputs["model"].type == "system.Model@0.0.1"
    assert spec.inputs["image_uri"].type == "String"
    assert "no container" in contract_check.description


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_the_component_without_a_container_engine_checks_in_process_mode_as_on_vertex(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    penguins_model_dir: Path,
):
    """A Vertex AI Pipelines pod has no podman or docker: the task falls back to process mode
    and says so in its log, report and metrics; the spec still names the image given."""
    from kfp import dsl, local

    monkeypatch.setenv("TRAIN_TO_SERVE_CONTAINER_ENGINE", str(tmp_path / "no-engine"))
    monkeypatch.setenv("TRAIN_TO_SERVE_PROCESS_DIR", str(tmp_path / "processes"))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )

    @dsl.pipeline(name="no-engine")
    def no_engine() -> None:
        imported = dsl.importer(artifact_uri=str(penguins_model_dir), artifact_class=dsl.Model)
        contract_check(image_uri="registry.example/serving:1", model=imported.output)

    no_engine()
    output = "".join(capfd.readouterr())
    assert "no working container engine" in output and "checking in process mode" in output
    assert PROCESS_MODE_NOTE in output  # the verdict line
    (report,) = (tmp_path / "root").rglob("contract-check/report")
    assert PROCESS_MODE_NOTE in report.read_text()
    (written,) = (tmp_path / "root").rglob("contract-check/executor_output.json")
    artifacts = json.loads(written.read_text())["artifacts"]
    assert artifacts["metrics"]["artifacts"][0]["metadata"]["process_mode"] == 1.0
    spec = artifacts["unmanaged_container_model"]["artifacts"][0]["metadata"]["containerSpec"]
    assert spec["imageUri"] == "registry.example/serving:1"
    assert not list((tmp_path / "processes").glob("*.json"))  # the server is gone
