"""Local endpoints: the stand-in for Vertex AI's EndpointCreateOp + ModelDeployOp.

``kfp.local`` cannot run GCPC's container components, so ``compile.py run-local`` deploys a
model version from the local registry here: its server runs detached, started the way Vertex
AI starts it (``serving.start_serving``). Deploy waits until the health route answers 200
(Vertex routes traffic from then on), or removes the server and fails with its last log
lines. Each endpoint is a record, ``<endpoints_dir>/<endpoint_id>.json``; its server carries
the label ``io.train-to-serve.endpoint=<endpoint_id>``. One model per endpoint (no traffic
split).

``deploy``, ``list_endpoints``, ``predict`` and ``undeploy`` are the plain functions,
``compile.py endpoints list|predict|undeploy`` the command line,
``components/local_model_deploy.py`` the KFP component. A kfp.local task runs in a
subprocess; the server outlives it. In process mode the record's ``engine`` is ``process``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components import vertex
from components.files import write_json_atomically
from components.runners import (
    RunnerError,
    RunnerNotFoundError,
    RunningServer,
    ServerRunner,
    detect_runner,
    send,
)
from components.stand_ins.errors import EndpointError, EndpointInputError
from components.stand_ins.registry import get_version
from components.stand_ins.resources import ENDPOINTS_PREFIX, new_resource_id, now_rfc3339
from components.stand_ins.serving import start_serving, stop_serving, wait_until_ready

ENDPOINT_LABEL = "io.train-to-serve.endpoint"
"""Server label holding the endpoint id (``podman ps --filter label=...`` finds it)."""


@dataclass(frozen=True)
class LocalEndpoint:
    """The record of one deployed endpoint (``<endpoints_dir>/<endpoint_id>.json``)."""

    endpoint_id: str
    display_name: str
    deployed_model_id: str
    model: str
    """The version-pinned model resource name, ``...models/<id>@<version>``."""
    model_display_name: str
    base_url: str
    """``http://127.0.0.1:<host port>``."""
    predict_route: str
    health_route: str
    container_id: str
    container_name: str
    image: str
    engine: str
    """What ``detect_runner`` takes to reach the server's runner: the engine's path, or
    ``process``."""
    create_time: str
    startup_seconds: float | None = None
    """From ``run`` until health first answered 200."""

    @property
    def resource_name(self) -> str:
        """``projects/local/locations/local/endpoints/<endpoint_id>``."""
        return ENDPOINTS_PREFIX + self.endpoint_id

    @property
    def url(self) -> str:
        """Where to POST ``{"instances": [...]}``."""
        return self.base_url + self.predict_route

    @property
    def model_version_id(self) -> str:
        """The deployed model version's id."""
        return self.model.rsplit("@", 1)[-1]

    def container(self) -> RunningServer:
        """A handle on the endpoint's server (it may have exited or been removed)."""
        try:
            engine = detect_runner(self.engine)
        except RunnerNotFoundError as exc:
            raise EndpointError(
                f"endpoint {self.endpoint_id} was deployed with {self.engine}, which no longer "
                f"works: {exc}"
            ) from exc
        return engine.attach(self.container_id, self.container_name, self.image)


def _record_path(endpoints_dir: str | Path, endpoint_id: str) -> Path:
    return Path(endpoints_dir) / f"{endpoint_id}.json"


