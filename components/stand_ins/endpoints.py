"""Local endpoints: the stand-in for a Vertex AI endpoint with its deployed models.

``kfp.local`` cannot run GCPC's container components, so ``compile.py run-local`` deploys
model versions from the local registry here. As on Vertex, one endpoint holds several deployed
models and a traffic split between them:

* each deployed model's server runs detached, started the way Vertex AI starts it
  (``serving.start_serving``), with the labels ``io.train-to-serve.endpoint=<endpoint_id>``
  and ``io.train-to-serve.deployed-model=<deployed_model_id>``;
* a small router process (``stand_ins.router``) listens on the endpoint's own 127.0.0.1 port
  with Vertex's routes (``:predict``, ``:rawPredict``, and rawPredict to one deployed model)
  and on a second one for gRPC (``stand_ins.grpc_router``: every call passed on to a deployed
  model whose containerSpec has ``grpcPorts``), and picks a deployed model by the split; it
  re-reads the record when it changes, so a new split applies from the next request on;
* the endpoint is a record, ``<endpoints_dir>/<endpoint_id>.json`` (``endpoint_records``:
  the record, the routes and the headers the router shares), written atomically under the
  directory's lock (``.lock``: pipeline tasks and the command line may change it at once); the
  router logs to ``<endpoint_id>.router.log`` beside it.

A deploy lists the new model at 0% while its server starts (an interrupted deploy can still be
undeployed) and gives it its share (``traffic.with_new_model``; 100 on an endpoint with no
other model, as Vertex does) once health answers 200. Undeploying one model gives its share back
to the others (``traffic.without_model``) before its server is stopped, so no request fails.

The plain functions are below; ``compile.py endpoints list|predict|traffic|rollback|undeploy``
is the command line, ``components/local_model_deploy.py`` the KFP component, and
``LocalEndpointOps`` the endpoint a rollout drives (``rollout.steps.Endpoint``, structurally).
A kfp.local task runs in a subprocess; the router and the servers outlive it. In process mode a
deployed model's ``engine`` is ``process``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components import traffic, vertex
from components.runners import (
    PROCESS,
    Exchange,
    RunnerError,
    ServerRunner,
    detect_runner,
    free_local_port,
    send,
    tail_lines,
)
from components.stand_ins.endpoint_records import (
    HEADER_DEPLOYED_MODEL_ID,
    ROUTER_ERROR_HEADER,
    UNREACHABLE,
    LocalDeployedModel,
    LocalEndpoint,
    directory_of,
    get_endpoint,
    list_endpoints,
    locked,
    predict_path,
    raw_predict_path,
    read_record,
    record_path,
    router_log_path,
    write_record,
)
from components.stand_ins.errors import EndpointError, EndpointInputError
from components.stand_ins.registry import get_version
from components.stand_ins.resources import new_resource_id, now_rfc3339
from components.stand_ins.serving import start_serving, stop_serving, wait_until_ready

ENDPOINT_LABEL = "io.train-to-serve.endpoint"
"""Server label holding the endpoint id (``podman ps --filter label=...`` finds them)."""
DEPLOYED_MODEL_LABEL = "io.train-to-serve.deployed-model"
"""Server label holding the deployed model id."""
ROUTER_MODULE = "components.stand_ins.router"
"""Run as ``python -m`` for each endpoint (see ``stand_ins.router``)."""
ROUTER_START_TIMEOUT_S = 30.0
"""How long a new router may take to answer ``GET /healthz``."""
ROUTER_STOP_TIMEOUT_S = 10.0
"""SIGTERM lets the router finish the requests it forwards; SIGKILL after this."""
UNDEPLOY_DRAIN_S = 0.5
"""Wait between taking a model's traffic away and stopping its server: requests the router
picked it for just before still reach it."""
CLIENT_MARGIN_S = 5.0
"""``predict`` waits this much longer than the router waits for a model, so that the router's
own timeout answer (504) arrives rather than a client timeout."""
PORT_ATTEMPTS = 3


@dataclass(frozen=True)
class Deployment:
    """What ``deploy`` did: the endpoint as it is now, the new deployed model, and the split
    before it (what a rollback restores)."""

    endpoint: LocalEndpoint
    deployed_model: LocalDeployedModel
    traffic_before: dict[str, int]
    endpoint_created: bool = False
    """Whether this deploy created the endpoint."""


_REPO_ROOT = Path(__file__).resolve().parents[2]
_ROUTERS: dict[int, subprocess.Popen[bytes]] = {}
"""Routers this process started: reaped when stopped (no zombie is left behind)."""


# --- the router process ----------------------------------------------------------------------


def _cmdline(pid: int) -> list[str] | None:
    """The process's arguments, or None when ``/proc`` cannot tell (not Linux)."""
    if not Path("/proc/self/cmdline").exists():
        return None
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _healthz_pid(base_url: str, timeout_s: float = 2.0) -> int | None:
    """The pid the router at ``base_url`` reports on ``GET /healthz``, or None."""
    exchange = send(base_url, "GET", "/healthz", timeout_s)
    try:
        return int(exchange.json()["pid"]) if exchange.ok else None
    except (ValueError, TypeError, KeyError):
        return None


