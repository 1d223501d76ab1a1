"""podman and docker, driven through their command line: the container engines that run (and,
for ``components.imaging``, build) serving images.

No kfp here: the CLI is the measured path (kfp's DockerRunner over podman's Docker-compatible
socket is not reliable), and this module only needs the standard library.

* ``detect_engine()`` finds a working engine: ``TRAIN_TO_SERVE_CONTAINER_ENGINE`` (``docker``,
  ``podman`` or a path) if set, else docker, then podman. Working means it answers and can
  build what our Dockerfiles need (BuildKit secret and cache mounts): a docker CLI from 23.0 on
  without the buildx plugin answers but cannot build, and is passed over with the reason
  logged. When none works the error names what was tried, why each failed, and the fix.
* ``Engine.start(spec, host_port)`` runs a ``ServerSpec`` detached, its port published on
  ``127.0.0.1:host_port``, and returns a ``Container`` (``runners.base.RunningServer``):
  ``wait_until_serving()``, ``logs()``, ``exec()``, ``state()``, ``stop(timeout)`` (SIGTERM,
  then SIGKILL after the timeout) and ``remove()``; it is also a context manager. A spec's
  ``cpus`` and ``memory_bytes`` become ``--cpus`` and ``--memory`` (a machine type's limits),
  and ``usage()`` reads the CPU seconds and memory the container used from its cgroup (v1 or
  v2, read directly: the engines' ``stats`` give no peak, and docker's no CPU seconds).

Example::

    engine = detect_engine()
    spec = ServerSpec(image, env={"AIP_HTTP_PORT": "8080"})
    with start_server(engine, spec) as container:
        container.wait_until_serving("/health")
        ...
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from components.runners import base
from components.runners.http import free_local_port

logger = logging.getLogger(__name__)

ENGINES = ("docker", "podman")
"""Engines tried, in this order, when ``TRAIN_TO_SERVE_CONTAINER_ENGINE`` is not set."""
SETUP_SCRIPT = "scripts/setup-container-engine.sh"
SETUP_HINT = (
    f"run {SETUP_SCRIPT} from the repository root (as root, or as a user "
    "with sudo) to install and configure podman and the base image; or start Docker"
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL = "io.train-to-serve.managed"
"""Label put on containers started here (``podman ps -a --filter label=...`` finds leftovers)."""
BUILDKIT_FIX = (
    "give docker a BuildKit builder: install Docker's buildx plugin "
    "(https://docs.docker.com/go/buildx/; the package docker-buildx-plugin from Docker's "
    "repository, docker-buildx on recent Debian and Ubuntu), or name a docker CLI with BuildKit "
    "built in (Docker 20.10, e.g. Debian 12's docker.io: TRAIN_TO_SERVE_ENGINE_SETUP=docker "
    f"{SETUP_SCRIPT}) in {base.ENGINE_ENV}; or use podman ({SETUP_SCRIPT} sets it up)"
)
"""How to fix a docker that answers but cannot build our Dockerfiles."""
BUILD_CHECK_DOCKERFILE = """\
FROM scratch AS mounts
RUN --mount=type=secret,id=check --mount=type=cache,target=/cache true
FROM scratch
"""
"""What docker's build check builds: the builder parses the serving Dockerfile's mount kinds (a
build secret, a cache) but runs nothing, as the empty last stage does not need the first, so
nothing is pulled and the result is the same empty image every time."""
BUILD_CHECK_TAG = "localhost/train-to-serve-build-check:1"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment (with a usable PATH) for an engine command, plus ``extra``."""
    env = dict(os.environ)
    if not env.get("PATH"):
        env["PATH"] = DEFAULT_PATH
    if extra:
        env.update(extra)
    return env


