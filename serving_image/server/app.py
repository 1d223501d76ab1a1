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

Every answer sent before the request body was read (413, 415, 503, 404, 405) first reads and
drops what is left of the body, up to ``DISCARD_LIMIT_BYTES``: a server that closes the
connection on unread data makes the kernel reset it, and a client still sending (urllib sends
``Connection: close`` and the body after the headers) gets ``ECONNRESET``/``EPIPE`` instead of
the answer. While the worker drains at SIGTERM (``serve``), answers carry
``Connection: close`` so that clients leave for another replica.
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
from .predictor import Predictor
from .validation import PredictRequest, RequestError, parse_predict_request

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, "RequestBody", Send], Awaitable[None]]

JSON_CONTENT_TYPE = b"application/json"
DISCARD_LIMIT_BYTES = 64 * 1024 * 1024
"""The most of a refused body read (and dropped) so that its client gets the answer; Vertex
forwards at most 10 MB."""
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
        self.draining = False
        """Set by the worker at SIGTERM: answers then close their connection."""
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
        """Start loading the model (and gRPC, when on) at worker startup; stop gRPC at
        shutdown, its in-flight calls given what the grace period leaves."""
        grpc_server = None
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.state.start()
                if self.config.grpc_port:
                    from .grpc_service import GrpcServer  # grpcio only where gRPC is on

                    grpc_server = GrpcServer(self)
                    await grpc_server.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if grpc_server is not None:
                    await grpc_server.stop(self.config.grace_period_s - self.config.drain_s)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def batcher_for(self, predictor: Predictor) -> Batcher:
        """The worker's one batcher: HTTP and gRPC requests merge into the same calls."""
        if self.batcher is None:
            self.batcher = Batcher(predictor, self.config.max_batch_instances)
        return self.batcher

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = RequestBody(scope, receive)
        methods = self.routes.get(scope["path"])
        if methods is None:
            error = (
                f"no route {scope['path']!r}; health is GET {self.config.health_route}, "
                f"predictions POST {self.config.predict_route}"
            )
            await self.respond(send, body, 404, {"error": error})
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allowed = ", ".join(sorted(methods))
            error = f"method {scope['method']} not allowed on {scope['path']}; use {allowed}"
            await self.respond(send, body, 405, {"error": error}, [(b"allow", allowed.encode())])
            return
        await handler(scope, body, send)

    async def respond(
        self,
        send: Send,
        body: RequestBody,
        status: int,
        payload: Any,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send a JSON answer, after dropping what is left of the request body."""
        await body.discard()
        extra = [*(headers or ()), *([(b"connection", b"close")] if self.draining else [])]
        await send_json(send, status, payload, extra)

    async def health(self, scope: Scope, body: RequestBody, send: Send) -> None:
        """200 once the model is loaded and verified, 503 while loading or after a failure."""
        status = self.state.status
        if status == "ready":
            await self.respond(send, body, 200, {"status": status})
        elif status == "failed":
            await self.respond(send, body, 503, {"status": status, "error": self.state.error})
        else:
            await self.respond(send, body, 503, {"status": status})

    async def predict(self, scope: Scope, body: RequestBody, send: Send) -> None:
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
            await self.respond(send, body, 503, {"error": error}, [(b"retry-after", b"1")])
            return
        batcher = self.batcher_for(predictor)
        request: PredictRequest | None = None
        try:
            _check_content_type(scope)
            data = await body.read(self.config.max_body_bytes)
            request = parse_predict_request(data, predictor.schema)
            predictions = await batcher.predict(request)
        except RequestError as exc:
            await self.respond(send, body, exc.status, exc.body())
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
            error = (
                f"internal error while predicting ({type(exc).__name__}); "
                "the server log has the details"
            )
            await self.respond(send, body, 500, {"error": error})
            return
        await self.respond(send, body, 200, {"predictions": predictions})


def create_app(config: Config, runtime_dir: Path) -> ServingApp:
    """The app for one worker process; ``runtime_dir`` is shared by the container's workers."""
    state = ModelState(config.model_source, runtime_dir, config.storage_retry_s, config.predictor)
    return ServingApp(config, state)


class RequestBody:
    """A request's body as it arrives: read once within a limit, or what is left dropped."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.receive = receive
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        self.length = int(length) if length is not None else None
        """``Content-Length`` (the HTTP parser has already checked it is a number)."""
        self.complete = self.length in (None, 0) and b"transfer-encoding" not in headers
        """Whether the whole body has arrived (a body-less request: at once)."""
        self.awaits_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        """The client sends the body only once told to: a refusal before reading needs no
        draining."""
        self.started = False

    async def read(self, limit: int) -> bytes:
        """The whole body, refused with 413 as soon as it is known to exceed ``limit``.

        ``Content-Length`` is checked before reading anything; a chunked body is counted
        while it arrives, so an oversized body is never buffered past the limit.
        """
        if self.length is not None and self.length > limit:
            raise RequestError(413, _too_large(limit))
        chunks: list[bytes] = []
        size = 0
        while not self.complete:
            chunk = await self._next()
            size += len(chunk)
            if size > limit:
                raise RequestError(413, _too_large(limit))
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def discard(self) -> None:
        """Read and drop the rest of the body (up to ``DISCARD_LIMIT_BYTES``), so that the
        answer reaches a client that is still sending."""
        dropped = 0
        if self.awaits_continue and not self.started:
            return
        while not self.complete and dropped <= DISCARD_LIMIT_BYTES:
            try:
                dropped += len(await self._next())
            except ClientDisconnected:
                return

    async def _next(self) -> bytes:
        self.started = True
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        self.complete = not message.get("more_body", False)
        return message.get("body", b"")


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
