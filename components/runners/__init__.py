"""Running a model server the way Vertex AI runs it: container engines and process mode.

``base`` is the interface (``ServerRunner``, ``ServerSpec``, ``RunningServer``, the port
retry), ``engine`` and ``process`` its two siblings, ``detect`` the choice between them, and
``http`` the requests a runner and its callers send to a server's port.
"""

from components.runners.base import (
    ENGINE_ENV,
    PROCESS,
    Mount,
    NotServingError,
    PortBinding,
    PortInUseError,
    RunnerError,
    RunnerNotFoundError,
    RunningServer,
    ServerRunner,
    ServerSpec,
    ServerState,
    StartError,
    StopResult,
    UsageUnavailableError,
    start_server,
    tail_lines,
)
from components.runners.detect import detect_runner
from components.runners.engine import (
    SETUP_HINT,
    Cgroup,
    Container,
    Engine,
    ResourceUsage,
    cgroup_of,
    detect_engine,
)
from components.runners.http import Exchange, free_local_port, send, tcp_accepts
from components.runners.process import PROCESS_MODE_NOTE, ProcessRunner, ServerProcess

__all__ = [
    "ENGINE_ENV",
    "PROCESS",
    "PROCESS_MODE_NOTE",
    "SETUP_HINT",
    "Cgroup",
    "Container",
    "Engine",
    "Exchange",
    "Mount",
    "NotServingError",
    "PortBinding",
    "PortInUseError",
    "ProcessRunner",
    "ResourceUsage",
    "RunnerError",
    "RunnerNotFoundError",
    "RunningServer",
    "ServerProcess",
    "ServerRunner",
    "ServerSpec",
    "ServerState",
    "StartError",
    "StopResult",
    "UsageUnavailableError",
    "cgroup_of",
    "detect_engine",
    "detect_runner",
    "free_local_port",
    "send",
    "start_server",
    "tail_lines",
    "tcp_accepts",
]
