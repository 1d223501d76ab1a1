"""The ``endpoint_get_or_create`` component: the Vertex endpoint to deploy to, reused by name.

The work is ``components.rollout.get_or_create_endpoint``; this module declares the KFP
component around it.
"""

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint
from kfp import dsl
from kfp.dsl import Output

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def endpoint_get_or_create(
    project: str,
    location: str,
    display_name: str,
    endpoint: Output[VertexEndpoint],
    labels: dict = {},  # noqa: B006 (KFP needs a literal default)
):
    """The endpoint named ``display_name`` in ``location``, created only when none exists.

    GCPC's ``EndpointCreateOp`` creates a new endpoint on every run: a scheduled retraining
    then leaves one endpoint per run behind. This finds the endpoint by display name (the
    oldest when several share it) and creates one only when there is none, so each run's
    model is deployed beside the previous one, on the same endpoint.

    Args:
        project: Google Cloud project of the endpoint.
        location: its region (the run's location).
        display_name: the endpoint's display name.
        endpoint: the endpoint, as GCPC's ops read it (``uri`` and
            ``metadata.resourceName``).
        labels: labels for an endpoint created now.
    """
    from components.rollout import endpoint_uri, get_or_create_endpoint

    name, created = get_or_create_endpoint(
        display_name, project=project, location=location, labels=dict(labels)
    )
    print(f"{'created' if created else 'reusing'} endpoint {name}")
    endpoint.uri = endpoint_uri(name, location)
    endpoint.metadata["resourceName"] = name
