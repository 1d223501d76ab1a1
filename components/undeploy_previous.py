"""The ``undeploy_previous`` component: after a deploy, undeploy what the endpoint no longer
serves.

The work is ``components.rollout.undeploy_previous``; this module declares the KFP component
around it.
"""

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint, VertexModel
from kfp import dsl
from kfp.dsl import Input

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def undeploy_previous(
    endpoint: Input[VertexEndpoint],
    model: Input[VertexModel],
    keep_previous: bool = False,
) -> list:
    """Undeploy the endpoint's other models once ``model`` serves 100% of its traffic.

    A version an endpoint no longer routes traffic to still runs on its own replicas and is
    billed. Once the version just deployed takes all the traffic, every other deployed model
    of the endpoint (then at 0%) is undeployed; with a traffic split that keeps the previous
    version serving (a canary), or with ``keep_previous``, all stay.

    Args:
        endpoint: the endpoint the model was deployed to.
        model: the model version just deployed (``metadata.resourceName``:
            ``projects/P/locations/L/models/ID@VERSION``).
        keep_previous: leave the previous deployments in place.

    Returns:
        The deployed model IDs undeployed.
    """
    from components.rollout import undeploy_previous as run

    cleanup = run(
        endpoint.metadata["resourceName"], model.metadata["resourceName"], keep=keep_previous
    )
    print(f"serving {cleanup.serving}; undeployed {cleanup.undeployed}; kept {cleanup.kept}")
    print(cleanup.reason)
    return cleanup.undeployed
