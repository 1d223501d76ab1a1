"""The live Vertex endpoint a model is deployed to: found by its display name or created once.

Without this every run created a new endpoint (GCPC's ``EndpointCreateOp``), and scheduled
retraining left one endpoint per run behind.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
