"""The HTTP layer: a plain ASGI application with two routes and JSON errors.

Plain ASGI (no framework) because the app is two routes and per-request overhead is what
the benchmark measures: no routing tables, middleware stack or request objects, orjson for
both directions, and no access-log line unless asked for.

Prediction runs synchronously on the worker's event loop, through ``batching.Batcher`` so
that requests waiting on the same worker share one model call. ``run_in_executor`` was
measured as the alternative: ~45 µs of CPU per hand-off (uvloop, the reference 2-vCPU box),
no parallelism in return because a scikit-learn call holds the GIL nearly throughout, and
it would start a second model call where the batcher merges the waiting requests into the
next one. Concurrency comes from worker processes. A health probe on a busy worker waits
for at most the model call in progress (~7-13 ms for the penguins pipeline, with merged
calls capped by ``SERVING_MAX_BATCH_INSTANCES``; Vertex's health timeout is 10 s).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import orjson

from .batching import Batcher
from .config import Config
from .loading import ModelState
from .logs import log_fields
from .validation import PredictRequest, RequestError, parse_predict_request

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_CONTENT_TYPE = b"application/json"
EXCERPT_CHARS = 1000
"""How much of the request's instances a 500 log line copies."""


class ClientDisconnected(Exception):
    """The client went away before sending its whole body; nothing to answer."""


class ServingApp:
    """ASGI app: ``GET``/``HEAD`` on the health route, ``POST`` on the predict route.

    The model loads in the background on ASGI lifespan startup (see ``loading``); until it
    is loaded health answers 503, and a prediction waits up to ``SERVING_LOAD_WAIT_S`` for
    it: the container's health is 200 once any worker is ready, so a request can reach a
    sibling worker (or a replacement) that is still loading and must not fail for that.
    """

    def __init__(self, config: Config, state: ModelState) -> None:
        self.config = config
        self.state = state
        self.batcher: Batcher | None = None
        self.routes: dict[str, dict[str, Handler]] = {}
        # Vertex's docs disagree on whether the default health route equals the predict
        # route; keying on (path, method) serves both layouts.
        self.routes.setdefault(config.health_route, {}).update(GET=self.health, HEAD=self.health)
        self.routes.setdefault(config.predict_route, {})["POST"] = self.predict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.route(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Start loading the model at worker startup; nothing to release at shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.state.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.routes.get(scope["path"])
        if methods is None:
            await send_json(
                send,
                404,
                {
                    "error": f"no route {scope['path']!r}; health is GET "
                    f"{self.config.health_route}, predictions POST {self.config.predict_route}"
                },
            )
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allowed = ", ".join(sorted(methods))
            error = f"method {scope['method']} not allowed on {scope['path']}; use {allowed}"
            await send_json(send, 405, {"error": error}, [(b"allow", allowed.encode())])
            return
        await handler(scope, receive, send)

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 once the model is loaded and verified, 503 while loading or after a failure."""
        status = self.state.status
        if status == "ready":
            await send_json(send, 200, {"status": status})
        elif status == "failed":
            await send_json(send, 503, {"status": status, "error": self.state.error})
        else:
            await send_json(send, 503, {"status": status})

    async def predict(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Validate, predict the whole request as one batch, answer ``{"predictions"}``."""
        if self.state.status == "loading":
            await self.state.wait_until_settled(self.config.load_wait_s)
        predictor = self.state.predictor
        if predictor is None:
            error = (
                f"model failed to load: {self.state.error}"
                if self.state.error is not None
                else f"model is still loading after {self.config.load_wait_s} s "
                "(SERVING_LOAD_WAIT_S); retry shortly"
            )
            await send_json(send, 503, {"error": error}, [(b"retry-after", b"1")])
            return
        if self.batcher is None:
            self.batcher = Batcher(predictor, self.config.max_batch_instances)
        request: PredictRequest | None = None
        try:
            _check_content_type(scope)
            body = await read_body(scope, receive, self.config.max_body_bytes)
            request = parse_predict_request(body, predictor.schema)
            predictions = await self.batcher.predict(request)
        except RequestError as exc:
            await send_json(send, exc.status, exc.body())
            return
        except ClientDisconnected:
            return
        except Exception as exc:
            log.error(
                f"prediction failed: {type(exc).__name__}: {exc}",
                exc_info=exc,
                extra=log_fields(
                    instances=request.count if request else None,
                    instances_excerpt=_excerpt(request.instances) if request else None,
                ),
            )
            await send_json(
                send,
                500,
                {
                    "error": f"internal error while predicting ({type(exc).__name__}); "
                    "the server log has the details"
                },
            )
            return
        await send_json(send, 200, {"predictions": predictions})


def create_app(config: Config, runtime_dir: Path) -> ServingApp:
    """The app for one worker process; ``runtime_dir`` is shared by the container's workers."""
    return ServingApp(config, ModelState(config.model_source, runtime_dir, config.storage_retry_s))


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the request body, refusing with 413 as soon as it is known to exceed ``limit``.

    ``Content-Length`` is checked before reading anything; a chunked body is counted while
    it arrives, so an oversized body is never buffered past the limit.
    """
    for name, value in scope["headers"]:
        if name == b"content-length":  # the HTTP parser has already checked it is a number
            if int(value) > limit:
                raise RequestError(413, _too_large(limit))
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, _too_large(limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete JSON response."""
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON_CONTENT_TYPE),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _check_content_type(scope: Scope) -> None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            if value.split(b";", 1)[0].strip().lower() == JSON_CONTENT_TYPE:
                return
            raise RequestError(
                415, f"Content-Type must be application/json, got {value.decode('latin-1')!r}"
            )
    raise RequestError(415, "Content-Type must be application/json; the header is missing")


def _too_large(limit: int) -> str:
    return (
        f"request body exceeds {limit} bytes (SERVING_MAX_BODY_BYTES); split the instances "
        "over several requests"
    )


def _excerpt(instances: list[Any]) -> str:
    """The request's instances as JSON, cut to ``EXCERPT_CHARS`` for a log line."""
    text = orjson.dumps(instances[0] if len(instances) == 1 else instances).decode()
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."
