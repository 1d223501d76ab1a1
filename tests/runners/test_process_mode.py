"""Process mode: the model server as a local process where no container engine works.

Real server processes throughout (``python -m serving_image.server`` on the penguins model), no
container engine used: the process engine's handle (logs, state, SIGTERM stop, the sockets it
listens on), the contract check in process mode (a pass that says PROCESS MODE, a tampered
model and a server that exits both fail), a local endpoint deployed, called, listed from
another process and undeployed without leaving a process, and ``compile.py run-local
--serving process`` end to end with the container engine pointing nowhere.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components import stand_ins, vertex
from components.contract import CheckSettings, ContractViolation, check_image, check_model_image
from components.contract.image import listening_sockets
from components.runners import (
    ENGINE_ENV,
    PROCESS,
    PROCESS_MODE_NOTE,
    Mount,
    ProcessRunner,
    RunnerError,
    RunnerNotFoundError,
    ServerProcess,
    ServerSpec,
    ServerState,
    StartError,
    detect_engine,
    detect_runner,
    free_local_port,
)
from components.runners import process as sp
from pipelines.local_run import STEPS
from serving_image.server import artifact
from serving_image.server.predictions import json_difference
from tests.support import REPO_ROOT

ROUTES = {"health_route": "/health", "predict_route": "/predict"}
NO_ENGINE = "/nonexistent/podman"
TIMINGS: dict[str, float] = {}


@pytest.fixture(autouse=True)
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A state directory of the test's own; every server the test started must be gone."""
    directory = tmp_path / "runtime"
    monkeypatch.setenv(sp.PROCESS_DIR_ENV, str(directory))
    yield directory
    assert not list(directory.glob("*.json")), "a server process was left behind"


@pytest.fixture
def engine() -> ProcessRunner:
    return ProcessRunner.create()


def run_server(engine: ProcessRunner, model_dir: Path, **env: str) -> ServerProcess:
    """The penguins server the way check_image starts it: model mounted, port published."""
    spec = ServerSpec(
        "process:test",
        env={**vertex.vertex_environment(8080, "/health", "/predict", vertex.MODEL_MOUNT), **env},
        mounts=(Mount(model_dir, vertex.MODEL_MOUNT),),
        labels={"test": "process-mode"},
    )
    return engine.start(spec, free_local_port())


# --- the process runner ----------------------------------------------------------------------


def test_detect_runner_gives_process_mode_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENGINE_ENV, PROCESS)
    runner = detect_runner()
    assert isinstance(runner, ProcessRunner)
    assert (runner.name, runner.reference) == ("process", "process")
    with pytest.raises(RunnerNotFoundError, match="process mode, which has no container engine"):
        detect_engine()  # building and running images need a real engine
    monkeypatch.setenv(ENGINE_ENV, NO_ENGINE)
    with pytest.raises(RunnerNotFoundError):
        detect_engine(refresh=True)


def test_start_refuses_what_a_process_cannot_do(
    engine: ProcessRunner, penguins_model_dir: Path
) -> None:
    mounts = (Mount(penguins_model_dir, vertex.MODEL_MOUNT),)
    storage = {"AIP_STORAGE_URI": vertex.MODEL_MOUNT}
    port = free_local_port()
    with pytest.raises(StartError, match="containerSpec command or args"):
        engine.start(ServerSpec("x", env=storage, mounts=mounts, args=("serve",)), port)
    with pytest.raises(StartError, match="not the entrypoint 'sh'"):
        engine.start(ServerSpec("x", env=storage, mounts=mounts, entrypoint="sh"), port)
    with pytest.raises(StartError, match="no image with a model baked in"):
        engine.start(ServerSpec("x"), port)


