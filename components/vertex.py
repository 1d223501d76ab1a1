"""Vertex AI's custom-container contract as data: ports, routes, limits and what Vertex sets.

Everything here is Vertex AI's (or Kubernetes', which Vertex runs on), from the "Custom container
requirements for prediction" page and the ``ModelContainerSpec`` reference, except where a
docstring says "ours". The contract check, the local stand-ins and the pipelines read these
numbers from here; two of them are also the model server's defaults, and the server (which
ships alone in the image) holds those.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from serving_image.server import config as server_config

DEFAULT_PORT = server_config.DEFAULT_PORT
"""``containerSpec.ports`` default (8080); exposed to the container as ``AIP_HTTP_PORT``."""
GRPC_PORT_VARIABLE = server_config.GRPC_PORT_VARIABLE
"""Ours: the variable that turns our server's gRPC on, on ``containerSpec.grpcPorts[0]``
(Vertex sets no variable for it)."""
MAX_FORWARDED_BODY_BYTES = server_config.DEFAULT_MAX_BODY_BYTES
"""The largest request body Vertex forwards to a container online: 10 MB on dedicated public,
dedicated private (PSC) and private (PSA) endpoints (here 10 MiB, to take either reading)."""
SHARED_ENDPOINT_MAX_BODY_BYTES = 1_500_000
"""Shared public endpoints refuse request (and response) bodies over 1.5 MB themselves; a
request within this fits every endpoint type."""
LIVENESS_ATTEMPTS = 4
"""TCP liveness probe attempts before Kubernetes restarts the container."""
LIVENESS_INTERVAL_S = 10.0
"""Wait after each failed liveness attempt."""
HEALTH_TIMEOUT_S = 10.0
"""A health probe must answer 200 within this many seconds."""
HEALTH_PERIOD_S = 10.0
"""Vertex's default health check runs this often."""
HEALTH_FAILURES = 4
"""Consecutive failed health checks after which Vertex stops routing traffic to a replica."""
PREDICT_TIMEOUT_S = 60.0
"""Server-side inference timeout of shared public and private (PSA) endpoints; dedicated
endpoints allow up to 1 h (10 min by default)."""
GRACE_PERIOD_S = 30.0
"""Kubernetes' default termination grace period (Vertex does not document its own)."""
MACHINE_TYPE = "n1-standard-2"
"""``AIP_MACHINE_TYPE`` of a deployed model when nothing else is asked for (Vertex's default
``dedicatedResources`` machine)."""
RESERVED_PREFIX = "AIP_"
"""Vertex sets the variables with this prefix and overwrites any the image or spec sets."""
DEFAULT_ALIAS = "default"
"""The version alias Vertex resolves a model name without a version to: the serving one."""
UNMANAGED_CONTAINER_MODEL = "google.UnmanagedContainerModel"
"""Schema title of the artifact GCPC's ``ModelUploadOp`` and ``ModelBatchPredictOp`` take."""
CPU_UTILIZATION_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
"""The autoscaling metric of a custom model on CPU machines
(``DedicatedResources.autoscaling_metric_specs[].metric_name``)."""
DEFAULT_TARGET_UTILIZATION = 60
"""Vertex's default autoscaling target (percent), when a deployed model names none."""

STAND_IN_ENDPOINT_ID = "7300000000000000001"
STAND_IN_DEPLOYED_MODEL_ID = "7300000000000000002"
STAND_IN_PROJECT_NUMBER = "123456789012"
"""Ours: identifiers shaped like Vertex's (digits) for a server that is not deployed anywhere."""
MODEL_MOUNT = "/mnt/model"
"""Ours: where a local model directory is mounted read-only and named by ``AIP_STORAGE_URI``,
standing in for the read-only ``gs://`` copy of the artifacts Vertex names there."""

LARGE_MODEL_BYTES = 256 * 1024 * 1024
"""Ours: from this model size on, the container spec gets a ``startupProbe``."""
SLOW_STARTUP_S = 15.0
"""Ours: from this local startup time on, too (half of the liveness window)."""