def _router_process_alive(endpoint: LocalEndpoint, endpoints_dir: str | Path) -> bool:
    """Whether the endpoint's router process runs (the pid is a router for this record, not a
    process that got the same pid since)."""
    pid = endpoint.router_pid
    if pid <= 0:
        return False
    popen = _ROUTERS.get(pid)
    if popen is not None and popen.poll() is not None:
        _ROUTERS.pop(pid, None)
        return False
    arguments = _cmdline(pid)
    if arguments is not None:  # a zombie's is empty
        record = str(record_path(endpoints_dir, endpoint.endpoint_id))
        return ROUTER_MODULE in arguments and record in arguments
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return _healthz_pid(endpoint.base_url) == pid


def router_status(endpoint: LocalEndpoint, endpoints_dir: str | Path) -> str:
    """``running`` (its ``/healthz`` answers), ``not answering`` (the process is there) or
    ``stopped``."""
    if not _router_process_alive(endpoint, endpoints_dir):
        return "stopped"
    return "running" if _healthz_pid(endpoint.base_url) == endpoint.router_pid else "not answering"


def _router_log_tail(endpoints_dir: str | Path, endpoint_id: str) -> str:
    try:
        text = router_log_path(endpoints_dir, endpoint_id).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return tail_lines(text, 15) or "(no output)"


def _start_router(endpoint: LocalEndpoint, endpoints_dir: str | Path) -> LocalEndpoint:
    """Start the endpoint's router on its HTTP and gRPC ports (free ones when it has none yet),
    wait until ``/healthz`` answers from it, and write the record with its ports and pid.
    Under the lock.

    Raises:
        EndpointError: the router exited or did not answer (with its log's last lines), or
            its ports are taken by another process.
    """
    directory = directory_of(endpoints_dir)
    record = record_path(directory, endpoint.endpoint_id)
    log = router_log_path(directory, endpoint.endpoint_id)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    fixed = endpoint.router_port > 0
    attempt = 0
    while True:
        attempt += 1
        port = endpoint.router_port if fixed else free_local_port()
        # A router started before routers served gRPC has no gRPC port to keep.
        grpc_port = endpoint.grpc_port if fixed and endpoint.grpc_port else free_local_port()
        endpoint = replace(endpoint, router_port=port, grpc_port=grpc_port, router_pid=0)
        write_record(directory, endpoint)  # the router reads it at start
        with log.open("ab") as handle:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    ROUTER_MODULE,
                    "--record",
                    str(record),
                    "--port",
                    str(port),
                    "--grpc-port",
                    str(grpc_port),
                ],
                cwd=_REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives a kfp.local task and the command line
            )
        _ROUTERS[popen.pid] = popen
        deadline = time.monotonic() + ROUTER_START_TIMEOUT_S
        while popen.poll() is None and time.monotonic() < deadline:
            if _healthz_pid(endpoint.base_url, timeout_s=1.0) == popen.pid:
                endpoint = replace(endpoint, router_pid=popen.pid)
                write_record(directory, endpoint)
                return endpoint
            time.sleep(0.05)
        code = popen.poll()
        if code is None:
            popen.kill()
            popen.wait()
        _ROUTERS.pop(popen.pid, None)
        last = _router_log_tail(directory, endpoint.endpoint_id)
        taken = code is not None and "address already in use" in last.lower()
        if taken and not fixed and attempt < PORT_ATTEMPTS:
            continue
        what = (
            f"exited with code {code}"
            if code is not None
            else f"did not answer GET /healthz within {ROUTER_START_TIMEOUT_S:.0f} s"
        )
        hint = (
            f" Ports {port} (HTTP) and {grpc_port} (gRPC) are the endpoint's; free them, or "
            f"undeploy the endpoint (compile.py endpoints undeploy {endpoint.endpoint_id}) and "
            "deploy again."
            if fixed
            else ""
        )
        raise EndpointError(
            f"the router of endpoint {endpoint.endpoint_id} on 127.0.0.1:{port} (gRPC "
            f"{grpc_port}) {what}.{hint} "
            f"Last lines of {log}:\n{last}"
        )