def test_run_logs_state_listening_and_sigterm_stop(
    engine: ProcessRunner, penguins_model_dir: Path, runtime: Path
) -> None:
    box = run_server(engine, penguins_model_dir, SERVING_WORKERS="1")
    try:
        startup = box.wait_until_serving("/health", timeout=60)
        TIMINGS["server ready"] = startup
        assert box.state().running
        host_port = box.binding.host_port
        assert box.binding.container_port == 8080
        assert box.url == f"http://127.0.0.1:{host_port}"
        logs = box.logs()
        assert "starting model server" in logs
        started = json.loads(logs.splitlines()[0])
        assert started["port"] == host_port  # AIP_HTTP_PORT is the host port
        assert started["model_source"] == str(penguins_model_dir)  # /mnt/model mapped
        assert len(box.last_logs(1).splitlines()) == 1
        # Only the server's own sockets, not every socket of this host.
        assert listening_sockets(box.tcp_table()) == [("0.0.0.0", host_port)]

        # Another process finds it from its state file, by label.
        assert engine.labelled("test=process-mode") == [box.id]
        other = engine.attach(box.id, box.name, box.image)
        assert other.state().running and other.binding == box.binding

        stop = box.stop(30)
        TIMINGS["SIGTERM to exit"] = stop.seconds
        assert (stop.exit_code, stop.killed) == (0, False)
        assert stop.seconds < 10
        assert not sp._group(other.pid), "the workers outlived the server"
        assert other.state() == ServerState("exited", False, 0)  # recorded on exit
    finally:
        box.remove()
    assert not list(runtime.iterdir())
    with pytest.raises(RunnerError, match="removed"):
        box.state()


# --- the contract check ----------------------------------------------------------------------


def test_the_contract_check_passes_in_process_mode_and_says_so(
    engine: ProcessRunner, penguins_model_dir: Path
) -> None:
    started = time.monotonic()
    report, metadata = check_model_image(
        "registry.example/serving:1", penguins_model_dir, engine=engine, **ROUTES
    )
    TIMINGS["contract check, process mode"] = time.monotonic() - started
    assert report.passed, report.to_markdown()
    assert report.result("sigterm").passed
    assert report.verdict().endswith(PROCESS_MODE_NOTE)
    assert PROCESS_MODE_NOTE in report.to_markdown()
    assert report.metrics()["process_mode"] == 1.0
    assert metadata is not None
    assert metadata["containerSpec"]["imageUri"] == "registry.example/serving:1"
    assert metadata["containerSpec"]["ports"] == [{"containerPort": 8080}]


