"""The batcher's merging rules, in-process with a recording predictor (no HTTP, no model)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving_image.server.batching import Batcher
from serving_image.server.predictor import Predictor
from serving_image.server.validation import PredictRequest


class Doubler(Predictor):
    """Predicts ``2 * x``; raises for a negative ``x``; records each call's ``x`` column."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[float]]] = []

    def load(self, model_dir: Any, manifest: Any) -> None:
        raise NotImplementedError

    def preprocess(self, request: PredictRequest) -> list[float]:
        self.calls.append((request.output, list(request.columns["x"])))
        return request.columns["x"]

    def predict(self, inputs: list[float], request: PredictRequest) -> list[float]:
        if any(x < 0 for x in inputs):
            raise ValueError("negative x")
        return [2 * x for x in inputs]

    def postprocess(self, outputs: list[float], request: PredictRequest) -> list[Any]:
        return outputs


def request(*xs: float, output: str = "both") -> PredictRequest:
    return PredictRequest({"x": list(xs)}, len(xs), output, [{"x": x} for x in xs])


def submit_together(batcher: Batcher, requests: list[PredictRequest]) -> list[Any]:
    """Submit in one event-loop turn; each result is predictions or the exception."""

    async def main() -> list[Any]:
        return await asyncio.gather(*(batcher.predict(r) for r in requests), return_exceptions=True)

    return asyncio.run(main())


def test_requests_submitted_together_share_one_call_and_keep_their_order() -> None:
    predictor = Doubler()
    results = submit_together(Batcher(predictor, 100), [request(1), request(2, 3), request(4)])
    assert results == [[2], [4, 6], [8]]
    assert predictor.calls == [("both", [1, 2, 3, 4])]


def test_a_failing_merged_call_is_retried_per_request() -> None:
    predictor = Doubler()
    results = submit_together(Batcher(predictor, 100), [request(1), request(-1), request(3)])
    assert results[0] == [2] and results[2] == [6]
    assert isinstance(results[1], ValueError)
    assert [xs for _, xs in predictor.calls] == [[1, -1, 3], [1], [-1], [3]]


def test_only_requests_with_the_same_output_are_merged() -> None:
    predictor = Doubler()
    requests = [request(1), request(2, output="label"), request(3)]
    assert submit_together(Batcher(predictor, 100), requests) == [[2], [4], [6]]
    assert predictor.calls == [("both", [1, 3]), ("label", [2])]


@pytest.mark.parametrize(
    ("cap", "calls"),
    [(3, [[1, 2], [3, 4, 5], [6]]), (1, [[1], [2], [3, 4, 5], [6]]), (100, [[1, 2, 3, 4, 5, 6]])],
)
def test_the_cap_limits_instances_per_call_but_never_splits_a_request(
    cap: int, calls: list[list[float]]
) -> None:
    predictor = Doubler()
    requests = [request(1), request(2), request(3, 4, 5), request(6)]
    results = submit_together(Batcher(predictor, cap), requests)
    assert results == [[2], [4], [6, 8, 10], [12]]
    assert [xs for _, xs in predictor.calls] == calls


def test_a_predictor_answering_the_wrong_count_fails_the_request() -> None:
    class Short(Doubler):
        def postprocess(self, outputs: list[float], request: PredictRequest) -> list[Any]:
            return outputs[:-1]

    (result,) = submit_together(Batcher(Short(), 100), [request(1, 2)])
    assert isinstance(result, RuntimeError)
    assert "returned 1 predictions for 2 instances" in str(result)
