"""gRPC beside HTTP in each worker: the Open Inference Protocol, ``grpc.health.v1``, reflection.

With ``SERVING_GRPC_PORT`` set, every worker starts a ``grpc.aio`` server on its own event loop
at ASGI lifespan startup, on that port with ``SO_REUSEPORT`` (the kernel spreads connections
over the workers as gunicorn's shared socket does for HTTP). It answers from the worker's model,
through the same batcher as the HTTP route, so requests of both kinds merge into one model
call:

* ``inference.GRPCInferenceService`` (``tensors`` maps the tensors to our requests and answers):
  a client mistake is ``INVALID_ARGUMENT`` with the HTTP route's message, a model still
  loading ``UNAVAILABLE``, another model's name ``NOT_FOUND``, a failed model call ``INTERNAL``
  (logged with the traceback, as the HTTP route's 500);
* ``grpc.health.v1.Health`` for the server (``""``) and the inference service: ``NOT_SERVING``
  until the model is loaded and self-checked, ``SERVING`` after, ``NOT_SERVING`` again from
  SIGTERM (the drain) on; ``Watch`` streams the changes, and ends at shutdown;
* server reflection, so that ``grpcurl`` and friends need no ``.proto`` file.

A request that is not its method's message at all is ``INVALID_ARGUMENT`` too (grpc itself
would answer ``UNKNOWN`` and log an ERROR traceback per request).

Messages are limited to ``SERVING_MAX_BODY_BYTES`` both ways (10 MB: what Vertex forwards on
the dedicated endpoints that carry gRPC). At shutdown in-flight calls get the grace period.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .batching import Batcher
from .config import Config
from .loading import ModelState
from .logs import log_fields
from .predictor import Predictor
from .protos import grpc_predict_v2_pb2 as pb
from .protos import grpc_predict_v2_pb2_grpc as pb_grpc
from .tensors import LABEL, PROBABILITIES, VALUE, infer_request, infer_response, label_datatype
from .validation import RequestError

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVER_NAME = "train-to-serve"
HEALTH_POLL_S = 0.05
"""How often the health status follows the model's state (a comparison, no I/O)."""
PLATFORMS = {"scikit-learn": "sklearn_sklearn", "tensorflow": "tensorflow_savedmodel"}
"""``ModelMetadata.platform`` names, as KServe's servers report them."""


class Worker(Protocol):
    """What gRPC needs of the worker's HTTP app (``app.ServingApp``): its model, settings,
    batcher and whether it is draining."""

    config: Config
    state: ModelState
    draining: bool

    def batcher_for(self, predictor: Predictor) -> Batcher: ...


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol over one worker's model."""

    def __init__(self, app: Worker) -> None:
        self.app = app

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.app.state.status == "ready")

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        await self._check_name(request.name, context)
        return pb.ModelReadyResponse(ready=self.app.state.status == "ready")

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        await self._check_name(request.name, context)
        predictor = await self._predictor(context)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        inputs = [
            tensor(name=f.name, datatype="FP64" if f.numeric else "BYTES", shape=[-1])
            for f in predictor.schema.features
        ]
        manifest = self.app.state.manifest or {}
        if predictor.task == "regression":
            outputs = [tensor(name=VALUE, datatype="FP64", shape=[-1])]
        else:
            label = label_datatype(manifest.get("target_classes") or [])
            outputs = [tensor(name=LABEL, datatype=label, shape=[-1])]
            if PROBABILITIES in predictor.schema.outputs:
                outputs.append(tensor(name=PROBABILITIES, datatype="FP64", shape=[-1, -1]))
        framework = str(manifest.get("framework", ""))
        return pb.ModelMetadataResponse(
            name=self.app.config.model_name,
            platform=PLATFORMS.get(framework, framework),
            inputs=inputs,
            outputs=outputs,
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        await self._check_name(request.model_name, context)
        predictor = await self._predictor(context)
        try:
            predict, wanted = infer_request(request, predictor.schema)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        try:
            predictions = await self.app.batcher_for(predictor).predict(predict)
        except Exception as exc:
            log.error(
                f"prediction failed: {type(exc).__name__}: {exc}",
                exc_info=exc,
                extra=log_fields(instances=predict.count, route="grpc ModelInfer"),
            )
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error while predicting ({type(exc).__name__}); the server log has "
                "the details",
            )
        try:
            return infer_response(
                predictions,
                task=predictor.task,
                model_name=self.app.config.model_name,
                request_id=request.id,
                wanted=wanted,
            )
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)

    async def _check_name(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name not in ("", self.app.config.model_name):
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no model {name!r}: this server serves {self.app.config.model_name!r} "
                "(SERVING_MODEL_NAME; an empty name also names it)",
            )

    async def _predictor(self, context: grpc.aio.ServicerContext) -> Any:
        """The loaded model, waiting for it as the HTTP route does; else ``UNAVAILABLE``."""
        state = self.app.state
        if state.status == "loading":
            await state.wait_until_settled(self.app.config.load_wait_s)
        if state.predictor is None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"model failed to load: {state.error}"
                if state.error is not None
                else f"model is still loading after {self.app.config.load_wait_s} s "
                "(SERVING_LOAD_WAIT_S); retry shortly",
            )
        return state.predictor


