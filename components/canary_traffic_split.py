"""The ``canary_traffic_split`` component: the traffic split GCPC's ``ModelDeployOp`` needs to
deploy a new version next to the serving one at a canary share.

The work is ``components.rollout.deploy_traffic_split``; this module declares the KFP
component around it.
"""

from typing import NamedTuple

from google_cloud_pipeline_components.types.artifact_types import VertexEndpoint
from kfp import dsl
from kfp.dsl import Input

from components.images import COMPONENTS_IMAGE


@dsl.component(base_image=COMPONENTS_IMAGE, install_kfp_package=False)
def canary_traffic_split(
    endpoint: Input[VertexEndpoint], canary_traffic_percent: int = 0
) -> NamedTuple("Outputs", traffic_split=dict, traffic_before=dict):
    """The ``traffic_split`` for ``ModelDeployOp`` that deploys at ``canary_traffic_percent``.

    ``ModelDeployOp`` takes a map from deployed-model id to percent (``"0"``: the model being
    deployed), not a share for the new model, so a canary needs the ids of what the endpoint
    serves now. The others keep the rest in proportion (the SDK's arithmetic). On an endpoint
    that serves nothing the new model takes 100%; a share of 0 next to other models becomes
    1%, because a public endpoint routes the smoke test's rawPredict by the split alone.

    Args:
        endpoint: the endpoint the version is deployed to.
        canary_traffic_percent: the new version's share until its smoke test passes.

    Returns:
        traffic_split: the map for ``ModelDeployOp(traffic_split=...)``.
        traffic_before: the endpoint's split now (a rollback restores it).
    """
    from collections import namedtuple

    from components.rollout import VertexEndpoint as Live
    from components.rollout import deploy_traffic_split

    live = Live(endpoint.metadata["resourceName"])
    before = live.traffic_split()
    ids = [deployed.id for deployed in live.deployed_models()]
    split = deploy_traffic_split(before, ids, canary_traffic_percent)
    print(f"traffic now {before}; deploying with {split}")
    return namedtuple("Outputs", ["traffic_split", "traffic_before"])(split, before)
