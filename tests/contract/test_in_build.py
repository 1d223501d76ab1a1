"""The steps of the checked build: the verdict step on the files the earlier steps leave in
the workspace (the check's report, the stop step's facts, the container's logs), and the check
step's gRPC rules against a real server with a gRPC port."""

import json
import time
from pathlib import Path

import pytest

from components import vertex
from components.contract import GRPC_RULES, ContractReport, RuleResult
from components.contract.in_build import (
    GPU_NOT_EXERCISED,
    OUT_DIR,
    SERVER_NAME,
    check_steps,
    main,
    read_report,
)
from components.runners import Mount, ProcessRunner, ServerSpec, start_server

TF_CPU_LINE = '{"message":"runs the model on CPU","device":"CPU","pid":7}'


def workspace(tmp_path: Path, stop: str, logs: str, *rules: RuleResult) -> Path:
    """A workspace as the check and stop steps leave it."""
    out = tmp_path / OUT_DIR
    out.mkdir()
    passed = [RuleResult("liveness", True, "accepted"), RuleResult("health", True, "200")]
    report = ContractReport("region-docker.pkg.dev/p/r/img:1", {}, [*passed, *rules])
    (out / "report.json").write_text(json.dumps(report.to_dict()))
    (out / "stop.env").write_text(stop)
    (out / "container.log").write_text(logs)
    return tmp_path


def verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, *args: str
) -> tuple[int, ContractReport]:
    monkeypatch.chdir(tmp_path)
    code = main(["verdict", "--grace-period", "20", *args])
    return code, read_report(capsys.readouterr().out.splitlines())


def test_a_timely_stop_passes_and_the_report_is_printed_for_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stop = "exited_before=0\nexit_code=0\nkilled=0\nstart=100.0\nend=100.75\n"
    workspace(tmp_path, stop, "listening\n")

    code, report = verdict(tmp_path, monkeypatch, capsys)

    assert code == 0 and report.passed
    assert report.result("sigterm").detail == "exited with status 0 0.75 s after SIGTERM"
    assert report.stop_s == pytest.approx(0.75) and report.logs == "listening"  # the tail
    assert (tmp_path / OUT_DIR / "report.md").read_text() == report.to_markdown()
    assert json.loads((tmp_path / OUT_DIR / "metrics.json").read_text())["passed"] == 1.0


def test_a_container_that_ignores_sigterm_fails_a_strict_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stop = "exited_before=0\nexit_code=137\nkilled=1\nstart=100.0\nend=121.0\n"
    workspace(tmp_path, stop, "")
    report = json.loads((tmp_path / OUT_DIR / "report.json").read_text())
    (tmp_path / OUT_DIR / "report.json").write_text(json.dumps({**report, "strict": True}))

    code, report = verdict(tmp_path, monkeypatch, capsys)

    assert code == 1
    assert [r.rule for r in report.violations] == ["sigterm"]
    assert "still running 20 s after SIGTERM and had to be killed" in report.violations[0].detail


def test_a_container_that_exited_early_gets_its_exit_explained_in_the_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    logs = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'xgboost'\n"
    failed = RuleResult("predict-request", False, "predict route /predict gave no HTTP answer")
    workspace(tmp_path, "exited_before=1\nexit_code=1\n", logs, failed)

    code, report = verdict(tmp_path, monkeypatch, capsys)

    assert code == 1
    assert report.result("sigterm").skipped
    detail = report.violations[0].detail
    assert "The container exited with status 1" in detail and "'xgboost'" in detail


def test_a_gpu_image_says_its_gpu_was_not_exercised_and_what_the_server_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stop = "exited_before=0\nexit_code=0\nkilled=0\nstart=1.0\nend=2.0\n"
    workspace(tmp_path, stop, f"booting\n{TF_CPU_LINE}\n")

    code, report = verdict(tmp_path, monkeypatch, capsys, "--gpu")

    assert code == 0
    assert report.settings["GPU"] == f"{GPU_NOT_EXERCISED}; the server said: {TF_CPU_LINE}"


def test_with_a_grpc_port_the_check_step_reaches_it_by_container_name() -> None:
    def check_args(**grpc: int) -> list[str]:
        steps = check_steps(
            "region-docker.pkg.dev/p/r/img:1",
            checker_image="checker",
            sample_dir="check-sample",
            wait_for="build",
            **grpc,
        )
        return list(steps[1].args)

    assert check_args(grpc_port=8081)[-4:] == [
        "--grpc-address", f"{SERVER_NAME}:8081", "--grpc-port", "8081",
    ]  # fmt: skip
    assert "--grpc-port" not in check_args()


def test_the_check_step_applies_the_grpc_rules_to_a_server_with_a_grpc_port(
    penguins_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check command against the server code (process mode) with gRPC on: every gRPC
    rule passes, in report.json beside the HTTP ones."""
    environment = vertex.vertex_environment(8080, "/health", "/predict", vertex.MODEL_MOUNT)
    spec = ServerSpec(
        "process:in-build",
        grpc_port=8081,
        env={**environment, vertex.GRPC_PORT_VARIABLE: "8081"},
        mounts=(Mount(penguins_model_dir, vertex.MODEL_MOUNT),),
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / OUT_DIR).mkdir()
    with start_server(ProcessRunner.create(), spec) as server:
        started = time.time() - (time.monotonic() - server.started_at)  # as step 1 notes it
        (tmp_path / OUT_DIR / "started").write_text(f"{started:.6f}")
        code = main(["check",
            "--url", server.url,
            "--image", "region-docker.pkg.dev/p/r/img:1",
            "--health-route", "/health",
            "--predict-route", "/predict",
            "--sample", str(penguins_model_dir),
            "--startup-deadline", "60",
            "--grace-period", "10",
            "--grpc-address", server.grpc_target,
            "--grpc-port", "8081",
        ])  # fmt: skip

    report = ContractReport.from_dict(json.loads((tmp_path / OUT_DIR / "report.json").read_text()))
    assert code == 0 and report.passed, report.to_markdown()
    grpc = [r for r in report.rules if r.rule in GRPC_RULES]
    assert [r.rule for r in grpc] == list(GRPC_RULES)
    assert all(r.passed and not r.skipped for r in grpc), report.to_markdown()
    assert report.settings["gRPC reached at"] == server.grpc_target
