"""The ``set_autoscaling`` component: the deployed version's CPU autoscaling target on Vertex.

GCPC's ``ModelDeployOp`` takes replica counts but no autoscaling target; this step sets it
after the deploy (``MutateDeployedModel``). The work is
``components.release.autoscale_version`` (``VertexEndpoint.set_autoscaling``); this module
declares the KFP component around it.
"""

from kfp import dsl
from kfp.dsl import Artifact, Input

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def set_autoscaling(
    endpoint: Input[Artifact],
    model: Input[Artifact],
    cpu_target: int,
    min_replicas: int,
    max_replicas: int,
) -> str:
    """Scale the version just deployed between ``min_replicas`` and ``max_replicas`` at
    ``cpu_target`` percent CPU utilization.

    Sends ``MutateDeployedModel`` for the version's deployed model (its replica counts and
    ``autoscaling_metric_specs``: the CPU utilization metric at the target) and waits for
    it. A target of 0 sends nothing (Vertex's default, 60%, applies); a local endpoint is left
    as it is (one container per deployed model, no autoscaling). A change Vertex refuses or
    fails is an ERROR in the log and the returned note, and the rollout goes on at Vertex's
    default target (failing the run here would skip the smoke test and the rollback).

    Args:
        endpoint: the endpoint it was deployed to (a ``VertexEndpoint``).
        model: the uploaded version (``metadata.resourceName``: ``...models/ID@VERSION``).
        cpu_target: the CPU utilization target in percent, 1 to 100; 0 keeps Vertex's
            default.
        min_replicas: the deployed model's minimum replica count (the deploy's).
        max_replicas: its maximum replica count (the deploy's).

    Returns:
        What was set, or why nothing was, in one line.
    """
    from components.release import autoscale_version, targets

    live, _ = targets(endpoint.metadata, model.metadata)
    note = autoscale_version(
        live,
        model.metadata["resourceName"],
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu_target=cpu_target,
    )
    print(note)
    return note