def deploy(
    model_resource: str,
    registry_dir: str | Path,
    endpoints_dir: str | Path,
    *,
    display_name: str = "",
    host_port: int | None = None,
    timeout_s: float | None = None,
    engine: ServerRunner | None = None,
) -> LocalEndpoint:
    """Deploy a registered model version to a new local endpoint and wait until it is ready.

    Args:
        model_resource: ``projects/local/locations/local/models/<id>[@<version or alias>]``
            (without a suffix: the ``default`` version).
        registry_dir: the local registry holding it.
        endpoints_dir: where the endpoint's record is written (created when missing).
        display_name: the endpoint's display name (default: the model's).
        host_port: the 127.0.0.1 port to publish the server on (default: a free one).
        timeout_s: how long health may take to answer 200 (default: the spec's
            ``deploymentTimeout``, else 300 s).
        engine: the runner (default: ``runners.detect_runner()``).

    Raises:
        RegistryError: the model version does not exist.
        EndpointError: the container did not start or never became healthy; it has been
            removed, and the message holds its last log lines.
        RunnerNotFoundError: no podman or docker works.
    """
    version = get_version(registry_dir, model_resource)
    engine = engine or detect_runner()
    endpoint_id, deployed_model_id = new_resource_id(), new_resource_id()
    served = start_serving(
        version,
        engine,
        resource_id=endpoint_id,
        deployed_model_id=deployed_model_id,
        name=f"tts-endpoint-{endpoint_id}",
        labels={ENDPOINT_LABEL: endpoint_id},
        host_port=host_port,
    )
    container = served.server
    endpoint = LocalEndpoint(
        endpoint_id=endpoint_id,
        display_name=display_name or version.display_name,
        deployed_model_id=deployed_model_id,
        model=version.resource_name,
        model_display_name=version.display_name,
        base_url=container.url,
        predict_route=served.predict_route,
        health_route=served.health_route,
        container_id=container.id,
        container_name=container.name,
        image=container.image,
        engine=engine.reference,
        create_time=now_rfc3339(),
    )
    record = _record_path(endpoints_dir, endpoint_id)
    try:
        # Recorded before the wait, so that an interrupted deploy can still be undeployed.
        write_json_atomically(record, asdict(endpoint))
        startup = wait_until_ready(served, f"deploying {version.resource_name}", timeout_s)
        endpoint = LocalEndpoint(**{**asdict(endpoint), "startup_seconds": round(startup, 3)})
        write_json_atomically(record, asdict(endpoint))
    except BaseException:
        container.remove()
        record.unlink(missing_ok=True)
        raise
    return endpoint


def get_endpoint(endpoint_id: str, endpoints_dir: str | Path) -> LocalEndpoint:
    """The record of ``endpoint_id`` (an id or ``projects/local/locations/local/endpoints/ID``)."""
    endpoint_id = endpoint_id.strip().removeprefix(ENDPOINTS_PREFIX)
    path = _record_path(endpoints_dir, endpoint_id)
    if not endpoint_id.isdigit() or not path.is_file():
        known = [endpoint.endpoint_id for endpoint in list_endpoints(endpoints_dir)]
        raise EndpointInputError(
            f"no endpoint {endpoint_id!r} in {endpoints_dir} "
            + (f"(deployed there: {', '.join(known)})" if known else "(none deployed there)")
        )
    return _read_record(path)


