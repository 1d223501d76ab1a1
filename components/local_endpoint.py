"""Local endpoints: the stand-in for Vertex AI's EndpointCreateOp + ModelDeployOp.

``kfp.local`` cannot run GCPC's container components, so ``compile.py run-local`` deploys a
model version from the local registry (``components/local_registry.py``) here: its serving
image runs as a long-running container started the way Vertex AI starts it
(``shared/notes/vertex-contract.md`` §1.1-1.3, §3.3-3.4):

* the image's own entrypoint, or ``containerSpec.command``/``args``, with no init process;
* the ``AIP_*`` variables Vertex sets (``AIP_HTTP_PORT`` from ``ports[0]``, the routes,
  ``AIP_MODE=PREDICTION``, ``AIP_FRAMEWORK=CUSTOM_CONTAINER``, the endpoint and deployed-model
  ids, ...) and then ``containerSpec.env``, whose ``$(VAR)`` references are expanded as
  Kubernetes does;
* the version's model directory mounted read-only at ``/mnt/model`` and named by
  ``AIP_STORAGE_URI`` (on Vertex: a read-only ``gs://`` copy of the artifactUri);
* detached, with restart policy ``on-failure:3`` (Vertex restarts a container whose process
  exits), ``ports[0]`` published on a ``127.0.0.1`` host port.

Deploy waits until the health route answers 200 (Vertex routes traffic from then on), or
removes the container and fails with its last log lines. Each endpoint is a record,
``<endpoints_dir>/<endpoint_id>.json``; its container carries the label
``io.train-to-serve.endpoint=<endpoint_id>``. One model per endpoint (no traffic split).

``start_serving_container`` and ``wait_until_ready`` start a version's container this way for
an endpoint or for a batch prediction job (``components/local_batch_predict.py``).
``deploy``, ``list_endpoints``, ``predict`` and ``undeploy`` are the plain functions,
``compile.py endpoints list|predict|undeploy`` the command line, ``local_model_deploy`` the KFP
component. A kfp.local task runs in a subprocess; the container outlives it.

In process mode (``TRAIN_TO_SERVE_CONTAINER_ENGINE=process``, ``components/server_process.py``)
the same functions run the server as a detached local process instead, with the same
environment and the model directory named by ``AIP_STORAGE_URI``; the record's ``engine`` is
then ``process``. That checks less than a container does (no image, no restart policy).
"""

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kfp.dsl import Artifact, Input, Output

# Imported from its module, not from kfp.dsl: inside a running component kfp.dsl stops
# exporting ``component``, yet the component body imports this module (see components/train.py).
from kfp.dsl.component_decorator import component

from components import container_engine as ce
from components.images import COMPONENTS_IMAGE
from components.local_registry import (
    LOCATION,
    PROJECT,
    RegisteredVersion,
    get_version,
    new_resource_id,
    now_rfc3339,
    write_json_atomically,
)

ENDPOINTS_PREFIX = f"projects/{PROJECT}/locations/{LOCATION}/endpoints/"
ENDPOINT_LABEL = "io.train-to-serve.endpoint"
"""Container label holding the endpoint id (``podman ps --filter label=...`` finds it)."""
RESTART_POLICY = "on-failure:3"
MACHINE_TYPE = "n1-standard-2"
"""``AIP_MACHINE_TYPE`` (Vertex's default for a DeployedModel; nothing is reserved locally)."""
DEFAULT_DEPLOY_TIMEOUT_S = 300.0
"""How long the health route may take to answer 200 when the spec sets no deploymentTimeout."""
GRACE_PERIOD_S = 30.0
"""SIGTERM-to-SIGKILL time on undeploy (Kubernetes' default termination grace period)."""
PREDICT_TIMEOUT_S = 60.0
"""Vertex's server-side limit on shared public endpoints."""
LOG_LINES = 40
PORT_ATTEMPTS = 3

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")


class EndpointError(RuntimeError):
    """A deploy, predict or undeploy failed; the message says why and what to do."""


