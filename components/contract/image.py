"""The contract check of an image: run it the way Vertex AI does, check it, stop it.

Vertex AI only tells you a serving image is wrong at deploy time, tens of minutes later, with
"Model server never became ready" or "Model server exited unexpectedly". ``check_image``
runs the image as Vertex runs it (its own entrypoint, no arguments, no init process, the
``AIP_*`` variables set, the declared port published), applies ``check_server``'s rules
with Vertex's numbers, then sends SIGTERM and times the stop. ``check_model_image`` does it
for a trained model's directory and, only on a pass, gives the ``containerSpec`` that upload
reads: no container spec reaches upload without passing this check.

Process mode (``runners.process``) is a weaker check, only ever chosen explicitly: the same
rules against the same server code and model, started as a local process with Vertex's
environment. The image itself is not run, and the report, its verdict line and the metrics
(``process_mode: 1``) say so. On Vertex AI Pipelines the image is checked in the Cloud Build
that builds it (``in_build``, ``components.checked_build``).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components import vertex
from components.contract.checker import check_server
from components.contract.grpc_rules import GrpcTarget, manifest_features
from components.contract.rules import (
    LOG_TAIL_LINES,
    ContractReport,
    RuleResult,
    explain_exit,
    sigterm_result,
    skip_result,
)
from components.contract.sample import OBJECT, model_sample
from components.contract.settings import CheckSettings, checked_env
from components.runners import (
    PROCESS,
    PROCESS_MODE_NOTE,
    Mount,
    ProcessRunner,
    RunnerError,
    RunnerNotFoundError,
    RunningServer,
    ServerRunner,
    ServerSpec,
    detect_runner,
    start_server,
    tail_lines,
)


def listening_sockets(proc_net_tcp: str) -> list[tuple[str, int]]:
    """(address, port) of every listening socket in ``/proc/net/tcp`` / ``tcp6`` text."""
    sockets = []
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != "0A" or ":" not in fields[1]:  # 0A: LISTEN
            continue
        address_hex, port_hex = fields[1].split(":")
        try:  # the kernel prints each 32-bit word in host (little-endian) byte order
            raw = b"".join(
                bytes.fromhex(address_hex[i : i + 8])[::-1] for i in range(0, len(address_hex), 8)
            )
            sockets.append((str(ipaddress.ip_address(raw)), int(port_hex, 16)))
        except ValueError:
            continue
    return sockets


def describe_listening(sockets: Sequence[tuple[str, int]], port: int) -> str:
    """Why a published port refuses connections, given what listens inside the container
    (``""`` when the declared port is listening on all interfaces)."""
    if not sockets:
        return "Inside the container nothing listens on any TCP port."
    on_port = [host for host, number in sockets if number == port]
    if any(not ipaddress.ip_address(host).is_loopback for host in on_port):
        return ""
    shown = ", ".join(f"{host}:{number}" for host, number in sockets)
    if on_port:
        return (
            f"Inside the container the server listens on {shown}: on the loopback interface "
            f"only, which nothing outside the container reaches; it must listen on "
            f"0.0.0.0:{port}."
        )
    return (
        f"Inside the container the server listens on {shown}, not on the declared port {port} "
        "(AIP_HTTP_PORT): read AIP_HTTP_PORT, or declare the port the server uses."
    )


class RunningServerObserver:
    """``ServerObserver`` for a server a runner started: its state, logs and sockets."""

    def __init__(self, server: RunningServer, port: int) -> None:
        self.server = server
        self.port = port
        self._exit_note: str | None = None

    def exit_note(self) -> str | None:
        if self._exit_note is None:
            try:
                state = self.server.state()
            except RunnerError:
                return None
            if not state.running:
                status = 137 if state.oom_killed else state.exit_code
                self._exit_note = explain_exit(
                    -1 if status is None else status,
                    self._last_logs(),
                    process_mode=self.server.runner.name == PROCESS,
                )
        return self._exit_note

    def _last_logs(self, settle_s: float = 2.0) -> str:
        """The exited server's last log lines, once the engine has written them all (the
        state can say "exited" before the last lines reach the log)."""
        deadline = time.monotonic() + settle_s
        logs = self.server.logs()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            again = self.server.logs()
            if again == logs and logs:
                break
            logs = again
        return tail_lines(logs, LOG_TAIL_LINES)

    def listening_note(self) -> str:
        if self._exit_note is not None:
            return ""
        table = self.server.tcp_table()
        if not table:
            return ""
        return describe_listening(listening_sockets(table), self.port)

    def logs(self) -> str:
        return self.server.logs()


def check_image(
    image: str,
    *,
    model_dir: str | Path | None = None,
    instances: Sequence[Any],
    expected: Sequence[Any] | None = None,
    kinds: Sequence[str] | None = None,
    port: int = vertex.DEFAULT_PORT,
    health_route: str = vertex.DEFAULT_HEALTH_ROUTE,
    predict_route: str = vertex.DEFAULT_PREDICT_ROUTE,
    env: Mapping[str, str] | None = None,
    settings: CheckSettings | None = None,
    engine: ServerRunner | None = None,
    grpc_port: int | None = None,
) -> ContractReport:
    """Start ``image`` the way Vertex AI does, check it with ``check_server``, stop it.

    The container runs the image's own entrypoint with no arguments and no init process
    (Vertex runs none), the ``AIP_*`` variables of ``vertex.vertex_environment`` plus
    ``env``, and ``port`` published on a free 127.0.0.1 port. A local ``model_dir`` is
    mounted read-only at ``vertex.MODEL_MOUNT`` and named by ``AIP_STORAGE_URI`` (on Vertex:
    a ``gs://`` copy of the model's artifactUri). After the checks it sends SIGTERM and times
    the stop (the ``sigterm`` rule), and the report keeps the container's logs.

    With ``grpc_port`` (``containerSpec.grpcPorts[0]``; ``None`` or 0: none) that port is
    published too and the ``grpc-`` rules apply there, with tensors named and typed after
    ``model_dir``'s manifest (required then); the container gets ``SERVING_GRPC_PORT`` set to
    it unless ``env`` sets it (``checked_env``: our server listens there, others ignore it).

    With the ``ProcessRunner`` (process mode) the server code runs as a local process with
    the same environment, the model directory (required then) named by ``AIP_STORAGE_URI``;
    the report says that the image itself was not checked (``PROCESS_MODE_NOTE``).

    Args:
        engine: the runner; default ``runners.detect_runner()``.
        The others: as for ``check_server``.

    Raises:
        RunnerError: no engine, or the image could not be started at all (for example it
            does not exist): that is no verdict on the contract.
    """
    settings = settings or CheckSettings()
    engine = engine or detect_runner()
    features = manifest_features(model_dir, grpc_port) if grpc_port else ()
    mounts = ()
    storage_uri = ""
    if model_dir is not None:
        mounts = (Mount(Path(model_dir), vertex.MODEL_MOUNT),)
        storage_uri = vertex.MODEL_MOUNT
    spec = ServerSpec(
        image,
        port=port,
        grpc_port=grpc_port or None,
        env={
            **checked_env(env, grpc_port),
            **vertex.vertex_environment(port, health_route, predict_route, storage_uri),
        },
        mounts=mounts,
        stop_timeout_s=settings.grace_period_s,
    )
    with start_server(engine, spec) as server:
        observer = RunningServerObserver(server, port)
        report = check_server(
            server.url,
            instances=instances,
            expected=expected,
            kinds=kinds,
            health_route=health_route,
            predict_route=predict_route,
            settings=settings,
            observer=observer,
            started=server.started_at,
            grpc=GrpcTarget(server.grpc_target, grpc_port, features) if grpc_port else None,
        )
        report.rules.append(_sigterm(server, observer, settings.grace_period_s))
        report.stop_s = server.stopped.seconds if server.stopped else None
        report.logs = server.logs()
    report.target = image
    report.process_mode = isinstance(engine, ProcessRunner)
    report.settings = {
        "image": image,
        "declared port": port,
        "AIP_STORAGE_URI": storage_uri or "(empty: no model directory mounted)",
        **report.settings,
        "engine": f"{engine.name} {engine.version}",
    }
    if report.process_mode:
        report.settings["mode"] = f"{PROCESS_MODE_NOTE} (server at {server.url}, model {model_dir})"
    return report


def _sigterm(
    server: RunningServer, observer: RunningServerObserver, grace_period_s: float
) -> RuleResult:
    """Send SIGTERM and time the stop; the container must exit within the grace period."""
    if observer.exit_note() is not None:
        return skip_result("sigterm", "the container had already exited")
    stop = server.stop(grace_period_s)
    return sigterm_result(grace_period_s, stop.seconds, stop.exit_code, stop.killed)


def directory_bytes(path: str | Path) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def check_model_image(
    image_uri: str,
    model_dir: str | Path,
    *,
    port: int = vertex.DEFAULT_PORT,
    health_route: str,
    predict_route: str,
    env: Mapping[str, str] | None = None,
    settings: CheckSettings | None = None,
    large_model_bytes: int = vertex.LARGE_MODEL_BYTES,
    engine: ServerRunner | None = None,
    grpc_port: int | None = None,
    instance_format: str = OBJECT,
) -> tuple[ContractReport, dict[str, Any] | None]:
    """Check ``image_uri`` serving the model in ``model_dir`` (a train component output) with
    its own sample (``sample.model_sample``: the instances, their kinds and expected
    predictions; as exported, the edge ones also as lists, or with ``instance_format``
    ``"list"`` every instance as a list in the manifest's feature order), over gRPC too
    where ``grpc_port`` is given. An image we did not build: ``settings.foreign_image``.

    Returns the report and, only when every rule passed, the ``UnmanagedContainerModel``
    metadata for upload (``None`` otherwise); with a ``startupProbe`` when the model directory
    holds at least ``large_model_bytes`` or the server took ``SLOW_STARTUP_S`` or more to
    become healthy, and with gRPC the ``grpcPorts``, gRPC probes and the ``env`` checked.
    """
    check_upload_routes(health_route, predict_route)
    settings = settings or CheckSettings()
    model = Path(model_dir)
    instances, expected, kinds = model_sample(model, instance_format)
    report = check_image(
        image_uri,
        instances=instances,
        expected=expected,
        kinds=kinds,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        model_dir=model,
        env=env,
        settings=settings,
        engine=engine,
        grpc_port=grpc_port,
    )
    if not report.passed:
        return report, None
    metadata = upload_metadata(
        image_uri,
        model,
        report,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=env,
        startup_deadline_s=settings.startup_deadline_s,
        large_model_bytes=large_model_bytes,
        grpc_port=grpc_port,
    )
    return report, metadata


def check_upload_routes(health_route: str, predict_route: str) -> None:
    """``ValueError`` unless both routes are explicit, as a ``containerSpec`` must name them."""
    if vertex.STAND_IN_ENDPOINT_ID in health_route + predict_route:
        raise ValueError(
            "name the health and predict routes explicitly for upload: Vertex's default routes "
            "contain the endpoint and deployed-model ids, which are unknown before deploy"
        )


def upload_metadata(
    image_uri: str,
    model_dir: Path,
    report: ContractReport,
    *,
    port: int,
    health_route: str,
    predict_route: str,
    env: Mapping[str, str] | None,
    startup_deadline_s: float,
    large_model_bytes: int,
    grpc_port: int | None = None,
) -> dict[str, Any]:
    """The ``UnmanagedContainerModel`` metadata of a passing check, with a ``startupProbe``
    when the model directory holds at least ``large_model_bytes`` or the server took
    ``SLOW_STARTUP_S`` or more to become healthy; the report's settings say which. With
    ``grpc_port`` the spec declares ``grpcPorts``, its probes ask ``grpc.health.v1`` there
    (where Vertex sends its checks), and its ``env`` is the checked one (``checked_env``:
    ``SERVING_GRPC_PORT`` too)."""
    size = directory_bytes(model_dir)
    probe = None
    if vertex.needs_startup_probe(size, report.startup_s, large_model_bytes):
        probe = vertex.startup_probe(health_route, port, startup_deadline_s, grpc_port=grpc_port)
    report.settings["model size (bytes)"] = size
    report.settings["startupProbe"] = "added" if probe else "not needed"
    return vertex.unmanaged_container_model_metadata(
        image_uri,
        port=port,
        health_route=health_route,
        predict_route=predict_route,
        env=checked_env(env, grpc_port),
        probe=probe,
        grpc_port=grpc_port,
    )


NO_ENGINE_HINT = (
    "contract_check runs the image, so it needs podman or docker beside it, and none works "
    "here. On Vertex AI Pipelines (no engine in a task's pod) use build_and_check, which builds, "
    "checks and pushes the image in one Cloud Build; or check here with "
    "`python compile.py check-contract --image IMAGE --model-dir DIR`. process_mode=True "
    "checks the server code and the model as a local process instead: weaker, since the image "
    "itself is not run."
)


def choose_check_engine(process_mode: bool = False) -> ServerRunner:
    """The runner for a check: process mode's when asked for, else ``detect_runner()``
    (a container engine, or process mode when ``TRAIN_TO_SERVE_CONTAINER_ENGINE=process``).
    Never a silent fallback: no engine is an error.

    Raises:
        RuntimeError: the runner does not work (``NO_ENGINE_HINT`` and the reason).
    """
    try:
        return ProcessRunner.create() if process_mode else detect_runner()
    except RunnerNotFoundError as exc:
        raise RuntimeError(f"{NO_ENGINE_HINT}\n{exc}") from exc
