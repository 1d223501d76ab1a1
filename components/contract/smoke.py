"""The smoke test of a rollout: the training-time sample sent through the live endpoint to the
newly deployed model, each answer compared with what training predicted.

The contract check proved the image right before upload; this proves the deployment right
where it serves: Vertex's own start and health checks passed, the serving identity read the
model, the endpoint forwards the requests, and the answers are the expected ones (the same
tolerance as the check). ``raw_predict`` is the endpoint's (``rollout.steps.Endpoint``):
locally it reaches the deployed model directly; on Vertex the traffic split routes each
request, so answers from another deployed model (the ``x-vertex-ai-deployed-model-id``
header says which) are set aside and the request is sent again.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components import vertex
from components.contract.sample import BATCH, REVERSED, SHAPE_NAMES, Sample
from components.runners import Exchange
from serving_image.server.predictions import json_difference

DEPLOYED_MODEL_HEADER = "x-vertex-ai-deployed-model-id"
"""The rawPredict answer's header naming the deployed model that answered."""
SMOKE_SHAPES = (BATCH, REVERSED)
"""In batches and in another order: each instance alone is the contract check's (on Vertex
each request may need many tries to reach a canary)."""
RULE = "smoke-predictions"
RULE_TEXT = "the new deployed model answers the training-time sample as training predicted"


@dataclass
class SmokeRequest:
    """One request of the smoke test and its answer."""

    shape: str
    positions: list[int]
    attempts: int = 0
    other_answers: int = 0
    """Answers from another deployed model (Vertex routed the request elsewhere)."""
    exchange: Exchange | None = None
    differences: dict[int, str] = field(default_factory=dict)
    fault: str = ""


@dataclass
class SmokeReport:
    """The smoke test's verdict, answers and latencies."""

    endpoint: str
    deployed_model_id: str
    requests: list[SmokeRequest]
    expected: list[Any]
    answers: dict[int, Any]
    """Instance position -> the prediction the new model gave (first shape it answered in)."""
    instances: list[Any]
    kinds: list[str]

    @property
    def failures(self) -> list[str]:
        """One message per failed request: the rule, the request, what came back, what
        Vertex would have done."""
        messages = []
        for request in self.requests:
            if not (request.fault or request.differences):
                continue
            sent = (
                f"rawPredict of {len(request.positions)} instance(s) "
                f"{SHAPE_NAMES[request.shape]} to deployed model {self.deployed_model_id}"
            )
            if request.fault:
                came_back = request.fault
            else:
                first = sorted(request.differences)[:3]
                came_back = f"{len(request.differences)} prediction(s) differ: " + "; ".join(
                    request.differences[index] for index in first
                )
            messages.append(
                f"{RULE} ({RULE_TEXT}): {sent}: {came_back}. After promotion Vertex would "
                "serve these answers to every client; the rollout is rolled back instead."
            )
        return messages

    @property
    def passed(self) -> bool:
        return not self.failures

    def latencies_ms(self) -> list[float]:
        return [
            round(r.exchange.elapsed_s * 1000, 2)
            for r in self.requests
            if r.exchange is not None and r.exchange.status is not None
        ]

    def to_json(self) -> dict[str, Any]:
        latencies = self.latencies_ms()
        return {
            "rule": RULE,
            "passed": self.passed,
            "endpoint": self.endpoint,
            "deployedModelId": self.deployed_model_id,
            "failures": self.failures,
            "latencyMs": {
                "p50": statistics.median(latencies) if latencies else None,
                "max": max(latencies) if latencies else None,
                "each": latencies,
            },
            "requests": [
                {
                    "shape": r.shape,
                    "instances": len(r.positions),
                    "attempts": r.attempts,
                    "answersFromOtherModels": r.other_answers,
                    "status": r.exchange.status if r.exchange else None,
                    "latencyMs": round(r.exchange.elapsed_s * 1000, 2) if r.exchange else None,
                    "differences": r.differences,
                    "fault": r.fault,
                }
                for r in self.requests
            ],
            "answers": [
                {
                    "instance": self.instances[index],
                    "kind": self.kinds[index],
                    "expected": self.expected[index],
                    "answer": self.answers.get(index),
                }
                for index in range(len(self.instances))
            ],
        }

    def markdown(self) -> str:
        """The report for people (the component's Markdown output)."""
        verdict = "PASSED" if self.passed else "FAILED"
        latencies = self.latencies_ms()
        lines = [
            f"# Smoke test: {verdict}",
            "",
            f"Endpoint `{self.endpoint}`, deployed model `{self.deployed_model_id}`: "
            f"{len(self.instances)} sample instances, {len(self.requests)} requests "
            f"({', '.join(SHAPE_NAMES[s] for s in SMOKE_SHAPES)}).",
        ]
        if latencies:
            lines.append(
                f"Latency: median {statistics.median(latencies):.1f} ms, "
                f"max {max(latencies):.1f} ms."
            )
        lines += ["", *(f"- {message}" for message in self.failures)]
        lines += ["", "| # | kind | expected | answered | same |", "|---|---|---|---|---|"]
        for index in range(len(self.instances)):
            answer = self.answers.get(index)
            same = (
                "yes"
                if answer is not None and not any(index in r.differences for r in self.requests)
                else "NO"
            )
            lines.append(
                f"| {index} | {self.kinds[index]} | `{self.expected[index]}` | `{answer}` | "
                f"{same} |"
            )
        return "\n".join(lines) + "\n"


