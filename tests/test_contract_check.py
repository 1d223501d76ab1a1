"""The contract check as a library, against real HTTP servers on this host (no container).

Each fixture server under ``tests/fixtures/broken_images/`` (stdlib only) runs as a process
with the ``AIP_*`` variables, exactly as its image runs it; ``check_server`` must give the
verdict and message in ``verdicts.py``. The container-only parts (socket diagnosis, SIGTERM,
logs) are in ``test_contract_images.py``.
"""

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fixtures.broken_images.verdicts import (
    FIXTURES_DIR,
    HEALTH_ROUTE,
    PREDICT_ROUTE,
    VERDICTS,
)

import compile as cli
from components import contract_check as cc
from serving_image.server.manifest import read_jsonl

INSTANCES = read_jsonl(FIXTURES_DIR / "instances.jsonl")
EXPECTED = read_jsonl(FIXTURES_DIR / "expected.jsonl")
FIELDS = ("x1", "x2", "colour")


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
        return cc.explain_exit(status, self.log_path.read_text(), "The server process")

    def listening_note(self) -> str:
        return ""


@pytest.fixture
def start_fixture(tmp_path: Path) -> Iterator[Callable[[str], FixtureServer]]:
    """Start fixture servers by folder name; all are killed after the test."""
    servers: list[FixtureServer] = []

    def start(name: str) -> FixtureServer:
        port = cc.free_local_port()
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(FIXTURES_DIR),
            "PYTHONUNBUFFERED": "1",
            "PORT": str(cc.free_local_port()),  # for wrong_port: anything but AIP_HTTP_PORT
            **cc.vertex_environment(port, HEALTH_ROUTE, PREDICT_ROUTE),
        }
        log_path = tmp_path / f"{name}.log"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, str(FIXTURES_DIR / name / "server.py")],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        servers.append(FixtureServer(process, log_path, f"http://127.0.0.1:{port}", started))
        return servers[-1]

    yield start
    for server in servers:
        server.process.kill()
        server.process.wait(10)


def check(server: FixtureServer, settings: cc.CheckSettings | None = None, **kwargs: Any):
    """``check_server`` on a fixture process with the fixture sample, Vertex-style routes."""
    arguments: dict[str, Any] = {"instances": INSTANCES, "expected": EXPECTED, **kwargs}
    return cc.check_server(
        server.url,
        health_route=HEALTH_ROUTE,
        predict_route=PREDICT_ROUTE,
        settings=settings,
        observer=server,
        started=server.started,
        **arguments,
    )


def test_a_correct_server_passes_every_rule(start_fixture: Callable[[str], FixtureServer]):
    report = check(start_fixture("good_toy"))

    assert report.passed, report.to_markdown()
    assert [r.rule for r in report.rules] == [
        rule for rule in cc.RULES if rule not in ("health-means-ready", "sigterm")
    ]
    assert not any(r.skipped for r in report.rules)
    assert report.result("oversize").detail.startswith("answered 413")
    metrics = report.metrics()
    assert metrics["passed"] == 1.0 and metrics["rules_failed"] == 0.0
    assert 0 < metrics["startup_s"] < 10
    assert {"predict_p50_ms", "burst_p95_ms", "health_max_ms"} <= set(metrics)
    report.raise_for_violations()  # no exception


def test_list_instances_without_expectations_check_the_shape_only(
    start_fixture: Callable[[str], FixtureServer],
):
    rows = [[instance[name] for name in FIELDS] for instance in INSTANCES]
    report = check(start_fixture("good_toy"), instances=rows, expected=None)

    assert report.passed, report.to_markdown()
    values = report.result("predict-values")
    assert values.skipped and "shape only" in values.detail
    # The wrong-feature request for a list instance is one value short: still a 400.
    assert report.result("wrong-feature").detail.startswith("answered 400")


@pytest.mark.parametrize(
    "name", [name for name, verdict in VERDICTS.items() if not verdict.container_only]
)
def test_each_broken_server_gets_its_own_verdict_and_message(
    name: str, start_fixture: Callable[[str], FixtureServer]
):
    verdict = VERDICTS[name]
    report = check(start_fixture(name), cc.CheckSettings(**verdict.settings))

    assert {r.rule for r in report.violations} == verdict.failed, report.to_markdown()
    message = report.violations[0].message()
    for fragment in verdict.says:
        assert fragment in message
    assert "Vertex AI would" in message