class EndpointInputError(EndpointError):
    """The caller named an unknown endpoint or gave a malformed instances file."""


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
    """Path of the container engine that started the container (``process``: process mode)."""
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

    def container(self) -> ce.Container:
        """A handle on the endpoint's container (it may have exited or been removed)."""
        try:
            engine = ce.detect_engine(self.engine)
        except ce.EngineNotFoundError as exc:
            raise EndpointError(
                f"endpoint {self.endpoint_id} was deployed with {self.engine}, which no longer "
                f"works: {exc}"
            ) from exc
        return engine.attach(self.container_id, self.container_name, self.image)


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR)`` from ``env`` as Kubernetes does for ``command``, ``args`` and ``env``:
    ``$$`` is a literal ``$`` and references to unknown variables stay as written."""
    return _VAR_REF.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def _deploy_timeout(spec: Mapping[str, Any]) -> float:
    """``deploymentTimeout`` (``"1800s"``) when the spec sets one, else the local default."""
    match = _DURATION.fullmatch(str(spec.get("deploymentTimeout", "")))
    return float(match[1]) if match else DEFAULT_DEPLOY_TIMEOUT_S


def _record_path(endpoints_dir: str | Path, endpoint_id: str) -> Path:
    return Path(endpoints_dir) / f"{endpoint_id}.json"


def _container_env(
    spec: Mapping[str, Any], aip: Mapping[str, str]
) -> tuple[dict[str, str], list[str] | None, list[str]]:
    """The container's environment (``AIP_*``, then ``spec.env`` in order, each entry able to
    reference the ones before it), and the entrypoint and arguments to run (``None``: the
    image's own entrypoint)."""
    env = dict(aip)
    for entry in spec.get("env") or []:
        env[entry["name"]] = expand_references(entry.get("value", ""), env)
    command = [expand_references(part, env) for part in spec.get("command") or []]
    args = [expand_references(part, env) for part in spec.get("args") or []]
    if command:  # Kubernetes: command replaces ENTRYPOINT and the image's CMD is dropped
        return env, command[:1], [*command[1:], *args]
    return env, None, args


def _last_logs(container: ce.Container) -> str:
    # Not logs(tail=N): podman 4.3 prints nothing when the log has fewer than N lines.
    lines = container.logs().strip().splitlines()
    return "\n".join(lines[-LOG_LINES:]) or "(no output)"


def _start(
    engine: ce.Engine,
    image: str,
    *,
    port: int,
    host_port: int | None,
    env: Mapping[str, str],
    entrypoint: list[str] | None,
    args: list[str],
    model_dir: Path,
    name: str,
    label: str,
) -> ce.Container:
    """Run the container detached with ``port`` on ``host_port`` (a free one when None)."""
    from components.contract_check import MODEL_MOUNT, free_local_port

    for attempt in range(PORT_ATTEMPTS):
        chosen = host_port or free_local_port()
        extra = ["--restart", RESTART_POLICY, "--label", label]
        extra += ["-p", f"127.0.0.1:{chosen}:{port}"]
        if entrypoint:
            extra += ["--entrypoint", entrypoint[0]]
        try:
            container = engine.run(
                image,
                env=env,
                ports=[],
                volumes=[(model_dir, MODEL_MOUNT, "ro")],
                init=False,  # Vertex runs the image without one
                name=name,
                command=args or None,
                extra_args=extra,
                stop_timeout=GRACE_PERIOD_S,
            )
        except ce.ContainerRunError as exc:
            retry = host_port is None and attempt + 1 < PORT_ATTEMPTS
            if retry and "address already in use" in str(exc):
                continue  # another process took the free port meanwhile
            raise EndpointError(f"the serving container did not start: {exc}") from exc
        container.ports[port] = chosen
        return container
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ServingContainer:
    """A model version's serving container, started the way Vertex AI starts one."""

    container: ce.Container
    health_route: str
    predict_route: str
    deployment_timeout_s: float
    """The spec's ``deploymentTimeout``, else ``DEFAULT_DEPLOY_TIMEOUT_S``."""

    @property
    def url(self) -> str:
        """Where to POST ``{"instances": [...]}``."""
        return self.container.url + self.predict_route


def start_serving_container(
    version: RegisteredVersion,
    engine: ce.Engine,
    *,
    resource_id: str,
    deployed_model_id: str,
    name: str,
    label: str,
    host_port: int | None = None,
) -> ServingContainer:
    """Start ``version``'s serving image detached, as Vertex AI runs it for an endpoint or a
    batch prediction job, without waiting for it (see ``wait_until_ready``).

    ``resource_id`` (the endpoint's or the job's id) and ``deployed_model_id`` fill the
    default routes and the ``AIP_*`` ids; ``name`` and ``label`` (``key=value``) mark the
    container so that it can be found and removed.

    Raises:
        EndpointError: the container did not start.
    """
    from components.contract_check import MODEL_MOUNT, vertex_environment

    spec = version.container_spec
    port = int(spec["ports"][0]["containerPort"])
    default_route = f"/v1/endpoints/{resource_id}/deployedModels/{deployed_model_id}"
    health_route = spec.get("healthRoute") or default_route
    predict_route = spec.get("predictRoute") or f"{default_route}:predict"
    aip = vertex_environment(port, health_route, predict_route, MODEL_MOUNT, MACHINE_TYPE)
    aip.update(
        AIP_ENDPOINT_ID=resource_id,
        AIP_MODEL_NAME=resource_id,
        AIP_DEPLOYED_MODEL_ID=deployed_model_id,
        AIP_VERSION_NAME=deployed_model_id,
    )
    env, entrypoint, args = _container_env(spec, aip)
    container = _start(
        engine,
        spec["imageUri"],
        port=port,
        host_port=host_port,
        env=env,
        entrypoint=entrypoint,
        args=args,
        model_dir=version.model_dir,
        name=name,
        label=label,
    )
    return ServingContainer(container, health_route, predict_route, _deploy_timeout(spec))


def wait_until_ready(
    served: ServingContainer, action: str, timeout_s: float | None = None
) -> float:
    """Wait until the health route answers 200 (``timeout_s`` defaults to the spec's
    ``deploymentTimeout``); return the seconds since the container was started.

    Raises:
        EndpointError: ``"<action> failed: the model server never became ready"``, with the
            container's last log lines. The container is left for the caller to remove.
    """
    timeout = served.deployment_timeout_s if timeout_s is None else timeout_s
    try:
        return served.container.wait_for_http(served.health_route, timeout=timeout)
    except ce.ContainerRunError as exc:
        reason = str(exc).split(";", 1)[0].split("\n", 1)[0]
        raise EndpointError(
            f"{action} failed: the model server never became ready ({reason}). Vertex AI "
            f"would fail the same way. Last log lines of {served.container.name}:\n"
            f"{_last_logs(served.container)}"
        ) from exc


def deploy(
    model_resource: str,
    registry_dir: str | Path,
    endpoints_dir: str | Path,
    *,
    display_name: str = "",
    host_port: int | None = None,
    timeout_s: float | None = None,
    engine: ce.Engine | None = None,
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
        engine: the container engine (default: ``detect_engine()``).

    Raises:
        RegistryError: the model version does not exist.
        EndpointError: the container did not start or never became healthy; it has been
            removed, and the message holds its last log lines.
        EngineNotFoundError: no podman or docker works.
    """
    version = get_version(registry_dir, model_resource)
    engine = engine or ce.detect_engine()
    endpoint_id, deployed_model_id = new_resource_id(), new_resource_id()
    served = start_serving_container(
        version,
        engine,
        resource_id=endpoint_id,
        deployed_model_id=deployed_model_id,
        name=f"tts-endpoint-{endpoint_id}",
        label=f"{ENDPOINT_LABEL}={endpoint_id}",
        host_port=host_port,
    )
    container = served.container
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
        engine=engine.path,
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
    except ce.ContainerEngineError:
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
            f"{_last_logs(endpoint.container())}\n"
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
    timeout_s: float = PREDICT_TIMEOUT_S,
) -> dict[str, Any]:
    """POST ``{"instances": [...], "parameters": {...}}`` to the endpoint's predict route.

    Returns the server's answer with what Vertex adds to a ``PredictResponse``:
    ``deployedModelId``, ``model``, ``modelVersionId`` and ``modelDisplayName``.

    Raises:
        EndpointInputError: unknown endpoint.
        EndpointError: no answer (the message says whether the container stopped, with its
            last log lines), a non-200 answer, or one that is not a JSON object.
    """
    from components.contract_check import send

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
    engine = container.engine
    seconds = None
    if container_status(endpoint) == "running":
        seconds = stop_container(container)
    container.remove()
    left = labelled_containers(engine, endpoint.endpoint_id)
    if left:
        raise EndpointError(
            f"endpoint {endpoint.endpoint_id}: container(s) {', '.join(left)} are still there "
            f"after undeploy; remove them with `{engine.name} rm -f {' '.join(left)}`"
        )
    _record_path(endpoints_dir, endpoint.endpoint_id).unlink(missing_ok=True)
    return seconds


def stop_container(container: ce.Container) -> float:
    """Stop a serving container for good: SIGTERM, SIGKILL after ``GRACE_PERIOD_S``, and no
    restart. Returns the seconds the stop took."""
    return container.stop_for_good(GRACE_PERIOD_S)


def labelled_containers(engine: ce.Engine, endpoint_id: str) -> list[str]:
    """Ids of the containers (running or not) that carry the endpoint's label."""
    return engine.labelled(f"{ENDPOINT_LABEL}={endpoint_id}")


# --- instances files -------------------------------------------------------------------------


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


# --- the component ---------------------------------------------------------------------------


@component(base_image=COMPONENTS_IMAGE)
def local_model_deploy(
    model: Input[Artifact],
    registry_dir: str,
    endpoints_dir: str,
    endpoint: Output[Artifact],
    endpoint_display_name: str = "",
):
    """Deploys a model version from the local registry to a new local endpoint.

    The local stand-in for GCPC's ``EndpointCreateOp`` + ``ModelDeployOp`` (which ``kfp.local``
    cannot run): it starts the version's serving image as a detached, long-running container
    the way Vertex AI does (``AIP_*`` variables, the model mounted read-only and named by
    ``AIP_STORAGE_URI``, ``ports[0]`` published on a 127.0.0.1 port), waits until the health
    route answers 200 and records the endpoint (see ``components/local_endpoint.py``). The
    container outlives the task: call it and stop it with
    ``compile.py endpoints list|predict|undeploy``.

    Args:
        model: The ``local_model_upload`` output (its ``metadata.resourceName``,
            ``projects/local/locations/local/models/ID@VERSION``, is deployed).
        registry_dir: Directory of the local registry holding the model.
        endpoints_dir: Directory of the endpoint records.
        endpoint_display_name: The display name of the endpoint (default: the model's).

    Returns:
        endpoint: The endpoint. ``metadata.resourceName`` is
            ``projects/local/locations/local/endpoints/ID``, ``metadata.url`` the predict URL;
            ``uri`` is the endpoint's record.
    """
    from pathlib import Path

    from components.local_endpoint import EndpointError, deploy

    resource = model.metadata.get("resourceName")
    if not resource:
        raise EndpointError(
            f"model ({model.uri}) has no metadata.resourceName; pass local_model_upload's output"
        )
    deployed = deploy(resource, registry_dir, endpoints_dir, display_name=endpoint_display_name)
    endpoint.uri = str((Path(endpoints_dir) / f"{deployed.endpoint_id}.json").resolve())
    endpoint.metadata.update(
        {
            "resourceName": deployed.resource_name,
            "url": deployed.url,
            "deployedModelId": deployed.deployed_model_id,
            "model": deployed.model,
            "containerName": deployed.container_name,
        }
    )
    print(
        f"deployed {deployed.model} to {deployed.resource_name}: POST {deployed.url} "
        f"(ready after {deployed.startup_seconds} s; stop it with "
        f"`python compile.py endpoints undeploy {deployed.endpoint_id} --endpoints-dir "
        f"{endpoints_dir}`)"
    )