CLOUD_BUILD_DOCKER = "gcr.io/cloud-builders/docker"
"""Cloud Build's builder image with the Docker CLI, which talks to the build's own daemon."""
CLOUD_BUILD_NETWORK = "cloudbuild"
"""The Docker network every Cloud Build step joins; a container a step starts on it is
reachable by name from the later steps."""
CLOUD_BUILD_WORKSPACE = "/workspace"
"""Where every Cloud Build step finds the build's source and what earlier steps wrote."""

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def default_health_route(endpoint_id: str, deployed_model_id: str) -> str:
    """``AIP_HEALTH_ROUTE`` when ``containerSpec.healthRoute`` is not set."""
    return f"/v1/endpoints/{endpoint_id}/deployedModels/{deployed_model_id}"


def default_predict_route(endpoint_id: str, deployed_model_id: str) -> str:
    """``AIP_PREDICT_ROUTE`` when ``containerSpec.predictRoute`` is not set."""
    return f"{default_health_route(endpoint_id, deployed_model_id)}:predict"


DEFAULT_HEALTH_ROUTE = default_health_route(STAND_IN_ENDPOINT_ID, STAND_IN_DEPLOYED_MODEL_ID)
"""Vertex's default health route, with the stand-in ids."""
DEFAULT_PREDICT_ROUTE = default_predict_route(STAND_IN_ENDPOINT_ID, STAND_IN_DEPLOYED_MODEL_ID)
"""Vertex's default predict route, with the stand-in ids."""


def vertex_environment(
    port: int,
    health_route: str,
    predict_route: str,
    storage_uri: str = "",
    machine_type: str = "n1-standard-4",
    *,
    endpoint_id: str = STAND_IN_ENDPOINT_ID,
    deployed_model_id: str = STAND_IN_DEPLOYED_MODEL_ID,
) -> dict[str, str]:
    """The ``AIP_*`` variables Vertex AI sets on a serving container; ``AIP_ACCELERATOR_TYPE``
    is left unset, as on a replica without a GPU."""
    return {
        "AIP_HTTP_PORT": str(port),
        "AIP_HEALTH_ROUTE": health_route,
        "AIP_PREDICT_ROUTE": predict_route,
        "AIP_STORAGE_URI": storage_uri,
        "AIP_MODE": "PREDICTION",
        "AIP_MODE_VERSION": "1.0.0",
        "AIP_FRAMEWORK": "CUSTOM_CONTAINER",
        "AIP_ENDPOINT_ID": endpoint_id,
        "AIP_DEPLOYED_MODEL_ID": deployed_model_id,
        "AIP_MODEL_NAME": endpoint_id,
        "AIP_VERSION_NAME": deployed_model_id,
        "AIP_PROJECT_NUMBER": STAND_IN_PROJECT_NUMBER,
        "AIP_MACHINE_TYPE": machine_type,
    }


