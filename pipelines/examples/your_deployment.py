"""Recipe: our train, build and check -> your own deployment.

For a team that serves outside Vertex AI endpoints (GKE, KServe, a plain Kubernetes cluster)
but wants our training export, serving image and contract check. The checked
``UnmanagedContainerModel`` is the hand-over: its ``metadata.containerSpec`` is the container
that passed the check (image, port, routes, variables, probes), and ``your_deployment`` (the
part you own; here it writes a Kubernetes ``Deployment`` and ``Service``) deploys exactly that
container, with the ``AIP_*`` variables Vertex would set, so the server behaves as it did
under the check.
"""

from typing import Any

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.images import COMPONENTS_IMAGE
from components.train import train
from pipelines.examples.steps import Backend, vertex_settings


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def your_deployment(
    checked: Input[Artifact],
    manifest: Output[Artifact],
    name: str = "model-server",
    replicas: int = 2,
):
    """Stands for your deployment step: a Kubernetes ``Deployment`` and ``Service`` (one
    YAML file) that run the contract-checked container as Vertex would.

    Args:
        checked: the contract check's ``UnmanagedContainerModel`` (``metadata.containerSpec``;
            ``uri``: the model directory).
        name: the Deployment's and the Service's name.
        replicas: the Deployment's replicas.

    Returns:
        manifest: the YAML (``kubectl apply -f``).
    """
    import yaml

    from components import vertex

    spec = checked.metadata["containerSpec"]
    port = int(spec["ports"][0]["containerPort"])
    # A model baked into the image needs no AIP_STORAGE_URI; one in Cloud Storage does.
    storage = checked.uri if checked.uri.startswith("gs://") else ""
    aip = vertex.vertex_environment(port, spec["healthRoute"], spec["predictRoute"], storage)
    env, command, args = vertex.container_env(spec, aip)
    container: dict = {
        "name": "server",
        "image": spec["imageUri"],
        "ports": [{"containerPort": port}],
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "readinessProbe": {"httpGet": {"path": spec["healthRoute"], "port": port}},
    }
    if command:
        container["command"] = [command]
    if args:
        container["args"] = args
    if "startupProbe" in spec:
        container["startupProbe"] = spec["startupProbe"]
    labels = {"app": name}
    documents = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": port}]},
        },
    ]
    with open(manifest.path, "w", encoding="utf-8") as out:
        yaml.safe_dump_all(documents, out, sort_keys=False)
    manifest.metadata.update({"image": spec["imageUri"], "predictRoute": spec["predictRoute"]})


def _dag(
    steps: Backend, vertex: dict[str, Any], data: Any, target: Any, image_name: Any, name: Any
) -> None:
    """train -> build and check -> your deployment."""
    trained = steps.component(train)(data=data, target=target)
    checked = steps.build_and_check(trained.outputs["model"], vertex, image_name)
    steps.component(your_deployment)(
        checked=checked.outputs["unmanaged_container_model"], name=name
    )


def build_pipeline(backend: str = "vertex", components_image: str = COMPONENTS_IMAGE) -> Any:
    """The recipe for ``backend`` (``"vertex"`` or ``"local"``: ``kfp.local`` with podman or
    docker), our components running in ``components_image``."""
    steps = Backend(backend, components_image)
    if steps.local:

        @dsl.pipeline(name="our-train-your-deployment-local")
        def local_pipeline(
            data: str = "penguins",
            target: str = "",
            image_name: str = "your-deployment-model",
            name: str = "model-server",
        ) -> None:
            """Train, build and check here; write your deployment's manifest."""
            _dag(steps, {}, data, target, image_name, name)

        return local_pipeline

    @dsl.pipeline(name="our-train-your-deployment")
    def vertex_pipeline(
        project: str,
        staging_bucket: str,
        data: str,
        target: str = "",
        location: str = "us-central1",
        image_repository: str = "train-to-serve",
        image_name: str = "train-to-serve-model",
        name: str = "model-server",
    ) -> None:
        """Train on Vertex, build, check and push in Cloud Build; write your deployment's
        manifest."""
        vertex = vertex_settings(project, location, staging_bucket, image_repository)
        _dag(steps, vertex, data, target, image_name, name)

    return vertex_pipeline