def test_a_tampered_model_fails_the_check_in_process_mode(
    engine: ProcessRunner, penguins_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "tampered"
    shutil.copytree(penguins_model_dir, model)
    record = json.loads((model / artifact.MANIFEST_FILE).read_text())
    record["model_sha256"] = "0" * 64
    (model / artifact.MANIFEST_FILE).write_text(json.dumps(record))
    report, metadata = check_model_image(
        "registry.example/serving:1",
        model,
        engine=engine,
        settings=CheckSettings(startup_deadline_s=8),
        **ROUTES,
    )
    assert metadata is None
    assert [r.rule for r in report.violations] == ["health"]
    assert report.verdict().startswith("FAIL") and PROCESS_MODE_NOTE in report.verdict()
    assert "sha256" in (report.logs or "")
    assert "PROCESS MODE" in str(ContractViolation(report))


def test_a_server_that_exits_fails_liveness_with_its_status(
    engine: ProcessRunner, penguins_model_dir: Path
) -> None:
    report = check_image(
        "registry.example/serving:1",
        instances=[{"x": 1}],
        model_dir=penguins_model_dir,
        env={"SERVING_WORKERS": "0"},
        engine=engine,
    )
    assert [r.rule for r in report.violations] == ["liveness"]
    assert "exited with status 2" in report.result("liveness").detail
    assert "SERVING_WORKERS" in report.result("liveness").detail


# --- a local endpoint ------------------------------------------------------------------------


def test_a_local_endpoint_in_process_mode_leaves_no_process(
    penguins_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runtime: Path
) -> None:
    monkeypatch.setenv(ENGINE_ENV, PROCESS)
    spec = vertex.unmanaged_container_model_metadata(
        "process:serving_image@test", port=8080, env={"SERVING_WORKERS": "1"}, **ROUTES
    )["containerSpec"]
    registry, endpoints = tmp_path / "registry", tmp_path / "endpoints"
    version = stand_ins.upload_model(registry, "penguins", penguins_model_dir, spec)
    done = stand_ins.deploy(version.resource_name, registry, endpoints)
    endpoint, deployed = done.endpoint, done.deployed_model
    try:
        assert deployed.engine == "process"
        sample = artifact.read_jsonl(penguins_model_dir / artifact.INSTANCES_FILE)
        expected = artifact.read_jsonl(penguins_model_dir / artifact.EXPECTED_FILE)
        answer = stand_ins.predict(endpoint.endpoint_id, sample, endpoints_dir=endpoints)
        assert json_difference(expected, answer["predictions"]) is None
        assert answer["deployedModelId"] == deployed.id

        # Another process (the command line) lists it as running.
        listed = subprocess.run(
            [sys.executable, "compile.py", "endpoints", "list", "--endpoints-dir", str(endpoints)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, ENGINE_ENV: NO_ENGINE},  # the record names the engine
        )
        assert listed.returncode == 0, listed.stderr
        assert endpoint.endpoint_id in listed.stdout and "running" in listed.stdout
        pid = deployed.container().pid
    finally:
        seconds = stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints)
    assert seconds is not None and seconds < 10
    assert stand_ins.labelled_containers(detect_runner(), endpoint.endpoint_id) == []
    assert not sp._group(pid)
    assert not sp._group(endpoint.router_pid)  # the router is gone too
    assert stand_ins.list_endpoints(endpoints) == []


# --- the component and run-local -------------------------------------------------------------


def compile_py(*args: str, env: dict[str, str]) -> Any:
    return subprocess.run(
        [sys.executable, "compile.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
    )


def test_run_local_without_an_engine_offers_process_mode_and_runs_in_it(
    tmp_path: Path, runtime: Path
) -> None:
    env = {ENGINE_ENV: NO_ENGINE, sp.PROCESS_DIR_ENV: str(runtime)}
    refused = compile_py("run-local", "--output-dir", str(tmp_path), env=env)
    assert refused.returncode == 2
    assert "--serving process" in refused.stderr and PROCESS_MODE_NOTE in refused.stderr

    started = time.monotonic()
    result = compile_py("run-local", "--output-dir", str(tmp_path), "--serving", "process", env=env)
    TIMINGS["run-local --serving process"] = time.monotonic() - started
    endpoints = tmp_path / "endpoints"
    try:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
        for step in STEPS:
            assert f"==> step {step}: SUCCESS" in result.stdout
        assert f"serving: {PROCESS_MODE_NOTE}" in result.stdout
        summary_file = result.stdout.strip().splitlines()[-1].removeprefix("summary: ")
        summary = json.loads(Path(summary_file).read_text())
        assert summary["serving"] == "process"
        assert summary["image"].startswith("process:serving_image@")
        assert summary["contract_check"]["process_mode"] == 1.0
        assert summary["contract_check"]["passed"] == 1.0
        assert "PROCESS MODE" in Path(summary["contract_report"]).read_text()
        rows = summary["batch"]["prediction_lines"]
        assert rows > 300 and summary["batch"]["error_lines"] == 0
        endpoint_id = summary["endpoint"]["resourceName"].rsplit("/", 1)[-1]
        sample = artifact.read_jsonl(Path(summary["model_dir"]) / artifact.INSTANCES_FILE)
        answer = stand_ins.predict(endpoint_id, sample[:2], endpoints_dir=endpoints)
        assert len(answer["predictions"]) == 2
    finally:
        for endpoint in stand_ins.list_endpoints(endpoints) if endpoints.exists() else []:
            stand_ins.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints)