class HealthServicer(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1.Health``: one status for every service, as they follow one model.

    Not ``grpc_health``'s aio servicer (1.81): once one watcher of a service left, it notified
    that service's other watchers no more, and its ``Watch`` streams never ended, so that a
    worker with one open (as gRPC clients' own health checking keeps) spent its whole grace
    period stopping. Here each ``Watch`` sends the final ``NOT_SERVING`` and ends.
    """

    def __init__(self, services: Iterable[str]) -> None:
        self._services = frozenset(services)
        self._status = health_pb2.HealthCheckResponse.NOT_SERVING
        self._final = False
        self._changed = asyncio.Condition()

    async def set(self, status: int) -> None:
        """Every service's status (ignored once shut down)."""
        async with self._changed:
            if not self._final:
                self._status = status
                self._changed.notify_all()

    async def shut_down(self) -> None:
        """``NOT_SERVING`` for good; every ``Watch`` stream sends it and ends."""
        async with self._changed:
            self._status, self._final = health_pb2.HealthCheckResponse.NOT_SERVING, True
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._services:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no service {request.service!r} here; ask for one of {sorted(self._services)}",
            )
        return health_pb2.HealthCheckResponse(status=self._status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change, until shutdown (an unknown service:
        ``SERVICE_UNKNOWN``, as the protocol says)."""
        known = request.service in self._services
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        sent = None
        while True:
            async with self._changed:  # the condition's lock, not held while writing
                while (status := self._status if known else unknown) == sent and not self._final:
                    await self._changed.wait()
                final = self._final
            if status != sent:
                yield health_pb2.HealthCheckResponse(status=status)
                sent = status
            if final:
                return


class UndecodableRequest:
    """What a unary request that does not parse as its method's message becomes."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class RefuseUndecodable(grpc.aio.ServerInterceptor):
    """Answers a unary request whose bytes are not its method's message ``INVALID_ARGUMENT``.

    grpc would answer ``UNKNOWN`` and log an ERROR line with a traceback for each: a client's
    mistake read as a server fault, and a log anyone can flood. Streamed requests (reflection's
    only) keep grpc's own handling.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        kind = "unary_stream" if handler.response_streaming else "unary_unary"
        return handler._replace(
            request_deserializer=_lenient(handler.request_deserializer),
            **{kind: _refusing_undecodable(getattr(handler, kind))},
        )


def _lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    return parse


def _refusing_undecodable(behavior: Callable[..., Any]) -> Callable[..., Any]:
    """``behavior`` (a coroutine or an async generator function), after the refusal."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        if isinstance(request, UndecodableRequest):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{request.reason}: the request is not a serialized message of the method's "
                "request type (server reflection has the .proto)",
            )

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await refuse(request, context)
            async for response in behavior(request, context):
                yield response

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await refuse(request, context)
        return await behavior(request, context)

    return unary


class GrpcServer:
    """One worker's gRPC server and the task that keeps its health status current."""

    def __init__(self, app: Worker) -> None:
        self.app = app
        limit = app.config.max_body_bytes
        self.server = grpc.aio.server(
            interceptors=[RefuseUndecodable()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 1),
            ],
        )
        self.health = HealthServicer(("", INFERENCE_SERVICE))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server
        )
        self.server.add_insecure_port(f"0.0.0.0:{app.config.grpc_port}")
        self._tracker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._tracker = asyncio.get_running_loop().create_task(self._track_health())

    async def _track_health(self) -> None:
        """``SERVING`` while the model is ready and the worker not draining."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        current = not_serving
        while True:
            wanted = (
                serving
                if self.app.state.status == "ready" and not self.app.draining
                else not_serving
            )
            if wanted != current:
                await self.health.set(wanted)
                current = wanted
            await asyncio.sleep(HEALTH_POLL_S)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give in-flight ones ``grace_s``, then cancel them."""
        if self._tracker is not None:
            self._tracker.cancel()
        await self.health.shut_down()
        await self.server.stop(grace_s)
