"""The build_image component: its interface, and a build under kfp.local."""

from pathlib import Path

import pytest
import yaml

from components.build_image import build_image
from components.imaging.plan import BuiltImage
from components.runners import Engine
from tests.imaging.builds import LOCAL_NAME


def test_the_component_interface(tmp_path: Path) -> None:
    from kfp import compiler

    compiler.Compiler().compile(build_image, str(tmp_path / "c.yaml"))
    spec = yaml.safe_load((tmp_path / "c.yaml").read_text())
    inputs = spec["root"]["inputDefinitions"]
    assert inputs["artifacts"]["model"]["artifactType"]["schemaTitle"] == "system.Model"
    parameters = inputs["parameters"]
    assert parameters["bake_model"]["defaultValue"] is True
    assert parameters["builder"]["defaultValue"] == "auto"
    outputs = spec["root"]["outputDefinitions"]["parameters"]
    assert set(outputs) == {"image_uri", "digest"}
    assert build_image.component_spec.description.startswith(
        "Build the serving container image for a trained model."
    )


def test_the_component_builds_under_kfp_local(
    engine: Engine,
    baked: BuiltImage,
    readable_model: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from kfp import dsl, local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))

    @dsl.pipeline
    def build_only(model_uri: str) -> str:
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        built = build_image(model=model.output, image_name=LOCAL_NAME, builder="local")
        return built.outputs["image_uri"]

    run = build_only(model_uri=str(readable_model))
    assert run.output == baked.reference  # same model, same sources: the same image
    log = capfd.readouterr().out
    assert "STEP 1/" in log or "#1 [" in log  # the engine's step lines reach the task's log
    assert f"built {baked.reference}" in log
