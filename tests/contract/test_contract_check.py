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
    assert "A Vertex AI Pipelines task has no container engine" in contract_check.description
    assert spec.inputs["process_mode"].default is False


KFP_BASE_IMAGE_WARNING = "ignore:You may be attemping to run a task:RuntimeWarning"


def _run_without_an_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_dir: Path, **arguments: bool
) -> None:
    """``contract_check`` under kfp.local with no container engine (as in a Vertex pod)."""
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
        imported = dsl.importer(artifact_uri=str(model_dir), artifact_class=dsl.Model)
        contract_check(image_uri="registry.example/serving:1", model=imported.output, **arguments)

    no_engine()


@pytest.mark.filterwarnings(KFP_BASE_IMAGE_WARNING)
def test_without_a_container_engine_the_component_fails_instead_of_checking_less(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    penguins_model_dir: Path,
):
    """No silent fallback: an unchecked image never reaches upload."""
    with pytest.raises(RuntimeError):
        _run_without_an_engine(tmp_path, monkeypatch, penguins_model_dir)

    output = "".join(capfd.readouterr())
    assert "needs podman or docker beside it" in output and "use build_and_check" in output
    assert not list((tmp_path / "root").rglob("executor_output.json"))


@pytest.mark.filterwarnings(KFP_BASE_IMAGE_WARNING)
def test_process_mode_asked_for_checks_the_server_code_and_says_so(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    penguins_model_dir: Path,
):
    _run_without_an_engine(tmp_path, monkeypatch, penguins_model_dir, process_mode=True)

    output = "".join(capfd.readouterr())
    assert PROCESS_MODE_NOTE in output  # the verdict line
    (report,) = (tmp_path / "root").rglob("contract-check/report")
    assert PROCESS_MODE_NOTE in report.read_text()
    (written,) = (tmp_path / "root").rglob("contract-check/executor_output.json")
    artifacts = json.loads(written.read_text())["artifacts"]
    assert artifacts["metrics"]["artifacts"][0]["metadata"]["process_mode"] == 1.0
    spec = artifacts["unmanaged_container_model"]["artifacts"][0]["metadata"]["containerSpec"]
    assert spec["imageUri"] == "registry.example/serving:1"
    assert not list((tmp_path / "processes").glob("*.json"))  # the server is gone
