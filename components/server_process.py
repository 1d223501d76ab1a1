"""Process mode: the model server as a local process, where no container engine works.

A Vertex AI Pipelines task has no podman or docker, and neither has every workstation. Process
mode runs the same server code (``python -m serving_image.server``, with this interpreter and
its libraries) with the same environment Vertex gives the container, so that the contract
check, a local endpoint and a local batch job still work there, through the same functions:

* ``ProcessEngine`` (``detect_engine("process")``, or ``TRAIN_TO_SERVE_CONTAINER_ENGINE=process``)
  has ``Engine.run``'s signature. ``run`` records the image but does not use it; it starts the
  server in its own session with the given environment, replaces a volume's container path in
  the environment's values with its host path (``AIP_STORAGE_URI=/mnt/model`` becomes the
  model directory), listens on the host port that ``-p 127.0.0.1:HOST:PORT`` in
  ``extra_args`` names (else a free one) and sets ``AIP_HTTP_PORT`` to it.
* ``ProcessContainer`` is the handle, with ``Container``'s methods (``logs``, ``state``,
  ``stop``, ``stop_for_good``, ``exec``, ``tcp_table``, ``wait_for_http``, ``remove``,
  ``ports``, ``url``). The server's output goes to a log file and its pid, labels and ports to
  a state file, both under ``runtime_dir()``: a detached server (a local endpoint) outlives
  the process that started it, and a later one (``compile.py endpoints list|undeploy``) finds
  it with ``ProcessEngine.attach`` or ``labelled``.

It checks less than a container does, and says so wherever it is used: the image itself (its
entrypoint, installed dependencies, user, size, a baked-in model) is not run; the volume is not
read-only; no restart policy; a process has no network namespace, so the server listens on all
of this host's interfaces on the chosen port; an exit status is known to the process that
started the server, or once that one saw it end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from components.container_engine import (
    PROCESS,
    BuildResult,
    Container,
    ContainerEngineError,
    ContainerRunError,
    ContainerState,
    Engine,
    EngineNotFoundError,
    StopResult,
)

PROCESS_DIR_ENV = "TRAIN_TO_SERVE_PROCESS_DIR"
"""Directory of the servers' state and log files (default: ``<tmp>/train-to-serve-<uid>``)."""
SERVER_MODULE = "serving_image.server"
SERVER_MODULES = ("gunicorn", "uvicorn", "uvicorn_worker")
"""What the server imports beyond the project's own dependencies: the ``serve`` extra."""
DEFAULT_PORT = 8080
"""``AIP_HTTP_PORT`` when the environment sets none (the server's default)."""
POLL_S = 0.05


def runtime_dir() -> Path:
    """Where state and log files live: ``$TRAIN_TO_SERVE_PROCESS_DIR``, else a per-user
    directory in the temporary directory (created, owner-only)."""
    forced = os.environ.get(PROCESS_DIR_ENV, "").strip()
    directory = (
        Path(forced) if forced else Path(tempfile.gettempdir()) / f"train-to-serve-{os.getuid()}"
    )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def image_reference(manifest: Mapping[str, Any]) -> str:
    """What ``build_image`` returns in process mode, where nothing is built:
    ``process:serving_image@<first 12 of the model's sha256>``."""
    return f"{PROCESS}:serving_image@{str(manifest['model_sha256'])[:12]}"