def _which(name: str) -> str | None:
    """``shutil.which`` over PATH plus the standard directories (works under ``env -i``)."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    search = os.pathsep.join(p for p in (os.environ.get("PATH", ""), DEFAULT_PATH) if p)
    return shutil.which(name, path=search)


def normalise_id(image_id: str) -> str:
    """An image id as ``sha256:...`` whichever way the engine printed it."""
    image_id = image_id.strip()
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


@dataclass(frozen=True)
class Engine(base.ServerRunner):
    """A working container engine CLI."""

    name: str
    """``docker`` or ``podman``."""
    path: str
    version: str

    def command(
        self,
        *args: str,
        timeout: float | None = 120,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<engine> args...`` and capture its output (stderr folded into ``stderr``).

        Raises ``RunnerError`` with the command and its error output when ``check`` and the
        command fails or times out.
        """
        argv = [self.path, *args]
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=child_env(env),
                stdin=None if input is not None else subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise base.RunnerError(
                f"`{self.name} {' '.join(args[:3])} ...` did not finish within {timeout} s"
            ) from exc
        if check and proc.returncode != 0:
            raise base.RunnerError(
                f"`{self.name} {' '.join(args)}` failed (exit {proc.returncode}): "
                f"{base.tail_lines(proc.stderr or proc.stdout, 8)}"
            )
        return proc

    @property
    def reference(self) -> str:
        """The engine's path."""
        return self.path

    @property
    def build_env(self) -> dict[str, str]:
        """Environment a build needs: docker's ``RUN --mount`` and ``--secret`` need BuildKit
        (podman's buildah has them without asking)."""
        return {"DOCKER_BUILDKIT": "1"} if self.name == "docker" else {}

    # ------------------------------------------------------------------ images --
    def image_exists(self, ref: str) -> bool:
        """Whether ``ref`` (name or id) is in the local image store."""
        return self.command("image", "inspect", ref, check=False, timeout=60).returncode == 0

    def image_inspect(self, ref: str) -> dict[str, Any]:
        """The engine's ``image inspect`` record for ``ref``."""
        out = self.command("image", "inspect", ref, timeout=60).stdout
        data = json.loads(out)
        return data[0] if isinstance(data, list) else data

    def image_id(self, ref: str) -> str | None:
        """The ``sha256:...`` id of ``ref``, or None when it is not present."""
        proc = self.command("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=60)
        if proc.returncode != 0:
            return None
        return normalise_id(proc.stdout)

    def image_size(self, ref: str) -> int:
        """Uncompressed size of ``ref`` in bytes, as the engine reports it."""
        return int(self.image_inspect(ref).get("Size") or 0)

    def image_user(self, ref: str) -> str:
        """The image's configured ``USER`` (``""`` means root)."""
        config = self.image_inspect(ref).get("Config") or {}
        return str(config.get("User") or "")

    def pull(self, ref: str, timeout: float = 300) -> bool:
        """Try to pull ``ref``; True on success, False when it cannot be pulled in time."""
        try:
            proc = self.command("pull", "-q", ref, check=False, timeout=timeout)
        except base.RunnerError as exc:
            logger.info("pull %s: %s", ref, exc)
            return False
        if proc.returncode != 0:
            logger.info("pull %s failed: %s", ref, base.tail_lines(proc.stderr, 2))
        return proc.returncode == 0

    def remove_image(self, ref: str) -> None:
        """Remove an image if it exists (errors such as "in use" are logged, not raised)."""
        proc = self.command("image", "rm", ref, check=False, timeout=120)
        if proc.returncode != 0:
            logger.debug("image rm %s: %s", ref, base.tail_lines(proc.stderr, 2))

    # ------------------------------------------------------------------ servers --
    def start(self, spec: base.ServerSpec, host_port: int) -> Container:
        """Run ``spec`` detached (``run -d``), its port on ``127.0.0.1:host_port``."""
        name = spec.name or f"tts-{uuid.uuid4().hex[:12]}"
        args = ["run", "-d", "--name", name, "--label", f"{LABEL}=1"]
        for key, value in spec.labels.items():
            args += ["--label", f"{key}={value}"]
        if spec.restart:
            args += ["--restart", spec.restart]
        if spec.init:
            args.append("--init")
        if spec.cpus is not None:
            args += ["--cpus", f"{spec.cpus:g}"]
        if spec.memory_bytes is not None:  # swap as large as memory: none beyond it, as on Vertex
            args += ["--memory", str(spec.memory_bytes), "--memory-swap", str(spec.memory_bytes)]
        args += ["-p", f"127.0.0.1:{host_port}:{spec.port}"]
        grpc = None
        if spec.grpc_port is not None:
            grpc = base.PortBinding(spec.grpc_port, free_local_port())
            args += ["-p", f"127.0.0.1:{grpc.host_port}:{grpc.container_port}"]
        for key, value in spec.env.items():
            args += ["-e", f"{key}={value}"]
        for mount in spec.mounts:
            mode = "ro" if mount.read_only else "rw"
            args += ["-v", f"{Path(mount.source).resolve()}:{mount.target}:{mode}"]
        if spec.entrypoint:
            args += ["--entrypoint", spec.entrypoint]
        args += [spec.image, *spec.args]
        started = time.monotonic()
        proc = self.command(*args, check=False, timeout=180)
        if proc.returncode != 0:
            self.command("rm", "-f", name, check=False, timeout=60)
            error = (
                base.PortInUseError if "address already in use" in proc.stderr else base.StartError
            )
            raise error(
                f"`{self.name} run {spec.image}` failed (exit {proc.returncode}): "
                f"{base.tail_lines(proc.stderr, 10)}\nhint: {_run_hint(proc.stderr)}"
            )
        return Container(
            runner=self,
            id=proc.stdout.strip().splitlines()[-1],
            name=name,
            image=spec.image,
            started_at=started,
            binding=base.PortBinding(spec.port, host_port),
            stop_timeout=spec.stop_timeout_s,
            grpc_binding=grpc,
        )

    def attach(self, server_id: str, name: str, image: str) -> Container:
        """A handle on a container started earlier, possibly by another process."""
        return Container(self, server_id, name, image, 0.0)

    def labelled(self, label: str) -> list[str]:
        """Ids of the containers, running or not, that carry ``label`` (``key=value``)."""
        out = self.command("ps", "-a", "-q", "--filter", f"label={label}", timeout=60).stdout
        return out.split()


@dataclass
class Container(base.RunningServer):
    """A container started by ``Engine.start``."""

    runner: Engine
    cgroup: Cgroup | None = field(default=None, repr=False, compare=False)
    """Where its resource use is read, found on the first ``usage()``."""

    def usage(self) -> ResourceUsage:
        """CPU seconds used so far, memory now and at its peak, from the container's cgroup
        (files read directly: after the first call no engine command runs, so sampling it
        between load steps costs nothing measurable).

        Raises:
            UsageUnavailableError: the container is not running, or its cgroup cannot be read
                from this process.
        """
        if self.cgroup is None:
            out = self.runner.command("inspect", "--format", "{{.State.Pid}}", self.id, timeout=60)
            pid = int(out.stdout.strip() or 0)
            if pid <= 0:
                raise base.UsageUnavailableError(
                    f"cannot read the CPU and memory use of {self.name}: it is not running"
                )
            self.cgroup = cgroup_of(pid)
        try:
            return self.cgroup.read()
        except (OSError, ValueError) as exc:
            raise base.UsageUnavailableError(
                f"cannot read the CPU and memory use of {self.name} from {self.cgroup.where}: "
                f"{exc}. Its cgroup goes when it exits: read usage before stopping it"
            ) from exc

    def logs(self) -> str:
        """The container's stdout and stderr so far."""
        proc = self.runner.command("logs", self.id, check=False, timeout=60)
        return (proc.stdout or "") + (proc.stderr or "")

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running container."""
        return self.runner.command("exec", self.id, *cmd, check=check, timeout=120)

    def tcp_table(self) -> str:
        """``/proc/net/tcp`` and ``tcp6`` as seen inside the container: its own sockets."""
        return self.exec("cat", "/proc/net/tcp", "/proc/net/tcp6", check=False).stdout or ""

    def state(self) -> base.ServerState:
        """Current status from ``inspect``."""
        out = self.runner.command("inspect", "--format", "{{json .State}}", self.id, timeout=60)
        data = json.loads(out.stdout)
        running = bool(data.get("Running"))
        code = data.get("ExitCode")
        return base.ServerState(
            status=str(data.get("Status", "")).lower(),
            running=running,
            exit_code=None if running or code is None else int(code),
            oom_killed=bool(data.get("OOMKilled")),
            error=str(data.get("Error") or ""),
        )

    def stop(self, timeout: float | None = None) -> base.StopResult:
        """Send SIGTERM, wait up to ``timeout`` seconds (default ``stop_timeout``), then
        SIGKILL. Returns the exit code and the seconds from SIGTERM to exit."""
        timeout = self.stop_timeout if timeout is None else timeout
        started = time.monotonic()
        killed = False
        self.runner.command("kill", "--signal", "TERM", self.id, check=False, timeout=60)
        code = self._wait(timeout)
        if code is None:
            killed = True
            self.runner.command("kill", "--signal", "KILL", self.id, check=False, timeout=60)
            code = self._wait(30)
        seconds = time.monotonic() - started
        if code is None:
            with contextlib.suppress(base.RunnerError):
                code = self.state().exit_code
        self.stopped = base.StopResult(exit_code=code, seconds=seconds, killed=killed)
        return self.stopped

    def stop_for_good(self, grace_s: float) -> float:
        """The engine's ``stop``, not ``kill``: the engine then knows the user stopped it and
        does not apply the restart policy."""
        started = time.monotonic()
        self.runner.command("stop", "--time", str(int(grace_s)), self.id, check=False, timeout=120)
        return time.monotonic() - started

    def _wait(self, timeout: float) -> int | None:
        """Exit code once the container has exited, or None if it still runs after timeout."""
        try:
            proc = self.runner.command("wait", self.id, check=False, timeout=max(timeout, 0.5))
        except base.RunnerError:  # timed out: still running
            return None
        text = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and text and text[-1].lstrip("-").isdigit():
            return int(text[-1])
        with contextlib.suppress(base.RunnerError):
            state = self.state()
            if not state.running:
                return state.exit_code
        return None

    def remove(self) -> None:
        """Remove the container (killing it if it still runs); never raises."""
        with contextlib.suppress(base.RunnerError):
            self.runner.command("rm", "-f", self.id, check=False, timeout=60)


# ------------------------------------------------------------- resource use --
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ResourceUsage:
    """A container's CPU and memory use so far, as its cgroup counts them."""

    cpu_seconds: float
    """CPU time all its processes used since it started (user and system)."""
    memory_bytes: int
    """Memory charged to it now (page cache included, as the memory limit counts it)."""
    peak_memory_bytes: int | None
    """The most memory charged to it at any moment; None where the kernel keeps no peak
    (cgroup v2 before Linux 5.19): sample ``memory_bytes`` instead."""
    throttled_seconds: float | None
    """Time its processes were held back because the CPU limit was spent (None: unknown)."""
    oom_kills: int | None
    """Processes the kernel killed in it for lack of memory (None: unknown). Counts a worker
    killed while the container lives on, which the engine's ``OOMKilled`` does not (and
    podman on cgroup v1 does not even set that for the main process)."""


@dataclass(frozen=True)
class Cgroup:
    """A process's cgroup files: v1 (a directory per controller) or v2 (one directory)."""

    version: int
    cpu_dir: Path
    """v1: the ``cpuacct`` controller's directory; v2: the cgroup's one directory."""
    memory_dir: Path
    throttle_dir: Path
    """v1: the ``cpu`` controller's directory (its ``cpu.stat`` counts throttling)."""

    @property
    def where(self) -> str:
        """The directories, for messages."""
        if self.version == 2:
            return f"cgroup v2 {self.cpu_dir}"
        return f"cgroup v1 {self.cpu_dir}, {self.memory_dir}"

    def read(self) -> ResourceUsage:
        """The counters now (``OSError`` once the cgroup is gone)."""
        if self.version == 2:
            stat = _keyed(self.cpu_dir / "cpu.stat")
            peak = self.memory_dir / "memory.peak"
            throttled = stat.get("throttled_usec")
            events = _keyed(self.memory_dir / "memory.events")
            return ResourceUsage(
                cpu_seconds=stat["usage_usec"] / 1e6,
                memory_bytes=_number(self.memory_dir / "memory.current"),
                peak_memory_bytes=_number(peak) if peak.exists() else None,
                throttled_seconds=None if throttled is None else throttled / 1e6,
                oom_kills=events.get("oom_kill"),
            )
        throttled_ns = _keyed(self.throttle_dir / "cpu.stat").get("throttled_time")
        return ResourceUsage(
            cpu_seconds=_number(self.cpu_dir / "cpuacct.usage") / 1e9,
            memory_bytes=_number(self.memory_dir / "memory.usage_in_bytes"),
            peak_memory_bytes=_number(self.memory_dir / "memory.max_usage_in_bytes"),
            throttled_seconds=None if throttled_ns is None else throttled_ns / 1e9,
            oom_kills=_keyed(self.memory_dir / "memory.oom_control").get("oom_kill"),
        )


def cgroup_of(pid: int, root: Path = CGROUP_ROOT) -> Cgroup:
    """The cgroup of process ``pid`` (as ``/proc/PID/cgroup`` names it) under ``root``.

    Raises:
        UsageUnavailableError: the process or its cgroup directories are not visible here
            (the engine runs in a VM or another PID namespace, or rootless without cgroup
            delegation).
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError as exc:
        raise base.UsageUnavailableError(
            f"cannot read /proc/{pid}/cgroup ({exc}): the container's process is not visible "
            "from here; measure on a Linux host whose container engine runs its containers "
            "there (not in a VM)"
        ) from exc
    v1: dict[str, tuple[str, str]] = {}
    unified = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers:
            v1.update({name: (controllers, path) for name in controllers.split(",")})
        else:
            unified = path
    found = None
    if "cpuacct" in v1 and "memory" in v1 and "cpu" in v1:
        found = Cgroup(
            1, _v1_dir(root, "cpuacct", v1), _v1_dir(root, "memory", v1), _v1_dir(root, "cpu", v1)
        )
    elif unified is not None and (root / "cgroup.controllers").exists():
        directory = root / unified.lstrip("/")
        found = Cgroup(2, directory, directory, directory)
    if found is None or not (found.cpu_dir.is_dir() and found.memory_dir.is_dir()):
        raise base.UsageUnavailableError(
            f"process {pid}'s cgroup ({'; '.join(lines)}) has no readable CPU and memory "
            f"counters under {root}: measure on a Linux host with a rootful engine, or a "
            "rootless one with cgroup v2 delegation"
        )
    return found


def _v1_dir(root: Path, controller: str, v1: Mapping[str, tuple[str, str]]) -> Path:
    """A v1 controller's directory: mounted as named in ``/proc/PID/cgroup`` (``cpu,cpuacct``)
    or by the controller's own name (systemd links each name to the joint mount)."""
    mount, path = v1[controller]
    base_dir = root / mount if (root / mount).is_dir() else root / controller
    return base_dir / path.lstrip("/")


def _number(path: Path) -> int:
    return int(path.read_text().strip())


def _keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (``cpu.stat``): ``key value`` per line."""
    pairs = (line.split() for line in path.read_text().splitlines())
    return {fields[0]: int(fields[1]) for fields in pairs if len(fields) == 2}


# ----------------------------------------------------------------- detection --
def detect_engine(name: str | None = None, *, refresh: bool = False) -> Engine:
    """Return a working engine: ``name``, else ``$TRAIN_TO_SERVE_CONTAINER_ENGINE``, else the
    first of docker, podman that answers.

    Raises ``RunnerNotFoundError`` naming each engine tried, why it failed, and the fix.
    """
    requested = name or os.environ.get(base.ENGINE_ENV, "").strip() or None
    if requested == base.PROCESS:
        raise base.RunnerNotFoundError(
            f"{base.ENGINE_ENV}={base.PROCESS} asks for process mode, which has no container "
            "engine to build or run images: set up podman or docker for that, and unset it"
        )
    if refresh:
        _detect.cache_clear()
    return _detect(requested, os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=8)
def _detect(requested: str | None, _path: str) -> Engine:
    candidates = [requested] if requested else list(ENGINES)
    probes = []
    for candidate in candidates:
        probe = _probe(candidate)
        if probe.engine is not None:
            engine = probe.engine
            logger.debug("container engine: %s %s (%s)", engine.name, engine.version, engine.path)
            passed_over = [p.why for p in probes if p.installed]
            if passed_over:  # installed but unusable: say why the next one is used
                logger.warning(
                    "container engine: %s (%s); passed over: %s",
                    engine.name,
                    engine.path,
                    "; ".join(passed_over),
                )
            return engine
        probes.append(probe)
    raise base.RunnerNotFoundError(
        "no working container engine. Tried"
        + (f" only {requested!r} (the one requested)" if requested else "")
        + ":\n  - "
        + "\n  - ".join(p.why for p in probes)
        + f"\nFix: {SETUP_HINT}."
        + (
            f" Or unset {base.ENGINE_ENV} to let the project choose."
            if os.environ.get(base.ENGINE_ENV)
            else ""
        )
    )


class Probe(NamedTuple):
    """One candidate engine tried by ``detect_engine``."""

    engine: Engine | None
    """The engine, when it works."""
    why: str = ""
    """Why it does not work, and the fix where one is known."""
    installed: bool = True
    """False when it is not on PATH at all."""


def _probe(candidate: str) -> Probe:
    path = _which(candidate)
    if path is None:
        return Probe(None, f"{candidate}: not found on PATH", installed=False)
    kind = "podman" if "podman" in Path(path).name else "docker"
    if kind == "podman":
        args = ["info", "--format", "{{.Version.Version}}"]
    else:
        args = ["version", "--format", "{{.Server.Version}}"]
    try:
        proc = subprocess.run(
            [path, *args],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(None, f"{candidate} ({path}): `{' '.join(args[:1])}` failed: {exc}")
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        why = base.tail_lines(proc.stderr or proc.stdout, 3).replace("\n", " ")
        why = why or f"exit {proc.returncode}"
        return Probe(None, f"{candidate} ({path}): `{candidate} {args[0]}` failed: {why}")
    engine = Engine(name=kind, path=path, version=version)
    failure = _build_failure(engine)
    if failure:
        return Probe(
            None,
            f"{candidate} ({path}, server {version}) answers but cannot build with BuildKit "
            f"secret and cache mounts, which serving_image/Dockerfile needs: {failure}. "
            f"Fix: {BUILDKIT_FIX}",
        )
    return Probe(engine)


def _build_failure(engine: Engine) -> str:
    """Why ``engine`` cannot build what our Dockerfiles need, or ``""`` when it can.

    podman builds with buildah in its own process, which has every mount kind they use.
    docker hands builds to BuildKit, which may be missing: built into the 20.10 CLI, the buildx
    plugin from 23.0 on, and refused by a daemon without it (podman's Docker-compatible
    socket). So docker builds ``BUILD_CHECK_DOCKERFILE`` for real (under 0.1 s).
    """
    if engine.name != "docker":
        return ""
    with tempfile.TemporaryDirectory(prefix="tts-build-check-") as scratch:
        context = Path(scratch)
        (context / "Dockerfile").write_text(BUILD_CHECK_DOCKERFILE)
        secret = context / "secret"
        secret.write_text("")
        args = ["build", "-q", "-t", BUILD_CHECK_TAG, "--secret", f"id=check,src={secret}"]
        try:
            proc = engine.command(
                *args, str(context), check=False, timeout=60, env=engine.build_env
            )
        except base.RunnerError as exc:  # timed out
            return str(exc)
    if proc.returncode == 0:
        return ""
    return base.tail_lines(proc.stderr or proc.stdout, 4).replace("\n", " ") or (
        f"`docker build` exit {proc.returncode}"
    )


def _run_hint(stderr: str) -> str:
    if "address already in use" in stderr:
        return "a host port is taken; ports are random here, so retry"
    if "rlimit" in stderr and "not permitted" in stderr:
        return f"podman's default ulimits exceed the host's hard limits; {SETUP_HINT}"
    if "hybrid mode" in stderr:
        return f"crun cannot run on this cgroup v1 host; {SETUP_HINT} (it selects runc)"
    if "no such image" in stderr.lower() or "image not known" in stderr or "pull" in stderr:
        return "the image is not in the local store: build it first"
    return f"see the error above; {SETUP_HINT}"
