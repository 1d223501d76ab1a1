"""Reuse: check a model you already have against an image you already built.

A different DAG from train-to-serve: no training and no build. The model directory is
imported (e.g. ``gs://bucket/models/run-7``), the contract check component is loaded from its
reusable YAML (written by ``compile.py compile``), and GCPC uploads the checked model. It is
what a team with its own build system would run.
"""

from pathlib import Path
from typing import Any

from google_cloud_pipeline_components.v1.model import ModelUploadOp
from kfp import components, dsl


def build_pipeline(contract_check_yaml: str | Path) -> Any:
    """The reuse pipeline, with the contract check loaded from ``contract_check_yaml``."""
    contract_check = components.load_component_from_file(str(contract_check_yaml))

    @dsl.pipeline(name="check-existing-image")
    def check_existing_image(
        project: str,
        model_uri: str,
        image_uri: str,
        location: str = "us-central1",
        display_name: str = "checked-model",
    ) -> None:
        """Contract-check ``image_uri`` serving the model at ``model_uri``, then upload it."""
        model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model)
        checked = contract_check(image_uri=image_uri, model=model.output)
        ModelUploadOp(
            project=project,
            location=location,
            display_name=display_name,
            unmanaged_container_model=checked.outputs["unmanaged_container_model"],
        )

    return check_existing_image