@dataclass(frozen=True)
class ProcessEngine(Engine):
    """Process mode's stand-in for a container engine: ``run`` starts the server as a local
    process. It builds nothing and has no engine command line."""

    @classmethod
    def create(cls) -> ProcessEngine:
        """The process engine, once the server's own dependencies are importable.

        Raises:
            EngineNotFoundError: the ``serve`` extra is not installed.
        """
        missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise EngineNotFoundError(
                f"process mode runs `{sys.executable} -m {SERVER_MODULE}`, which needs "
                f"{', '.join(missing)}: install the serve extra (`pip install '.[serve]'`)"
            )
        return cls(name=PROCESS, path=PROCESS, version=f"python {platform.python_version()}")

    def command(
        self,
        *args: str,
        timeout: float | None = 120,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> NoReturn:
        """There is no engine command line in process mode: always raises."""
        raise ContainerEngineError(
            f"process mode has no container engine to run `{' '.join(args[:3])}`: set up podman "
            "or docker for that"
        )

    def build(self, context_dir: str | Path, tag: str, *args: Any, **kwargs: Any) -> BuildResult:
        """Process mode builds no image: always raises."""
        raise ContainerEngineError(
            f"process mode builds no image (asked for {tag}): the server runs from this "
            "checkout; set up podman or docker to build one"
        )

    def run(
        self,
        image: str,
        *,
        env: Mapping[str, str] | None = None,
        ports: Iterable[int] = (DEFAULT_PORT,),
        volumes: Iterable[tuple[str | Path, str] | tuple[str | Path, str, str]] = (),
        init: bool = True,
        name: str | None = None,
        command: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        stop_timeout: float = 10.0,
    ) -> ProcessContainer:
        """Start the server as a local process in its own session; see the module docstring.

        ``image`` is recorded, not run; ``init`` does not apply. ``extra_args`` may hold
        ``-p 127.0.0.1:HOST:PORT``, ``--label KEY=VALUE`` and ``--restart POLICY`` (not
        applied: no restarts in process mode).

        Raises:
            ContainerRunError: a command or entrypoint was given (only the server runs here),
                another port or argument was asked for, no model directory is named by
                ``AIP_STORAGE_URI``, or the host port is taken ("address already in use").
        """
        if command:
            raise ContainerRunError(
                f"process mode runs `python -m {SERVER_MODULE}`, not {list(command)}: a "
                "containerSpec command or args needs a container engine"
            )
        published, labels = _parse_run_args(extra_args)
        values = dict(env or {})
        port = int(values.get("AIP_HTTP_PORT") or DEFAULT_PORT)
        other = sorted({*ports, *published} - {port})
        if other:
            raise ContainerRunError(
                f"process mode serves one port, AIP_HTTP_PORT ({port}); cannot publish {other}"
            )
        host_port = published.get(port) or _free_port()
        _check_port_free(host_port)
        mounts = [(Path(host).resolve(), target) for host, target, *_ in volumes]
        for key, value in values.items():
            for host, target in mounts:
                if value == target or value.startswith(target.rstrip("/") + "/"):
                    values[key] = str(host) + value[len(target.rstrip("/")) :]
        if not values.get("AIP_STORAGE_URI"):
            raise ContainerRunError(
                "process mode has no image with a model baked in: name the model directory "
                "(mounted, and named by AIP_STORAGE_URI)"
            )
        values["AIP_HTTP_PORT"] = str(host_port)
        child_env = _server_env(values)
        directory = runtime_dir()
        container_id = uuid.uuid4().hex
        log_path = directory / f"{container_id}.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE],
                env=child_env,
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        handle = ProcessContainer(
            engine=self,
            id=container_id,
            name=name or f"tts-{container_id[:12]}",
            image=image,
            started_at=started,
            stop_timeout=stop_timeout,
            ports={port: host_port},
            pid=popen.pid,
            pid_start=_start_time(popen.pid),
            labels=labels,
            popen=popen,
        )
        handle.save()
        return handle

    def attach(self, container_id: str, name: str, image: str) -> ProcessContainer:
        """A handle on a server started earlier, from its state file (a handle on nothing,
        whose ``state`` raises, when that is gone)."""
        path = runtime_dir() / f"{container_id}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ProcessContainer(self, container_id, name, image, 0.0)
        return ProcessContainer.from_record(self, record)

    def labelled(self, label: str) -> list[str]:
        """Ids of the servers, running or not, whose state file carries ``label``."""
        key, _, value = label.partition("=")
        found = []
        for path in sorted(runtime_dir().glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                if json.loads(path.read_text(encoding="utf-8"))["labels"].get(key) == value:
                    found.append(path.stem)
        return found


@dataclass
class ProcessContainer(Container):
    """A server started by ``ProcessEngine.run``, with ``Container``'s methods."""

    pid: int = 0
    pid_start: str = ""
    """The process's start time in clock ticks (``/proc/PID/stat``): tells it from a later
    process that got the same pid."""
    labels: dict[str, str] = field(default_factory=dict)
    exit_code: int | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)
    """Set in the process that started the server: its exit status comes from here."""

    @property
    def state_path(self) -> Path:
        """The state file: ``<runtime_dir>/<id>.json``."""
        return runtime_dir() / f"{self.id}.json"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr: ``<runtime_dir>/<id>.log``."""
        return runtime_dir() / f"{self.id}.log"

    @classmethod
    def from_record(cls, engine: ProcessEngine, record: Mapping[str, Any]) -> ProcessContainer:
        """The handle a state file describes."""
        return cls(
            engine=engine,
            id=record["id"],
            name=record["name"],
            image=record["image"],
            started_at=0.0,
            ports={int(port): int(host) for port, host in record["ports"].items()},
            pid=int(record["pid"]),
            pid_start=record["pid_start"],
            labels=dict(record["labels"]),
            exit_code=record.get("exit_code"),
        )

    def save(self) -> None:
        """Write the state file (atomically: a reader never sees half of it)."""
        record = {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "ports": {str(port): host for port, host in self.ports.items()},
            "pid": self.pid,
            "pid_start": self.pid_start,
            "labels": self.labels,
            "exit_code": self.exit_code,
            "log": str(self.log_path),
        }
        partial = self.state_path.with_suffix(".json.partial")
        partial.write_text(json.dumps(record, indent=2), encoding="utf-8")
        partial.replace(self.state_path)

    # --------------------------------------------------------------------- state --
    def _running(self) -> bool:
        """Whether the server process runs; records its exit status once it is known."""
        if self.popen is not None:
            code = self.popen.poll()
            if code is None:
                return True
            self._record_exit(code)
            return False
        with contextlib.suppress(ChildProcessError):  # not our child: nothing to reap
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self._record_exit(os.waitstatus_to_exitcode(status))
                return False
        return _alive(self.pid, self.pid_start)

    def _record_exit(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
            with contextlib.suppress(OSError):
                if self.state_path.exists():
                    self.save()

    def state(self) -> ContainerState:
        """``running``, or ``exited`` with the exit status where it is known (raises
        ``ContainerEngineError`` once the server was removed)."""
        if not self.pid or not self.state_path.exists():
            raise ContainerEngineError(f"no server process {self.name}: it was removed")
        if self._running():
            return ContainerState(status="running", running=True, exit_code=None)
        if self.exit_code is None:  # the process that started it may have seen it end
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(self.state_path.read_text(encoding="utf-8"))
                self.exit_code = record.get("exit_code")
        return ContainerState(status="exited", running=False, exit_code=self.exit_code)

    def logs(self, tail: int | None = None) -> str:
        """The server's stdout and stderr so far (the last ``tail`` lines if given)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        if tail is None:
            return text
        return "".join(text.splitlines(keepends=True)[-tail:]) if tail > 0 else ""

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command on this host: a process has no container to run it in."""
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False
        )
        if check and proc.returncode != 0:
            raise ContainerEngineError(
                f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def tcp_table(self) -> str:
        """The ``/proc/net/tcp`` and ``tcp6`` lines of the sockets the server's processes hold
        (the host's table holds every process's sockets)."""
        inodes = set()
        for pid in _group(self.pid):
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd)
                        if target.startswith("socket:["):
                            inodes.add(target[8:-1])
        lines = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    if len(fields) > 9 and fields[9] in inodes:
                        lines.append(line)
        return "\n".join(lines)

    # ---------------------------------------------------------------------- stop --
    def stop(self, timeout: float | None = None) -> StopResult:
        """SIGTERM to the server process (as to a container's PID 1), SIGKILL to its whole
        process group after ``timeout`` seconds (default ``stop_timeout``); then whatever is
        left of the group is killed, as a container's end kills every process in it."""
        timeout = self.stop_timeout if timeout is None else timeout
        started = time.monotonic()
        killed = False
        if self._running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if not self._wait_exit(timeout):
                killed = True
                self._kill_group()
                self._wait_exit(30)
        seconds = time.monotonic() - started
        self._kill_group()
        self.stopped = StopResult(exit_code=self.exit_code, seconds=seconds, killed=killed)
        return self.stopped

    def stop_for_good(self, grace_s: float) -> float:
        """``stop(grace_s)`` (there is no restart policy to tell); the seconds it took."""
        return self.stop(grace_s).seconds

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _kill_group(self) -> None:
        if self.pid and _group(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def remove(self) -> None:
        """Kill the server if it still runs and delete its state and log files; never
        raises."""
        with contextlib.suppress(OSError, ContainerEngineError):
            if self.pid and self._running():
                self._kill_group()
                self._wait_exit(10)
            self._kill_group()
        for path in (self.state_path, self.log_path):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------- helpers --
def _parse_run_args(extra_args: Sequence[str]) -> tuple[dict[int, int], dict[str, str]]:
    """The ports (container -> host) and labels in ``run``'s ``extra_args``."""
    published: dict[int, int] = {}
    labels: dict[str, str] = {}
    args = list(extra_args)
    while args:
        flag = args.pop(0)
        if flag not in ("-p", "--label", "--restart") or not args:
            raise ContainerRunError(
                f"process mode cannot apply the run argument {flag!r}: it takes only -p "
                "127.0.0.1:HOST:PORT, --label KEY=VALUE and --restart"
            )
        value = args.pop(0)
        if flag == "-p":
            host, _, port = value.rpartition(":")
            host_port = host.rpartition(":")[2]
            if not (port.isdigit() and host_port.isdigit()):
                raise ContainerRunError(
                    f"process mode publishes ports as 127.0.0.1:HOST:PORT, got -p {value}"
                )
            published[int(port)] = int(host_port)
        elif flag == "--label":
            key, _, label_value = value.partition("=")
            labels[key] = label_value
    return published, labels


def _server_env(values: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its ``AIP_*``/``SERVING_*`` settings (a container
    starts without them), then ``values``; the project importable wherever the child runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SERVING_"))}
    env.update(values)
    env["PYTHONUNBUFFERED"] = "1"  # as the serving image sets it
    spec = importlib.util.find_spec("serving_image")
    if spec is not None and spec.origin:
        root = str(Path(spec.origin).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _check_port_free(port: int) -> None:
    """Raise ``ContainerRunError`` ("address already in use") when the server could not bind
    ``port`` on all interfaces, as it will try to."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise ContainerRunError(
                f"process mode cannot serve on port {port}: address already in use ({exc})"
            ) from exc


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str:
    fields = _stat(pid)
    return fields[19] if fields else ""


def _alive(pid: int, start_time: str) -> bool:
    """Whether ``pid`` is still the process that started at ``start_time`` (not a zombie)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start_time


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat(int(stat.parent.name))
        if fields and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members
