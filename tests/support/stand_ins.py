"""What the tests of the local stand-ins (registry, endpoint, batch prediction) share.

The serving image without a model is deployed with Vertex-style routes and a spec env that
uses a ``$(VAR)`` reference; ``checked_model`` stands in for the contract check in a
kfp.local pipeline: it emits an ``UnmanagedContainerModel`` for ``local_model_upload``.
"""

from pathlib import Path
from typing import Any

from google_cloud_pipeline_components.types.artifact_types import UnmanagedContainerModel
from kfp import dsl
from kfp.dsl import Output

from components.images import COMPONENTS_IMAGE
from components.local_model_upload import local_model_upload
from components.vertex import unmanaged_container_model_metadata

IMAGE_TAG = "localhost/train-to-serve-test:no-model"
HEALTH_ROUTE = "/v1/endpoints/local/deployedModels/penguins"
PREDICT_ROUTE = f"{HEALTH_ROUTE}:predict"
SERVING_ENV = {"SERVING_WORKERS": "1", "MODEL_HOME": "$(AIP_STORAGE_URI)"}
"""One worker (light on a 2-CPU machine) and a ``$(VAR)`` reference to expand."""


def container_spec(image: str) -> dict[str, Any]:
    """The ``containerSpec`` the contract check would emit for ``image`` with these routes."""
    return unmanaged_container_model_metadata(
        image, port=8080, health_route=HEALTH_ROUTE, predict_route=PREDICT_ROUTE, env=SERVING_ENV
    )["containerSpec"]


@dsl.component(base_image=COMPONENTS_IMAGE)
def checked_model(ucm: Output[UnmanagedContainerModel], source: str, spec: dict):
    """Copy the model directory ``source`` into ``ucm`` with ``spec`` as its containerSpec."""
    import shutil

    shutil.copytree(source, ucm.path)
    ucm.metadata["containerSpec"] = spec


def upload_checked(source: Any, registry_dir: Any, spec: dict[str, Any]) -> Any:
    """In a pipeline: the model directory ``source`` checked (``checked_model``) and uploaded
    to the local registry as ``penguins``; the upload task."""
    checked = checked_model(source=source, spec=spec)
    return local_model_upload(
        display_name="penguins",
        unmanaged_container_model=checked.outputs["ucm"],
        registry_dir=registry_dir,
    )


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False