def _read_record(path: Path) -> LocalEndpoint:
    try:
        return LocalEndpoint(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise EndpointError(f"endpoint record {path} is unreadable: {exc}") from exc


def list_endpoints(endpoints_dir: str | Path) -> list[LocalEndpoint]:
    """Every endpoint recorded in ``endpoints_dir``, oldest first."""
    records = sorted(Path(endpoints_dir).glob("[0-9]*.json"))
    return sorted(map(_read_record, records), key=lambda e: (e.create_time, e.endpoint_id))


def container_status(endpoint: LocalEndpoint) -> str:
    """``running``, ``exited (code N)`` or ``missing`` (removed other than by undeploy)."""
    try:
        state = endpoint.container().state()
    except RunnerError:
        return "missing"
    if state.running:
        return "running"
    return f"{state.status or 'exited'} (code {state.exit_code})"


def _not_answering(endpoint: LocalEndpoint, error: str) -> EndpointError:
    """Explain a predict request that got no HTTP answer, from the container's state."""
    status = container_status(endpoint)
    message = f"endpoint {endpoint.endpoint_id} did not answer at {endpoint.url}: {error}. "
    if status == "missing":
        message += f"Its container {endpoint.container_name} no longer exists."
    elif status == "running":
        message += f"Its container {endpoint.container_name} is running; see its logs."
    else:
        message += (
            f"Its container {endpoint.container_name} has stopped: {status}. Last log lines:\n"
            f"{endpoint.container().last_logs() or '(no output)'}\n"
        )
    return EndpointError(
        message + f"\nUndeploy it (compile.py endpoints undeploy {endpoint.endpoint_id}) and "
        "deploy again."
    )


def predict(
    endpoint_id: str,
    instances: Sequence[Any],
    parameters: Mapping[str, Any] | None = None,
    *,
    endpoints_dir: str | Path,
    timeout_s: float = vertex.PREDICT_TIMEOUT_S,
) -> dict[str, Any]:
    """POST ``{"instances": [...], "parameters": {...}}`` to the endpoint's predict route.

    Returns the server's answer with what Vertex adds to a ``PredictResponse``:
    ``deployedModelId``, ``model``, ``modelVersionId`` and ``modelDisplayName``.

    Raises:
        EndpointInputError: unknown endpoint.
        EndpointError: no answer (the message says whether the container stopped, with its
            last log lines), a non-200 answer, or one that is not a JSON object.
    """
    endpoint = get_endpoint(endpoint_id, endpoints_dir)
    body: dict[str, Any] = {"instances": list(instances)}
    if parameters is not None:
        body["parameters"] = dict(parameters)
    exchange = send(
        endpoint.base_url, "POST", endpoint.predict_route, timeout_s, json.dumps(body).encode()
    )
    if exchange.status is None:
        raise _not_answering(endpoint, exchange.error)
    if exchange.status != 200:
        raise EndpointError(f"endpoint {endpoint.endpoint_id} answered {exchange.response_text()}")
    try:
        answer = exchange.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise EndpointError(
            f"endpoint {endpoint.endpoint_id} answered 200 with a body that is not a JSON "
            f"object: {exchange.response_text()}"
        )
    return {
        **answer,
        "deployedModelId": endpoint.deployed_model_id,
        "model": endpoint.model.rsplit("@", 1)[0],
        "modelVersionId": endpoint.model_version_id,
        "modelDisplayName": endpoint.model_display_name,
    }


def undeploy(endpoint_id: str, *, endpoints_dir: str | Path) -> float | None:
    """Stop the endpoint's container (SIGTERM, SIGKILL after the grace period), remove it and
    its record. Returns the seconds the stop took, or None when it was not running.

    Raises:
        EndpointInputError: unknown endpoint.
        EndpointError: a container with the endpoint's label is still there afterwards (the
            record is kept then, to retry).
    """
    endpoint = get_endpoint(endpoint_id, endpoints_dir)
    container = endpoint.container()
    engine = container.runner
    seconds = None
    if container_status(endpoint) == "running":
        seconds = stop_serving(container)
    container.remove()
    left = labelled_containers(engine, endpoint.endpoint_id)
    if left:
        raise EndpointError(
            f"endpoint {endpoint.endpoint_id}: container(s) {', '.join(left)} are still there "
            f"after undeploy; remove them with `{engine.name} rm -f {' '.join(left)}`"
        )
    _record_path(endpoints_dir, endpoint.endpoint_id).unlink(missing_ok=True)
    return seconds


def labelled_containers(engine: ServerRunner, endpoint_id: str) -> list[str]:
    """Ids of the containers (running or not) that carry the endpoint's label."""
    return engine.labelled(f"{ENDPOINT_LABEL}={endpoint_id}")


def read_instances(path: str | Path) -> tuple[list[Any], dict[str, Any] | None]:
    """Read a predict request from a file: ``.jsonl`` (one instance per line), or ``.json``
    (a list of instances, or a request ``{"instances": [...], "parameters": {...}}``).

    Returns the instances and the parameters (None when the file has none).

    Raises:
        EndpointInputError: unreadable file, wrong suffix, malformed JSON (with the line),
            or no instances.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EndpointInputError(f"cannot read instances file {file}: {exc}") from exc
    parameters = None
    if file.suffix == ".jsonl":
        instances = list(_jsonl_values(file, text))
    elif file.suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EndpointInputError(f"{file} is not valid JSON: {exc}") from exc
        if isinstance(value, dict) and isinstance(value.get("instances"), list):
            instances, parameters = value["instances"], value.get("parameters")
        elif isinstance(value, list):
            instances = value
        else:
            raise EndpointInputError(
                f'{file} must hold a JSON list of instances or {{"instances": [...]}}'
            )
    else:
        raise EndpointInputError(f"{file}: instances files end in .json or .jsonl")
    if not instances:
        raise EndpointInputError(f"{file} holds no instances")
    return instances, parameters


def _jsonl_values(file: Path, text: str) -> Iterator[Any]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise EndpointInputError(f"{file} line {number} is not valid JSON: {exc}") from exc