def test_a_server_that_dies_on_bad_input_ends_the_check_with_the_rest_skipped():
    sys.path.insert(0, str(FIXTURES_DIR))
    try:
        import toyserver
    finally:
        sys.path.remove(str(FIXTURES_DIR))

    class DiesOnBadJson(toyserver.Handler):
        health_route, predict_route = HEALTH_ROUTE, PREDICT_ROUTE

        def instances_of(self, body: bytes) -> list[Any]:
            if body == b'{"instances": [':  # the bad-json request: stop listening
                threading.Thread(target=lambda: (server.shutdown(), server.server_close())).start()
            return super().instances_of(body)

    DiesOnBadJson.model = toyserver.Model(0)
    DiesOnBadJson.model.loaded.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), DiesOnBadJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    report = cc.check_server(
        url,
        instances=INSTANCES,
        expected=EXPECTED,
        health_route=HEALTH_ROUTE,
        predict_route=PREDICT_ROUTE,
    )
    thread.join(10)

    bad_json = report.result("bad-json")
    assert not bad_json.passed
    assert "the server is no longer healthy" in bad_json.detail
    for rule in ("no-instances", "wrong-feature", "oversize", "concurrency"):
        result = report.result(rule)
        assert result.skipped and "no longer healthy" in result.detail


def test_the_violation_names_rule_request_answer_and_what_vertex_would_do(
    start_fixture: Callable[[str], FixtureServer],
):
    report = check(start_fixture("no_health_route"), cc.CheckSettings(startup_deadline_s=1))

    with pytest.raises(cc.ContractViolation) as caught:
        report.raise_for_violations()
    text = str(caught.value)
    assert text.startswith(f"{report.target} breaks the Vertex AI container contract (1 of ")
    assert f"[health] health route {HEALTH_ROUTE} returned 404" in text
    assert f"request sent: GET {HEALTH_ROUTE}" in text
    assert "came back: 404 Not Found, body" in text
    assert "Vertex AI would mark the replica unhealthy" in text
    assert "Model server never became ready" in text
    assert caught.value.report is report


def test_the_markdown_report_of_a_failing_run_reads_as_a_report(
    start_fixture: Callable[[str], FixtureServer],
):
    report = check(start_fixture("crash_on_bad_input"))
    markdown = report.to_markdown()

    assert markdown.startswith("# Vertex AI container contract check\n")
    assert "**FAIL:" in markdown and "(bad-json, no-instances, wrong-feature, oversize)" in markdown
    assert "| bad-json | FAIL |" in markdown and "| predict-values | PASS |" in markdown
    assert "### oversize: a body over the 1.5 MB limit gets a 4xx" in markdown
    assert "- **request sent:** `POST" in markdown and "bytes (limit 1,500,000)" in markdown
    assert "- **Vertex AI would** " in markdown
    assert "## Container logs" not in markdown  # a plain URL has no container


def test_oversize_body_note_replaces_the_megabytes_of_body(
    start_fixture: Callable[[str], FixtureServer],
):
    report = check(start_fixture("crash_on_bad_input"))
    request = report.result("oversize").request

    assert len(request) < 200
    assert request.startswith(f'POST {PREDICT_ROUTE} with body {{"instances": [...]}} of ')