def running_endpoint(endpoint_id: str, endpoints_dir: str | Path) -> LocalEndpoint:
    """The record of ``endpoint_id`` with its router running (restarted on its ports when its
    process is gone): what a request through the router needs.

    Raises:
        EndpointInputError: unknown endpoint.
        EndpointError: the router did not start again.
    """
    return _ensure_router(get_endpoint(endpoint_id, endpoints_dir), endpoints_dir)


def _ensure_router(endpoint: LocalEndpoint, endpoints_dir: str | Path) -> LocalEndpoint:
    """The endpoint with its router running: restarted on the same port when its process is
    gone."""
    if _router_process_alive(endpoint, endpoints_dir):
        return endpoint
    with locked(endpoints_dir):
        endpoint = get_endpoint(endpoint.endpoint_id, endpoints_dir)
        if _router_process_alive(endpoint, endpoints_dir):
            return endpoint
        return _start_router(endpoint, endpoints_dir)


def _stop_router(endpoint: LocalEndpoint, endpoints_dir: str | Path) -> None:
    """SIGTERM (it finishes what it forwards), SIGKILL after ``ROUTER_STOP_TIMEOUT_S``."""
    if not _router_process_alive(endpoint, endpoints_dir):
        return
    pid = endpoint.router_pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + ROUTER_STOP_TIMEOUT_S
    while _router_process_alive(endpoint, endpoints_dir):
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    popen = _ROUTERS.pop(pid, None)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)


# --- endpoints and deployed models -----------------------------------------------------------


def _check_display_name(display_name: str) -> None:
    if not display_name.strip() or len(display_name) > 128:
        raise EndpointInputError(
            f"endpoint display name {display_name!r} must be 1 to 128 characters (Vertex's rule)"
        )


def get_or_create_endpoint(
    display_name: str, endpoints_dir: str | Path
) -> tuple[LocalEndpoint, bool]:
    """The oldest endpoint named ``display_name`` (its router restarted on its port when the
    process is gone), else a new one with its router running; and whether it was created now.

    Raises:
        EndpointInputError: the display name is empty or longer than 128 characters.
        EndpointError: the router did not start.
    """
    _check_display_name(display_name)
    with locked(endpoints_dir):
        for endpoint in list_endpoints(endpoints_dir):
            if endpoint.display_name == display_name:
                return _ensure_router(endpoint, endpoints_dir), False
        endpoint = LocalEndpoint(new_resource_id(), display_name, now_rfc3339())
        try:
            return _start_router(endpoint, endpoints_dir), True
        except BaseException:
            record_path(endpoints_dir, endpoint.endpoint_id).unlink(missing_ok=True)
            raise


