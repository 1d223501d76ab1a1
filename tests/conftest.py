"""Fixtures every test package may use: a trained model, real server processes, Google Cloud
replaced (``fake_cloud``), the container engine and the serving image without a model (built
once per run)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from google.cloud import storage
from google.cloud.devtools import cloudbuild_v1

from components.imaging import BuildError, build, build_serving_image, choose_base_image
from components.runners import Engine, RunnerNotFoundError, detect_engine
from tests.support.cloud import FakeCloud
from tests.support.servers import (
    SERVER_ROUTES,
    LaunchedServer,
    StartupTimeline,
    launch_server,
)

pytest_plugins = ["tests.reliability.figures"]  # the `figures` fixture and its terminal summary


@pytest.fixture(scope="session")
def penguins_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model directory from the train component (penguins, logistic regression)."""
    from components.training import train_and_export

    model_dir = tmp_path_factory.mktemp("penguins_model")
    train_and_export("penguins", model_dir)
    return model_dir


@pytest.fixture
def start_server() -> Iterator[Callable[..., LaunchedServer]]:
    """Factory for servers that belong to one test; all are stopped afterwards."""
    servers: list[LaunchedServer] = []

    def start(model_source: str | Path, extra_env: dict[str, str] | None = None) -> LaunchedServer:
        servers.append(launch_server(model_source, extra_env))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


@pytest.fixture(scope="session")
def penguins_server(penguins_model_dir: Path) -> Iterator[tuple[LaunchedServer, StartupTimeline]]:
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


# --- Google Cloud replaced at the methods that send requests --------------------------------


@pytest.fixture
def fake_cloud(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeCloud]:
    def install(statuses: list[cloudbuild_v1.Build], log_growth: list[str]) -> FakeCloud:
        fake = FakeCloud(statuses, log_growth)
        replaced = [
            (storage.Blob, "upload_from_filename"),
            (storage.Blob, "download_as_bytes"),
            (cloudbuild_v1.CloudBuildClient, "create_build"),
            (cloudbuild_v1.CloudBuildClient, "get_build"),
        ]
        for cls, name in replaced:  # each call reaches the fake with the instance it was on
            method = getattr(fake, name)
            monkeypatch.setattr(cls, name, lambda obj, *a, _m=method, **k: _m(obj, *a, **k))
        return fake

    return install


# --- the container engine ----------------------------------------------------------------------


def unavailable(message: str) -> NoReturn:
    """Skip a container test on a workstation; fail it in CI, which must exercise containers."""
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true and the container tests cannot run: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The detected container engine (podman or docker)."""
    try:
        return detect_engine()
    except RunnerNotFoundError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def base_image(engine: Engine) -> str:
    """The Python base image the serving image builds from (pulled or made locally)."""
    try:
        return choose_base_image(engine)
    except BuildError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def serving_image_without_model(engine: Engine, base_image: str) -> str:
    """The serving image without a model: it loads the one ``AIP_STORAGE_URI`` names."""
    from tests.support.stand_ins import IMAGE_TAG

    build_serving_image(engine, IMAGE_TAG, None, base_image=base_image, on_line=lambda _: None)
    return IMAGE_TAG


@pytest.fixture(scope="session")
def wrong_answers_image(engine: Engine, base_image: str) -> str:
    """A server that keeps Vertex's contract and answers every instance wrong (and, with
    ``HOLD_MEMORY_MB``, holds that much memory): ``tests/release/wrong_answers``."""
    tag = "localhost/train-to-serve-wrong-answers:test"
    folder = Path(__file__).resolve().parent / "release" / "wrong_answers"
    build(engine, folder, tag, {"BASE_IMAGE": base_image}, ca_bundle=None)
    return tag


@pytest.fixture(scope="module", autouse=True)
def _print_module_timings(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the test module's ``TIMINGS`` dict, if it has one (visible with ``pytest -s``)."""
    yield
    timings: dict[str, float] = getattr(request.module, "TIMINGS", None) or {}
    if timings:
        width = max(map(len, timings))
        print("\n" + "\n".join(f"  {k:<{width}}  {v:6.2f} s" for k, v in timings.items()))
