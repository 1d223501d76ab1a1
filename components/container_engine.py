"""Build and run container images with podman or docker, driven through their command line.

Used by the build-image and contract-check components and by the tests. No kfp here: the CLI
is the measured path (kfp's DockerRunner over podman's Docker-compatible socket is not
reliable), and this module only needs the standard library.

* ``detect_engine()`` finds a working engine: ``TRAIN_TO_SERVE_CONTAINER_ENGINE`` (``docker``,
  ``podman`` or a path) if set, else docker, then podman. When none works the error names what
  was tried, why each failed, and the fix (``scripts/setup-container-engine.sh``).
* ``choose_base_image(engine)`` picks the serving image's ``BASE_IMAGE``:
  ``TRAIN_TO_SERVE_BASE_IMAGE`` if set; else ``docker.io/library/python:3.11-slim`` when it is
  present or can be pulled; else ``localhost/train-to-serve-python:3.11``, the Debian-based
  stand-in that the set-up script builds on machines that cannot reach Docker Hub.
* ``assemble_build_context(dest, model_dir)`` lays out a build context: the serving image's
  ``Dockerfile``, ``requirements.txt``, the ``server/`` package and, optionally, a model
  directory as ``model/`` (baked into the image at ``/model``).
* ``Engine.build(...)`` streams the engine's output line by line to a callback, passes the
  host's CA bundle as the build secret ``ca`` (pip behind a TLS-intercepting proxy), and on
  failure raises ``BuildError`` carrying the failing step and the output's tail.
* ``Engine.run(...)`` starts a container detached, its ports published on random
  ``127.0.0.1`` host ports, and returns a ``Container``: ``host_port``, ``url``,
  ``wait_for_http()``, ``logs()``, ``exec()``, ``state()``, ``stop(timeout)`` (SIGTERM, then
  SIGKILL after the timeout; returns the exit code and the seconds taken) and ``remove()``;
  it is also a context manager.
* Process mode (``components/server_process.py``), where no engine works:
  ``TRAIN_TO_SERVE_CONTAINER_ENGINE=process`` or ``detect_engine("process")`` gives a
  ``ProcessEngine``, whose ``run`` starts the serving server as a local process and returns a
  handle with the same methods as ``Container``. It checks less than a container does (see
  that module).

Example::

    engine = detect_engine()
    context = assemble_build_context(tmp / "ctx", model_dir=tmp / "model")
    result = engine.build(context, "localhost/my-model:1",
                          {"BASE_IMAGE": choose_base_image(engine)}, on_line=print)
    with engine.run(result.image_id, env={"AIP_HTTP_PORT": "8080"}, ports=[8080]) as box:
        box.wait_for_http("/health")
        ...
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ENGINE_ENV = "TRAIN_TO_SERVE_CONTAINER_ENGINE"
"""Environment variable naming the engine to use (``docker``, ``podman``, a path, or
``process``: process mode)."""
BASE_IMAGE_ENV = "TRAIN_TO_SERVE_BASE_IMAGE"
"""Environment variable naming the base image to build the serving image from."""
CA_BUNDLE_ENV = "TRAIN_TO_SERVE_CA_BUNDLE"
"""Environment variable naming the CA bundle to give builds (``""`` or ``none``: give none)."""
PULL_TIMEOUT_ENV = "TRAIN_TO_SERVE_PULL_TIMEOUT"
"""Seconds allowed for pulling the registry base image (default 30)."""

PROCESS = "process"
"""The engine name (and ``TRAIN_TO_SERVE_CONTAINER_ENGINE`` value) of process mode."""
ENGINES = ("docker", "podman")
"""Engines tried, in this order, when ``TRAIN_TO_SERVE_CONTAINER_ENGINE`` is not set."""
REGISTRY_BASE_IMAGE = "docker.io/library/python:3.11-slim"
LOCAL_BASE_IMAGE = "localhost/train-to-serve-python:3.11"
"""Built by ``scripts/setup-container-engine.sh`` where Docker Hub cannot be reached."""
SETUP_HINT = (
    "run scripts/setup-container-engine.sh from the repository root (as root, or as a user "
    "with sudo) to install and configure podman and the base image; or start Docker"
)
CA_BUNDLE_CANDIDATES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # macOS, some BSDs
)
CA_SECRET_ID = "ca"
"""Build secret id the Dockerfile reads (``RUN --mount=type=secret,id=ca``)."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL = "io.train-to-serve.managed"
"""Label put on containers started here (``podman ps -a --filter label=...`` finds leftovers)."""