@pytest.mark.parametrize(
    ("expected", "actual", "difference"),
    [
        ({"a": [1, 2.0]}, {"a": [1.0, 2.0000000001]}, None),
        (0.0, 1e-12, None),
        ([1, 2], [1, 2, 3], "predictions: expected 2 elements, got 3"),
        ({"a": 1}, {"b": 1}, "predictions: keys differ (missing ['a'], unexpected ['b'])"),
        (True, 1, "predictions: expected true, got 1"),
        ("Adelie", "Gentoo", 'predictions: expected "Adelie", got "Gentoo"'),
        ([{"p": 0.5}], [{"p": 0.6}], "predictions[0].p: expected 0.5, got 0.6"),
        ([None], [0], "predictions[0]: expected null, got 0"),
    ],
)
def test_json_difference_compares_numbers_with_tolerance_and_names_the_path(
    expected: Any, actual: Any, difference: str | None
):
    assert cc.json_difference(expected, actual, path="predictions") == difference


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 00000000:1388 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   2: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A
"""


def test_listening_sockets_are_read_from_proc_net_tcp():
    assert cc.listening_sockets(PROC_NET_TCP) == [
        ("127.0.0.1", 8080),
        ("0.0.0.0", 5000),
        ("::", 8081),
        ("::1", 80),
    ]


@pytest.mark.parametrize(
    ("sockets", "port", "says"),
    [
        ([("0.0.0.0", 8080)], 8080, ""),
        ([("::", 8080)], 8080, ""),
        ([], 8080, "nothing listens on any TCP port"),
        ([("127.0.0.1", 8080)], 8080, "loopback interface only"),
        ([("0.0.0.0", 5000)], 8080, "listens on 0.0.0.0:5000, not on the declared port 8080"),
    ],
)
def test_describe_listening_explains_a_refused_port(
    sockets: list[tuple[str, int]], port: int, says: str
):
    note = cc.describe_listening(sockets, port)
    assert (says in note) if says else note == ""


@pytest.mark.parametrize(
    ("status", "logs", "says"),
    [
        (1, "ModuleNotFoundError: No module named 'sklearn'\n", "No module named 'sklearn'"),
        (0, "done\n", "must start an HTTP server in the foreground"),
        (137, "", "SIGKILL; out of memory?"),
        (2, "usage: server\n", "see its last log lines"),
    ],
)
def test_explain_exit_reads_the_cause_from_the_logs(status: int, logs: str, says: str):
    note = cc.explain_exit(status, logs)
    assert note.startswith(f"The container exited with status {status}: ")
    assert says in note
    assert note.endswith(logs.strip() or "(no output)")


def test_vertex_environment_sets_every_aip_variable_of_the_contract():
    env = cc.vertex_environment(8080, "/h", "/p", "/mnt/model", machine_type="n1-standard-2")
    assert env["AIP_HTTP_PORT"] == "8080"
    assert (env["AIP_HEALTH_ROUTE"], env["AIP_PREDICT_ROUTE"]) == ("/h", "/p")
    assert env["AIP_STORAGE_URI"] == "/mnt/model"
    assert env["AIP_MODE"] == "PREDICTION" and env["AIP_FRAMEWORK"] == "CUSTOM_CONTAINER"
    assert env["AIP_MODEL_NAME"] == env["AIP_ENDPOINT_ID"]
    assert env["AIP_VERSION_NAME"] == env["AIP_DEPLOYED_MODEL_ID"]
    assert env["AIP_MACHINE_TYPE"] == "n1-standard-2"
    assert all(env[name].isdigit() for name in ("AIP_ENDPOINT_ID", "AIP_PROJECT_NUMBER"))
    assert "AIP_ACCELERATOR_TYPE" not in env  # unset on a replica without a GPU
    assert cc.DEFAULT_PREDICT_ROUTE == cc.DEFAULT_HEALTH_ROUTE + ":predict"


def test_the_container_spec_is_what_model_upload_reads():
    metadata = cc.unmanaged_container_model_metadata(
        "europe-docker.pkg.dev/p/r/server:1",
        port=8080,
        health_route="/health",
        predict_route="/predict",
        env={"SERVING_WORKERS": "2"},
        probe=cc.startup_probe("/health", 8080, startup_deadline_s=600),
    )
    assert metadata == {
        "containerSpec": {
            "imageUri": "europe-docker.pkg.dev/p/r/server:1",
            "ports": [{"containerPort": 8080}],
            "predictRoute": "/predict",
            "healthRoute": "/health",
            "env": [{"name": "SERVING_WORKERS", "value": "2"}],
            "startupProbe": {
                "httpGet": {"path": "/health", "port": 8080},
                "periodSeconds": 10,
                "timeoutSeconds": 10,
                "failureThreshold": 60,
            },
        },
        "predictSchemata": {},
    }
    small = cc.unmanaged_container_model_metadata(
        "i", port=1, health_route="/h", predict_route="/p"
    )
    assert "env" not in small["containerSpec"] and "startupProbe" not in small["containerSpec"]


@pytest.mark.parametrize(
    ("model_bytes", "startup_s", "needed"),
    [
        (10_000, 4.8, False),
        (cc.LARGE_MODEL_BYTES, 1.0, True),
        (10_000, cc.SLOW_STARTUP_S, True),
        (10_000, None, False),
    ],
)
def test_a_startup_probe_is_added_for_large_or_slow_models(
    model_bytes: int, startup_s: float | None, needed: bool
):
    assert cc.needs_startup_probe(model_bytes, startup_s) is needed


def test_upload_needs_explicit_routes_not_vertex_defaults(tmp_path: Path):
    with pytest.raises(ValueError, match="name the health and predict routes explicitly"):
        cc.check_model_image(
            "any",
            tmp_path,
            health_route=cc.DEFAULT_HEALTH_ROUTE,
            predict_route=cc.DEFAULT_PREDICT_ROUTE,
            engine=object(),
        )


def test_check_image_refuses_aip_variables_in_user_env():
    with pytest.raises(ValueError, match=r"\['AIP_STORAGE_URI'\].*reserves the AIP_ prefix"):
        cc.check_image("any", instances=[{}], env={"AIP_STORAGE_URI": "gs://b/m"}, engine=object())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instances": []}, "at least one sample instance"),
        ({"instances": [1, 2], "expected": [1]}, "1 expected predictions for 2 instances"),
    ],
)
def test_check_server_rejects_inconsistent_samples(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        cc.check_server("http://127.0.0.1:9", **kwargs)


def test_the_component_declares_the_artifacts_upload_needs():
    spec = cc.contract_check.component_spec
    outputs = {name: output.type for name, output in spec.outputs.items()}
    assert outputs == {
        "report": "system.Markdown@0.0.1",
        "metrics": "system.Metrics@0.0.1",
        "unmanaged_container_model": "google.UnmanagedContainerModel@0.0.1",
    }
    assert spec.inputs["model"].type == "system.Model@0.0.1"
    assert spec.inputs["image_uri"].type == "String"
    assert "no container" in cc.contract_check.description


def test_check_contract_flags_default_to_vertex_without_importing_components():
    """Unset flags take Vertex's defaults in the handler (the image tests prove which); the
    parser itself must not import components/ (``compile`` sets their image first)."""
    code = (
        "import sys, compile; "
        "a = compile.build_parser().parse_args(['check-contract', '--image', 'x']); "
        "assert (a.port, a.health_route, a.predict_route, a.startup_deadline) == (None,) * 4; "
        "assert 'components.contract_check' not in sys.modules, 'imported at parse time'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(cli.__file__).parent)


def test_check_contract_without_instances_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    assert cli.main(["check-contract", "--image", "localhost/x:1"]) == 2
    assert "--instances" in capsys.readouterr().err


def test_report_metrics_are_plain_floats_for_kfp():
    report = cc.ContractReport("t", {}, [cc.RuleResult("health", False, "x")], startup_s=1.23456)
    metrics = report.metrics()
    assert metrics == {
        "passed": 0.0,
        "rules_passed": 0.0,
        "rules_failed": 1.0,
        "rules_skipped": 0.0,
        "startup_s": 1.235,
    }
    assert json.dumps(metrics)


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_the_component_without_a_container_engine_checks_in_process_mode_as_on_vertex(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    penguins_model_dir: Path,
):
    """A Vertex AI Pipelines pod has no podman or docker: the task falls back to process mode
    and says so in its log, report and metrics; the spec still names the image given."""
    from kfp import dsl, local

    monkeypatch.setenv("TRAIN_TO_SERVE_CONTAINER_ENGINE", str(tmp_path / "no-engine"))
    monkeypatch.setenv("TRAIN_TO_SERVE_PROCESS_DIR", str(tmp_path / "processes"))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )

    @dsl.pipeline(name="no-engine")
    def no_engine() -> None:
        imported = dsl.importer(artifact_uri=str(penguins_model_dir), artifact_class=dsl.Model)
        cc.contract_check(image_uri="registry.example/serving:1", model=imported.output)

    no_engine()
    output = "".join(capfd.readouterr())
    assert "no working container engine" in output and "checking in process mode" in output
    assert cc.PROCESS_MODE_NOTE in output  # the verdict line
    (report,) = (tmp_path / "root").rglob("contract-check/report")
    assert cc.PROCESS_MODE_NOTE in report.read_text()
    (written,) = (tmp_path / "root").rglob("contract-check/executor_output.json")
    artifacts = json.loads(written.read_text())["artifacts"]
    assert artifacts["metrics"]["artifacts"][0]["metadata"]["process_mode"] == 1.0
    spec = artifacts["unmanaged_container_model"]["artifacts"][0]["metadata"]["containerSpec"]
    assert spec["imageUri"] == "registry.example/serving:1"
    assert not list((tmp_path / "processes").glob("*.json"))  # the server is gone