def deploy(
    model_resource: str,
    registry_dir: str | Path,
    endpoints_dir: str | Path,
    *,
    endpoint_id: str | None = None,
    display_name: str = "",
    traffic_percent: int = 100,
    host_port: int | None = None,
    timeout_s: float | None = None,
    engine: ServerRunner | None = None,
) -> Deployment:
    """Deploy a registered model version to a local endpoint and give it its share of the
    traffic once its server is ready.

    Args:
        model_resource: ``projects/local/locations/local/models/<id>[@<version or alias>]``
            (without a suffix: the ``default`` version).
        registry_dir: the local registry holding it.
        endpoints_dir: where the endpoint records are (created when missing).
        endpoint_id: the endpoint to deploy to; without it, the oldest endpoint named
            ``display_name``, created when there is none.
        display_name: the display name of the endpoint found or created when no
            ``endpoint_id`` is given (default: the model's).
        traffic_percent: the new model's share; the others keep the rest in proportion. On an
            endpoint with no other deployed model (none with traffic) it takes 100, as on
            Vertex.
        host_port: the 127.0.0.1 port to publish the server on (default: a free one).
        timeout_s: how long health may take to answer 200 (default: the spec's
            ``deploymentTimeout``, else 300 s).
        engine: the runner (default: ``runners.detect_runner()``).

    Raises:
        RegistryError: the model version does not exist.
        EndpointInputError: unknown endpoint, or a share that is not 0 to 100.
        EndpointError: the server did not start or never became healthy, or the router did
            not start; the server has been removed and the record restored (an endpoint this
            deploy created is removed), and the message holds the last log lines.
        RunnerNotFoundError: no podman or docker works.
    """
    if isinstance(traffic_percent, bool) or not 0 <= int(traffic_percent) <= 100:
        raise EndpointInputError(
            f"traffic_percent {traffic_percent!r}: a new model's share is a whole percent from "
            "0 to 100"
        )
    version = get_version(registry_dir, model_resource)
    engine = engine or detect_runner()
    if endpoint_id:
        endpoint = running_endpoint(endpoint_id, endpoints_dir)
        created = False
    else:
        endpoint, created = get_or_create_endpoint(
            display_name or version.display_name, endpoints_dir
        )
    deployed_model_id = new_resource_id()
    try:
        served = start_serving(
            version,
            engine,
            resource_id=endpoint.endpoint_id,
            deployed_model_id=deployed_model_id,
            name=f"tts-endpoint-{endpoint.endpoint_id}-{deployed_model_id}",
            labels={
                ENDPOINT_LABEL: endpoint.endpoint_id,
                DEPLOYED_MODEL_LABEL: deployed_model_id,
            },
            host_port=host_port,
        )
    except BaseException:
        if created:
            _remove_empty_endpoint(endpoint.endpoint_id, endpoints_dir)
        raise
    container = served.server
    deployed = LocalDeployedModel(
        id=deployed_model_id,
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
        grpc_target=served.grpc_target,
    )
    try:
        # Listed at 0% while it starts, so that an interrupted deploy can still be undeployed.
        with locked(endpoints_dir):
            endpoint = get_endpoint(endpoint.endpoint_id, endpoints_dir)
            endpoint = replace(endpoint, deployed_models=(*endpoint.deployed_models, deployed))
            write_record(endpoints_dir, endpoint)
        startup = wait_until_ready(served, f"deploying {version.resource_name}", timeout_s)
        deployed = replace(deployed, startup_seconds=round(startup, 3))
        with locked(endpoints_dir):
            endpoint = get_endpoint(endpoint.endpoint_id, endpoints_dir)
            before = dict(endpoint.traffic_split)
            serving = traffic.serving(before)  # the others with traffic
            share = int(traffic_percent) if serving else 100  # all of it when none has any
            split = traffic.with_new_model(serving, share, deployed.id)
            endpoint = replace(
                endpoint,
                deployed_models=tuple(
                    deployed if d.id == deployed.id else d for d in endpoint.deployed_models
                ),
                traffic_split=split,
                previous_traffic_split=before,
            )
            write_record(endpoints_dir, endpoint)
    except BaseException:
        container.remove()
        with locked(endpoints_dir):
            _forget_deployed_model(endpoint.endpoint_id, deployed.id, endpoints_dir)
            if created:
                _remove_empty_endpoint(endpoint.endpoint_id, endpoints_dir)
        raise
    return Deployment(endpoint, deployed, before, created)


