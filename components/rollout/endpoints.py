"""The live Vertex endpoint a model is deployed to: found by its display name or created once,
and, after a new version serves all traffic, the versions it no longer serves undeployed.

Without this every run created a new endpoint, and the versions an endpoint stopped serving
stayed deployed at 0% traffic, each on its own replicas, billing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


def endpoint_uri(resource_name: str, location: str) -> str:
    """The ``VertexEndpoint`` artifact URI GCPC's ops read (``metadata.resourceName`` too)."""
    return f"https://{location}-aiplatform.googleapis.com/v1/{resource_name}"


def get_or_create_endpoint(
    display_name: str,
    *,
    project: str,
    location: str,
    labels: Mapping[str, str] | None = None,
    credentials: Any = None,
) -> tuple[str, bool]:
    """The endpoint named ``display_name`` in ``location`` (the oldest, when several are),
    created when there is none; its resource name and whether it was created now."""
    from google.cloud import aiplatform

    found = aiplatform.Endpoint.list(
        filter=f'display_name="{display_name}"',
        order_by="create_time",
        project=project,
        location=location,
        credentials=credentials,
    )
    if found:
        if len(found) > 1:
            names = ", ".join(e.resource_name for e in found)
            logger.warning(
                "%d endpoints are named %r (%s): using the oldest", len(found), display_name, names
            )
        logger.info("deploying to the existing endpoint %s", found[0].resource_name)
        return found[0].resource_name, False
    created = aiplatform.Endpoint.create(
        display_name=display_name,
        labels=dict(labels or {}),
        project=project,
        location=location,
        credentials=credentials,
    )
    logger.info("created the endpoint %s", created.resource_name)
    return created.resource_name, True


def _model_id(name: str) -> tuple[str, str]:
    """(model ID, version ID or "") of ``projects/P/locations/L/models/ID[@VERSION]``."""
    model, _, version = name.rsplit("/", 1)[-1].partition("@")
    return model, version


@dataclass
class Cleanup:
    """What ``undeploy_previous`` did."""

    serving: str
    """The deployed model ID of the new version."""
    undeployed: list[str]
    kept: list[str]
    reason: str


def undeploy_previous(
    endpoint_name: str, model_name: str, *, keep: bool = False, credentials: Any = None
) -> Cleanup:
    """Undeploy every other deployed model of ``endpoint_name`` once ``model_name`` (the
    version just deployed, ``...models/ID@VERSION``) serves 100% of the traffic; keep them all
    when ``keep``, or when the new version does not serve everything (a canary).

    Raises:
        RuntimeError: ``model_name`` is not deployed on the endpoint.
    """
    from google.cloud import aiplatform

    endpoint = aiplatform.Endpoint(endpoint_name, credentials=credentials)
    deployed = list(endpoint.gca_resource.deployed_models)
    split = dict(endpoint.traffic_split)
    model, version = _model_id(model_name)
    new = [
        d
        for d in deployed
        if _model_id(d.model)[0] == model and (not version or d.model_version_id == version)
    ]
    if not new:
        raise RuntimeError(
            f"{model_name} is not deployed on {endpoint_name}: nothing was undeployed"
        )
    serving = max(new, key=lambda d: d.create_time).id
    others = [d.id for d in deployed if d.id != serving]
    if keep:
        return Cleanup(serving, [], others, "keep_previous_deployments is set")
    if split.get(serving, 0) != 100:
        reason = f"the new version serves {split.get(serving, 0)}% of the traffic, not 100%"
        return Cleanup(serving, [], others, reason)
    for deployed_id in others:
        endpoint.undeploy(deployed_id)
        logger.info("undeployed %s from %s (no traffic)", deployed_id, endpoint_name)
    return Cleanup(serving, others, [], "the new version serves 100% of the traffic")
