"""The contract check of a running server, against real HTTP servers on this host (no container).

Each fixture server under ``tests/contract/broken_images/`` (stdlib only) runs as a process
with the ``AIP_*`` variables, exactly as its image runs it; ``check_server`` must give the
verdict and message in ``verdicts.py``. The container-only parts (socket diagnosis, SIGTERM,
logs) are in ``test_broken_images.py``.
"""

import sys
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from components.contract import (
    FOREIGN_RULES,
    GRPC_RULES,
    RULES,
    CheckSettings,
    ContractViolation,
    check_server,
    checker,
)
from components.runners.http import Exchange, send
from serving_image.server.artifact import read_jsonl
from tests.contract.broken_images.verdicts import (
    FIXTURES_DIR,
    HEALTH_ROUTE,
    KINDS,
    PREDICT_ROUTE,
    VERDICTS,
)
from tests.contract.conftest import FixtureServer

INSTANCES = read_jsonl(FIXTURES_DIR / "instances.jsonl")
EXPECTED = read_jsonl(FIXTURES_DIR / "expected.jsonl")
FIELDS = ("x1", "x2", "colour")


def check(server: FixtureServer, settings: CheckSettings | None = None, **kwargs: Any):
    """``check_server`` on a fixture process with the fixture sample, Vertex-style routes."""
    arguments: dict[str, Any] = {
        "instances": INSTANCES,
        "expected": EXPECTED,
        "kinds": KINDS,
        **kwargs,
    }
    return check_server(
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
        rule
        for rule in RULES
        # no gRPC port declared, an image of ours
        if rule not in ("health-means-ready", "sigterm", *GRPC_RULES, *FOREIGN_RULES)
    ]
    assert not any(r.skipped for r in report.rules)
    assert report.result("oversize").detail.startswith("answered 413")
    metrics = report.metrics()
    assert metrics["passed"] == 1.0 and metrics["rules_failed"] == 0.0
    assert 0 < metrics["startup_s"] < 10
    assert {"predict_p50_ms", "burst_p95_ms", "health_max_ms"} <= set(metrics)


def test_list_instances_without_expectations_check_the_shape_only(
    start_fixture: Callable[[str], FixtureServer],
):
    rows = [
        instance if isinstance(instance, list) else [instance[name] for name in FIELDS]
        for instance in INSTANCES
    ]
    report = check(start_fixture("good_toy"), instances=rows, expected=None, kinds=None)

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
    report = check(start_fixture(name), CheckSettings(**verdict.settings))

    assert {r.rule for r in report.violations} == verdict.failed, report.to_markdown()
    assert {r.rule for r in report.warnings} == verdict.warned, report.to_markdown()
    assert report.passed == (not verdict.failed)
    message = (report.violations or report.warnings)[0].message()
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
    report = check_server(
        url,
        instances=INSTANCES,
        expected=EXPECTED,
        health_route=HEALTH_ROUTE,
        predict_route=PREDICT_ROUTE,
    )
    thread.join(10)

    assert report.result("bad-json").passed  # it answered 400, then stopped listening
    for rule in ("no-instances", "wrong-feature", "oversize", "concurrency"):
        result = report.result(rule)
        assert result.skipped and "no longer healthy" in result.detail
    stays_up = report.result("stays-up")
    assert [r.rule for r in report.violations] == ["stays-up"]  # a contract rule
    assert stays_up.detail.startswith(f"after POST {PREDICT_ROUTE} with body")
    assert "health returned" in stays_up.detail and "no longer up" in stays_up.detail
    assert "takes the replica out of service" in stays_up.vertex_consequence


def test_a_health_probe_without_an_answer_once_is_tried_again_not_a_dead_server(
    start_fixture: Callable[[str], FixtureServer], monkeypatch: pytest.MonkeyPatch
):
    """A name lookup that fails once (a container network's DNS reloading as another
    container joins it) is not a server that died: the next probe answers and stays-up
    passes."""
    state = {"posted": False, "failed": ""}

    def one_failed_lookup(base_url: str, method: str, route: str, *args: Any, **kwargs: Any):
        if method == "POST":
            state["posted"] = True
        elif route == HEALTH_ROUTE and state["posted"] and not state["failed"]:
            state["failed"] = route
            return Exchange(method, route, error="gaierror: [Errno -2] Name or service not known")
        return send(base_url, method, route, *args, **kwargs)

    monkeypatch.setattr(checker, "send", one_failed_lookup)
    report = check(start_fixture("good_toy"))

    assert state["failed"] == HEALTH_ROUTE  # the probe after the first request got no answer
    assert report.result("stays-up").passed
    assert not report.violations and not report.warnings


def test_the_violation_names_rule_request_answer_and_what_vertex_would_do(
    start_fixture: Callable[[str], FixtureServer],
):
    report = check(start_fixture("no_health_route"), CheckSettings(startup_deadline_s=1))

    violation = ContractViolation(report)
    text = str(violation)
    assert text.startswith(f"{report.target} breaks the Vertex AI container contract (1 of ")
    assert f"[health] health route {HEALTH_ROUTE} returned 404" in text
    assert f"request sent: GET {HEALTH_ROUTE}" in text
    assert "came back: 404 Not Found, body" in text
    assert "Vertex AI would mark the replica unhealthy" in text
    assert "Model server never became ready" in text
    assert violation.report is report