def _forget_deployed_model(
    endpoint_id: str, deployed_model_id: str, endpoints_dir: str | Path
) -> LocalEndpoint | None:
    """Drop a deployed model from the record and the splits (under the lock); the endpoint as
    written, or None when the record is gone."""
    path = record_path(endpoints_dir, endpoint_id)
    if not path.is_file():
        return None
    endpoint = read_record(path)
    endpoint = replace(
        endpoint,
        deployed_models=tuple(d for d in endpoint.deployed_models if d.id != deployed_model_id),
        traffic_split={k: v for k, v in endpoint.traffic_split.items() if k != deployed_model_id},
    )
    write_record(endpoints_dir, endpoint)
    return endpoint


def _remove_empty_endpoint(endpoint_id: str, endpoints_dir: str | Path) -> None:
    """Remove an endpoint a failed deploy created, when nothing else was deployed on it."""
    with locked(endpoints_dir):
        path = record_path(endpoints_dir, endpoint_id)
        if not path.is_file():
            return
        endpoint = read_record(path)
        if endpoint.deployed_models:
            return
        _stop_router(endpoint, endpoints_dir)
        path.unlink(missing_ok=True)
        router_log_path(endpoints_dir, endpoint_id).unlink(missing_ok=True)


def set_traffic(
    endpoint_id: str, split: Mapping[str, Any], *, endpoints_dir: str | Path
) -> LocalEndpoint:
    """Replace the endpoint's traffic split; the router applies it from the next request on.
    The old split is kept as ``previous_traffic_split`` (``rollback_traffic``).

    Raises:
        EndpointInputError: unknown endpoint.
        TrafficSplitError: the split breaks Vertex's rules (``traffic.check_split``) for the
            models deployed (those still starting cannot be named).
    """
    with locked(endpoints_dir):
        endpoint = get_endpoint(endpoint_id, endpoints_dir)
        checked = traffic.check_split(split, endpoint.deployed_ids)
        endpoint = replace(
            endpoint, traffic_split=checked, previous_traffic_split=dict(endpoint.traffic_split)
        )
        write_record(endpoints_dir, endpoint)
    return endpoint


def rollback_traffic(endpoint_id: str, *, endpoints_dir: str | Path) -> LocalEndpoint:
    """Restore the split before the last ``set_traffic`` or deploy (the current one becomes the
    previous, so a second rollback undoes the first).

    Raises:
        EndpointInputError: unknown endpoint, no previous split, or one that names models no
            longer deployed.
    """
    with locked(endpoints_dir):
        endpoint = get_endpoint(endpoint_id, endpoints_dir)
        previous = endpoint.previous_traffic_split
        if not previous:
            raise EndpointInputError(
                f"endpoint {endpoint.endpoint_id} has no previous traffic split to restore (its "
                "split was never changed since its first deploy); set one with "
                f"`compile.py endpoints traffic {endpoint.endpoint_id} --split ID=PERCENT,...`"
            )
        try:
            checked = traffic.check_split(previous, endpoint.deployed_ids)
        except traffic.TrafficSplitError as exc:
            raise EndpointInputError(
                f"endpoint {endpoint.endpoint_id}: the previous split "
                f"{traffic.format_split(previous)} cannot be restored ({exc}); set one with "
                f"`compile.py endpoints traffic {endpoint.endpoint_id} --split ID=PERCENT,...`"
            ) from exc
        endpoint = replace(
            endpoint, traffic_split=checked, previous_traffic_split=dict(endpoint.traffic_split)
        )
        write_record(endpoints_dir, endpoint)
    return endpoint


