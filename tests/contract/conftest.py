"""Fixture servers of ``broken_images/`` as processes, for the checks that take any server."""

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import vertex
from components.contract import explain_exit
from components.runners import free_local_port
from tests.contract.broken_images.verdicts import FIXTURES_DIR, HEALTH_ROUTE, PREDICT_ROUTE


@dataclass
class FixtureServer:
    """A fixture's server.py running as a process; a ``ServerObserver`` for the check."""

    process: subprocess.Popen[bytes]
    log_path: Path
    url: str
    started: float

    def exit_note(self) -> str | None:
        status = self.process.poll()
        if status is None:
            return None
        # It stands in for a broken image's server: the causes are an image's.
        return explain_exit(status, self.log_path.read_text())

    def listening_note(self) -> str:
        return ""

    def logs(self) -> str:
        return self.log_path.read_text()


def launch(script: Path, env: dict[str, str], log_path: Path, port: int) -> FixtureServer:
    """Start the fixture server ``script`` with ``env``, listening on ``port``, its output
    in ``log_path``."""
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return FixtureServer(process, log_path, f"http://127.0.0.1:{port}", started)


@pytest.fixture
def start_fixture(tmp_path: Path) -> Iterator[Callable[[str], FixtureServer]]:
    """Start fixture servers by folder name; all are killed after the test."""
    servers: list[FixtureServer] = []

    def start(name: str) -> FixtureServer:
        port = free_local_port()
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(FIXTURES_DIR),
            "PYTHONUNBUFFERED": "1",
            "PORT": str(free_local_port()),  # for wrong_port: anything but AIP_HTTP_PORT
            **vertex.vertex_environment(port, HEALTH_ROUTE, PREDICT_ROUTE),
        }
        script = FIXTURES_DIR / name / "server.py"
        servers.append(launch(script, env, tmp_path / f"{name}.log", port))
        return servers[-1]

    yield start
    for server in servers:
        server.process.kill()
        server.process.wait(10)