def smoke_test(
    raw_predict: Callable[[bytes], Exchange],
    sample: Sample,
    *,
    endpoint: str,
    deployed_model_id: str,
    max_attempts: int = 1,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-9,
    max_batch_bytes: int = vertex.SHARED_ENDPOINT_MAX_BODY_BYTES,
) -> SmokeReport:
    """Send ``sample`` (with expected predictions) in ``SMOKE_SHAPES`` through ``raw_predict``
    and compare every answer of ``deployed_model_id`` with its expectation.

    ``max_attempts``: how often a request is sent until ``deployed_model_id`` answers it (on
    Vertex about 100 / its share); answers from other deployed models are not compared.
    """
    if sample.expected is None:
        raise ValueError("the smoke test needs the sample's expected predictions")
    positions = [i for i in range(len(sample.instances)) if not sample.optional([i])]
    kept = Sample.of(
        [sample.instances[i] for i in positions],
        [sample.expected[i] for i in positions],
        [sample.kinds[i] for i in positions],
    )
    expected = kept.expected or []
    report = SmokeReport(endpoint, deployed_model_id, [], expected, {}, kept.instances, kept.kinds)
    for shape in SMOKE_SHAPES:
        for group in kept.requests(shape, max_batch_bytes):
            request = SmokeRequest(shape, group)
            report.requests.append(request)
            _send(raw_predict, kept.body(group), request, deployed_model_id, max_attempts)
            predictions = _predictions(request)
            if predictions is None:
                continue
            for offset, index in enumerate(group):
                report.answers.setdefault(index, predictions[offset])
                difference = json_difference(
                    expected[index],
                    predictions[offset],
                    rel_tol=rel_tol,
                    abs_tol=abs_tol,
                    path=f"predictions[{index}]",
                )
                if difference is not None:
                    request.differences[index] = difference
    return report


def _send(
    raw_predict: Callable[[bytes], Exchange],
    body: bytes,
    request: SmokeRequest,
    deployed_model_id: str,
    max_attempts: int,
) -> None:
    """Send until ``deployed_model_id`` answers, at most ``max_attempts`` times."""
    while request.attempts < max_attempts:
        request.attempts += 1
        exchange = raw_predict(body)
        request.exchange = exchange
        answered_by = exchange.headers.get(DEPLOYED_MODEL_HEADER, "")
        if exchange.status is not None and answered_by and answered_by != deployed_model_id:
            request.other_answers += 1
            continue
        return
    request.fault = (
        f"deployed model {deployed_model_id} never answered in {max_attempts} tries "
        f"({request.other_answers} answers came from other deployed models: the endpoint "
        "routes rawPredict by its traffic split; give the new model a larger share)"
    )


def _predictions(request: SmokeRequest) -> list[Any] | None:
    """The answer's predictions, or None with ``request.fault`` set."""
    exchange = request.exchange
    if request.fault or exchange is None:
        return None
    if not exchange.ok:
        request.fault = f"answered {exchange.response_text()}"
        return None
    try:
        payload = exchange.json()
    except ValueError:
        request.fault = f"the answer is not JSON: {exchange.response_text()}"
        return None
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list) or len(predictions) != len(request.positions):
        request.fault = (
            f'the answer has no list of {len(request.positions)} "predictions": '
            f"{exchange.response_text()}"
        )
        return None
    return predictions
