"""Process mode: the model server as a local process, where no container engine works.

A Vertex AI Pipelines task has no podman or docker, and neither has every workstation. Process
mode runs the same server code (``python -m serving_image.server``, with this interpreter and
its libraries) with the same environment Vertex gives the container, so that the contract
check, a local endpoint and a local batch job still work there, through the same runner
interface (``runners.base``):

* ``ProcessRunner.start(spec, host_port)`` records the image but does not run it; it starts
  the server in its own session with the spec's environment, replaces a mount's target in the
  environment's values with its source (``AIP_STORAGE_URI=/mnt/model`` becomes the model
  directory) and sets ``AIP_HTTP_PORT`` to the host port: a process has no network namespace
  in which the container port could differ.
* ``ServerProcess`` is the handle. The server's output goes to a log file and its pid, labels
  and ports to a state file, both under ``runtime_dir()``: a detached server (a local
  endpoint) outlives the process that started it, and a later one (``compile.py endpoints
  list|undeploy``) finds it with ``ProcessRunner.attach`` or ``labelled``.

It checks less than a container does, and says so wherever it is used (``PROCESS_MODE_NOTE``):
the image itself (its entrypoint, installed dependencies, user, size, a baked-in model) is not
run; the model directory is not read-only; no restart policy; the server listens on all of this
host's interfaces on the chosen port; an exit status is known to the process that started the
server, or once that one saw it end.
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.files import write_json_atomically
from components.runners import base
from components.runners.http import free_local_port
from components.vertex import GRPC_PORT_VARIABLE

PROCESS_DIR_ENV = "TRAIN_TO_SERVE_PROCESS_DIR"
"""Directory of the servers' state and log files (default: ``<tmp>/train-to-serve-<uid>``)."""
SERVER_MODULE = "serving_image.server"
SERVER_MODULES = ("gunicorn", "uvicorn", "uvicorn_worker")
"""What the server imports beyond the project's own dependencies: the ``serve`` extra."""
PROCESS_MODE_NOTE = (
    "PROCESS MODE (weaker than the container check): the server code and the model run as a "
    "local process with Vertex's environment; the image itself (entrypoint, dependencies, "
    "user, size) is not run"
)
"""Said wherever process mode stands in for a container: reports, verdicts, summaries."""
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