def check_user_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` as strings; ``ValueError`` when it sets a reserved ``AIP_`` name."""
    reserved = sorted(name for name in env if name.startswith(RESERVED_PREFIX))
    if reserved:
        raise ValueError(
            f"env sets {reserved}: Vertex AI reserves the {RESERVED_PREFIX} prefix and "
            "overwrites such variables; use another name"
        )
    return {str(name): str(value) for name, value in env.items()}


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` from ``env`` as Kubernetes does for ``command``, ``args`` and ``env``:
    ``$$`` is a literal ``$`` and references to unknown variables stay as written."""
    return _VAR_REF.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def container_env(
    spec: Mapping[str, Any], aip: Mapping[str, str]
) -> tuple[dict[str, str], str, list[str]]:
    """How Vertex starts a ``containerSpec``: the environment (``AIP_*``, then ``spec.env`` in
    order, each entry able to reference the ones before it), the entrypoint (``""``: the
    image's own) and the arguments."""
    env = dict(aip)
    for entry in spec.get("env") or []:
        env[entry["name"]] = expand_references(entry.get("value", ""), env)
    command = [expand_references(part, env) for part in spec.get("command") or []]
    args = [expand_references(part, env) for part in spec.get("args") or []]
    if command:  # Kubernetes: command replaces ENTRYPOINT and the image's CMD is dropped
        return env, command[0], [*command[1:], *args]
    return env, "", args


def needs_startup_probe(
    model_bytes: int, startup_s: float | None, large_model_bytes: int = LARGE_MODEL_BYTES
) -> bool:
    """Whether a model this large, or a server this slow to become healthy, needs a
    ``startupProbe`` (``LARGE_MODEL_BYTES`` and ``SLOW_STARTUP_S`` are our thresholds)."""
    return model_bytes >= large_model_bytes or (startup_s or 0.0) >= SLOW_STARTUP_S


def grpc_health_check(grpc_port: int) -> dict[str, Any]:
    """A probe's ``grpc`` action: ``grpc.health.v1`` Check on the server as a whole (``""``)
    at ``grpc_port``."""
    return {"grpc": {"port": grpc_port, "service": ""}}


def startup_probe(
    health_route: str,
    port: int,
    startup_deadline_s: float,
    period_s: float = HEALTH_PERIOD_S,
    *,
    grpc_port: int | None = None,
) -> dict[str, Any]:
    """A ``startupProbe`` giving the server ``startup_deadline_s`` to answer health: GET on
    the health route with 200, or with ``grpc_port`` Check there with SERVING (Vertex sends
    its checks to ``grpcPorts[0]`` when there is one).

    Until it succeeds Vertex runs neither the liveness nor the health checks, so a model that
    downloads and loads for minutes is not restarted half-way.
    """
    check = (
        grpc_health_check(grpc_port)
        if grpc_port
        else {"httpGet": {"path": health_route, "port": port}}
    )
    return {
        **check,
        "periodSeconds": int(period_s),
        "timeoutSeconds": int(HEALTH_TIMEOUT_S),
        "failureThreshold": max(1, math.ceil(startup_deadline_s / period_s)),
    }


def grpc_health_probe(grpc_port: int) -> dict[str, Any]:
    """The ``healthProbe`` of a server with a gRPC port: Check there, on Vertex's schedule for
    its default health check (every 10 s, 10 s to answer, out of service after 4 failures
    in a row)."""
    return {
        **grpc_health_check(grpc_port),
        "periodSeconds": int(HEALTH_PERIOD_S),
        "timeoutSeconds": int(HEALTH_TIMEOUT_S),
        "failureThreshold": HEALTH_FAILURES,
    }


def unmanaged_container_model_metadata(
    image_uri: str,
    *,
    port: int,
    health_route: str,
    predict_route: str,
    env: Mapping[str, str] | None = None,
    probe: Mapping[str, Any] | None = None,
    grpc_port: int | None = None,
) -> dict[str, Any]:
    """The ``google.UnmanagedContainerModel`` metadata GCPC's ``ModelUploadOp`` copies into
    ``models.upload`` (``containerSpec``: ``ModelContainerSpec`` in REST camelCase).

    Routes are always explicit (the API reference and the requirements page disagree on the
    default health route) and ports are objects (``[{"containerPort": 8080}]``, not ints).
    ``probe`` is the ``startupProbe``; with ``grpc_port`` the spec declares ``grpcPorts``
    (gRPC calls, and Vertex's health and liveness checks, go there) and a ``healthProbe``
    that asks ``grpc.health.v1`` on it (``grpc_health_probe``).
    """
    spec: dict[str, Any] = {
        "imageUri": image_uri,
        "ports": [{"containerPort": port}],
        "predictRoute": predict_route,
        "healthRoute": health_route,
    }
    if env:
        spec["env"] = [{"name": name, "value": value} for name, value in env.items()]
    if probe:
        spec["startupProbe"] = dict(probe)
    if grpc_port:
        spec["grpcPorts"] = [{"containerPort": grpc_port}]
        spec["healthProbe"] = grpc_health_probe(grpc_port)
    return {"containerSpec": spec, "predictSchemata": {}}


@dataclass(frozen=True)
class DeployedModel:
    """One model deployed on an endpoint (Vertex's ``DeployedModel``, the fields a rollout
    reads)."""

    id: str
    model: str
    """The model's resource name, without a version: ``projects/P/locations/L/models/ID``."""
    version_id: str
    create_time: str = ""
    """RFC 3339, fixed width; orders two deployments of the same version."""

    @property
    def version_name(self) -> str:
        """``projects/P/locations/L/models/ID@VERSION``."""
        return f"{self.model}@{self.version_id}"
