"""One interface for running a model server the way Vertex AI runs it, whatever runs it.

As TFX InfraValidator's ``BaseModelServerRunner``: a ``ServerRunner`` starts a ``ServerSpec``
and hands back a ``RunningServer``, which waits until it serves, gives its URL and stops. The
container engines (``engine.Engine``: podman, docker) and process mode
(``process.ProcessRunner``: the server code as a local process) are siblings under it. Ports
travel as typed values (``ServerSpec.port``, ``PortBinding``), and ``start_server`` is the one
place that picks a free host port and retries when another process takes it first.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from components.runners.http import free_local_port, send
from components.vertex import DEFAULT_PORT

ENGINE_ENV = "TRAIN_TO_SERVE_CONTAINER_ENGINE"
"""Environment variable naming the runner: ``docker``, ``podman``, a path to either, or
``process`` (process mode)."""
PROCESS = "process"
"""The name of process mode's runner (and its ``TRAIN_TO_SERVE_CONTAINER_ENGINE`` value)."""
LOG_LINES = 40
"""Log lines quoted when a server failed."""
PORT_ATTEMPTS = 3
"""Starts tried on fresh free ports before giving up (another process may take one)."""
MIN_MEMORY_BYTES = 6 * 1024 * 1024
"""The smallest memory limit podman and docker accept (6 MiB)."""


class RunnerError(RuntimeError):
    """A runner is missing, or one of its commands failed; the message says why."""


class RunnerNotFoundError(RunnerError):
    """No working container engine (or, for process mode, no serve extra) was found."""


class StartError(RunnerError):
    """The server did not start."""


class PortInUseError(StartError):
    """The host port was taken by another process."""


class NotServingError(RunnerError):
    """The server exited, or did not answer as asked, before the deadline."""


class UsageUnavailableError(RunnerError):
    """A server's CPU and memory use cannot be read (it is not running, or its cgroup is not
    visible from this process); the message says which and what to do."""


