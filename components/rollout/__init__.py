"""Vertex endpoints in production: the endpoint a model goes to, and what it stops serving.

``endpoints`` finds or creates the endpoint by display name and undeploys the versions that no
longer serve once a new one takes all the traffic.
"""

from components.rollout.endpoints import (
    Cleanup,
    endpoint_uri,
    get_or_create_endpoint,
    undeploy_previous,
)

__all__ = ["Cleanup", "endpoint_uri", "get_or_create_endpoint", "undeploy_previous"]
