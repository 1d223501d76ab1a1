"""A registered model version's server, started the way Vertex AI starts one for an endpoint or
a batch prediction job.

* the image's own entrypoint, or ``containerSpec.command``/``args``, with no init process;
* the ``AIP_*`` variables Vertex sets (``AIP_HTTP_PORT`` from ``ports[0]``, the routes,
  ``AIP_MODE=PREDICTION``, ``AIP_FRAMEWORK=CUSTOM_CONTAINER``, the endpoint and deployed-model
  ids, ...) and then ``containerSpec.env``, whose ``$(VAR)`` references are expanded as
  Kubernetes does;
* the version's model directory mounted read-only and named by ``AIP_STORAGE_URI``;
* detached, with restart policy ``on-failure:3`` (Vertex restarts a container whose process
  exits), ``ports[0]`` published on a ``127.0.0.1`` host port, and ``grpcPorts[0]`` (the one
  Vertex uses) on another when the spec has ``grpcPorts``.

In process mode (``TRAIN_TO_SERVE_CONTAINER_ENGINE=process``) the runner is process mode's:
the same environment, the server code as a detached local process, no restart policy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components import vertex
from components.runners import (
    Mount,
    NotServingError,
    RunningServer,
    ServerRunner,
    ServerSpec,
    StartError,
    start_server,
)
from components.stand_ins.errors import EndpointError
from components.stand_ins.registry import RegisteredVersion

RESTART_POLICY = "on-failure:3"
DEFAULT_DEPLOY_TIMEOUT_S = 300.0
"""How long the health route may take to answer 200 when the spec sets no deploymentTimeout."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")


def grpc_port(spec: Mapping[str, Any]) -> int | None:
    """``grpcPorts[0].containerPort`` (Vertex uses the first), or None when the spec has no
    ``grpcPorts``."""
    ports = spec.get("grpcPorts") or []
    return int(ports[0]["containerPort"]) if ports else None


def deployment_timeout(spec: Mapping[str, Any]) -> float:
    """``deploymentTimeout`` (``"1800s"``) when the spec sets one, else the local default."""
    match = _DURATION.fullmatch(str(spec.get("deploymentTimeout", "")))
    return float(match[1]) if match else DEFAULT_DEPLOY_TIMEOUT_S


@dataclass(frozen=True)
class ServedVersion:
    """A model version's running server and the routes Vertex would use on it."""

    server: RunningServer
    health_route: str
    predict_route: str
    deployment_timeout_s: float
    """The spec's ``deploymentTimeout``, else ``DEFAULT_DEPLOY_TIMEOUT_S``."""

    @property
    def url(self) -> str:
        """Where to POST ``{"instances": [...]}``."""
        return self.server.url + self.predict_route

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:<host port>`` of its gRPC port; ``""`` when the spec has none."""
        return self.server.grpc_target if self.server.grpc_binding else ""


def start_serving(
    version: RegisteredVersion,
    runner: ServerRunner,
    *,
    resource_id: str,
    deployed_model_id: str,
    name: str,
    labels: Mapping[str, str],
    host_port: int | None = None,
) -> ServedVersion:
    """Start ``version``'s server detached, without waiting for it (see ``wait_until_ready``).

    ``resource_id`` (the endpoint's or the job's id) and ``deployed_model_id`` fill the
    default routes and the ``AIP_*`` ids; ``name`` and ``labels`` mark the server so that it
    can be found and removed.

    Raises:
        EndpointError: the server did not start.
    """
    spec = version.container_spec
    port = int(spec["ports"][0]["containerPort"])
    health_route = spec.get("healthRoute") or vertex.default_health_route(
        resource_id, deployed_model_id
    )
    predict_route = spec.get("predictRoute") or vertex.default_predict_route(
        resource_id, deployed_model_id
    )
    aip = vertex.vertex_environment(
        port,
        health_route,
        predict_route,
        vertex.MODEL_MOUNT,
        vertex.MACHINE_TYPE,
        endpoint_id=resource_id,
        deployed_model_id=deployed_model_id,
    )
    env, entrypoint, args = vertex.container_env(spec, aip)
    server_spec = ServerSpec(
        spec["imageUri"],
        port=port,
        grpc_port=grpc_port(spec),
        env=env,
        mounts=(Mount(version.model_dir, vertex.MODEL_MOUNT),),
        entrypoint=entrypoint,
        args=tuple(args),
        name=name,
        labels=labels,
        restart=RESTART_POLICY,
        stop_timeout_s=vertex.GRACE_PERIOD_S,
    )
    try:
        server = start_server(runner, server_spec, host_port)
    except StartError as exc:
        raise EndpointError(f"the serving container did not start: {exc}") from exc
    return ServedVersion(server, health_route, predict_route, deployment_timeout(spec))


def wait_until_ready(served: ServedVersion, action: str, timeout_s: float | None = None) -> float:
    """Wait until the health route answers 200 (``timeout_s`` defaults to the spec's
    ``deploymentTimeout``); return the seconds since the server was started.

    Raises:
        EndpointError: ``"<action> failed: the model server never became ready"``, with the
            server's last log lines. The server is left for the caller to remove.
    """
    timeout = served.deployment_timeout_s if timeout_s is None else timeout_s
    try:
        return served.server.wait_until_serving(served.health_route, timeout=timeout)
    except NotServingError as exc:
        reason = str(exc).split(";", 1)[0].split("\n", 1)[0]
        raise EndpointError(
            f"{action} failed: the model server never became ready ({reason}). Vertex AI "
            f"would fail the same way. Last log lines of {served.server.name}:\n"
            f"{served.server.last_logs() or '(no output)'}"
        ) from exc


def stop_serving(server: RunningServer) -> float:
    """Stop a serving server for good: SIGTERM, SIGKILL after the grace period, and no
    restart. Returns the seconds the stop took."""
    return server.stop_for_good(vertex.GRACE_PERIOD_S)
