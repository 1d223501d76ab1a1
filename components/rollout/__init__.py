"""A new version's rollout on a live endpoint: the endpoint, the steps, the record.

``endpoints`` finds or creates the Vertex endpoint by display name; ``steps`` promotes a
deployed version or rolls it back; ``vertex`` is its endpoint and registry on Vertex AI (the
endpoint also sets a deployed model's autoscaling), and the traffic split a new version is
deployed with; ``record`` the promotion record and the model evaluation the registry shows.
"""

from components.rollout.endpoints import endpoint_uri, get_or_create_endpoint
from components.rollout.steps import (
    DEFAULT_ALIAS,
    PROMOTE_ALL,
    PROMOTE_CANARY,
    PROMOTE_CHOICES,
    DeployedModel,
    Endpoint,
    Outcome,
    Registry,
    RolloutError,
    find_deployed,
    promote,
    roll_back,
)
from components.rollout.vertex import (
    SMOKE_SHARE_PERCENT,
    VertexEndpoint,
    VertexRegistry,
    deploy_traffic_split,
)

__all__ = [
    "DEFAULT_ALIAS",
    "PROMOTE_ALL",
    "PROMOTE_CANARY",
    "PROMOTE_CHOICES",
    "SMOKE_SHARE_PERCENT",
    "DeployedModel",
    "Endpoint",
    "Outcome",
    "Registry",
    "RolloutError",
    "VertexEndpoint",
    "VertexRegistry",
    "deploy_traffic_split",
    "endpoint_uri",
    "find_deployed",
    "get_or_create_endpoint",
    "promote",
    "roll_back",
]
