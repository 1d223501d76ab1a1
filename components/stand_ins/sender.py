"""Sending batches to a model server, as Vertex AI's batch prediction does.

Requests of ``batch_size`` instances, ``{"instances": [...], "parameters": {...}}``, from
threads sharing one ``httpx.Client``. 429, 5xx, timeouts, connection resets and a 200 whose
``predictions`` are missing or not one per instance are retried with exponential backoff and
jitter (honouring ``Retry-After``); a batch that still fails, or gets any other 4xx, is split
in halves recursively, so that the good instances still get predictions and only the bad ones
become error lines with the server's message. Error messages follow what Vertex records for a
container that answers non-OK: ``Non-OK result 400 (<body>)``, prefixed with
``Exceeded retries (N attempts): `` when retries ran out. A server that refuses connections
after every retry raises ``ServerUnreachableError``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from components import vertex
from components.stand_ins.batch_inputs import Record
from components.stand_ins.errors import BatchPredictError

DEFAULT_TIMEOUT_S = vertex.PREDICT_TIMEOUT_S
"""Per request; Vertex's batch timeout is undocumented, its online one is 60 s."""
DEFAULT_MAX_RETRIES = 5
DEFAULT_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
MAX_MESSAGE_CHARS = 1000


# google.rpc.Code values used in error lines.
CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 1, 3, 4, 5
PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED = 7, 8, 9, 10
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16
_RPC_CODES = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    409: ABORTED,
    412: FAILED_PRECONDITION,
    429: RESOURCE_EXHAUSTED,
    499: CANCELLED,
    500: INTERNAL,
    501: UNIMPLEMENTED,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}
"""HTTP status -> google.rpc.Code, as Google's APIs map them."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard each request is tried before its batch is split."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    """First delay; doubles per retry up to ``MAX_BACKOFF_S``, each drawn in [d/2, d]."""

    def delay(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        ceiling = min(MAX_BACKOFF_S, self.backoff_s * 2**retry)
        jittered = random.uniform(ceiling / 2, ceiling)
        return min(MAX_BACKOFF_S, max(jittered, retry_after or 0.0))


@dataclass(frozen=True)
class _Failure:
    """A request that got no usable answer."""

    code: int
    message: str
    retryable: bool
    retry_after: float | None = None
    refused: bool = False
    """The server refused the connection: it is down, not choking on these instances."""


class ServerUnreachableError(BatchPredictError):
    """The server refused connections on every retry."""


class Stopped(Exception):
    """The run is being stopped; a worker gives up its batch without recording anything."""


class Sender:
    """Sends batches to one predict URL; retries, splits, and counts what it did."""

    def __init__(
        self,
        client: httpx.Client,
        url: str,
        parameters: Mapping[str, Any] | None,
        policy: RetryPolicy,
        stop: threading.Event,
    ) -> None:
        self.client, self.url, self.policy, self.stop = client, url, policy, stop
        self.parameters = None if parameters is None else dict(parameters)
        self.requests = self.retries = self.splits = 0
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def predict(self, records: Sequence[Record]) -> list[tuple[bool, bytes]]:
        """One output line per record, in order, as ``(is_error, line)``."""
        if self.stop.is_set():
            raise Stopped
        outcome = self._send_with_retries([record.instance for record in records])
        if isinstance(outcome, list):
            return [
                (False, output_line(record.opening, prediction=prediction))
                for record, prediction in zip(records, outcome, strict=True)
            ]
        if len(records) == 1:
            error = {"code": outcome.code, "message": outcome.message}
            return [(True, output_line(records[0].opening, error=error))]
        self._count("splits")
        half = len(records) // 2
        return self.predict(records[:half]) + self.predict(records[half:])

    def _send_with_retries(self, instances: list[Any]) -> list[Any] | _Failure:
        retry = 0
        while True:
            outcome = self._send(instances)
            if isinstance(outcome, list) or not outcome.retryable:
                return outcome
            if self.stop.is_set():
                raise Stopped
            if retry >= self.policy.max_retries:
                if outcome.refused:
                    raise ServerUnreachableError(outcome.message)
                message = f"Exceeded retries ({retry + 1} attempts): {outcome.message}"
                return _Failure(outcome.code, message, retryable=False)
            self._count("retries")
            self.stop.wait(self.policy.delay(retry, outcome.retry_after))
            retry += 1

    def _send(self, instances: list[Any]) -> list[Any] | _Failure:
        body: dict[str, Any] = {"instances": instances}
        if self.parameters is not None:
            body["parameters"] = self.parameters
        self._count("requests")
        timeout = self.policy.timeout_s
        try:
            response = self.client.post(
                self.url,
                content=orjson.dumps(body),
                headers={"content-type": "application/json"},
                timeout=timeout,
            )
        except httpx.ConnectError as exc:
            message = f"cannot connect to {self.url}: {exc}"
            return _Failure(UNAVAILABLE, message, retryable=True, refused=True)
        except httpx.TimeoutException:
            message = f"no answer from {self.url} within {timeout:g} s"
            return _Failure(DEADLINE_EXCEEDED, message, retryable=True)
        except httpx.TransportError as exc:
            message = f"connection to {self.url} failed: {type(exc).__name__}: {exc}"
            return _Failure(UNAVAILABLE, message, retryable=True)
        return _predictions(response, len(instances))


def _predictions(response: httpx.Response, count: int) -> list[Any] | _Failure:
    """The response's predictions, or why they cannot be used (the body's text is decoded
    only to quote it in a failure: decoding every answer cost as much as parsing it)."""
    status = response.status_code
    if status != 200:
        code = _RPC_CODES.get(status, INTERNAL if status >= 500 else INVALID_ARGUMENT)
        retry_after = response.headers.get("retry-after", "")
        return _Failure(
            code,
            f"Non-OK result {status} ({_excerpt(response.text)})",
            retryable=status == 429 or status >= 500,
            retry_after=float(retry_after) if retry_after.isdigit() else None,
        )
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        payload = None
    predictions = payload.get("predictions") if isinstance(payload, dict) else None
    if not isinstance(predictions, list):
        message = f'answered 200 without a JSON "predictions" list ({_excerpt(response.text)})'
        return _Failure(INTERNAL, message, retryable=True)
    if len(predictions) != count:
        message = f"answered {len(predictions)} predictions for {count} instances"
        return _Failure(INTERNAL, message, retryable=True)
    return predictions


def _excerpt(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE_CHARS else text[:MAX_MESSAGE_CHARS] + "..."


def output_line(opening: bytes, **value: Any) -> bytes:
    """One output line: the record's ``opening`` (its label) closed by its ``prediction`` or
    ``error``."""
    return opening + orjson.dumps(value)[1:]
