"""Vertex-shaped names, ids and times for the resources the local stand-ins create."""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

PROJECT = "local"
LOCATION = "local"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
MODELS_PREFIX = f"{PARENT}/models/"
ENDPOINTS_PREFIX = f"{PARENT}/endpoints/"
JOBS_PREFIX = f"{PARENT}/batchPredictionJobs/"


def new_resource_id() -> str:
    """A random 19-digit id, shaped like Vertex's model, endpoint and deployed-model ids."""
    return str(secrets.randbelow(9 * 10**18) + 10**18)


def rfc3339(moment: datetime) -> str:
    """A UTC time as Vertex writes ``createTime``: ``2026-01-31T12:00:00.123456Z``."""
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def now_rfc3339() -> str:
    """Now, as Vertex writes ``createTime``."""
    return rfc3339(datetime.now(timezone.utc))