def _stop_and_remove(deployed: LocalDeployedModel) -> float | None:
    """Stop a deployed model's server (SIGTERM: it finishes the requests it holds; SIGKILL
    after the grace period) and remove it; the seconds the stop took, None when it was not
    running."""
    container = deployed.container()
    seconds = stop_serving(container) if container_status(deployed) == "running" else None
    container.remove()
    return seconds


def undeploy_model(
    endpoint_id: str, deployed_model_id: str, *, endpoints_dir: str | Path
) -> float | None:
    """Undeploy one deployed model: its share goes back to the others in proportion
    (``traffic.without_model``), the router stops picking it, then its server is stopped
    (in-flight requests finish) and removed. Returns the seconds the stop took, or None when it
    was not running.

    Raises:
        EndpointInputError: unknown endpoint or deployed model, or a model that holds all the
            traffic while others are deployed (nothing could take its share: Vertex refuses
            too; set the split first).
        EndpointError: a server with its label is still there afterwards (it stays in the
            record, to retry).
    """
    with locked(endpoints_dir):
        endpoint = get_endpoint(endpoint_id, endpoints_dir)
        deployed = endpoint.deployed_model(deployed_model_id)
        share = endpoint.traffic_split.get(deployed.id, 0)
        others = [d for d in endpoint.deployed_ids if d != deployed.id]
        if share == 100 and others:
            raise EndpointInputError(
                f"deployed model {deployed.id} serves 100% of endpoint {endpoint.endpoint_id}'s "
                f"traffic and the others ({', '.join(others)}) none, so nothing could take its "
                "share; set the traffic first (compile.py endpoints traffic "
                f"{endpoint.endpoint_id} --split ID=100), or undeploy the whole endpoint"
            )
        if share:
            split = traffic.without_model(endpoint.traffic_split, deployed.id)
            write_record(endpoints_dir, replace(endpoint, traffic_split=split))
    if share:
        time.sleep(UNDEPLOY_DRAIN_S)
    seconds = _stop_and_remove(deployed)
    runner = deployed.container().runner
    left = runner.labelled(f"{DEPLOYED_MODEL_LABEL}={deployed.id}")
    if left:
        raise EndpointError(
            f"deployed model {deployed.id}: server(s) {', '.join(left)} are still there after "
            f"undeploy; {_removal_hint(runner, left)}"
        )
    with locked(endpoints_dir):
        _forget_deployed_model(endpoint.endpoint_id, deployed.id, endpoints_dir)
    return seconds


def _removal_hint(runner: ServerRunner, ids: list[str]) -> str:
    """How to remove servers an undeploy left: containers with the engine, server processes
    (process mode) by the pid in their state files."""
    if runner.name == PROCESS:
        return (
            f"stop the server processes {', '.join(ids)} (process mode: each one's pid is in "
            "ID.json under $TRAIN_TO_SERVE_PROCESS_DIR, default /tmp/train-to-serve-<uid>; "
            "kill PID, then delete the file)"
        )
    return f"remove them with `{runner.name} rm -f {' '.join(ids)}`"


def undeploy(endpoint_id: str, *, endpoints_dir: str | Path) -> float | None:
    """Remove the whole endpoint: its router (it finishes what it forwards), every deployed
    model's server (SIGTERM, SIGKILL after the grace period) and its record. Returns the
    longest stop in seconds, or None when no server was running.

    Raises:
        EndpointInputError: unknown endpoint.
        EndpointError: a server with the endpoint's label is still there afterwards (the record
            is kept then, to retry).
    """
    endpoint = get_endpoint(endpoint_id, endpoints_dir)
    _stop_router(endpoint, endpoints_dir)
    stops = [_stop_and_remove(deployed) for deployed in endpoint.deployed_models]
    runners = {d.engine: d.container().runner for d in endpoint.deployed_models}
    for runner in runners.values():
        left = labelled_containers(runner, endpoint.endpoint_id)
        if left:
            raise EndpointError(
                f"endpoint {endpoint.endpoint_id}: server(s) {', '.join(left)} are still there "
                f"after undeploy; {_removal_hint(runner, left)}"
            )
    with locked(endpoints_dir):
        record_path(endpoints_dir, endpoint.endpoint_id).unlink(missing_ok=True)
        router_log_path(endpoints_dir, endpoint.endpoint_id).unlink(missing_ok=True)
    seconds = [s for s in stops if s is not None]
    return max(seconds) if seconds else None


