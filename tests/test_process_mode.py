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

from components import container_engine as ce
from components import contract_check as cc
from components import local_endpoint as le
from components import local_registry as lr
from components import server_process as sp
from pipelines.local_run import STEPS
from serving_image.server import manifest

REPO_ROOT = Path(__file__).resolve().parent.parent
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
def engine() -> ce.Engine:
    return ce.detect_engine(ce.PROCESS)


def run_server(engine: ce.Engine, model_dir: Path, **env: str) -> ce.Container:
    """The penguins server the way check_image starts it: model mounted, port published."""
    host_port = cc.free_local_port()
    return engine.run(
        "process:test",
        env={**cc.vertex_environment(8080, "/health", "/predict", cc.MODEL_MOUNT), **env},
        ports=[],
        volumes=[(model_dir, cc.MODEL_MOUNT, "ro")],
        extra_args=["-p", f"127.0.0.1:{host_port}:8080", "--label", "test=process-mode"],
    )


# --- the process engine ----------------------------------------------------------------------


def test_detect_engine_gives_the_process_engine_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ce.ENGINE_ENV, ce.PROCESS)
    engine = ce.detect_engine()
    assert isinstance(engine, sp.ProcessEngine)
    assert (engine.name, engine.path) == ("process", "process")
    with pytest.raises(ce.ContainerEngineError, match="no container engine to run `ps"):
        engine.command("ps")
    monkeypatch.setenv(ce.ENGINE_ENV, NO_ENGINE)
    with pytest.raises(ce.EngineNotFoundError):
        ce.detect_engine(refresh=True)


def test_run_refuses_what_a_process_cannot_do(engine: ce.Engine, penguins_model_dir: Path) -> None:
    volume = [(penguins_model_dir, cc.MODEL_MOUNT, "ro")]
    storage = {"AIP_STORAGE_URI": cc.MODEL_MOUNT}
    with pytest.raises(ce.ContainerRunError, match="containerSpec command"):
        engine.run("x", env=storage, volumes=volume, ports=[], command=["serve"])
    with pytest.raises(ce.ContainerRunError, match="--entrypoint"):
        engine.run("x", env=storage, volumes=volume, ports=[], extra_args=["--entrypoint", "sh"])
    with pytest.raises(ce.ContainerRunError, match="no image with a model baked in"):
        engine.run("x", env={}, ports=[])
    with pytest.raises(ce.ContainerRunError, match="serves one port"):
        engine.run("x", env=storage, volumes=volume, ports=[8080, 9090])


def test_run_logs_state_listening_and_sigterm_stop(
    engine: ce.Engine, penguins_model_dir: Path, runtime: Path
) -> None:
    box = run_server(engine, penguins_model_dir, SERVING_WORKERS="1")
    try:
        startup = box.wait_for_http("/health", timeout=60)
        TIMINGS["server ready"] = startup
        assert box.state().running
        host_port = box.ports[8080]
        assert box.url == f"http://127.0.0.1:{host_port}"
        logs = box.logs()
        assert "starting model server" in logs
        started = json.loads(logs.splitlines()[0])
        assert started["port"] == host_port  # AIP_HTTP_PORT is the host port
        assert started["model_source"] == str(penguins_model_dir)  # /mnt/model mapped
        assert len(box.logs(tail=1).splitlines()) == 1
        # Only the server's own sockets, not every socket of this host.
        assert cc.listening_sockets(box.tcp_table()) == [("0.0.0.0", host_port)]

        # Another process finds it from its state file, by label.
        assert engine.labelled("test=process-mode") == [box.id]
        other = engine.attach(box.id, box.name, box.image)
        assert other.state().running and other.ports == box.ports

        stop = box.stop(30)
        TIMINGS["SIGTERM to exit"] = stop.seconds
        assert (stop.exit_code, stop.killed) == (0, False)
        assert stop.seconds < 10
        assert not sp._group(other.pid), "the workers outlived the server"
        assert other.state() == ce.ContainerState("exited", False, 0)  # recorded on exit
    finally:
        box.remove()
    assert not list(runtime.iterdir())
    with pytest.raises(ce.ContainerEngineError, match="removed"):
        box.state()


# --- the contract check ----------------------------------------------------------------------


