"""Recipe: your model and your image -> our package, check and upload.

For a team with its own serving image (a Vertex pre-built container, a Custom Prediction
Routine, its own server) and a model trained elsewhere. No training and no build here:
``package_model`` exports the model file with a sample of raw rows (the feature schema and
the predictions the model gives in-process), and the contract check runs your image as Vertex
would, on the port and routes you give, and compares its answers with those predictions (the
skew guard; ``foreign_image``: a plain answer such as labels only is compared with that part
of the expected predictions). Only a passing image reaches upload. Both components are loaded
from the YAML ``compile.py compile`` writes, as a pipeline outside this repository would.

It runs where a container engine is: under ``kfp.local`` (a workstation, your CI), uploading
to the local registry. A Vertex AI Pipelines task has no engine to run your image in (our
``build_and_check`` checks in Cloud Build only the images it builds), so there check with this
recipe or ``compile.py check-contract --foreign-image`` before the upload.
"""

from pathlib import Path
from typing import Any

from kfp import components, dsl

from pipelines.examples.steps import Backend
from pipelines.train_to_serve import never_cached


def build_pipeline(components_dir: str | Path) -> Any:
    """The recipe, with ``package_model`` and ``contract_check`` loaded from their YAML in
    ``components_dir`` (``compile.py compile`` writes them)."""
    loaded = {
        name: components.load_component_from_file(str(Path(components_dir) / f"{name}.yaml"))
        for name in ("package_model", "contract_check")
    }
    steps = Backend("local")

    @dsl.pipeline(name="check-existing-image")
    def check_existing_image(
        registry_dir: str,
        model_uri: str,
        sample_uri: str,
        image_uri: str,
        target: str = "",
        port: int = 8080,
        health_route: str = "/health",
        predict_route: str = "/predict",
        instance_format: str = "object",
        display_name: str = "checked-model",
    ) -> None:
        """Package ``model_uri`` (a joblib file) with the rows in ``sample_uri``, check
        ``image_uri`` serving it on ``port`` and the routes given (``instance_format``
        ``list`` for a pre-built scikit-learn container), upload it to ``registry_dir``."""
        packaged = loaded["package_model"](
            model_uri=model_uri, sample_uri=sample_uri, target=target
        )
        checked = never_cached(
            loaded["contract_check"](
                image_uri=image_uri,
                model=packaged.outputs["packaged"],
                port=port,
                health_route=health_route,
                predict_route=predict_route,
                instance_format=instance_format,
                foreign_image=True,
            )
        )
        steps.upload(checked, display_name, {}, registry_dir)

    return check_existing_image