def test_a_5xx_on_bad_input_warns_and_the_report_separates_warnings(
    start_fixture: Callable[[str], FixtureServer],
):
    report = check(start_fixture("crash_on_bad_input"))
    markdown = report.to_markdown()

    assert report.passed and not report.violations
    assert markdown.startswith("# Vertex AI container contract check\n")
    assert "**PASS:" in markdown
    assert "(warnings: bad-json, no-instances, wrong-feature)" in markdown
    assert "| bad-json | hygiene | WARN |" in markdown
    assert "| predict-values | contract | PASS |" in markdown
    assert "| oversize | hygiene | PASS | answered 200 (it takes bodies over" in markdown
    assert "## Warnings" in markdown and "## Violations" not in markdown
    assert "### no-instances: a JSON object without" in markdown
    assert "- **request sent:** `POST" in markdown and "- **Vertex AI would** " in markdown
    assert "## Container logs" not in markdown  # a plain URL has no container
    metrics = report.metrics()
    assert (metrics["passed"], metrics["rules_failed"], metrics["rules_warned"]) == (1, 0, 3)


def test_a_strict_check_fails_the_hygiene_rules_it_would_only_warn_about(
    start_fixture: Callable[[str], FixtureServer],
):
    report = check(start_fixture("crash_on_bad_input"), CheckSettings(strict=True))

    assert not report.passed and not report.contract_violations
    assert [r.rule for r in report.violations] == ["bad-json", "no-instances", "wrong-feature"]
    assert report.verdict().startswith("FAIL (strict): ")
    assert "fails hygiene rules (bad-json, no-instances, wrong-feature)" in report.verdict()
    assert "| bad-json | hygiene | FAIL |" in report.to_markdown()
    assert "fails hygiene rules that Vertex tolerates" in str(ContractViolation(report))
    assert report.metrics()["strict"] == 1.0


def test_the_report_names_the_endpoint_type_each_number_assumes(
    start_fixture: Callable[[str], FixtureServer],
):
    settings = check(start_fixture("good_toy")).settings

    assert settings["predict timeout (s), shared public and private (PSA) endpoints"] == 60
    assert settings["request bodies within (bytes), every endpoint type"] == 1_500_000
    oversize = "oversize body over (bytes), the most dedicated and private endpoints forward"
    assert settings[oversize] == 10 * 1024 * 1024


@pytest.mark.parametrize("name", ["refit_scaler_per_request", "refit_imputer"])
def test_preprocessing_refit_per_request_passes_a_batch_of_evaluation_rows(
    name: str, start_fixture: Callable[[str], FixtureServer]
):
    """What the check did before it sent edge instances and other request shapes."""
    evaluation = [index for index, kind in enumerate(KINDS) if kind == "evaluation"]
    report = check(
        start_fixture(name),
        CheckSettings(request_shapes=("batch",)),
        instances=[INSTANCES[i] for i in evaluation],
        expected=[EXPECTED[i] for i in evaluation],
        kinds=None,
    )

    assert report.passed, report.to_markdown()


def test_the_predictions_table_shows_which_kinds_and_shapes_matched(
    start_fixture: Callable[[str], FixtureServer],
):
    scaler = check(start_fixture("refit_scaler_per_request")).to_markdown()
    imputer = check(start_fixture("refit_imputer")).to_markdown()

    header = "| kind of instance | in batches | each instance alone | in another order |"
    assert "## Predictions by kind of instance and request" in scaler and header in scaler
    assert "| evaluation | 5/5 | 1/5 | 5/5 |" in scaler  # right in a batch, wrong alone
    assert "| min:x1 | 0/1 | 0/1 | 0/1 |" in scaler  # a batch of edges is no training set
    assert "| missing:x1 | 0/1 | 0/1 | 0/1 |" in imputer
    assert "| missing:x2 as list | 0/1 | 0/1 | 0/1 |" in imputer
    assert "| min:x1 | 1/1 | 1/1 | 1/1 |" in imputer  # nothing to impute: right


def test_oversize_body_note_replaces_the_megabytes_of_body(
    start_fixture: Callable[[str], FixtureServer],
):
    report = check(start_fixture("crash_on_bad_input"))
    request = report.result("oversize").request

    assert len(request) < 200
    assert request.startswith(f'POST {PREDICT_ROUTE} with body {{"instances": [...]}} of ')
    assert request.endswith("bytes (over 10,485,760)")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instances": []}, "at least one sample instance"),
        ({"instances": [1, 2], "expected": [1]}, "1 expected predictions for 2 instances"),
    ],
)
def test_check_server_rejects_inconsistent_samples(kwargs: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        check_server("http://127.0.0.1:9", **kwargs)