def test_the_contract_check_passes_in_process_mode_and_says_so(
    engine: ce.Engine, penguins_model_dir: Path
) -> None:
    started = time.monotonic()
    report, metadata = cc.check_model_image(
        "registry.example/serving:1", penguins_model_dir, engine=engine, **ROUTES
    )
    TIMINGS["contract check, process mode"] = time.monotonic() - started
    assert report.passed, report.to_markdown()
    assert report.result("sigterm").passed
    assert report.verdict().endswith(cc.PROCESS_MODE_NOTE)
    assert cc.PROCESS_MODE_NOTE in report.to_markdown()
    assert report.metrics()["process_mode"] == 1.0
    assert metadata is not None
    assert metadata["containerSpec"]["imageUri"] == "registry.example/serving:1"
    assert metadata["containerSpec"]["ports"] == [{"containerPort": 8080}]


def test_a_tampered_model_fails_the_check_in_process_mode(
    engine: ce.Engine, penguins_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "tampered"
    shutil.copytree(penguins_model_dir, model)
    record = json.loads((model / manifest.MANIFEST_FILE).read_text())
    record["model_sha256"] = "0" * 64
    (model / manifest.MANIFEST_FILE).write_text(json.dumps(record))
    report, metadata = cc.check_model_image(
        "registry.example/serving:1",
        model,
        engine=engine,
        settings=cc.CheckSettings(startup_deadline_s=8),
        **ROUTES,
    )
    assert metadata is None
    assert [r.rule for r in report.violations] == ["health"]
    assert report.verdict().startswith("FAIL") and cc.PROCESS_MODE_NOTE in report.verdict()
    assert "sha256" in (report.logs or "")
    with pytest.raises(cc.ContractViolation, match="PROCESS MODE"):
        report.raise_for_violations()


def test_a_server_that_exits_fails_liveness_with_its_status(
    engine: ce.Engine, penguins_model_dir: Path
) -> None:
    report = cc.check_image(
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
    monkeypatch.setenv(ce.ENGINE_ENV, ce.PROCESS)
    spec = cc.unmanaged_container_model_metadata(
        "process:serving_image@test", port=8080, env={"SERVING_WORKERS": "1"}, **ROUTES
    )["containerSpec"]
    registry, endpoints = tmp_path / "registry", tmp_path / "endpoints"
    version = lr.upload_model(registry, "penguins", penguins_model_dir, spec)
    endpoint = le.deploy(version.resource_name, registry, endpoints)
    try:
        assert endpoint.engine == "process"
        sample = manifest.read_jsonl(penguins_model_dir / manifest.INSTANCES_FILE)
        expected = manifest.read_jsonl(penguins_model_dir / manifest.EXPECTED_FILE)
        answer = le.predict(endpoint.endpoint_id, sample, endpoints_dir=endpoints)
        assert cc.json_difference(expected, answer["predictions"]) is None
        assert answer["deployedModelId"] == endpoint.deployed_model_id

        # Another process (the command line) lists it as running.
        listed = subprocess.run(
            [sys.executable, "compile.py", "endpoints", "list", "--endpoints-dir", str(endpoints)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, ce.ENGINE_ENV: NO_ENGINE},  # the record names the engine
        )
        assert listed.returncode == 0, listed.stderr
        assert endpoint.endpoint_id in listed.stdout and "running" in listed.stdout
        pid = endpoint.container().pid
    finally:
        seconds = le.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints)
    assert seconds is not None and seconds < 10
    assert le.labelled_containers(ce.detect_engine(), endpoint.endpoint_id) == []
    assert not sp._group(pid)
    assert le.list_endpoints(endpoints) == []


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
    env = {ce.ENGINE_ENV: NO_ENGINE, sp.PROCESS_DIR_ENV: str(runtime)}
    refused = compile_py("run-local", "--output-dir", str(tmp_path), env=env)
    assert refused.returncode == 2
    assert "--serving process" in refused.stderr and "WEAKER" in refused.stderr

    started = time.monotonic()
    result = compile_py("run-local", "--output-dir", str(tmp_path), "--serving", "process", env=env)
    TIMINGS["run-local --serving process"] = time.monotonic() - started
    endpoints = tmp_path / "endpoints"
    try:
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
        for step in STEPS:
            assert f"==> step {step}: SUCCESS" in result.stdout
        assert "PROCESS MODE (weaker than the container check)" in result.stdout
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
        sample = manifest.read_jsonl(Path(summary["model_dir"]) / manifest.INSTANCES_FILE)
        answer = le.predict(endpoint_id, sample[:2], endpoints_dir=endpoints)
        assert len(answer["predictions"]) == 2
    finally:
        for endpoint in le.list_endpoints(endpoints) if endpoints.exists() else []:
            le.undeploy(endpoint.endpoint_id, endpoints_dir=endpoints)