_STEP_RE = re.compile(r"^(?:\[\d+/\d+\] )?STEP \d+/\d+: |^#\d+ \[[^\]]+\] ")


class ContainerEngineError(RuntimeError):
    """A container engine is missing, or one of its commands failed; the message says why."""


class EngineNotFoundError(ContainerEngineError):
    """No working container engine was found."""


class BuildError(ContainerEngineError):
    """An image build failed. ``step`` is the failing step's line, ``output_tail`` the last
    lines of the build output."""

    def __init__(self, message: str, *, step: str = "", output_tail: str = "", returncode: int = 1):
        super().__init__(message)
        self.step = step
        self.output_tail = output_tail
        self.returncode = returncode


class ContainerRunError(ContainerEngineError):
    """A container did not start, exited early, or never answered."""


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
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


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass(frozen=True)
class BuildResult:
    """What ``Engine.build`` made."""

    image_id: str
    """Content-addressed id, ``sha256:...``; usable wherever an image name is."""
    tag: str
    seconds: float
    steps: int = 0
    """Build steps seen in the output."""
    cached_steps: int = 0
    """Of those, steps answered from the layer cache."""


@dataclass(frozen=True)
class StopResult:
    """How a container stopped."""

    exit_code: int | None
    seconds: float
    """From sending SIGTERM until the container had exited."""
    killed: bool
    """True when it outlived the timeout and got SIGKILL."""


@dataclass(frozen=True)
class ContainerState:
    """The engine's view of a container (``inspect``)."""

    status: str
    running: bool
    exit_code: int | None
    oom_killed: bool = False
    error: str = ""


