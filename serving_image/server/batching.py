"""Opportunistic batching: requests already waiting on a worker share one model call.

A scikit-learn ``Pipeline`` with a ``ColumnTransformer`` costs ~7 ms per call whether the
batch has 1 row or 100 (per-call validation and pandas overhead; ~6 µs per extra row), so
the number of model calls, not the number of instances, sets a worker's throughput. While
one call runs, the event loop is busy and other requests queue up on the worker's
connections; when it returns, each of them is validated and submitted here, and one flush,
scheduled two event-loop turns after the first submission, predicts them all as one batch.
Nothing waits for a batch to fill: an idle server answers a lone request at once (two
loop turns are microseconds), exactly as without batching.

Requests are merged only with requests asking for the same ``output``, in arrival order,
up to ``max_instances`` instances per call (a single larger request still runs alone, as
one batch). If a merged call raises, each request is re-run on its own so that only the
request that makes the model fail gets the error.

As with any dynamic batching, the last bits of a floating-point prediction can depend on
the shape of the batch it was computed in (BLAS kernels); ``SERVING_MAX_BATCH_INSTANCES=1``
turns merging off for bit-for-bit reproducible answers per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from itertools import chain
from typing import Any

from .predictor import Predictor
from .validation import PredictRequest

Pending = tuple[PredictRequest, asyncio.Future[list[Any]]]


class Batcher:
    """Merge the requests submitted during one event-loop turn into few model calls."""

    def __init__(self, predictor: Predictor, max_instances: int) -> None:
        self.predictor = predictor
        self.max_instances = max_instances
        self._pending: list[Pending] = []
        self._scheduled = False

    async def predict(self, request: PredictRequest) -> list[Any]:
        """The request's predictions, computed together with any requests waiting now."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append((request, future))
        if not self._scheduled:
            self._scheduled = True
            # Two loop turns, not one: uvloop reads sockets after running the callbacks
            # queued in a turn, so requests whose bytes arrive in this turn only submit in
            # the next one; the extra hop puts the flush behind them.
            loop.call_soon(loop.call_soon, self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for batch in self._batches(pending):
            try:
                self._run(batch)
            except BaseException as exc:  # never leave a request waiting forever
                for _, future in batch:
                    _resolve(future, exc)

    def _batches(self, pending: list[Pending]) -> Iterator[list[Pending]]:
        """Group by output, then pack in arrival order up to ``max_instances``."""
        by_output: dict[str, list[Pending]] = {}
        for item in pending:
            by_output.setdefault(item[0].output, []).append(item)
        for items in by_output.values():
            batch: list[Pending] = []
            size = 0
            for item in items:
                if batch and size + item[0].count > self.max_instances:
                    yield batch
                    batch, size = [], 0
                batch.append(item)
                size += item[0].count
            yield batch

    def _run(self, batch: list[Pending]) -> None:
        if len(batch) == 1:
            request, future = batch[0]
            try:
                _resolve(future, self._predict(request))
            except Exception as exc:
                _resolve(future, exc)
            return
        requests = [request for request, _ in batch]
        merged = PredictRequest(
            columns={
                name: list(chain.from_iterable(r.columns[name] for r in requests))
                for name in requests[0].columns
            },
            count=sum(r.count for r in requests),
            output=requests[0].output,
            instances=[],
        )
        try:
            predictions = self._predict(merged)
        except Exception:
            for item in batch:  # find the culprit: every request on its own
                self._run([item])
            return
        offset = 0
        for request, future in batch:
            _resolve(future, predictions[offset : offset + request.count])
            offset += request.count

    def _predict(self, request: PredictRequest) -> list[Any]:
        predictions = self.predictor(request)
        if len(predictions) != request.count:
            raise RuntimeError(
                f"the predictor returned {len(predictions)} predictions for "
                f"{request.count} instances"
            )
        return predictions


def _resolve(future: asyncio.Future[list[Any]], outcome: list[Any] | BaseException) -> None:
    """Set the result or exception of ``future`` unless its waiter is gone (shutdown)."""
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
