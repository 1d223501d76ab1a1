"""Fixtures for the model-server tests: real model directories and real server processes.

The server is started exactly as in the image (``python -m serving_image.server`` with
``AIP_*`` variables) on a free port; tests talk to it over HTTP and read its JSON log lines
from stdout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest

from components import container_engine as ce

pytest_plugins = ["reliability_figures"]  # the `figures` fixture and its terminal summary

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
SERVER_ROUTES = {
    # Vertex-style routes, to prove the server takes them from the environment.
    "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2",
    "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict",
}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
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
) -> ServerProcess:
    """Start ``python -m serving_image.server`` serving ``model_source`` on a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "SERVING_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)])
    port = free_port()
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
    server = ServerProcess(process, port, env, time.monotonic())
    for stream, sink in ((process.stdout, server.stdout), (process.stderr, server.stderr)):
        threading.Thread(target=_pump, args=(stream, sink), daemon=True).start()
    return server


@pytest.fixture(scope="session")
def penguins_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model directory from the train component (penguins, logistic regression)."""
    from components.train import train_and_export

    model_dir = tmp_path_factory.mktemp("penguins_model")
    train_and_export("penguins", model_dir)
    return model_dir


@pytest.fixture(scope="session")
def scripted_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory around ``ScriptedRegressor``, with a matching manifest."""
    from test_server_estimators import ScriptedRegressor

    from serving_image.server import manifest as contract

    model_dir = tmp_path_factory.mktemp("scripted_model")
    joblib.dump(ScriptedRegressor(), model_dir / contract.MODEL_FILE)
    manifest = {
        "manifest_version": contract.MANIFEST_VERSION,
        "framework": "scikit-learn",
        "task": "regression",
        "target_classes": [],
        "features": [
            {"name": "x", "kind": "numeric", "nullable": False},
            {"name": "delay_s", "kind": "numeric", "nullable": False},
        ],
        "model_file": contract.MODEL_FILE,
        "model_sha256": contract.sha256_file(model_dir / contract.MODEL_FILE),
    }
    (model_dir / contract.MANIFEST_FILE).write_text(json.dumps(manifest))
    contract.write_jsonl(model_dir / contract.INSTANCES_FILE, [{"x": 1.5, "delay_s": 0.0}])
    contract.write_jsonl(model_dir / contract.EXPECTED_FILE, [3.0])
    return model_dir


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """Factory for servers that belong to one test; all are stopped afterwards."""
    servers: list[ServerProcess] = []

    def start(model_source: str | Path, extra_env: dict[str, str] | None = None) -> ServerProcess:
        servers.append(launch_server(model_source, extra_env))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


@dataclass
class StartupTimeline:
    """When, after the process started, the port and the health route first answered."""

    tcp_accepted_s: float
    health_codes: list[tuple[float, int]]

    @property
    def first_ready_s(self) -> float:
        return next(t for t, code in self.health_codes if code == 200)


@pytest.fixture(scope="session")
def penguins_server(penguins_model_dir: Path) -> Iterator[tuple[ServerProcess, StartupTimeline]]:
    """The penguins model behind two workers and Vertex-style routes, with its startup
    timeline (TCP accept, then every health answer until the first 200)."""
    server = launch_server(
        penguins_model_dir,
        {**SERVER_ROUTES, "SERVING_WORKERS": "2", "SERVING_MAX_BODY_BYTES": "200000"},
    )
    try:
        tcp_at = None
        codes: list[tuple[float, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (codes and codes[-1][1] == 200):
            assert server.process.poll() is None, f"server exited: {server.stderr}"
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                    tcp_at = tcp_at or time.monotonic() - server.started_at
                codes.append((time.monotonic() - server.started_at, server.health().status_code))
            except (OSError, httpx.TransportError):
                time.sleep(0.01)
        server.wait_ready()
        assert tcp_at is not None
        yield server, StartupTimeline(tcp_at, codes)
    finally:
        server.kill()


# --- the container engine ----------------------------------------------------------------------


def unavailable(message: str) -> None:
    """Skip a container test on a workstation; fail it in CI, which must exercise containers."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true and the container tests cannot run: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def engine() -> ce.Engine:
    """The detected container engine (podman or docker)."""
    try:
        return ce.detect_engine()
    except ce.EngineNotFoundError as exc:
        unavailable(str(exc))
        raise  # unreachable


@pytest.fixture(scope="session")
def base_image(engine: ce.Engine) -> str:
    """The Python base image the serving image builds from (pulled or made locally)."""
    try:
        return ce.choose_base_image(engine)
    except ce.ContainerEngineError as exc:
        unavailable(str(exc))
        raise  # unreachable


@pytest.fixture(scope="session")
def serving_image_without_model(engine: ce.Engine, base_image: str) -> str:
    """The serving image without a model: it loads the one ``AIP_STORAGE_URI`` names."""
    from local_stand_ins import IMAGE_TAG

    ce.build_serving_image(engine, IMAGE_TAG, None, base_image=base_image, on_line=lambda _: None)
    return IMAGE_TAG


@pytest.fixture(scope="module", autouse=True)
def _print_module_timings(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the test module's ``TIMINGS`` dict, if it has one (visible with ``pytest -s``)."""
    yield
    timings: dict[str, float] = getattr(request.module, "TIMINGS", None) or {}
    if timings:
        width = max(map(len, timings))
        print("\n" + "\n".join(f"  {k:<{width}}  {v:6.2f} s" for k, v in timings.items()))