@dataclass(frozen=True)
class Mount:
    """A host directory made visible to the server at ``target``."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ServerSpec:
    """What to run and how: a serving image as Vertex starts it (own entrypoint unless one is
    given, no init process, the environment given here)."""

    image: str
    port: int = DEFAULT_PORT
    """The server's port inside its container (``containerSpec.ports[0]``)."""
    grpc_port: int | None = None
    """Its gRPC port inside the container (``containerSpec.grpcPorts[0]``), published too on
    a free 127.0.0.1 port; None: none."""
    env: Mapping[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    entrypoint: str = ""
    """Replaces the image's ``ENTRYPOINT``; ``""`` keeps it."""
    args: tuple[str, ...] = ()
    """Replace the image's ``CMD`` when given."""
    name: str = ""
    """Default: ``tts-<random>``."""
    labels: Mapping[str, str] = field(default_factory=dict)
    restart: str = ""
    """Restart policy, e.g. ``on-failure:3``; ``""`` for none."""
    init: bool = False
    """Run a tiny init as PID 1 (Vertex runs none; tests may want signal forwarding)."""
    stop_timeout_s: float = 10.0
    """SIGTERM-to-SIGKILL time when the handle is left as a context manager."""
    cpus: float | None = None
    """CPU limit (``--cpus``): at most this many CPUs' worth of time, as a machine type's
    vCPUs cap a Vertex replica; None for no limit. Container engines only."""
    memory_bytes: int | None = None
    """Memory limit (``--memory``, no swap beyond it): the server is killed for lack of memory
    above it, as on a machine type's memory; None for no limit. Container engines only."""

    def __post_init__(self) -> None:
        if self.cpus is not None and not self.cpus > 0:
            raise ValueError(
                f"ServerSpec cpus={self.cpus!r}: a CPU limit must be above 0 (e.g. 0.5, 2); "
                "None runs without one"
            )
        if self.memory_bytes is not None and self.memory_bytes < MIN_MEMORY_BYTES:
            raise ValueError(
                f"ServerSpec memory_bytes={self.memory_bytes!r}: a memory limit must be at least "
                f"{MIN_MEMORY_BYTES:,} bytes (the engines refuse less); None runs without one"
            )

    @property
    def limited(self) -> bool:
        """Whether a CPU or memory limit is set."""
        return self.cpus is not None or self.memory_bytes is not None


@dataclass(frozen=True)
class PortBinding:
    """The server's port published on a 127.0.0.1 port of this host."""

    container_port: int
    host_port: int

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<host_port>`` (IPv4: podman does not forward IPv6 loopback)."""
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def target(self) -> str:
        """``127.0.0.1:<host_port>``, as a gRPC channel names it."""
        return f"127.0.0.1:{self.host_port}"


@dataclass(frozen=True)
class StopResult:
    """How a server stopped."""

    exit_code: int | None
    seconds: float
    """From sending SIGTERM until the server had exited."""
    killed: bool
    """True when it outlived the timeout and got SIGKILL."""


@dataclass(frozen=True)
class ServerState:
    """Whether the server runs, and how it ended."""

    status: str
    running: bool
    exit_code: int | None
    oom_killed: bool = False
    error: str = ""


def tail_lines(text: str, lines: int) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:]) if lines > 0 else ""


@dataclass
class RunningServer(ABC):
    """A started server; a context manager that stops and removes it."""

    runner: ServerRunner
    id: str
    name: str
    image: str
    started_at: float
    """``time.monotonic()`` just before it was started (0 for a handle from ``attach``)."""
    binding: PortBinding | None = None
    stop_timeout: float = 10.0
    stopped: StopResult | None = None
    grpc_binding: PortBinding | None = None
    """The gRPC port's binding (``ServerSpec.grpc_port``); None without one."""

    @property
    def url(self) -> str:
        """The base URL of the published port."""
        if self.binding is None:
            raise RunnerError(f"{self.name} publishes no port")
        return self.binding.url

    @property
    def grpc_target(self) -> str:
        """``127.0.0.1:<port>`` of the published gRPC port, for ``grpc.insecure_channel``."""
        if self.grpc_binding is None:
            raise RunnerError(f"{self.name} publishes no gRPC port (ServerSpec.grpc_port)")
        return self.grpc_binding.target

    @abstractmethod
    def logs(self) -> str:
        """The server's stdout and stderr so far."""

    @abstractmethod
    def state(self) -> ServerState:
        """Current status; ``RunnerError`` once the server was removed."""

    @abstractmethod
    def tcp_table(self) -> str:
        """The ``/proc/net/tcp`` and ``tcp6`` lines of the server's own sockets (``""`` when
        they cannot be read)."""

    @abstractmethod
    def stop(self, timeout: float | None = None) -> StopResult:
        """SIGTERM, SIGKILL after ``timeout`` seconds (default ``stop_timeout``)."""

    @abstractmethod
    def stop_for_good(self, grace_s: float) -> float:
        """Stop a long-running server without a restart (SIGKILL after ``grace_s``); return
        the seconds it took."""

    @abstractmethod
    def remove(self) -> None:
        """Kill the server if it still runs and delete what it leaves; never raises."""

    def last_logs(self, lines: int = LOG_LINES) -> str:
        """The last ``lines`` lines of the output (read whole: podman 4.3's ``logs --tail N``
        prints nothing when the log has fewer than N lines)."""
        return tail_lines(self.logs(), lines)

    def wait_until_serving(
        self, route: str = "/", *, timeout: float = 120.0, status: int = 200, interval: float = 0.1
    ) -> float:
        """Poll ``GET route`` until it answers ``status``; return the seconds since start.

        Raises:
            NotServingError: the server exited first, or ``timeout`` passed (the message holds
                its last log lines).
        """
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        checks = 0
        while True:
            exchange = send(self.url, "GET", route, timeout_s=5)
            if exchange.status == status:
                return time.monotonic() - self.started_at
            last = f"HTTP {exchange.status}" if exchange.status is not None else exchange.error
            checks += 1
            if checks % 10 == 0 or time.monotonic() >= deadline:
                state = self.state()
                if not state.running:
                    raise NotServingError(
                        f"{self.name} ({self.image}) exited with code {state.exit_code} before "
                        f"GET {route} answered {status}"
                        f"{' (out of memory)' if state.oom_killed else ''}; its last log lines:\n"
                        f"{self.last_logs()}"
                    )
            if time.monotonic() >= deadline:
                raise NotServingError(
                    f"GET {self.url}{route} did not answer {status} within {timeout:.0f} s "
                    f"(last: {last}); {self.name} last log lines:\n{self.last_logs()}"
                )
            time.sleep(interval)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.stopped is None:
                with contextlib.suppress(RunnerError):
                    if self.state().running:
                        self.stop()
        finally:
            self.remove()


class ServerRunner(ABC):
    """Something that runs serving images: a container engine, or process mode."""

    name: str
    """``docker``, ``podman`` or ``process``."""
    version: str

    @property
    @abstractmethod
    def reference(self) -> str:
        """What ``detect_runner`` takes to give this runner back (in another process)."""

    @abstractmethod
    def start(self, spec: ServerSpec, host_port: int) -> RunningServer:
        """Start ``spec`` detached, its port published on ``host_port`` of 127.0.0.1 (and its
        gRPC port, if any, on a free one).

        Raises:
            PortInUseError: another process holds ``host_port``.
            StartError: the server could not be started at all.
        """

    @abstractmethod
    def attach(self, server_id: str, name: str, image: str) -> RunningServer:
        """A handle on a server started earlier, possibly by another process."""

    @abstractmethod
    def labelled(self, label: str) -> list[str]:
        """Ids of the servers, running or not, that carry ``label`` (``key=value``)."""


def start_server(
    runner: ServerRunner, spec: ServerSpec, host_port: int | None = None
) -> RunningServer:
    """Start ``spec`` on ``host_port``, or on a free port, retried on a fresh one when another
    process took it in the meantime."""
    attempt = 1
    while True:
        try:
            return runner.start(spec, host_port or free_local_port())
        except PortInUseError:
            if host_port is not None or attempt == PORT_ATTEMPTS:
                raise
            attempt += 1
