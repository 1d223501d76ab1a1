"""The ``local_model_deploy`` component: the local stand-in for GCPC's ``EndpointCreateOp`` +
``ModelDeployOp``.

The work is ``components.stand_ins.deploy`` (the version's server started detached, the way
Vertex starts it, on the endpoint found or created by display name); this module declares the
KFP component around it.
"""

from typing import NamedTuple

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
    canary_traffic_percent: int = 100,
) -> NamedTuple("Outputs", traffic_before=dict):
    """Deploys a model version from the local registry next to what a local endpoint serves.

    The local stand-in for GCPC's ``ModelDeployOp`` (which ``kfp.local`` cannot run): the
    endpoint is the oldest named ``endpoint_display_name``, created (with its router, one host
    port for all its deployed models) when there is none; the version's serving image starts
    as a detached, long-running container the way Vertex AI does (``AIP_*`` variables, the
    model mounted read-only and named by ``AIP_STORAGE_URI``, ``ports[0]`` published on a
    127.0.0.1 port), and once its health route answers 200 it takes
    ``canary_traffic_percent`` of the endpoint's traffic, the others keeping the rest in
    proportion (100% on an endpoint that serves nothing). The container outlives the task:
    call it and stop it with ``compile.py endpoints list|predict|traffic|undeploy``.

    Args:
        model: The ``local_model_upload`` output (its ``metadata.resourceName``,
            ``projects/local/locations/local/models/ID@VERSION``, is deployed).
        registry_dir: Directory of the local registry holding the model.
        endpoints_dir: Directory of the endpoint records.
        endpoint_display_name: The display name of the endpoint found or created (default:
            the model's).
        canary_traffic_percent: The new model's share of the traffic (0: none until it is
            promoted; the router still reaches it for the smoke test).

    Returns:
        endpoint: The endpoint. ``metadata.resourceName`` is
            ``projects/local/locations/local/endpoints/ID``, ``metadata.url`` the predict URL,
            ``metadata.endpointsDir`` its records' directory; ``uri`` is its record.
        traffic_before: The endpoint's split before this deploy (a rollback restores it).
    """
    from collections import namedtuple
    from pathlib import Path

    from components.stand_ins import EndpointError, deploy

    resource = model.metadata.get("resourceName")
    if not resource:
        raise EndpointError(
            f"model ({model.uri}) has no metadata.resourceName; pass local_model_upload's output"
        )
    done = deploy(
        resource,
        registry_dir,
        endpoints_dir,
        display_name=endpoint_display_name,
        traffic_percent=canary_traffic_percent,
    )
    target, deployed = done.endpoint, done.deployed_model
    endpoint.uri = str((Path(endpoints_dir) / f"{target.endpoint_id}.json").resolve())
    endpoint.metadata.update(
        {
            "resourceName": target.resource_name,
            "url": target.url,
            "endpointsDir": str(Path(endpoints_dir).resolve()),
            "deployedModelId": deployed.id,
            "model": deployed.model,
            "containerName": deployed.container_name,
            "trafficAfter": target.traffic_split,
        }
    )
    print(
        f"deployed {deployed.model} to {target.resource_name} as {deployed.id} "
        f"(traffic {target.traffic_split}, before {done.traffic_before}): POST {target.url} "
        f"(ready after {deployed.startup_seconds} s)"
    )
    return namedtuple("Outputs", ["traffic_before"])(dict(done.traffic_before))