@dataclass(frozen=True)
class Engine:
    """A working container engine CLI."""

    name: str
    """``docker`` or ``podman``."""
    path: str
    version: str

    # ---------------------------------------------------------------- plumbing --
    def command(
        self,
        *args: str,
        timeout: float | None = 120,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<engine> args...`` and capture its output (stderr folded into ``stderr``).

        Raises ``ContainerEngineError`` with the command and its error output when ``check``
        and the command fails or times out.
        """
        argv = [self.path, *args]
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=_child_env(env),
                stdin=None if input is not None else subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ContainerEngineError(
                f"`{self.name} {' '.join(args[:3])} ...` did not finish within {timeout} s"
            ) from exc
        if check and proc.returncode != 0:
            raise ContainerEngineError(
                f"`{self.name} {' '.join(args)}` failed (exit {proc.returncode}): "
                f"{_tail(proc.stderr or proc.stdout, 8)}"
            )
        return proc

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
        return _normalise_id(proc.stdout.strip())

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
        except ContainerEngineError as exc:
            logger.info("pull %s: %s", ref, exc)
            return False
        if proc.returncode != 0:
            logger.info("pull %s failed: %s", ref, _tail(proc.stderr, 2))
        return proc.returncode == 0

    def remove_image(self, ref: str) -> None:
        """Remove an image if it exists (errors such as "in use" are logged, not raised)."""
        proc = self.command("image", "rm", ref, check=False, timeout=120)
        if proc.returncode != 0:
            logger.debug("image rm %s: %s", ref, _tail(proc.stderr, 2))

    # ------------------------------------------------------------------- build --
    def build(
        self,
        context_dir: str | Path,
        tag: str,
        build_args: Mapping[str, str] | None = None,
        *,
        dockerfile: str | Path | None = None,
        on_line: Callable[[str], None] | None = None,
        ca_bundle: str | Path | bool | None = True,
        labels: Mapping[str, str] | None = None,
        timeout: float = 3600,
        extra_args: Sequence[str] = (),
    ) -> BuildResult:
        """Build ``context_dir`` into ``tag`` and return the new image's id.

        Args:
            context_dir: the build context (see ``assemble_build_context``).
            tag: the image name to give it, e.g. ``localhost/penguins-server:1``.
            build_args: ``--build-arg`` values, e.g. ``{"BASE_IMAGE": ...}``.
            dockerfile: the Dockerfile, default ``<context_dir>/Dockerfile``.
            on_line: called with every output line (without newline) as it arrives;
                default: log each at DEBUG.
            ca_bundle: CA bundle to give the build as secret ``ca``: True finds the host's
                (``find_ca_bundle``), a path uses that one, False/None gives none.
            labels: ``--label`` values for the image.
            timeout: seconds before the build is killed.
            extra_args: more engine arguments, placed before the context.

        Raises:
            BuildError: the build failed or timed out; the message holds the failing step,
                the output's last lines and a hint when the cause is recognised.
        """
        context = Path(context_dir)
        if not context.is_dir():
            raise BuildError(f"build context {context} is not a directory")
        args = ["build", "-t", tag]
        if dockerfile is not None:
            args += ["-f", str(dockerfile)]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        for key, value in (labels or {}).items():
            args += ["--label", f"{key}={value}"]
        ca = find_ca_bundle() if ca_bundle is True else (Path(ca_bundle) if ca_bundle else None)
        if ca is not None:
            if not ca.is_file():
                raise BuildError(
                    f"CA bundle {ca} does not exist (set {CA_BUNDLE_ENV} or pass None)"
                )
            args += ["--secret", f"id={CA_SECRET_ID},src={ca}"]
        env: dict[str, str] = {}
        if self.name == "docker":
            env["DOCKER_BUILDKIT"] = "1"  # RUN --mount and --secret need BuildKit
            args += ["--progress=plain"]
        with tempfile.TemporaryDirectory(prefix="tts-build-") as scratch:
            iidfile = Path(scratch) / "iid"
            args += ["--iidfile", str(iidfile), *extra_args, str(context)]
            started = time.monotonic()
            rc, step, tail, steps, cached = self._stream(args, env, on_line, timeout)
            seconds = time.monotonic() - started
            if rc != 0:
                raise BuildError(
                    _build_failure_message(self.name, tag, rc, step, tail, seconds),
                    step=step,
                    output_tail=tail,
                    returncode=rc,
                )
            image_id = iidfile.read_text().strip() if iidfile.exists() else ""
        image_id = _normalise_id(image_id) if image_id else (self.image_id(tag) or "")
        if not image_id:
            raise BuildError(f"{self.name} build of {tag} reported success but left no image id")
        return BuildResult(image_id, tag, seconds, steps, cached)

    def _stream(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        on_line: Callable[[str], None] | None,
        timeout: float,
    ) -> tuple[int, str, str, int, int]:
        """Run a command, feeding each output line to ``on_line``; return (rc, last step line,
        output tail, steps seen, cached steps)."""
        emit = on_line or (lambda line: logger.debug("%s", line))
        tail: deque[str] = deque(maxlen=60)
        step, steps, cached = "", 0, 0
        deadline = time.monotonic() + timeout
        with subprocess.Popen(
            [self.path, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            bufsize=1,
            env=_child_env(env),
        ) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                if _STEP_RE.search(line):
                    step, steps = line, steps + 1
                if "Using cache" in line or line.endswith(" CACHED"):
                    cached += 1
                emit(line)
                if time.monotonic() > deadline:
                    proc.kill()
                    tail.append(f"[killed: the build ran longer than {timeout:.0f} s]")
                    break
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                tail.append(f"[killed: the build ran longer than {timeout:.0f} s]")
        return rc, step, "\n".join(tail), steps, cached

    # --------------------------------------------------------------------- run --
    def run(
        self,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        ports: Iterable[int] = (8080,),
        volumes: Iterable[tuple[str | Path, str] | tuple[str | Path, str, str]] = (),
        init: bool = True,
        name: str | None = None,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        stop_timeout: float = 10.0,
    ) -> Container:
        """Start ``image`` detached and return its ``Container``.

        Args:
            image: image name or id.
            env: environment variables for the container.
            ports: container ports to publish, each on a random ``127.0.0.1`` host port.
            volumes: ``(host_path, container_path[, mode])`` bind mounts; mode defaults
                to ``ro``.
            init: run a tiny init as PID 1 (``--init``) that forwards signals and reaps
                zombies. Vertex AI runs images without one; pass False to test that.
            name: container name, default ``tts-<random>``.
            command: arguments replacing the image's ``CMD``.
            extra_args: more ``run`` arguments, placed before the image.
            stop_timeout: SIGTERM-to-SIGKILL time used when the context manager exits.
        """
        name = name or f"tts-{uuid.uuid4().hex[:12]}"
        args = ["run", "-d", "--name", name, "--label", f"{LABEL}=1"]
        if init:
            args.append("--init")
        port_list = list(ports)
        for port in port_list:
            args += ["-p", f"127.0.0.1::{int(port)}"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        for volume in volumes:
            host, target, *rest = volume
            mode = rest[0] if rest else "ro"
            args += ["-v", f"{Path(host).resolve()}:{target}:{mode}"]
        args += [*extra_args, image, *(command or ())]
        started = time.monotonic()
        proc = self.command(*args, check=False, timeout=180)
        if proc.returncode != 0:
            self.command("rm", "-f", name, check=False, timeout=60)
            raise ContainerRunError(
                f"`{self.name} run {image}` failed (exit {proc.returncode}): "
                f"{_tail(proc.stderr, 10)}\nhint: {_run_hint(proc.stderr)}"
            )
        container = Container(
            engine=self,
            id=proc.stdout.strip().splitlines()[-1],
            name=name,
            image=image,
            started_at=started,
            stop_timeout=stop_timeout,
        )
        try:
            for port in port_list:
                container.ports[port] = container._lookup_port(port)
        except ContainerEngineError:
            container.remove()
            raise
        return container

    def attach(self, container_id: str, name: str, image: str) -> Container:
        """A handle on a container started earlier, possibly by another process."""
        return Container(self, container_id, name, image, 0.0)

    def labelled(self, label: str) -> list[str]:
        """Ids of the containers, running or not, that carry ``label`` (``key=value``)."""
        out = self.command("ps", "-a", "-q", "--filter", f"label={label}", timeout=60).stdout
        return out.split()


@dataclass
class Container:
    """A container started by ``Engine.run``; a context manager that stops and removes it."""

    engine: Engine
    id: str
    name: str
    image: str
    started_at: float
    """``time.monotonic()`` just before ``run`` was called."""
    stop_timeout: float = 10.0
    ports: dict[int, int] = field(default_factory=dict)
    """Container port -> published ``127.0.0.1`` host port."""
    stopped: StopResult | None = None

    @property
    def host_port(self) -> int:
        """The host port of the first published container port."""
        if not self.ports:
            raise ContainerEngineError(f"container {self.name} publishes no ports")
        return next(iter(self.ports.values()))

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<host_port>`` (IPv4: IPv6 loopback is not forwarded by podman)."""
        return f"http://127.0.0.1:{self.host_port}"

    def _lookup_port(self, port: int) -> int:
        out = self.engine.command("port", self.id, f"{port}/tcp", timeout=60).stdout
        for line in out.splitlines():
            host, _, number = line.strip().rpartition(":")
            if number.isdigit() and host in ("127.0.0.1", "0.0.0.0", ""):
                return int(number)
        raise ContainerEngineError(
            f"{self.engine.name} port {self.name} {port}: no host port in {out!r}"
        )

    def logs(self, tail: int | None = None) -> str:
        """The container's stdout and stderr so far (the last ``tail`` lines if given)."""
        args = ["logs"]
        if tail is not None:
            args += ["--tail", str(tail)]
        proc = self.engine.command(*args, self.id, check=False, timeout=60)
        return (proc.stdout or "") + (proc.stderr or "")

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running container."""
        return self.engine.command("exec", self.id, *cmd, check=check, timeout=120)

    def tcp_table(self) -> str:
        """``/proc/net/tcp`` and ``tcp6`` as seen inside the container: its own sockets
        (``""`` when they cannot be read)."""
        return self.exec("cat", "/proc/net/tcp", "/proc/net/tcp6", check=False).stdout or ""

    def state(self) -> ContainerState:
        """Current status from ``inspect``."""
        out = self.engine.command("inspect", "--format", "{{json .State}}", self.id, timeout=60)
        data = json.loads(out.stdout)
        running = bool(data.get("Running"))
        code = data.get("ExitCode")
        return ContainerState(
            status=str(data.get("Status", "")).lower(),
            running=running,
            exit_code=None if running or code is None else int(code),
            oom_killed=bool(data.get("OOMKilled")),
            error=str(data.get("Error") or ""),
        )

    def wait_for_http(
        self,
        path: str = "/",
        *,
        timeout: float = 120.0,
        status: int = 200,
        interval: float = 0.1,
        port: int | None = None,
    ) -> float:
        """Poll ``GET path`` until it answers ``status``; return the seconds since ``run``.

        Raises ``ContainerRunError`` (with the container's last log lines) when the container
        exits first or ``timeout`` passes.
        """
        host_port = self.ports[port] if port is not None else self.host_port
        url = f"http://127.0.0.1:{host_port}{path}"
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        checks = 0
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    code = response.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            except (OSError, ValueError) as exc:  # refused, reset, timed out
                code = None
                last = f"{type(exc).__name__}: {exc}"
            if code == status:
                return time.monotonic() - self.started_at
            if code is not None:
                last = f"HTTP {code}"
            checks += 1
            if checks % 10 == 0 or time.monotonic() >= deadline:
                state = self.state()
                if not state.running:
                    raise ContainerRunError(
                        f"container {self.name} ({self.image}) exited with code "
                        f"{state.exit_code} before GET {path} answered {status}"
                        f"{' (out of memory)' if state.oom_killed else ''}; its last log lines:\n"
                        f"{self.logs(tail=40)}"
                    )
            if time.monotonic() >= deadline:
                raise ContainerRunError(
                    f"GET {url} did not answer {status} within {timeout:.0f} s (last: {last}); "
                    f"container {self.name} last log lines:\n{self.logs(tail=40)}"
                )
            time.sleep(interval)

    def stop(self, timeout: float | None = None) -> StopResult:
        """Send SIGTERM, wait up to ``timeout`` seconds (default ``stop_timeout``), then
        SIGKILL. Returns the exit code and the seconds from SIGTERM to exit."""
        timeout = self.stop_timeout if timeout is None else timeout
        started = time.monotonic()
        killed = False
        self.engine.command("kill", "--signal", "TERM", self.id, check=False, timeout=60)
        code = self._wait(timeout)
        if code is None:
            killed = True
            self.engine.command("kill", "--signal", "KILL", self.id, check=False, timeout=60)
            code = self._wait(30)
        seconds = time.monotonic() - started
        if code is None:
            with contextlib.suppress(ContainerEngineError):
                code = self.state().exit_code
        self.stopped = StopResult(exit_code=code, seconds=seconds, killed=killed)
        return self.stopped

    def stop_for_good(self, grace_s: float) -> float:
        """Stop a long-running container (SIGTERM, SIGKILL after ``grace_s``); return the
        seconds it took.

        The engine's ``stop``, not ``kill``: the engine then knows the user stopped it and does
        not apply the restart policy.
        """
        started = time.monotonic()
        self.engine.command("stop", "--time", str(int(grace_s)), self.id, check=False, timeout=120)
        return time.monotonic() - started

    def _wait(self, timeout: float) -> int | None:
        """Exit code once the container has exited, or None if it still runs after timeout."""
        try:
            proc = self.engine.command("wait", self.id, check=False, timeout=max(timeout, 0.5))
        except ContainerEngineError:  # timed out: still running
            return None
        text = proc.stdout.strip().splitlines()
        if proc.returncode == 0 and text and text[-1].lstrip("-").isdigit():
            return int(text[-1])
        with contextlib.suppress(ContainerEngineError):
            state = self.state()
            if not state.running:
                return state.exit_code
        return None

    def remove(self) -> None:
        """Remove the container (killing it if it still runs); never raises."""
        with contextlib.suppress(ContainerEngineError):
            self.engine.command("rm", "-f", self.id, check=False, timeout=60)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.stopped is None:
                with contextlib.suppress(ContainerEngineError):
                    if self.state().running:
                        self.stop()
        finally:
            self.remove()


# ----------------------------------------------------------------- detection --
def detect_engine(name: str | None = None, *, refresh: bool = False) -> Engine:
    """Return a working engine: ``name``, else ``$TRAIN_TO_SERVE_CONTAINER_ENGINE``, else the
    first of docker, podman that answers. ``process`` gives the ``ProcessEngine`` of process
    mode, and only when asked for by name.

    Raises ``EngineNotFoundError`` naming each engine tried, why it failed, and the fix.
    """
    requested = name or os.environ.get(ENGINE_ENV, "").strip() or None
    if requested == PROCESS:
        from components.server_process import ProcessEngine

        return ProcessEngine.create()
    if refresh:
        _detect.cache_clear()
    return _detect(requested, os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=8)
def _detect(requested: str | None, _path: str) -> Engine:
    candidates = [requested] if requested else list(ENGINES)
    reasons = []
    for candidate in candidates:
        engine, why = _probe(candidate)
        if engine is not None:
            logger.debug("container engine: %s %s (%s)", engine.name, engine.version, engine.path)
            return engine
        reasons.append(why)
    raise EngineNotFoundError(
        "no working container engine. Tried"
        + (f" only {requested!r} (the one requested)" if requested else "")
        + ":\n  - "
        + "\n  - ".join(reasons)
        + f"\nFix: {SETUP_HINT}."
        + (
            f" Or unset {ENGINE_ENV} to let the project choose."
            if os.environ.get(ENGINE_ENV)
            else ""
        )
    )


def _probe(candidate: str) -> tuple[Engine | None, str]:
    path = _which(candidate)
    if path is None:
        return None, f"{candidate}: not found on PATH"
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
            env=_child_env(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{candidate} ({path}): `{' '.join(args[:1])}` failed: {exc}"
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        why = _tail(proc.stderr or proc.stdout, 3).replace("\n", " ") or f"exit {proc.returncode}"
        return None, f"{candidate} ({path}): `{candidate} {args[0]}` failed: {why}"
    return Engine(name=kind, path=path, version=version), ""


_BASE_CACHE: dict[tuple[str, str], str] = {}


def choose_base_image(engine: Engine, *, pull_timeout: float | None = None) -> str:
    """The ``BASE_IMAGE`` to build the serving image from (see the module docstring).

    Raises ``ContainerEngineError`` when neither base image can be had.
    """
    forced = os.environ.get(BASE_IMAGE_ENV, "").strip()
    if forced:
        return forced
    key = (engine.path, engine.name)
    if key in _BASE_CACHE:
        return _BASE_CACHE[key]
    if pull_timeout is None:
        pull_timeout = float(os.environ.get(PULL_TIMEOUT_ENV, "") or 30)
    if engine.image_exists(REGISTRY_BASE_IMAGE) or engine.pull(REGISTRY_BASE_IMAGE, pull_timeout):
        choice = REGISTRY_BASE_IMAGE
    elif engine.image_exists(LOCAL_BASE_IMAGE):
        choice = LOCAL_BASE_IMAGE
    else:
        raise ContainerEngineError(
            f"no base image for the serving image: {REGISTRY_BASE_IMAGE} cannot be pulled and "
            f"{LOCAL_BASE_IMAGE} does not exist in {engine.name}'s image store. Fix: {SETUP_HINT} "
            f"(it builds {LOCAL_BASE_IMAGE} from Debian packages), or set {BASE_IMAGE_ENV}."
        )
    _BASE_CACHE[key] = choice
    return choice


def find_ca_bundle() -> Path | None:
    """The host's CA bundle to hand to builds: ``$TRAIN_TO_SERVE_CA_BUNDLE`` (``""`` or
    ``none`` turns it off), else ``PIP_CERT``/``REQUESTS_CA_BUNDLE``/``SSL_CERT_FILE`` if they
    name a file, else the usual system locations."""
    forced = os.environ.get(CA_BUNDLE_ENV)
    if forced is not None:
        forced = forced.strip()
        return Path(forced) if forced and forced.lower() != "none" else None
    for var in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = os.environ.get(var, "").strip()
        if value and Path(value).is_file():
            return Path(value)
    for candidate in CA_BUNDLE_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


# -------------------------------------------------------------- build context --
def serving_image_dir() -> Path:
    """The ``serving_image`` directory (Dockerfile, requirements.txt, server/)."""
    import serving_image  # a plain package; importing it loads nothing else

    return Path(serving_image.__file__).resolve().parent


def assemble_build_context(
    dest: str | Path,
    model_dir: str | Path | None = None,
    *,
    source_dir: str | Path | None = None,
) -> Path:
    """Lay out a serving-image build context in ``dest`` and return it.

    ``dest`` gets the ``Dockerfile``, ``.dockerignore`` (when present), the
    ``requirements*.txt`` files (the ``FRAMEWORK`` build argument picks among them) and the
    ``server/`` package from ``source_dir`` (default: ``serving_image_dir()``), and,
    when ``model_dir`` is given, a copy of it as ``model/`` (baked into the image at
    ``/model``). Without a model the image loads one from ``AIP_STORAGE_URI`` at start.
    ``dest`` must not exist or be empty.
    """
    source = Path(source_dir) if source_dir is not None else serving_image_dir()
    out = Path(dest)
    if out.exists() and any(out.iterdir()):
        raise ContainerEngineError(f"build context directory {out} is not empty")
    missing = [n for n in ("Dockerfile", "requirements.txt", "server") if not (source / n).exists()]
    if missing:
        raise ContainerEngineError(
            f"{source} lacks {missing}: the serving image sources are incomplete"
        )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "Dockerfile", out / "Dockerfile")
    for requirements in sorted(source.glob("requirements*.txt")):
        shutil.copy2(requirements, out / requirements.name)
    if (source / ".dockerignore").is_file():
        shutil.copy2(source / ".dockerignore", out / ".dockerignore")
    shutil.copytree(
        source / "server", out / "server", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    if model_dir is not None:
        model = Path(model_dir)
        if not model.is_dir():
            raise ContainerEngineError(f"model directory {model} does not exist")
        shutil.copytree(model, out / "model")
    return out


def build_serving_image(
    engine: Engine,
    tag: str,
    model_dir: str | Path | None = None,
    *,
    base_image: str | None = None,
    on_line: Callable[[str], None] | None = None,
    build_args: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    source_dir: str | Path | None = None,
    timeout: float = 3600,
    framework: str = "",
) -> BuildResult:
    """Assemble a context (``assemble_build_context``) in a temporary directory and build it
    with ``BASE_IMAGE`` from ``choose_base_image`` unless ``base_image`` is given, and
    ``FRAMEWORK`` (the Dockerfile's choice of requirements) from ``framework``, else from
    ``model_dir``'s manifest, else the Dockerfile's default (scikit-learn)."""
    if not framework and model_dir is not None:
        from serving_image.server import manifest

        framework = str(manifest.read_manifest(model_dir)["framework"])
    args = {
        "BASE_IMAGE": base_image or choose_base_image(engine),
        **({"FRAMEWORK": framework} if framework else {}),
        **(build_args or {}),
    }
    with tempfile.TemporaryDirectory(prefix="tts-context-") as scratch:
        context = assemble_build_context(
            Path(scratch) / "context", model_dir, source_dir=source_dir
        )
        return engine.build(context, tag, args, on_line=on_line, labels=labels, timeout=timeout)


# ------------------------------------------------------------------- helpers --
def _normalise_id(image_id: str) -> str:
    image_id = image_id.strip()
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def _build_failure_message(
    engine: str, tag: str, rc: int, step: str, tail: str, seconds: float
) -> str:
    hints = []
    tls_failure = "CERTIFICATE_VERIFY_FAILED" in tail or "certificate verify failed" in tail
    if tls_failure:
        hints.append(
            "TLS to PyPI is intercepted and the build has no CA that trusts it: set "
            f"{CA_BUNDLE_ENV} to the CA bundle that does (the build gets it as secret "
            f"'{CA_SECRET_ID}')"
        )
    if "pinging container registry" in tail or "no such host" in tail or "pull access" in tail:
        hints.append(
            "the base image cannot be pulled; build from a local one: "
            f"{SETUP_HINT}, and pass BASE_IMAGE=choose_base_image(engine)"
        )
    if not tls_failure and (
        "No matching distribution" in tail or "Could not find a version" in tail
    ):
        hints.append(
            "pip cannot find a pinned requirement for the base image's Python; check "
            "serving_image/requirements.txt against Python 3.11"
        )
    if "--secret" in tail and "BuildKit" in tail:
        hints.append("docker needs BuildKit for --secret (Docker 23+, or DOCKER_BUILDKIT=1)")
    if "no space left" in tail.lower():
        hints.append(f"the disk is full: free space, e.g. `{engine} image prune`")
    message = (
        f"{engine} build of {tag} failed (exit {rc}) after {seconds:.1f} s"
        + (f" at step: {step}" if step else "")
        + f"\n--- last lines of the build output ---\n{tail}"
    )
    if hints:
        message += "\n--- likely cause ---\n" + "\n".join(f"* {h}" for h in hints)
    return message


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
