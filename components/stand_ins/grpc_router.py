"""The local endpoint's gRPC port: every call, whatever its service and method, passed on as
bytes to a deployed model that serves gRPC, chosen by the endpoint's traffic split.

Vertex carries gRPC on dedicated endpoints to each model's ``containerSpec.grpcPorts[0]``;
here the router process (``stand_ins.router``) serves this beside its HTTP routes, on the
endpoint's ``grpc_port``, and stops it with them:

* one generic handler takes every method as a stream of messages both ways, with no
  serializer (a unary call is a stream of one on the wire), so ``ModelInfer``,
  ``grpc.health.v1.Health`` (``Check``, ``Watch``), reflection and any other method pass
  through unread;
* the model is the one the request's ``x-vertex-ai-deployed-model-id`` metadata names (ours, as
  HTTP's rawPredict to one deployed model: even at 0%), else the split's pick among the models
  with a share that serve gRPC (``Router.choose(endpoint, grpc=True)``);
* the model's answer passes through (messages, status, details, metadata), its initial metadata
  with ``x-vertex-ai-endpoint-id``, ``x-vertex-ai-deployed-model-id``, ``x-vertex-ai-model`` and
  ``x-vertex-ai-model-version-id`` of the model that answered;
* a call that ends ``UNAVAILABLE`` (or grpcio's transport ``INTERNAL``) before any message
  came back (the model refused or dropped the connection, or could not take the call) is sent
  once more, with the messages so far, to another model (``Router.fallback``), as the HTTP
  side resends a request nothing answered; a call aimed at one model is not;
* the router's own answers: ``UNAVAILABLE`` when no model with a share serves gRPC (or the one
  named serves none), ``NOT_FOUND`` for an unknown deployed model or another endpoint's
  ``x-vertex-ai-endpoint-id``, each with ``x-local-router-error`` naming the case in the
  trailing metadata.

A call has the client's deadline, else the router's timeout; messages are limited both ways to
what Vertex forwards (``vertex.MAX_FORWARDED_BODY_BYTES``). Each model's channel is kept for
the router's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

import grpc

from components import traffic, vertex
from components.stand_ins.endpoint_records import (
    HEADER_DEPLOYED_MODEL_ID,
    HEADER_ENDPOINT_ID,
    ROUTER_ERROR_HEADER,
    UNREACHABLE,
    LocalDeployedModel,
    LocalEndpoint,
    model_headers,
)
from components.stand_ins.errors import EndpointError

Metadata = tuple[tuple[str, str | bytes], ...]

ENDPOINT_KEY = HEADER_ENDPOINT_ID.lower()
DEPLOYED_MODEL_KEY = HEADER_DEPLOYED_MODEL_ID.lower()
"""In a request, the deployed model to send it to (ours); in an answer, the one that answered."""
ERROR_KEY = ROUTER_ERROR_HEADER.lower()
NO_GRPC = "no-grpc"
TRANSPORT_KEYS = ("user-agent",)
"""Request metadata a channel sets itself, not passed on."""
CHANNEL_LIMITS = [
    ("grpc.max_receive_message_length", vertex.MAX_FORWARDED_BODY_BYTES),
    ("grpc.max_send_message_length", vertex.MAX_FORWARDED_BODY_BYTES),
]
"""Messages both ways up to what Vertex forwards (the server's, the channels', the clients')."""


class Routing(Protocol):
    """What the gRPC side takes from the router that starts it (``router.Router``): the
    endpoint as its record holds it now, and the split's choice."""

    def current(self) -> LocalEndpoint: ...

    def choose(
        self, endpoint: LocalEndpoint, *, grpc: bool = False
    ) -> LocalDeployedModel | None: ...

    def fallback(
        self, endpoint: LocalEndpoint, failed: str, *, grpc: bool = False
    ) -> LocalDeployedModel | None: ...


@dataclass(frozen=True)
class Ending:
    """How a model's call ended."""

    deployed: LocalDeployedModel
    code: grpc.StatusCode
    details: str
    initial: Metadata
    trailing: Metadata
    answered: bool
    """Whether a message came back (passed on already: the call cannot be sent again)."""


class Requests:
    """The client's messages, read once and kept, so that a call can be sent again."""

    def __init__(self, iterator: AsyncIterator[bytes]) -> None:
        self.messages: list[bytes] = []
        self.done = False
        self.arrived = asyncio.Event()
        self.reading = asyncio.create_task(self._read(iterator))

    async def _read(self, iterator: AsyncIterator[bytes]) -> None:
        try:
            async for message in iterator:
                self.messages.append(message)
                self.arrived.set()
        finally:
            self.done = True
            self.arrived.set()

    async def feed(self, call: grpc.aio.StreamStreamCall) -> None:
        """Write every message to ``call``, those so far then those to come, and close its
        side once the client closed its own. A call that ended stops it: its reader reports
        how."""
        sent = 0
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                while sent < len(self.messages):
                    await call.write(self.messages[sent])
                    sent += 1
                if self.done:
                    await call.done_writing()
                    return
                self.arrived.clear()
                await self.arrived.wait()

    def close(self) -> None:
        """Stop reading the client: the call is over."""
        self.reading.cancel()


@dataclass(frozen=True)
class Call:
    """One client call, as each try sends it."""

    endpoint_id: str
    method: str
    metadata: Metadata
    messages: Requests
    deadline: float
    """On the event loop's clock."""


class _AnyMethod(grpc.GenericRpcHandler):
    """Every method, as a stream of bytes both ways."""

    def __init__(self, handle: Callable[..., object]) -> None:
        self.handle = handle

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        return grpc.stream_stream_rpc_method_handler(functools.partial(self.handle, method))


class GrpcRouter:
    """The endpoint's gRPC port, in the router process's event loop."""

    def __init__(self, routing: Routing, timeout_s: float, log: Callable[[str], None]) -> None:
        self.routing = routing
        self.timeout_s = timeout_s
        self.log = log
        self.server: grpc.aio.Server | None = None
        self.channels: dict[str, grpc.aio.Channel] = {}

    async def start(self, port: int) -> None:
        """Serve on ``127.0.0.1:port``.

        Raises:
            OSError: the port cannot be bound (the message names it, and why).
        """
        # No SO_REUSEPORT: a second router on the port must fail, not share it.
        server = grpc.aio.server(options=[*CHANNEL_LIMITS, ("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((_AnyMethod(self.call),))
        try:
            server.add_insecure_port(f"127.0.0.1:{port}")
        except RuntimeError as exc:
            raise _bind_error(port, exc) from exc
        await server.start()
        self.server = server

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give those in flight ``grace_s``, then close the models'
        channels."""
        if self.server is not None:
            await self.server.stop(grace_s)
        for channel in self.channels.values():
            await channel.close()

    async def call(
        self, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        """Pass one call on to a deployed model, and its answer back."""
        remaining = context.time_remaining()  # None: the client set no deadline
        deadline = asyncio.get_running_loop().time() + (
            self.timeout_s if remaining is None else remaining
        )
        metadata = tuple((key, value) for key, value in context.invocation_metadata() or ())
        endpoint = await self._endpoint(metadata, context)
        named = _value(metadata, DEPLOYED_MODEL_KEY)
        deployed = await self._target(endpoint, named, context)
        messages = Requests(requests)
        call = Call(endpoint.endpoint_id, method, metadata, messages, deadline)
        try:
            ending = await self._forward(deployed, call, context)
            if _unreached(ending) and not named:
                with contextlib.suppress(FileNotFoundError, EndpointError):
                    endpoint = self.routing.current()  # an undeploy may just have changed it
                retry = self.routing.fallback(endpoint, deployed.id, grpc=True)
                if retry is not None:
                    self.log(
                        f"gRPC {method}: deployed model {deployed.id} at {deployed.grpc_target} "
                        f"gave no answer ({ending.details}); sent again to deployed model "
                        f"{retry.id}"
                    )
                    ending = await self._forward(retry, call, context)
        finally:
            messages.close()
        await _finish(endpoint.endpoint_id, ending, context)

    async def _endpoint(
        self, metadata: Metadata, context: grpc.aio.ServicerContext
    ) -> LocalEndpoint:
        """The endpoint now, the one the call names if it names one; else the refusal."""
        asked = str(_value(metadata, ENDPOINT_KEY) or "")
        try:
            endpoint = self.routing.current()
        except FileNotFoundError:
            await _refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                "this router's endpoint was undeployed (its record is gone)",
                "unknown-endpoint",
                asked,
            )
        except EndpointError as exc:
            await _refuse(context, grpc.StatusCode.INTERNAL, str(exc), "record-unreadable", asked)
        if asked and asked != endpoint.endpoint_id:
            await _refuse(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"this router serves endpoint {endpoint.endpoint_id}, not {asked} "
                f"({ENDPOINT_KEY} metadata)",
                "unknown-endpoint",
                asked,
            )
        return endpoint

    async def _target(
        self, endpoint: LocalEndpoint, named: str | bytes | None, context: grpc.aio.ServicerContext
    ) -> LocalDeployedModel:
        """The model the call names, else the split's pick; else the refusal."""
        if named:
            deployed = endpoint.find_deployed_model(str(named))
            if deployed is None:
                known = ", ".join(d.id for d in endpoint.deployed_models) or "none"
                await _refuse(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"endpoint {endpoint.endpoint_id} has no deployed model {named} (deployed: "
                    f"{known})",
                    "unknown-deployed-model",
                    endpoint.endpoint_id,
                )
            if not deployed.grpc_target:
                await _refuse(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"deployed model {deployed.id} serves no gRPC (its model's containerSpec "
                    "has no grpcPorts): call it over HTTP, or deploy a version whose "
                    "containerSpec has grpcPorts",
                    NO_GRPC,
                    endpoint.endpoint_id,
                    deployed,
                )
            return deployed
        chosen = self.routing.choose(endpoint, grpc=True)
        if chosen is None:
            deployed_models = (
                ", ".join(
                    f"{d.id} ({'gRPC' if d.grpc_target else 'no gRPC'})"
                    for d in endpoint.deployed_models
                )
                or "none"
            )
            await _refuse(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"endpoint {endpoint.endpoint_id} has no deployed model with traffic that serves "
                f"gRPC (deployed: {deployed_models}; split "
                f"{traffic.format_split(endpoint.traffic_split)}): deploy a version whose "
                "containerSpec has grpcPorts, or give one that serves gRPC a share "
                f"(compile.py endpoints traffic {endpoint.endpoint_id} --split ID=100)",
                NO_GRPC,
                endpoint.endpoint_id,
            )
        return chosen

    async def _forward(
        self, deployed: LocalDeployedModel, call: Call, context: grpc.aio.ServicerContext
    ) -> Ending:
        """Send the call to ``deployed`` and pass its messages back as they come."""
        passed_on = tuple((k, v) for k, v in call.metadata if k not in TRANSPORT_KEYS)
        timeout = max(call.deadline - asyncio.get_running_loop().time(), 0.0)
        upstream = self._channel(deployed.grpc_target).stream_stream(call.method)(
            metadata=passed_on, timeout=timeout
        )
        feeding = asyncio.create_task(call.messages.feed(upstream))
        answered = False
        try:
            while (message := await upstream.read()) is not grpc.aio.EOF:
                if not answered:
                    answered = True
                    initial = _metadata(await upstream.initial_metadata())
                    await context.send_initial_metadata(
                        _answer_metadata(call.endpoint_id, deployed, initial)
                    )
                await context.write(message)
            return Ending(
                deployed,
                await upstream.code(),
                await upstream.details() or "",
                _metadata(await upstream.initial_metadata()),
                _metadata(await upstream.trailing_metadata()),
                answered,
            )
        except grpc.aio.AioRpcError as exc:
            return Ending(
                deployed,
                exc.code(),
                exc.details() or "",
                _metadata(exc.initial_metadata()),
                _metadata(exc.trailing_metadata()),
                answered,
            )
        finally:
            feeding.cancel()
            upstream.cancel()

    def _channel(self, target: str) -> grpc.aio.Channel:
        if target not in self.channels:
            self.channels[target] = grpc.aio.insecure_channel(target, options=CHANNEL_LIMITS)
        return self.channels[target]


async def _finish(endpoint_id: str, ending: Ending, context: grpc.aio.ServicerContext) -> None:
    """End the client's call as the model's ended."""
    if not ending.answered:
        await context.send_initial_metadata(
            _answer_metadata(endpoint_id, ending.deployed, ending.initial)
        )
    if ending.code == grpc.StatusCode.OK:
        context.set_trailing_metadata(ending.trailing)
        return
    details, trailing = ending.details, ending.trailing
    if _unreached(ending):
        deployed = ending.deployed
        details = f"deployed model {deployed.id} at {deployed.grpc_target}: {details}"
        trailing = (*trailing, (ERROR_KEY, UNREACHABLE))
    await context.abort(ending.code, details, trailing)


CORE_TRANSPORT_ERROR = "Internal error from Core"
"""grpcio's details when the connection to a model broke mid-call (the model killed while it
read the call): its own failures carry its own words."""


def _unreached(ending: Ending) -> bool:
    """The model gave no answer because it could not be reached (refused, dropped, or its
    connection broke): the call may go to another model."""
    if ending.answered:
        return False
    return ending.code == grpc.StatusCode.UNAVAILABLE or (
        ending.code == grpc.StatusCode.INTERNAL and ending.details == CORE_TRANSPORT_ERROR
    )


def _value(metadata: Metadata, key: str) -> str | bytes | None:
    """The first value of ``key``, or None."""
    return next((value for k, value in metadata if k == key), None)


def _metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Metadata:
    return tuple((key, value) for key, value in metadata or ())


def _answer_metadata(
    endpoint_id: str, deployed: LocalDeployedModel, initial: Metadata = ()
) -> Metadata:
    """The model's initial metadata with the endpoint and the model that answered."""
    ours = {HEADER_ENDPOINT_ID: endpoint_id, **model_headers(deployed)}
    return (*initial, *((key.lower(), value) for key, value in ours.items()))


async def _refuse(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    case: str,
    endpoint_id: str,
    deployed: LocalDeployedModel | None = None,
) -> NoReturn:
    """End the call with the router's own answer, ``case`` in ``x-local-router-error``."""
    trailing: Metadata = ((ENDPOINT_KEY, endpoint_id), (ERROR_KEY, case))
    if deployed is not None:
        trailing = _answer_metadata(endpoint_id, deployed, trailing)
    await context.abort(code, message, trailing)


def _bind_error(port: int, error: RuntimeError) -> OSError:
    """Why ``127.0.0.1:port`` cannot be bound: grpc's message does not say, ``bind`` does."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as reason:
            return OSError(reason.errno, f"gRPC on 127.0.0.1:{port}: {reason.strerror}")
    return OSError(f"gRPC on 127.0.0.1:{port}: {error}")
