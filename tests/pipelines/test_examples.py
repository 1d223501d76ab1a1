"""Our components stand alone: the contract check, loaded from its YAML, in another DAG."""

from pathlib import Path

import yaml
from kfp import compiler

import compile as cli
from pipelines.examples.check_existing_image import build_pipeline


def test_contract_check_yaml_reused_in_another_pipeline(tmp_path: Path) -> None:
    assert (
        cli.main(
            [
                "compile",
                "--output",
                str(tmp_path / "pipeline.yaml"),
                "--components-image",
                "registry.example/components:1",
            ]
        )
        == 0
    )
    pipeline = build_pipeline(tmp_path / "components" / "contract_check.yaml")
    compiler.Compiler().compile(pipeline, str(tmp_path / "reuse.yaml"))
    spec = yaml.safe_load((tmp_path / "reuse.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"importer", "contract-check", "model-upload"}
    assert tasks["model-upload"]["dependentTasks"] == ["contract-check"]
    upload_input = tasks["model-upload"]["inputs"]["artifacts"]["unmanaged_container_model"]
    assert upload_input["taskOutputArtifact"] == {
        "producerTask": "contract-check",
        "outputArtifactKey": "unmanaged_container_model",
    }
    check = spec["deploymentSpec"]["executors"]["exec-contract-check"]["container"]
    assert check["image"] == "registry.example/components:1"
    assert check["args"][-1] == "contract_check"
    outputs = spec["components"]["comp-contract-check"]["outputDefinitions"]["artifacts"]
    assert outputs["unmanaged_container_model"]["artifactType"]["schemaTitle"] == (
        "google.UnmanagedContainerModel"
    )
