"""Real model server processes for the tests: ``python -m serving_image.server`` as the image
starts it (with ``AIP_*`` variables) on a free port; tests talk to it over HTTP and read its
JSON log lines from stdout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from components.runners import free_local_port
from tests.support import REPO_ROOT

SERVER_ROUTES = {
    # Vertex-style routes, to prove the server takes them from the environment.
    "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
    "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
}


@dataclass
class LaunchedServer:
    """A running ``python -m serving_image.server`` and what it printed."""

    process: subprocess.Popen[str]
    port: int
    env: dict[str, str]
    started_at: float
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    @property
    def health_route(self) -> str:
        return self.env.get("AIP_HEALTH_ROUTE", "/health")

    @property
    def predict_route(self) -> str:
        return self.env.get("AIP_PREDICT_ROUTE", "/predict")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def health(self, timeout: float = 5.0) -> httpx.Response:
        return httpx.get(self.url(self.health_route), timeout=timeout)

    def predict(self, payload: Any, timeout: float = 10.0, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url(self.predict_route), json=payload, timeout=timeout, **kwargs)

    def logs(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (fails the test if one is not)."""
        return [json.loads(line) for line in list(self.stdout)]

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if predicate(entry):
                    return entry
            time.sleep(0.05)
        raise AssertionError(f"no matching log line in {timeout} s; stdout: {self.stdout}")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll health until 200 (every worker logs "model loaded" too: wait for all)."""
        deadline = time.monotonic() + timeout
        workers = int(self.env.get("SERVING_WORKERS", "1"))
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited: {self.stdout} {self.stderr}"
            loaded = {e["pid"] for e in self.logs() if e["message"].startswith("model loaded")}
            if len(loaded & self.worker_pids()) >= workers:
                return
            time.sleep(0.05)
        raise AssertionError(f"server not ready in {timeout} s: {self.stdout} {self.stderr}")

    def worker_pids(self) -> set[int]:
        """Process ids whose parent is the server (gunicorn master) process."""
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid and fields[0] != "Z":
                pids.add(int(stat.parent.name))
        return pids

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM the server and wait for it to exit; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Kill the whole process group (master and workers) if anything is left."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def _pump(stream: Any, sink: list[str]) -> None:
    for line in stream:
        sink.append(line.rstrip("\n"))


def launch_server(
    model_source: str | Path, extra_env: dict[str, str] | None = None
) -> LaunchedServer:
    """Start ``python -m serving_image.server`` serving ``model_source`` on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SERVING_"))}
    env["PYTHONPATH"] = str(REPO_ROOT)  # the project, and tests.* for pickled test estimators
    port = free_local_port()
    env.update({"AIP_HTTP_PORT": str(port), "AIP_STORAGE_URI": str(model_source)})
    env.update(extra_env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "serving_image.server"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server = LaunchedServer(process, port, env, time.monotonic())
    for stream, sink in ((process.stdout, server.stdout), (process.stderr, server.stderr)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
    return server


@dataclass
class StartupTimeline:
    """When, after the process started, the port and the health route first answered."""

    tcp_accepted_s: float
    health_codes: list[tuple[float, int]]

    @property
    def first_ready_s(self) -> float:
        return next(t for t, code in self.health_codes if code == 200)
