"""The router in front of a local endpoint's deployed models: Vertex's endpoint routes on one
127.0.0.1 port, each request sent to a deployed model chosen by the traffic split.

``python -m components.stand_ins.router --record PATH --port N --grpc-port M`` (``endpoints``
starts it detached, one per endpoint). With ``--grpc-port`` it serves gRPC on that port too,
started and stopped with the HTTP routes (``grpc_router``: every call passed on to a deployed
model that serves gRPC, by the same split). Routes, shaped as Vertex's:

* ``POST /v1/projects/local/locations/local/endpoints/{ID}:predict``: the split picks a model;
  its JSON answer comes back with ``PredictResponse``'s ``deployedModelId``, ``model`` (without
  ``@version``), ``modelVersionId`` and ``modelDisplayName``;
* ``POST .../endpoints/{ID}:rawPredict``: the split picks a model; its answer as it is;
* ``POST .../endpoints/{ID}/deployedModels/{DMID}:rawPredict``: that one model, even at 0%
  (what a smoke test of a new version uses);
* ``GET /healthz``: 200 with the router's pid (the endpoint waits for it).

Every answer carries ``X-Vertex-AI-Endpoint-Id``, and one from a model also
``X-Vertex-AI-Deployed-Model-Id``, ``X-Vertex-AI-Model`` and ``X-Vertex-AI-Model-Version-Id``.
A model's non-200 answer passes through unchanged; the router's own errors are JSON
``{"error": ...}`` with ``X-Local-Router-Error`` naming the case.

The choice is nginx's smooth weighted round-robin over the models with a share above 0, so a
split is honoured exactly over every run of 100 requests; gRPC calls have a round-robin of their
own over the models with a share that serve gRPC, so that each protocol gets the split however
their calls interleave. The record is read again whenever its inode or mtime changes (records
are replaced atomically), so a new split applies from the next request on. A request that
gets no answer at the connection level (refused, reset or closed before any response) is sent
once more, to another model with traffic when there is one: a predict is idempotent and nothing
was answered, so undeploying a model fails no request. The router exits when its record is
gone (the endpoint was undeployed behind its back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from components import traffic, vertex
from components.stand_ins.endpoint_records import (
    HEADER_ENDPOINT_ID,
    ROUTER_ERROR_HEADER,
    UNREACHABLE,
    LocalDeployedModel,
    LocalEndpoint,
    model_headers,
    read_record,
)
from components.stand_ins.errors import EndpointError
from components.stand_ins.grpc_router import GrpcRouter
from components.stand_ins.resources import ENDPOINTS_PREFIX

RECORD_CHECK_INTERVAL_S = 1.0
"""How often the router checks that its record still exists."""

_PREFIX = f"/v1/{ENDPOINTS_PREFIX}"


def log(message: str) -> None:
    """One line on stderr (the endpoint's ``<ID>.router.log``)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"{stamp} router[{os.getpid()}] {message}", file=sys.stderr, flush=True)


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin: each pick adds every weight to its running score,
    takes the highest and subtracts the total from it. Over any ``sum(weights)`` consecutive
    picks each key comes up exactly its weight times, spread out evenly."""

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = {key: weight for key, weight in weights.items() if weight > 0}
        self.scores = dict.fromkeys(self.weights, 0)

    def pick(self) -> str | None:
        """The next key, or None when no weight is above 0."""
        if not self.weights:
            return None
        total = 0
        for key, weight in self.weights.items():
            self.scores[key] += weight
            total += weight
        best = max(self.scores, key=lambda key: self.scores[key])
        self.scores[best] -= total
        return best


@dataclass(frozen=True)
class Answer:
    """What came back from a model (``status`` None: no answer at the connection level)."""

    deployed: LocalDeployedModel
    status: int | None
    body: bytes = b""
    content_type: str = ""
    error: str = ""
    error_case: str = ""
    """For the router's own answer: ``unreachable`` (no answer at all: sent again),
    ``broken-answer`` (it broke off while answering) or ``timeout``."""


class Router:
    """The endpoint's record, re-read when it changes, and the choice of a deployed model."""

    def __init__(self, record: Path, timeout_s: float) -> None:
        self.record = record
        self.timeout_s = timeout_s
        self.stamp: tuple[int, int, int] | None = None
        self.endpoint: LocalEndpoint | None = None
        self.choosers = {grpc: SmoothWeightedRoundRobin({}) for grpc in (False, True)}
        """HTTP's (False) and gRPC's (True) round-robin."""
        self.session: aiohttp.ClientSession | None = None

    def current(self) -> LocalEndpoint:
        """The endpoint as the record holds it now (read again when the file changed).

        Raises:
            FileNotFoundError: the record is gone.
            EndpointError: it is unreadable and was never read.
        """
        stat = os.stat(self.record)
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self.stamp or self.endpoint is None:
            try:
                endpoint = read_record(self.record)
            except EndpointError as exc:
                if self.endpoint is None:
                    raise
                self.stamp = stamp  # logged once, tried again when the file changes
                log(f"kept the last split: {exc}")
                return self.endpoint
            first = self.endpoint is None
            self.stamp = stamp
            for grpc, chooser in list(self.choosers.items()):
                weights = dict(serving_weights(endpoint, grpc=grpc))
                if first or weights != chooser.weights:
                    self.choosers[grpc] = SmoothWeightedRoundRobin(weights)
            self.endpoint = endpoint
            if not first:  # the first read is in the start line
                log(f"reloaded: {describe(endpoint)}")
        return self.endpoint

    def choose(self, endpoint: LocalEndpoint, *, grpc: bool = False) -> LocalDeployedModel | None:
        """The deployed model the split gives the next request (``grpc``: the next gRPC call,
        among the models that serve gRPC), or None when none has traffic."""
        chosen = self.choosers[grpc].pick()
        return None if chosen is None else endpoint.find_deployed_model(chosen)

    def fallback(
        self, endpoint: LocalEndpoint, failed: str, *, grpc: bool = False
    ) -> LocalDeployedModel | None:
        """For a request ``failed`` did not answer: the other model with the largest share
        (``grpc``: that serves gRPC), else ``failed`` itself if it still has traffic (a fresh
        connection may reach it)."""
        others = [(d, share) for d, share in serving(endpoint, grpc=grpc) if d.id != failed]
        if others:
            return max(others, key=lambda item: item[1])[0]
        return endpoint.find_deployed_model(failed) if endpoint.traffic_split.get(failed) else None

    async def forward(self, deployed: LocalDeployedModel, body: bytes, content_type: str) -> Answer:
        """POST ``body`` to the model's predict route."""
        assert self.session is not None
        answered = False
        try:
            async with self.session.post(
                deployed.url, data=body, headers={"Content-Type": content_type}
            ) as response:
                answered = True
                payload = await response.read()
                return Answer(
                    deployed, response.status, payload, response.headers.get("Content-Type", "")
                )
        except asyncio.TimeoutError:
            return Answer(
                deployed,
                None,
                error=f"deployed model {deployed.id} did not answer within {self.timeout_s:g} s",
                error_case="timeout",
            )
        except (aiohttp.ClientError, OSError) as exc:
            when = "while answering" if answered else "before answering"
            return Answer(
                deployed,
                None,
                error=f"deployed model {deployed.id} at {deployed.url} failed {when}: "
                f"{type(exc).__name__}: {exc}",
                error_case=UNREACHABLE if not answered else "broken-answer",
            )


def describe(endpoint: LocalEndpoint) -> str:
    """``endpoint E: split A=90,B=10, 2 deployed model(s)`` for the log."""
    return (
        f"endpoint {endpoint.endpoint_id}: split {traffic.format_split(endpoint.traffic_split)}, "
        f"{len(endpoint.deployed_models)} deployed model(s)"
    )


def serving(endpoint: LocalEndpoint, *, grpc: bool = False) -> list[tuple[LocalDeployedModel, int]]:
    """The deployed models with traffic and their shares (``grpc``: those that serve gRPC)."""
    return [(d, share) for d, share in endpoint.serving() if not grpc or d.grpc_target]


def serving_weights(endpoint: LocalEndpoint, *, grpc: bool = False) -> list[tuple[str, int]]:
    """(deployed model id, share) of the deployed models with traffic (``grpc``: those that
    serve gRPC)."""
    return [(deployed.id, share) for deployed, share in serving(endpoint, grpc=grpc)]


def _json_error(
    status: int, message: str, case: str, endpoint_id: str, deployed: LocalDeployedModel | None
) -> web.Response:
    headers = {ROUTER_ERROR_HEADER: case, HEADER_ENDPOINT_ID: endpoint_id}
    if deployed is not None:
        headers.update(model_headers(deployed))
    return web.json_response({"error": message}, status=status, headers=headers)


def _answer_headers(endpoint_id: str, answer: Answer) -> dict[str, str]:
    headers = {HEADER_ENDPOINT_ID: endpoint_id, **model_headers(answer.deployed)}
    if answer.content_type:
        headers["Content-Type"] = answer.content_type
    return headers


def _failed(endpoint_id: str, answer: Answer) -> web.Response:
    status = 504 if answer.error_case == "timeout" else 502
    return _json_error(status, answer.error, answer.error_case, endpoint_id, answer.deployed)


ROUTER_KEY = web.AppKey("router", Router)


def build_app(
    record: Path, timeout_s: float = vertex.PREDICT_TIMEOUT_S, grpc_port: int = 0
) -> web.Application:
    """The router's aiohttp application for the endpoint record at ``record`` (read once
    here: ``EndpointError`` or ``OSError`` when it cannot be), with its gRPC side on
    ``grpc_port`` when one is given (started with the app; ``OSError`` when it cannot bind)."""
    router = Router(record, timeout_s)
    router.current()
    app = web.Application(client_max_size=vertex.MAX_FORWARDED_BODY_BYTES)
    app[ROUTER_KEY] = router
    if grpc_port:
        grpc_side = GrpcRouter(router, timeout_s, log)

        async def start_grpc(app: web.Application) -> None:
            await grpc_side.start(grpc_port)

        async def stop_grpc(app: web.Application) -> None:
            await grpc_side.stop(timeout_s)

        # Started before the HTTP client session opens (cleanup_ctx, the first startup step),
        # so that a port it cannot bind leaves nothing open; stopped at shutdown, not cleanup,
        # so that its calls drain while the HTTP requests do.
        app.on_startup.insert(0, start_grpc)
        app.on_shutdown.append(stop_grpc)

    async def client(app: web.Application) -> AsyncIterator[None]:
        router.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            connector=aiohttp.TCPConnector(limit=256),
        )
        watcher = asyncio.create_task(_watch_record(record))
        yield
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await router.session.close()

    app.cleanup_ctx.append(client)

    async def load(request: web.Request) -> tuple[LocalEndpoint, bytes] | web.Response:
        """The endpoint (the path's id checked) and the request body, or the error answer."""
        endpoint_id = request.match_info["endpoint_id"]
        try:
            endpoint = router.current()
        except FileNotFoundError:
            return _json_error(
                404,
                f"endpoint {endpoint_id} was undeployed (its record {record} is gone)",
                "unknown-endpoint",
                endpoint_id,
                None,
            )
        except EndpointError as exc:
            return _json_error(500, str(exc), "record-unreadable", endpoint_id, None)
        if endpoint_id != endpoint.endpoint_id:
            return _json_error(
                404,
                f"this router serves endpoint {endpoint.endpoint_id}, not {endpoint_id}: "
                f"POST {_PREFIX}{endpoint.endpoint_id}:predict",
                "unknown-endpoint",
                endpoint_id,
                None,
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _json_error(
                413,
                f"the request body is over {vertex.MAX_FORWARDED_BODY_BYTES:,} bytes, the most "
                "Vertex forwards to a model; send fewer instances per request",
                "too-large",
                endpoint_id,
                None,
            )
        return endpoint, body

    async def by_split(request: web.Request) -> tuple[LocalEndpoint, Answer] | web.Response:
        loaded = await load(request)
        if isinstance(loaded, web.Response):
            return loaded
        endpoint, body = loaded
        deployed = router.choose(endpoint)
        if deployed is None:
            deployed_ids = ", ".join(d.id for d in endpoint.deployed_models) or "none"
            return _json_error(
                503,
                f"endpoint {endpoint.endpoint_id} has no deployed model with traffic (deployed: "
                f"{deployed_ids}; split {traffic.format_split(endpoint.traffic_split)}): deploy "
                "a model or set the split (compile.py endpoints traffic "
                f"{endpoint.endpoint_id} --split ID=100)",
                "no-traffic",
                endpoint.endpoint_id,
                None,
            )
        content_type = request.headers.get("Content-Type", "application/json")
        answer = await router.forward(deployed, body, content_type)
        if answer.error_case == UNREACHABLE:
            with contextlib.suppress(FileNotFoundError, EndpointError):
                endpoint = router.current()  # an undeploy may just have changed the split
            retry = router.fallback(endpoint, deployed.id)
            if retry is not None:
                log(f"{answer.error}; sent again to deployed model {retry.id}")
                answer = await router.forward(retry, body, content_type)
        return endpoint, answer

    def respond(
        endpoint: LocalEndpoint, answer: Answer, *, vertex_fields: bool = False
    ) -> web.Response:
        """A model's answer with Vertex's headers; ``:predict`` adds the PredictResponse
        fields (``vertex_fields``), ``:rawPredict`` passes the body on as it is."""
        if answer.status is None:
            return _failed(endpoint.endpoint_id, answer)
        headers = _answer_headers(endpoint.endpoint_id, answer)
        if vertex_fields and answer.status == 200:
            try:
                payload = json.loads(answer.body)
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                deployed = answer.deployed
                payload.update(
                    deployedModelId=deployed.id,
                    model=deployed.model_name,
                    modelVersionId=deployed.version_id,
                    modelDisplayName=deployed.model_display_name,
                )
                headers.pop("Content-Type", None)
                return web.json_response(payload, headers=headers)
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    async def by_split_answer(request: web.Request, *, vertex_fields: bool) -> web.Response:
        """The answer of the deployed model the split picks."""
        result = await by_split(request)
        if isinstance(result, web.Response):
            return result
        return respond(*result, vertex_fields=vertex_fields)

    async def predict(request: web.Request) -> web.Response:
        return await by_split_answer(request, vertex_fields=True)

    async def raw_predict(request: web.Request) -> web.Response:
        return await by_split_answer(request, vertex_fields=False)

    async def raw_predict_one(request: web.Request) -> web.Response:
        loaded = await load(request)
        if isinstance(loaded, web.Response):
            return loaded
        endpoint, body = loaded
        deployed_model_id = request.match_info["deployed_model_id"]
        deployed = endpoint.find_deployed_model(deployed_model_id)
        if deployed is None:
            known = ", ".join(d.id for d in endpoint.deployed_models) or "none"
            return _json_error(
                404,
                f"endpoint {endpoint.endpoint_id} has no deployed model {deployed_model_id} "
                f"(deployed: {known})",
                "unknown-deployed-model",
                endpoint.endpoint_id,
                None,
            )
        content_type = request.headers.get("Content-Type", "application/json")
        return respond(endpoint, await router.forward(deployed, body, content_type))

    async def healthz(request: web.Request) -> web.Response:
        try:
            endpoint_id = router.current().endpoint_id
        except (FileNotFoundError, EndpointError) as exc:
            return web.json_response({"error": str(exc), "pid": os.getpid()}, status=500)
        return web.json_response(
            {"endpoint": endpoint_id, "pid": os.getpid()}, headers={HEADER_ENDPOINT_ID: endpoint_id}
        )

    endpoint_part = "{endpoint_id:[^/:]+}"
    app.router.add_post(f"{_PREFIX}{endpoint_part}:predict", predict)
    app.router.add_post(f"{_PREFIX}{endpoint_part}:rawPredict", raw_predict)
    app.router.add_post(
        f"{_PREFIX}{endpoint_part}/deployedModels/{{deployed_model_id:[^/:]+}}:rawPredict",
        raw_predict_one,
    )
    app.router.add_get("/healthz", healthz)
    return app


async def _watch_record(record: Path) -> None:
    """Stop the router (as SIGTERM does) once its record is gone: nothing is left to route."""
    while True:
        await asyncio.sleep(RECORD_CHECK_INTERVAL_S)
        if not record.exists():
            log(f"the record {record} is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)
            return


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; exit status 2 when the record cannot be read, 3 when a
    port cannot be bound."""
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else 'router'}")
    parser.add_argument("--record", type=Path, required=True, help="the endpoint's record")
    parser.add_argument("--port", type=int, required=True, help="the 127.0.0.1 port to serve on")
    parser.add_argument(
        "--grpc-port", type=int, default=0, help="the 127.0.0.1 port to serve gRPC on (0: none)"
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=vertex.PREDICT_TIMEOUT_S,
        help="how long a model may take to answer (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        app = build_app(args.record, args.timeout_s, args.grpc_port)
    except (OSError, EndpointError) as exc:
        log(f"cannot start: {exc}")
        return 2
    endpoint = app[ROUTER_KEY].current()
    grpc = f" and gRPC 127.0.0.1:{args.grpc_port}" if args.grpc_port else ""
    log(f"starting on 127.0.0.1:{args.port}{grpc}, record {args.record}; {describe(endpoint)}")
    try:
        web.run_app(
            app,
            host="127.0.0.1",
            port=args.port,
            print=None,
            access_log=None,
            shutdown_timeout=args.timeout_s,
        )
    except OSError as exc:
        log(f"cannot serve: {exc}")  # the message names the address
        return 3
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