def labelled_containers(engine: ServerRunner, endpoint_id: str) -> list[str]:
    """Ids of the servers (running or not) that carry the endpoint's label."""
    return engine.labelled(f"{ENDPOINT_LABEL}={endpoint_id}")


def container_status(deployed: LocalDeployedModel) -> str:
    """``running``, ``exited (code N)`` or ``missing`` (removed other than by undeploy)."""
    try:
        state = deployed.container().state()
    except RunnerError:
        return "missing"
    if state.running:
        return "running"
    return f"{state.status or 'exited'} (code {state.exit_code})"


# --- requests through the router -------------------------------------------------------------


def _router_error(exchange: Exchange) -> str:
    """The router's own error case (``ROUTER_ERROR_HEADER``), "" on a model's answer."""
    return exchange.headers.get(ROUTER_ERROR_HEADER.lower(), "")


def _message(exchange: Exchange) -> str:
    """The ``error`` of the router's JSON answer, else the answer as text."""
    try:
        return str(exchange.json()["error"])
    except (ValueError, TypeError, KeyError):
        return exchange.response_text()


def _not_answering(endpoint: LocalEndpoint, deployed: LocalDeployedModel, error: str) -> str:
    """Explain a model that gave the router no answer, from its server's state."""
    status = container_status(deployed)
    message = f"{error}. "
    if status == "missing":
        message += f"Its server {deployed.container_name} no longer exists."
    elif status == "running":
        message += f"Its server {deployed.container_name} is running; see its logs."
    else:
        message += (
            f"Its server {deployed.container_name} has stopped: {status}. Last log lines:\n"
            f"{deployed.container().last_logs() or '(no output)'}\n"
        )
    return (
        message + f"\nUndeploy it (compile.py endpoints undeploy {endpoint.endpoint_id} "
        f"--deployed-model {deployed.id}) and deploy again."
    )


def _explain(endpoint: LocalEndpoint, exchange: Exchange, endpoints_dir: str | Path) -> str:
    """Why a request through the router failed, for an ``EndpointError``."""
    if exchange.status is None:
        status = router_status(endpoint, endpoints_dir)
        log = router_log_path(endpoints_dir, endpoint.endpoint_id)
        return (
            f"the router of endpoint {endpoint.endpoint_id} did not answer at "
            f"{endpoint.base_url}: {exchange.error} (router {status}). Last lines of {log}:\n"
            f"{_router_log_tail(endpoints_dir, endpoint.endpoint_id)}"
        )
    if _router_error(exchange) == UNREACHABLE:
        dmid = exchange.headers.get(HEADER_DEPLOYED_MODEL_ID.lower(), "")
        deployed = endpoint.find_deployed_model(dmid)
        if deployed is not None:
            return _not_answering(endpoint, deployed, _message(exchange))
    if _router_error(exchange):
        return _message(exchange)
    dmid = exchange.headers.get(HEADER_DEPLOYED_MODEL_ID.lower(), "?")
    return (
        f"endpoint {endpoint.endpoint_id} (deployed model {dmid}) answered "
        f"{exchange.response_text()}"
    )


