"""The steps the recipes share, for Vertex AI Pipelines and for ``kfp.local``.

On Vertex the serving image is built, checked and pushed in one Cloud Build
(``build_and_check``: a pipeline task has no container engine) and GCPC's ``ModelUploadOp``
uploads it; locally ``build_image`` and ``contract_check`` run with podman or docker and the
local registry stands in for the Model Registry. Either way the only container spec that
reaches upload is the contract check's ``UnmanagedContainerModel``.
"""

from dataclasses import dataclass
from typing import Any

from google_cloud_pipeline_components.v1.model import ModelUploadOp

from components.build_and_check import build_and_check
from components.build_image import build_image
from components.contract_check import contract_check
from components.images import COMPONENTS_IMAGE, with_image
from components.local_model_upload import local_model_upload
from pipelines.train_to_serve import BACKENDS, never_cached


def vertex_settings(project: Any, location: Any, staging_bucket: Any, repository: Any) -> dict:
    """What the Vertex steps take from a recipe's parameters: the project and region, the
    build's staging folder and the Artifact Registry repository of the image."""
    return {
        "project": project,
        "location": location,
        "staging_bucket": staging_bucket,
        "repository": repository,
    }


@dataclass(frozen=True)
class Backend:
    """Where a recipe runs: ``"vertex"`` or ``"local"``, with our components in
    ``components_image``."""

    name: str = "vertex"
    components_image: str = COMPONENTS_IMAGE

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"unknown backend {self.name!r}; use one of {BACKENDS}")

    @property
    def local(self) -> bool:
        return self.name == "local"

    def component(self, component: Any) -> Any:
        """One of our components, running in ``components_image``."""
        return with_image(component, self.components_image)

    def build_and_check(self, model: Any, vertex: dict[str, Any], image_name: str) -> Any:
        """Build the serving image for ``model`` and check it as Vertex would run it; the
        task whose ``unmanaged_container_model`` feeds upload. ``vertex``: the pipeline's
        ``project``, ``location``, ``staging_bucket`` and ``repository`` (the Artifact
        Registry repository; unused locally)."""
        if self.local:
            built = never_cached(
                self.component(build_image)(model=model, image_name=image_name, builder="local")
            )
            # Our own serving image: a hygiene finding on it is our bug, so strict.
            return never_cached(
                self.component(contract_check)(
                    image_uri=built.outputs["image_uri"], model=model, strict=True
                )
            )
        return never_cached(
            self.component(build_and_check)(
                model=model,
                image_name=image_name,
                checker_image=self.components_image,
                strict=True,
                **vertex,
            )
        )

    def upload(
        self, checked: Any, display_name: Any, vertex: dict[str, Any], registry_dir: Any
    ) -> Any:
        """Upload the checked model: GCPC's ``ModelUploadOp`` on Vertex (``vertex``'s project
        and location), the local registry in ``registry_dir`` locally."""
        container_model = checked.outputs["unmanaged_container_model"]
        if self.local:
            return never_cached(
                self.component(local_model_upload)(
                    display_name=display_name,
                    unmanaged_container_model=container_model,
                    registry_dir=registry_dir,
                )
            )
        return never_cached(
            ModelUploadOp(
                project=vertex["project"],
                location=vertex["location"],
                display_name=display_name,
                unmanaged_container_model=container_model,
            )
        )