@dataclass(frozen=True)
class ProcessRunner(base.ServerRunner):
    """Process mode's runner: ``start`` runs the server code as a local process."""

    name: str = base.PROCESS
    version: str = f"python {platform.python_version()}"

    @property
    def reference(self) -> str:
        """``process``."""
        return base.PROCESS

    @classmethod
    def create(cls) -> ProcessRunner:
        """The process runner, once the server's own dependencies are importable.

        Raises:
            base.RunnerNotFoundError: the ``serve`` extra is not installed.
        """
        missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise base.RunnerNotFoundError(
                f"process mode runs `{sys.executable} -m {SERVER_MODULE}`, which needs "
                f"{', '.join(missing)}: install the serve extra (`pip install '.[serve]'`)"
            )
        return cls()

    def start(self, spec: base.ServerSpec, host_port: int) -> ServerProcess:
        """Start the server in its own session; see the module docstring.

        ``spec.image`` is recorded, not run; ``init`` and ``restart`` do not apply.

        Raises:
            base.StartError: an entrypoint or arguments were given (only the server runs here),
                CPU or memory limits were (a process has no cgroup to cap), or no model
                directory is named by ``AIP_STORAGE_URI``.
            base.PortInUseError: ``host_port`` is taken.
        """
        if spec.limited:
            raise base.StartError(
                f"process mode cannot limit the server to cpus={spec.cpus} and memory_bytes="
                f"{spec.memory_bytes}: a local process has no cgroup of its own to cap, and a "
                "measurement without the limits would overstate what a machine type serves. "
                "Use a container engine (podman or docker) for limits"
            )
        if spec.entrypoint or spec.args:
            raise base.StartError(
                f"process mode runs `python -m {SERVER_MODULE}`, not the entrypoint "
                f"{spec.entrypoint!r} with arguments {list(spec.args)}: a containerSpec "
                "command or args needs a container engine"
            )
        values = dict(spec.env)
        for mount in spec.mounts:
            source, target = str(Path(mount.source).resolve()), mount.target.rstrip("/")
            for key, value in values.items():
                if value == mount.target or value.startswith(target + "/"):
                    values[key] = source + value[len(target) :]
        if not values.get("AIP_STORAGE_URI"):
            raise base.StartError(
                "process mode has no image with a model baked in: name the model directory "
                "(mounted, and named by AIP_STORAGE_URI)"
            )
        _check_port_free(host_port)
        values["AIP_HTTP_PORT"] = str(host_port)
        grpc = None
        if spec.grpc_port is not None:  # no network namespace: the server listens on it
            grpc = base.PortBinding(spec.grpc_port, free_local_port())
            values[GRPC_PORT_VARIABLE] = str(grpc.host_port)
        server_id = uuid.uuid4().hex
        log_path = runtime_dir() / f"{server_id}.log"
        started = time.monotonic()
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE],
                env=_server_env(values),
                cwd=runtime_dir(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        handle = ServerProcess(
            runner=self,
            id=server_id,
            name=spec.name or f"tts-{server_id[:12]}",
            image=spec.image,
            started_at=started,
            binding=base.PortBinding(spec.port, host_port),
            stop_timeout=spec.stop_timeout_s,
            grpc_binding=grpc,
            pid=popen.pid,
            pid_start=_start_time(popen.pid),
            labels=dict(spec.labels),
            popen=popen,
        )
        handle.save()
        return handle

    def attach(self, server_id: str, name: str, image: str) -> ServerProcess:
        """A handle on a server started earlier, from its state file (a handle on nothing,
        whose ``state`` raises, when that is gone)."""
        path = runtime_dir() / f"{server_id}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ServerProcess(self, server_id, name, image, 0.0)
        return ServerProcess.from_record(self, record)

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
class ServerProcess(base.RunningServer):
    """A server started by ``ProcessRunner.start``."""

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
    def from_record(cls, runner: ProcessRunner, record: Mapping[str, Any]) -> ServerProcess:
        """The handle a state file describes."""
        return cls(
            runner=runner,
            id=record["id"],
            name=record["name"],
            image=record["image"],
            started_at=0.0,
            binding=base.PortBinding(**record["binding"]) if record.get("binding") else None,
            grpc_binding=(
                base.PortBinding(**record["grpc_binding"]) if record.get("grpc_binding") else None
            ),
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
            "binding": asdict(self.binding) if self.binding else None,
            "grpc_binding": asdict(self.grpc_binding) if self.grpc_binding else None,
            "pid": self.pid,
            "pid_start": self.pid_start,
            "labels": self.labels,
            "exit_code": self.exit_code,
            "log": str(self.log_path),
        }
        write_json_atomically(self.state_path, record)

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

    def state(self) -> base.ServerState:
        """``running``, or ``exited`` with the exit status where it is known (raises
        ``RunnerError`` once the server was removed)."""
        if not self.pid or not self.state_path.exists():
            raise base.RunnerError(f"no server process {self.name}: it was removed")
        if self._running():
            return base.ServerState(status="running", running=True, exit_code=None)
        if self.exit_code is None:  # the process that started it may have seen it end
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(self.state_path.read_text(encoding="utf-8"))
                self.exit_code = record.get("exit_code")
        return base.ServerState(status="exited", running=False, exit_code=self.exit_code)

    def logs(self) -> str:
        """The server's stdout and stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

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
    def stop(self, timeout: float | None = None) -> base.StopResult:
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
        self.stopped = base.StopResult(exit_code=self.exit_code, seconds=seconds, killed=killed)
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
        with contextlib.suppress(OSError, base.RunnerError):
            if self.pid and self._running():
                self._kill_group()
                self._wait_exit(10)
            self._kill_group()
        for path in (self.state_path, self.log_path):
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------- helpers --
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


def _check_port_free(port: int) -> None:
    """Raise ``PortInUseError`` when the server could not bind ``port`` on all interfaces, as
    it will try to."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise base.PortInUseError(
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
