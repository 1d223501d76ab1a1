"""The rollout's smoke test against real servers: the fixture servers of ``broken_images/`` as
processes, reached the way an endpoint's rawPredict reaches a deployed model.

A right server passes with every answer and latency recorded; a server that re-fits its scaler
on each request fails on the edge instances, with the rule, the request and what Vertex would
do; a server that answers another deployed model's way (the header says who answered) is
retried, and one that never answers as the new model fails with how to fix it.
"""

import time

import pytest

from components.contract import Sample, smoke_test
from components.contract.smoke import DEPLOYED_MODEL_HEADER, RULE, SMOKE_SHAPES
from components.runners import Exchange, send, tcp_accepts
from serving_image.server.artifact import read_jsonl
from tests.contract.broken_images.verdicts import FIXTURES_DIR, KINDS, PREDICT_ROUTE
from tests.contract.conftest import FixtureServer

SAMPLE = Sample.of(
    read_jsonl(FIXTURES_DIR / "instances.jsonl"), read_jsonl(FIXTURES_DIR / "expected.jsonl"), KINDS
)
OBJECTS = sum(1 for instance in SAMPLE.instances if isinstance(instance, dict))


def raw_predict(server: FixtureServer, answered_by: list[str] | None = None):
    """rawPredict to ``server``; ``answered_by`` names who answers each call in turn, as
    Vertex's header would (a real router's header is tested in the stand-ins' tests)."""

    def call(body: bytes) -> Exchange:
        exchange = send(server.url, "POST", PREDICT_ROUTE, 10.0, body)
        if answered_by:
            exchange.headers[DEPLOYED_MODEL_HEADER] = answered_by.pop(0)
        return exchange

    return call


def wait_ready(server: FixtureServer) -> None:
    deadline = time.monotonic() + 15
    while not tcp_accepts(server.url) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_right_server_passes_with_every_answer_and_latency(start_fixture) -> None:
    server = start_fixture("good_toy")
    wait_ready(server)

    report = smoke_test(raw_predict(server), SAMPLE, endpoint="e", deployed_model_id="9")

    assert report.passed and report.failures == []
    result = report.to_json()
    # The list forms are the contract check's: the smoke test sends the objects.
    assert len(result["answers"]) == OBJECTS
    assert all(a["answer"] == a["expected"] for a in result["answers"])
    assert {r["shape"] for r in result["requests"]} == set(SMOKE_SHAPES)
    assert all(r["status"] == 200 and r["latencyMs"] > 0 for r in result["requests"])
    assert result["latencyMs"]["max"] >= result["latencyMs"]["p50"] > 0
    assert "# Smoke test: PASSED" in report.markdown()


def test_a_server_that_refits_per_request_fails_naming_rule_request_and_vertex(
    start_fixture,
) -> None:
    server = start_fixture("refit_scaler_per_request")
    wait_ready(server)

    report = smoke_test(raw_predict(server), SAMPLE, endpoint="e", deployed_model_id="9")

    assert not report.passed
    message = report.failures[0]
    assert message.startswith(f"{RULE} (the new deployed model answers the training-time sample")
    assert "rawPredict of" in message and "to deployed model 9" in message
    assert "prediction(s) differ: predictions[" in message
    assert "the rollout is rolled back instead" in message
    assert "| NO |" in report.markdown()


def test_answers_from_another_deployed_model_are_set_aside_and_sent_again(
    start_fixture,
) -> None:
    server = start_fixture("good_toy")
    wait_ready(server)
    who = ["old", "9"] * 40

    report = smoke_test(
        raw_predict(server, who), SAMPLE, endpoint="e", deployed_model_id="9", max_attempts=5
    )

    assert report.passed
    assert all(r.attempts == 2 and r.other_answers == 1 for r in report.requests)
    assert 80 - len(who) == 2 * len(report.requests)  # two calls per request, no more


@pytest.mark.parametrize("tries", [1, 3])
def test_a_model_that_never_answers_fails_with_what_to_do(start_fixture, tries: int) -> None:
    server = start_fixture("good_toy")
    wait_ready(server)

    report = smoke_test(
        raw_predict(server, ["old"] * 100),
        SAMPLE,
        endpoint="e",
        deployed_model_id="9",
        max_attempts=tries,
    )

    assert not report.passed
    assert (
        f"never answered in {tries} tries ({tries} answers came from other" in (report.failures[0])
    )
    assert "give the new model a larger share" in report.failures[0]