def predict(
    endpoint_id: str,
    instances: Sequence[Any],
    parameters: Mapping[str, Any] | None = None,
    *,
    endpoints_dir: str | Path,
    timeout_s: float = vertex.PREDICT_TIMEOUT_S,
) -> dict[str, Any]:
    """POST ``{"instances": [...], "parameters": {...}}`` to the endpoint's ``:predict``; the
    router picks a deployed model by the split (its router is restarted first when its process
    is gone).

    Returns the model's answer with what Vertex adds to a ``PredictResponse``:
    ``deployedModelId``, ``model``, ``modelVersionId`` and ``modelDisplayName``.

    Raises:
        EndpointInputError: unknown endpoint.
        EndpointError: no model with traffic, no answer (the message says whether the server
            stopped, with its last log lines), a non-200 answer, or one that is not a JSON
            object.
    """
    endpoint = running_endpoint(endpoint_id, endpoints_dir)
    body: dict[str, Any] = {"instances": list(instances)}
    if parameters is not None:
        body["parameters"] = dict(parameters)
    exchange = send(
        endpoint.base_url,
        "POST",
        predict_path(endpoint.endpoint_id),
        timeout_s + CLIENT_MARGIN_S,
        json.dumps(body).encode(),
    )
    if exchange.status != 200:
        raise EndpointError(_explain(endpoint, exchange, endpoints_dir))
    try:
        answer = exchange.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise EndpointError(
            f"endpoint {endpoint.endpoint_id} answered 200 with a body that is not a JSON "
            f"object: {exchange.response_text()}"
        )
    return answer


def raw_predict(
    endpoint_id: str,
    body: bytes,
    *,
    deployed_model_id: str | None = None,
    endpoints_dir: str | Path,
    timeout_s: float = vertex.PREDICT_TIMEOUT_S,
) -> Exchange:
    """POST ``body`` (JSON) to the endpoint's ``:rawPredict`` (the split picks the model), or
    to ``deployed_model_id``'s own rawPredict route (even at 0%). The answer is returned as it
    came, never raised: its ``x-vertex-ai-deployed-model-id`` header says which model answered.

    Raises:
        EndpointInputError: unknown endpoint or deployed model.
    """
    endpoint = running_endpoint(endpoint_id, endpoints_dir)
    if deployed_model_id is not None:
        deployed_model_id = endpoint.deployed_model(deployed_model_id).id
    route = raw_predict_path(endpoint.endpoint_id, deployed_model_id)
    return send(endpoint.base_url, "POST", route, timeout_s + CLIENT_MARGIN_S, body)


# --- the rollout's view (rollout.steps.Endpoint, structurally) -------------------------------


class LocalEndpointOps:
    """A local endpoint as a rollout drives it (``rollout.steps.Endpoint``): every call reads
    the record again, since another process may have changed it."""

    def __init__(self, endpoint_id: str, endpoints_dir: str | Path) -> None:
        endpoint = get_endpoint(endpoint_id, endpoints_dir)
        self.endpoint_id = endpoint.endpoint_id
        self.endpoints_dir = Path(endpoints_dir)
        self.resource_name: str = endpoint.resource_name

    def _endpoint(self) -> LocalEndpoint:
        return get_endpoint(self.endpoint_id, self.endpoints_dir)

    def deployed_models(self) -> list[vertex.DeployedModel]:
        """The models deployed now (those still starting are not deployed yet)."""
        return [
            vertex.DeployedModel(d.id, d.model_name, d.version_id, d.create_time)
            for d in self._endpoint().deployed_models
            if d.ready
        ]

    def traffic_split(self) -> dict[str, int]:
        """Deployed model id -> percent, now."""
        return dict(self._endpoint().traffic_split)

    def set_traffic(self, split: Mapping[str, int]) -> None:
        """Replace the traffic split (``set_traffic``; ``TrafficSplitError`` names the rule a
        wrong one breaks)."""
        set_traffic(self.endpoint_id, split, endpoints_dir=self.endpoints_dir)

    def undeploy(self, deployed_model_id: str) -> None:
        """Undeploy one deployed model (``undeploy_model``)."""
        undeploy_model(self.endpoint_id, deployed_model_id, endpoints_dir=self.endpoints_dir)

    def raw_predict(self, deployed_model_id: str, body: bytes, timeout_s: float) -> Exchange:
        """POST ``body`` to that deployed model's own rawPredict route (even at 0%)."""
        return raw_predict(
            self.endpoint_id,
            body,
            deployed_model_id=deployed_model_id,
            endpoints_dir=self.endpoints_dir,
            timeout_s=timeout_s,
        )


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
