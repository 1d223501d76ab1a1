"""The ``local_model_deploy`` component: the local stand-in for GCPC's ``EndpointCreateOp`` +
``ModelDeployOp``.

The work is ``components.stand_ins.deploy`` (the version's server started detached, the way
Vertex starts it); this module declares the KFP component around it.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def local_model_deploy(
    model: Input[Artifact],
    registry_dir: str,
    endpoints_dir: str,
    endpoint: Output[Artifact],
    endpoint_display_name: str = "",
):
    """Deploys a model version from the local registry to a new local endpoint.

    The local stand-in for GCPC's ``EndpointCreateOp`` + ``ModelDeployOp`` (which ``kfp.local``
    cannot run): it starts the version's serving image as a detached, long-running container
    the way Vertex AI does (``AIP_*`` variables, the model mounted read-only and named by
    ``AIP_STORAGE_URI``, ``ports[0]`` published on a 127.0.0.1 port), waits until the health
    route answers 200 and records the endpoint (see ``components/stand_ins/endpoints.py``). The
    container outlives the task: call it and stop it with
    ``compile.py endpoints list|predict|undeploy``.

    Args:
        model: The ``local_model_upload`` output (its ``metadata.resourceName``,
            ``projects/local/locations/local/models/ID@VERSION``, is deployed).
        registry_dir: Directory of the local registry holding the model.
        endpoints_dir: Directory of the endpoint records.
        endpoint_display_name: The display name of the endpoint (default: the model's).

    Returns:
        endpoint: The endpoint. ``metadata.resourceName`` is
            ``projects/local/locations/local/endpoints/ID``, ``metadata.url`` the predict URL;
            ``uri`` is the endpoint's record.
    """
    from pathlib import Path

    from components.stand_ins import EndpointError, deploy

    resource = model.metadata.get("resourceName")
    if not resource:
        raise EndpointError(
            f"model ({model.uri}) has no metadata.resourceName; pass local_model_upload's output"
        )
    deployed = deploy(resource, registry_dir, endpoints_dir, display_name=endpoint_display_name)
    endpoint.uri = str((Path(endpoints_dir) / f"{deployed.endpoint_id}.json").resolve())
    endpoint.metadata.update(
        {
            "resourceName": deployed.resource_name,
            "url": deployed.url,
            "deployedModelId": deployed.deployed_model_id,
            "model": deployed.model,
            "containerName": deployed.container_name,
        }
    )
    print(
        f"deployed {deployed.model} to {deployed.resource_name}: POST {deployed.url} "
        f"(ready after {deployed.startup_seconds} s; stop it with "
        f"`python compile.py endpoints undeploy {deployed.endpoint_id} --endpoints-dir "
        f"{endpoints_dir}`)"
    )
